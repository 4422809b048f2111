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
import hashlib
import secrets
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cached_property, partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa

from ticketing_core.models import TicketLink

SCHEMA_VERSION = 5
# Connections per process: above the host's worker threads (anyio's 40) plus its deliveries, so a
# request never waits for a connection another request holds while waiting itself.
POOL_SIZE, MAX_OVERFLOW = 10, 50
_MIGRATION_LOCK = 0x7469636B  # "tick": one PostgreSQL advisory lock id for all migrations
Upgrade = Callable[[sa.Connection], None]

metadata = sa.MetaData()
_READ_ONLY = "ticketing_read_only"


class UtcDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("component", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
)

links = sa.Table(
    "anomaly_ticket_link",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("anomaly_id", sa.BigInteger, nullable=False, index=True),
    sa.Column("integration_id", sa.Integer, nullable=False, index=True),
    sa.Column("ticket_id", sa.String(128), nullable=False),
    sa.Column("ticket_number", sa.String(128), nullable=False),
    sa.Column("ticket_url", sa.Text),
    sa.Column("status", sa.String(128)),
    sa.Column("last_synced", UtcDateTime),
    sa.Column("ticket_metadata", sa.JSON),
    sa.Column("created", UtcDateTime, nullable=False),
    sa.UniqueConstraint("anomaly_id", "integration_id", "ticket_id", name="uq_link_ticket"),
    sqlite_autoincrement=True,
)


installation = sa.Table(
    "installation",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("created", UtcDateTime, nullable=False),
)


def utcnow() -> datetime:
    return datetime.now(UTC)


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
                metadata, component="ticketing_core", version=SCHEMA_VERSION, upgrades=CORE_UPGRADES
            )
        else:
            self._check_schema("ticketing_core", SCHEMA_VERSION)

    def __repr__(self) -> str:
        return f"Database({self.engine.url.render_as_string(hide_password=True)!r})"

    @property
    def is_postgresql(self) -> bool:
        return self.engine.dialect.name == "postgresql"

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
        """A connection inside a transaction: the caller's ``conn`` if given, else a new one."""
        if conn is not None:
            yield conn
            return
        with self.engine.begin() as own:
            yield own

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


class LinkStore:
    """The ``anomaly_ticket_link`` table."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def add(
        self,
        *,
        anomaly_id: int,
        integration_id: int,
        ticket_id: str,
        ticket_number: str,
        ticket_url: str | None,
        status: str | None,
        ticket_metadata: Mapping[str, Any] | None = None,
        conn: sa.Connection | None = None,
    ) -> TicketLink:
        """Store a link, or return the existing one for the same anomaly, integration and ticket."""
        with self.database.begin(conn) as c:
            existing = self.find(anomaly_id, integration_id, ticket_id, c)
            if existing is not None:
                return existing
            now = utcnow()
            insert = links.insert().values(
                anomaly_id=anomaly_id,
                integration_id=integration_id,
                ticket_id=ticket_id,
                ticket_number=ticket_number,
                ticket_url=ticket_url,
                status=status,
                last_synced=now,
                ticket_metadata=dict(ticket_metadata) if ticket_metadata else None,
                created=now,
            )
            try:
                with c.begin_nested():  # a savepoint: losing a race must not undo the caller's work
                    c.execute(insert)
            except sa.exc.IntegrityError:
                pass  # a concurrent request stored the same link first: return that one
            found = self.find(anomaly_id, integration_id, ticket_id, c)
            assert found is not None
            return found

    def get(self, link_id: int) -> TicketLink | None:
        with self.database.read() as c:
            row = c.execute(sa.select(links).where(links.c.id == link_id)).mappings().first()
        return _link(row) if row is not None else None

    def for_anomaly(self, anomaly_id: int, conn: sa.Connection | None = None) -> list[TicketLink]:
        with self.database.read(conn) as c:
            rows = c.execute(
                sa.select(links).where(links.c.anomaly_id == anomaly_id).order_by(links.c.id)
            )
            return [_link(row) for row in rows.mappings()]

    def record_status(self, link_id: int, status: str, synced_at: datetime) -> None:
        with self.database.begin() as c:
            c.execute(
                links.update()
                .where(links.c.id == link_id)
                .values(status=status, last_synced=synced_at)
            )

    def delete_for_integration(self, integration_id: int, conn: sa.Connection) -> None:
        conn.execute(links.delete().where(links.c.integration_id == integration_id))

    def integration_linking(self, ticket_id: str, conn: sa.Connection | None = None) -> int | None:
        """The integration through which ``ticket_id`` is linked, if any (at most one is)."""
        with self.database.read(conn) as c:
            found: int | None = c.execute(
                sa.select(links.c.integration_id).where(links.c.ticket_id == ticket_id).limit(1)
            ).scalar()
        return found

    def find(
        self,
        anomaly_id: int,
        integration_id: int,
        ticket_id: str,
        conn: sa.Connection | None = None,
    ) -> TicketLink | None:
        with self.database.read(conn) as c:
            row = (
                c.execute(
                    sa.select(links).where(
                        links.c.anomaly_id == anomaly_id,
                        links.c.integration_id == integration_id,
                        links.c.ticket_id == ticket_id,
                    )
                )
                .mappings()
                .first()
            )
        return _link(row) if row is not None else None


def _link(row: sa.RowMapping) -> TicketLink:
    return TicketLink(**dict(row))


def _timestamp_type(conn: sa.Connection) -> str:
    """The column type :class:`UtcDateTime` creates, for columns that upgrades add."""
    return "TIMESTAMP WITH TIME ZONE" if conn.dialect.name == "postgresql" else "DATETIME"


def _outbox_v2(conn: sa.Connection) -> None:
    """Schema 1 to 2: fenced claims replace the claim-count and clock bookkeeping of doubt.

    An event claimed more often than it failed was cut short by a dying worker: it stays in doubt.
    """
    if not sa.inspect(conn).has_table("sync_outbox"):
        return
    timestamp = _timestamp_type(conn)
    for statement in (
        "ALTER TABLE sync_outbox ADD COLUMN claim_token VARCHAR(32)",
        f"ALTER TABLE sync_outbox ADD COLUMN claimed_at {timestamp}",
        "ALTER TABLE sync_outbox ADD COLUMN note_digest VARCHAR(64)",
        "UPDATE sync_outbox SET ambiguous = true WHERE claims > attempts AND status = 'pending'",
        "ALTER TABLE sync_outbox DROP COLUMN first_claimed_at",
    ):
        conn.exec_driver_sql(statement)
    # Digests of the stored notes' texts, so identical notes are counted across the upgrade.
    outbox = sa.table(
        "sync_outbox", sa.column("id"), sa.column("action", sa.JSON), sa.column("note_digest")
    )
    for event_id, action in conn.execute(sa.select(outbox.c.id, outbox.c.action)).all():
        if action.get("type") == "AddWorkNote":
            digest = hashlib.sha256(action["text"].encode()).hexdigest()
            conn.execute(outbox.update().where(outbox.c.id == event_id).values(note_digest=digest))


def _outbox_v3(conn: sa.Connection) -> None:
    """Schema 2 to 3: an index for counting an integration's live claims (fleet claims)."""
    if sa.inspect(conn).has_table("sync_outbox"):
        conn.exec_driver_sql(
            "CREATE INDEX IF NOT EXISTS ix_sync_outbox_claimed "
            "ON sync_outbox (integration_id, claim_token)"
        )


def _outages_v4(conn: sa.Connection) -> None:
    """Schema 3 to 4: failures during outages counted apart; how long a pause lasted and when a
    delivery last succeeded."""
    inspector = sa.inspect(conn)
    timestamp = _timestamp_type(conn)
    if inspector.has_table("sync_outbox"):
        conn.exec_driver_sql(
            "ALTER TABLE sync_outbox ADD COLUMN outage_attempts INTEGER NOT NULL DEFAULT 0"
        )
    if inspector.has_table("sync_throttle"):
        conn.exec_driver_sql(
            "ALTER TABLE sync_throttle ADD COLUMN seconds FLOAT NOT NULL DEFAULT 0"
        )
        conn.exec_driver_sql(f"ALTER TABLE sync_throttle ADD COLUMN delivered_at {timestamp}")


def _notes_per_ticket_v5(conn: sa.Connection) -> None:
    """Schema 4 to 5: when an event's doubt window ends, so a note in doubt is looked for at once
    and only its sending waits (events already in doubt waited their window in next_attempt_at);
    identical notes counted per ticket, whichever integration delivered them."""
    inspector = sa.inspect(conn)
    if inspector.has_table("sync_outbox"):
        timestamp = _timestamp_type(conn)
        conn.exec_driver_sql(f"ALTER TABLE sync_outbox ADD COLUMN doubt_until {timestamp}")
        conn.exec_driver_sql("DROP INDEX IF EXISTS ix_sync_outbox_notes")
        conn.exec_driver_sql(
            "CREATE INDEX ix_sync_outbox_notes ON sync_outbox (ticket_id, note_digest, status)"
        )
    if inspector.has_table("sync_note_tally"):
        counts: dict[tuple[str, str], int] = {}
        for ordering_key, digest, delivered in conn.exec_driver_sql(
            "SELECT ordering_key, digest, delivered FROM sync_note_tally"
        ):
            ticket_id = ordering_key.partition(":")[2]  # was "<integration id>:<ticket id>"
            counts[ticket_id, digest] = counts.get((ticket_id, digest), 0) + delivered
        conn.exec_driver_sql("DROP TABLE sync_note_tally")
        conn.exec_driver_sql(
            "CREATE TABLE sync_note_tally (ticket_id VARCHAR(128) NOT NULL, "
            "digest VARCHAR(64) NOT NULL, delivered INTEGER NOT NULL, "
            "PRIMARY KEY (ticket_id, digest))"
        )
        tally = sa.table(
            "sync_note_tally", sa.column("ticket_id"), sa.column("digest"), sa.column("delivered")
        )
        if counts:
            conn.execute(
                tally.insert(),
                [{"ticket_id": t, "digest": d, "delivered": n} for (t, d), n in counts.items()],
            )


CORE_UPGRADES: Mapping[int, Upgrade] = {
    1: _outbox_v2, 2: _outbox_v3, 3: _outages_v4, 4: _notes_per_ticket_v5
}  # fmt: skip
