"""Persistence: one SQLAlchemy Core schema for SQLite (the embedded default) and PostgreSQL.

``Database("links.db")`` or ``Database("postgresql://user@host/db")``: the same code runs on both. Tables
are created on first use, under a lock so that several processes starting at once on a fresh database
do not collide; ``schema_version`` records what this code created and older schemas are upgraded
forward. ``installation`` holds one random id that scopes this installation's idempotency keys.

Nothing here checks out a second pooled connection while a caller's transaction is open: every
method takes the caller's ``conn``.
"""

from __future__ import annotations

import contextvars
import logging
import os
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from functools import cached_property, partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from ticketing_core.sync.filelock import FileLock
from ticketing_core.sync.outbox.migrations import UPGRADES, Upgrade
from ticketing_core.sync.schema import (
    SCHEMA_VERSION,
    installation,
    metadata,
    schema_version,
    utcnow,
)

# Connections per process: above the host's worker threads (anyio's 40) plus its deliveries, so a
# request never waits for a connection another request holds while waiting itself.
POOL_SIZE, MAX_OVERFLOW = 10, 50
_MIGRATION_LOCK = 0x7469636B  # "tick": one PostgreSQL advisory lock id for all migrations

_READ_ONLY = "ticketing_read_only"
log = logging.getLogger(__name__)


def engine_url(url_or_path: str) -> str:
    """An SQLAlchemy URL from a file path, a ``sqlite://`` URL or a ``postgresql://`` URL."""
    if url_or_path.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url_or_path.split("://", 1)[1]
    if "://" in url_or_path:
        return url_or_path
    return f"sqlite:///{url_or_path}"


def sqlite_path(url_or_path: str) -> str | None:
    """The SQLite file a database URL or path names (``:memory:`` for an in-memory one), or
    None for another database."""
    parsed = sa.make_url(engine_url(url_or_path))
    if parsed.get_backend_name() != "sqlite":
        return None
    return parsed.database or ":memory:"


class Database:
    """An engine with the schema in place. Thread-safe; share one per process."""

    def __init__(self, url_or_path: str, *, migrate: bool = True, read_only: bool = False) -> None:
        """Open the database, creating or upgrading the schema unless ``migrate`` is false.

        Without ``migrate`` (an operator's command), nothing is created or changed: a missing
        SQLite file, or a database without this code's schema, raises ``SchemaNotReady``.
        ``read_only`` also refuses every write (SQLite opens the file read-only).
        """
        self.url = engine_url(url_or_path)
        self._after_commit: weakref.WeakKeyDictionary[sa.Connection, list[Callable[[], object]]]
        self._after_commit = weakref.WeakKeyDictionary()
        parsed = sa.make_url(self.url)
        sqlite_file = sqlite_path(url_or_path) not in (None, ":memory:")
        if (not migrate or read_only) and sqlite_file and not Path(str(parsed.database)).is_file():
            raise SchemaNotReady(
                "there is no such file: give the database ticketing serve uses "
                "(--database or TICKETING_DATABASE)"
            )
        if read_only and sqlite_file:
            parsed = parsed.set(
                database=f"file:{quote(str(parsed.database))}", query={"mode": "ro", "uri": "true"}
            )
        pooled = parsed.get_backend_name() != "sqlite" or sqlite_file
        sizes = {"pool_size": POOL_SIZE, "max_overflow": MAX_OVERFLOW} if pooled else {}
        self.engine = sa.create_engine(parsed, pool_pre_ping=True, **sizes)
        # SQLite file written by this process: its writers queue here, then with those of the
        # machine's other processes on a lock file beside the database (see _one_writer).
        written = sqlite_file and not read_only
        self._writer = threading.Lock() if written else None
        self._writing = threading.local()
        # Resolved: a link to the file and the file itself share one lock.
        self._lock_path = f"{os.path.realpath(str(parsed.database))}-writer" if written else None
        self._file_lock: FileLock | None = None
        if self.engine.dialect.name == "sqlite":
            # Only the service's own opening switches a file to WAL: a look changes nothing.
            sa.event.listen(
                self.engine, "connect", partial(_tune_sqlite, wal=migrate and not read_only)
            )
            sa.event.listen(self.engine, "begin", _begin_immediate)
        else:
            sa.event.listen(self.engine, "begin", _bound_lock_wait)
            if read_only:
                sa.event.listen(self.engine, "connect", _read_only_session)
        sa.event.listen(self.engine, "handle_error", _reconnect_once_writable)
        if migrate and not read_only:
            self.migrate(
                metadata, component="ticketing_core", version=SCHEMA_VERSION, upgrades=UPGRADES
            )
        else:
            self._check_schema("ticketing_core", SCHEMA_VERSION)

    def __repr__(self) -> str:
        return f"Database({self.engine.url.render_as_string(hide_password=True)!r})"

    @property
    def is_postgresql(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def insert(self, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
        """An INSERT of this database's dialect, which has ``on_conflict_do_update`` and
        ``on_conflict_do_nothing`` (an upsert, the same on both)."""
        return (postgresql.insert if self.is_postgresql else sqlite.insert)(table)

    def migrate(
        self,
        schema: sa.MetaData,
        *,
        component: str,
        version: int,
        upgrades: Mapping[int, Upgrade] | None = None,
    ) -> None:
        """Create ``schema``'s missing tables and bring ``component`` to ``version``.

        ``upgrades[n]`` turns version ``n`` into ``n + 1``. One process at a time: PostgreSQL
        through an advisory lock, SQLite through its write lock.
        """
        with self.engine.begin() as conn:
            if self.is_postgresql:
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK)))
            current = self._schema_version(conn, component)
            for step in range(current or version, version):
                (upgrades or {})[step](conn)
            schema.create_all(conn, checkfirst=True)
            if current is None:
                conn.execute(schema_version.insert().values(component=component, version=version))
            elif current > version:
                raise RuntimeError(
                    f"the database holds {component} schema {current}, newer than this code's "
                    f"{version}: upgrade ticketing"
                )
            elif current < version:
                conn.execute(
                    schema_version.update()
                    .where(schema_version.c.component == component)
                    .values(version=version)
                )
            if schema is metadata and conn.execute(sa.select(installation.c.id)).first() is None:
                conn.execute(
                    installation.insert().values(id=secrets.token_hex(8), created=utcnow())
                )

    def _check_schema(self, component: str, version: int) -> None:
        with self.engine.connect() as conn:
            found = None
            if sa.inspect(conn).has_table(schema_version.name):
                found = conn.execute(
                    sa.select(schema_version.c.version).where(
                        schema_version.c.component == component
                    )
                ).scalar()
        if found is None:
            raise SchemaNotReady(
                "it holds no ticketing tables: give the database ticketing serve uses"
            )
        if found != version:
            change = (
                "upgrade ticketing"
                if found > version
                else "start ticketing serve once to upgrade it"
            )
            raise SchemaNotReady(
                f"it holds {component} schema {found} and this code reads {version}: {change}"
            )

    @staticmethod
    def _schema_version(conn: sa.Connection, component: str) -> int | None:
        metadata.create_all(conn, tables=[schema_version], checkfirst=True)
        return conn.execute(
            sa.select(schema_version.c.version).where(schema_version.c.component == component)
        ).scalar()

    @cached_property
    def installation_id(self) -> str:
        """This installation's random id (16 hex digits), made when its database was."""
        with self.read() as conn:
            return str(conn.execute(sa.select(installation.c.id)).scalar_one())

    def now(self, conn: sa.Connection) -> datetime:
        """The database's clock: one time for every process sharing it, whatever their clocks say.

        SQLite lives on one machine, whose clock all its processes share.
        """
        if not self.is_postgresql:
            return utcnow()
        moment: datetime = conn.execute(sa.select(sa.func.statement_timestamp())).scalar_one()
        return moment.astimezone(UTC)

    @contextmanager
    def begin(self, conn: sa.Connection | None = None) -> Iterator[sa.Connection]:
        """A connection inside a transaction: the caller's ``conn`` if given, else a new one,
        committed at the end of the block (then its :meth:`after_commit` callbacks run)."""
        if conn is not None:
            yield conn
            return
        callbacks: list[Callable[[], object]] = []
        with self._one_writer(), self.engine.begin() as own:
            self._after_commit[own] = callbacks
            try:
                yield own
            finally:
                self._after_commit.pop(own, None)
        for callback in callbacks:
            try:
                callback()
            except Exception:  # the transaction is committed: its caller must hear so
                log.exception("a callback after the commit failed")

    @contextmanager
    def _one_writer(self) -> Iterator[None]:
        """SQLite: hold this process's writer lock, then the machine's (a lock file beside the
        database), until the transaction has ended.

        SQLite lets one connection write at a time, and one that finds the file locked sleeps in
        growing steps (up to 100 ms) before it tries again: writers queue here instead, threads
        of this process on a lock, processes on the file (see :mod:`.filelock`), and start the
        moment the writer before them commits. The two queues together take at most the
        transaction's lock wait; past it, the transaction tries SQLite once without waiting more
        (failing as a locked database does). Once its turn has come, SQLite's own wait for
        another program's lock is the lock wait, as before. A nested transaction of the same
        thread does not queue behind itself.
        """
        if self._writer is None or getattr(self._writing, "held", False):
            yield
            return
        wait = _lock_wait.get()
        deadline = time.monotonic() + (LOCK_WAIT if wait is None else wait)
        with ExitStack() as held:
            if _take(self._writer, deadline, held) and self._lock_path is not None:
                _take(self._machine_writer(self._lock_path), deadline, held)
            self._writing.held = True
            held.callback(setattr, self._writing, "held", False)
            yield

    def _machine_writer(self, path: str) -> FileLock:
        """The lock file's lock for this process (a forked child makes its own); taken only
        under this process's writer lock."""
        if self._file_lock is None or self._file_lock.pid != os.getpid():
            self._file_lock = FileLock(path)
        return self._file_lock

    def after_commit(self, conn: sa.Connection, callback: Callable[[], object]) -> None:
        """Call ``callback`` once the transaction ``conn`` is in has committed (never if it rolls
        back). Only for transactions :meth:`begin` opened: in another, the callback is dropped."""
        if (callbacks := self._after_commit.get(conn)) is not None:
            callbacks.append(callback)

    @contextmanager
    def read(self, conn: sa.Connection | None = None) -> Iterator[sa.Connection]:
        """The caller's ``conn`` if given, else a read-only transaction.

        On SQLite a read-only transaction never waits for a writer (WAL readers don't), so lookups
        made while another connection holds the write lock cannot deadlock.
        """
        if conn is not None:
            yield conn
            return
        with self.engine.connect() as conn:
            conn.execution_options(**{_READ_ONLY: True})
            with conn.begin():
                yield conn

    def dispose(self) -> None:
        self.engine.dispose()
        if self._file_lock is not None:  # a write after this opens the file again
            self._file_lock.close()
            self._file_lock = None


def _take(lock: threading.Lock | FileLock, deadline: float, held: ExitStack) -> bool:
    """Take ``lock`` by ``deadline`` (released when ``held`` closes); else the transaction
    tries SQLite once without waiting. Whether it was taken."""
    if lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
        held.callback(lock.release)
        return True
    held.enter_context(lock_wait(0))
    return False


# What opening a database can raise for a bad URL, a missing driver or an unreachable server.
class SchemaNotReady(Exception):
    """A database opened for reading only does not hold the schema this code reads."""


OPEN_ERRORS = (sa.exc.SQLAlchemyError, ValueError, ImportError, SchemaNotReady)


def open_error(url_or_path: str, error: BaseException) -> str:
    """One line saying why ``url_or_path`` could not be opened, with any password hidden."""
    try:
        shown = sa.make_url(engine_url(url_or_path)).render_as_string(hide_password=True)
    except (sa.exc.ArgumentError, ValueError):
        shown = "the given URL"
    if isinstance(error, ImportError) and "psycopg" in str(error):
        return (
            f"cannot open the database {shown}: "
            "PostgreSQL needs pip install 'ticketing-framework[postgres]'"
        )
    if isinstance(error, SchemaNotReady):
        return f"cannot open the database {shown}: {error}"
    reason = getattr(error, "orig", None) or error
    detail = " ".join(str(reason).split())  # drivers' messages span lines
    return f"cannot open the database {shown}: {type(reason).__name__}: {detail}"[:500]


# -- waiting for locks, and what a database that cannot take a write says ------------------------

LOCK_WAIT = 30.0
"""Seconds a transaction waits for a lock another connection holds (SQLite's busy timeout),
outside a :func:`lock_wait` block. PostgreSQL waits without a limit there."""
_lock_wait: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "ticketing_lock_wait", default=None
)


@contextmanager
def lock_wait(seconds: float) -> Iterator[None]:
    """Transactions begun inside the block wait at most ``seconds`` for a lock another process
    holds (SQLite's busy timeout, PostgreSQL's ``lock_timeout``), then fail with an error
    :func:`unavailable_reason` explains ("the database is locked ...").

    For callers someone waits for (an API request); a background worker keeps the long wait. The
    block's context, and so the limit, goes with work handed to threads that copy the context
    (``asyncio.to_thread``, anyio's worker threads).
    """
    token = _lock_wait.set(seconds)
    try:
        yield
    finally:
        _lock_wait.reset(token)


def unavailable_reason(error: BaseException) -> str | None:
    """One line saying why the database cannot take a request now, without the SQL: it is locked
    by another process, read-only, full, or unreachable; None for any other error.

    Such a failure changes nothing (the transaction is rolled back), so the request may be sent
    again once the reason is gone.
    """
    if not isinstance(error, sa.exc.DBAPIError):
        return None
    reason = error.orig
    if (name := getattr(reason, "sqlite_errorname", None)) is not None:  # sqlite3, Python 3.11+
        for prefix, said in _SQLITE_UNAVAILABLE:
            if name.startswith(prefix):
                return said
        return None
    state = getattr(reason, "sqlstate", None)  # psycopg
    for prefix, said in _POSTGRESQL_UNAVAILABLE:
        if state is not None and state.startswith(prefix):
            return said
    if isinstance(error, sa.exc.OperationalError) and (state is None or state.startswith("08")):
        return UNREACHABLE  # no connection could be made, or it was lost
    return None


LOCKED = "the database is locked by another process; retry shortly"
LOCKED_BY_TRANSACTION = "the database is locked by another transaction; retry shortly"
READ_ONLY = "the database is read-only: nothing can be stored until it is writable again"
UNREACHABLE = "the database is unreachable; retry shortly"
TRANSIENT = frozenset({LOCKED, LOCKED_BY_TRANSACTION, UNREACHABLE})
"""The reasons worth retrying within seconds (the others wait for an operator)."""
_SQLITE_UNAVAILABLE = (
    ("SQLITE_BUSY", LOCKED),
    ("SQLITE_LOCKED", LOCKED),
    ("SQLITE_READONLY", READ_ONLY),
    ("SQLITE_FULL", "the disk holding the database is full: nothing can be stored"),
    ("SQLITE_IOERR", "the database cannot be written (an I/O error of its disk)"),
    ("SQLITE_CANTOPEN", "the database file cannot be opened: check that it exists"),
)
_POSTGRESQL_UNAVAILABLE = (
    ("55P03", LOCKED_BY_TRANSACTION),  # lock_not_available: lock_timeout ran out
    ("25006", READ_ONLY),  # read_only_sql_transaction: a standby, or a read-only default
    ("53", "the database is out of resources (disk, memory or connections)"),
    ("57P", UNREACHABLE),  # shutting down, or not taking connections yet
)


def _bound_lock_wait(conn: sa.Connection) -> None:
    """PostgreSQL: inside :func:`lock_wait`, the transaction's ``lock_timeout``."""
    if (wait := _lock_wait.get()) is not None:
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = {max(1, round(wait * 1000))}")


def _reconnect_once_writable(context: sa.engine.ExceptionContext) -> None:
    """A connection opened while the database was read-only (a file without write permission, a
    standby) stays read-only: drop the pool's connections, so that new ones write again as soon
    as the database can be written."""
    error = context.sqlalchemy_exception
    if error is not None and unavailable_reason(error) == READ_ONLY:
        context.is_disconnect = True


def _tune_sqlite(dbapi_connection: Any, record: Any, *, wal: bool) -> None:
    # WAL lets the worker write while the API reads; busy_timeout waits instead of failing.
    # Transactions are begun by _begin_immediate, not by the driver.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # The wait first: switching a fresh file to WAL needs a lock another process may hold.
    record.info[_BUSY_TIMEOUT] = busy_ms = round(LOCK_WAIT * 1000)
    cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
    if wal:  # a setting of the file, kept: made once by the service that owns it
        cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _read_only_session(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
    cursor.close()
    dbapi_connection.commit()


_BUSY_TIMEOUT = "ticketing_busy_timeout_ms"  # a pooled SQLite connection's current busy timeout


def _begin_immediate(conn: sa.Connection) -> None:
    # Inside lock_wait, the busy timeout is the block's; set only when it changes.
    wait = _lock_wait.get()
    busy_ms = round((LOCK_WAIT if wait is None else wait) * 1000)
    info = conn.connection.info
    if info.get(_BUSY_TIMEOUT) != busy_ms:
        conn.exec_driver_sql(f"PRAGMA busy_timeout={busy_ms}")
        info[_BUSY_TIMEOUT] = busy_ms
    # Writers take the write lock up front: a read-then-write transaction that upgrades later fails
    # at once (SQLITE_BUSY) when another connection wrote meanwhile, instead of waiting its turn.
    read_only = conn.get_execution_options().get(_READ_ONLY, False)
    conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")
