"""How long a transaction waits for another process's lock, and what a database that cannot
take a write says: on SQLite and on PostgreSQL."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from ticketing_core.sync.database import (
    LOCK_WAIT,
    LOCKED,
    LOCKED_BY_TRANSACTION,
    READ_ONLY,
    Database,
    engine_url,
    lock_wait,
    sqlite_path,
    unavailable_reason,
)

from ..conftest import read_only


@contextmanager
def held_lock(database_url: str) -> Iterator[None]:
    """Another connection holding the lock a write needs: SQLite's write lock, or an exclusive
    lock on the installation table."""
    path = sqlite_path(database_url)
    if path is not None:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            other.rollback()
            other.close()
        return
    engine = sa.create_engine(engine_url(database_url))
    try:
        with engine.connect() as conn, conn.begin():
            conn.exec_driver_sql("LOCK TABLE installation IN EXCLUSIVE MODE")
            yield
    finally:
        engine.dispose()


def write(database: Database) -> None:
    with database.begin() as conn:
        conn.exec_driver_sql("UPDATE installation SET created = created")


def test_lock_wait_bounds_the_wait_for_another_process_lock(
    database: Database, database_url: str
) -> None:
    with held_lock(database_url), lock_wait(0.3):
        started = time.monotonic()
        with pytest.raises(sa.exc.OperationalError) as refused:
            write(database)
        waited = time.monotonic() - started

    assert 0.25 < waited < 2
    expected = LOCKED if sqlite_path(database_url) else LOCKED_BY_TRANSACTION
    assert unavailable_reason(refused.value) == expected
    write(database)  # the lock is gone, and so is the error


def test_outside_the_block_a_sqlite_connection_waits_as_long_as_before(tmp_path: Path) -> None:
    """SQLite's busy timeout belongs to the connection (PostgreSQL's lock_timeout is set per
    transaction, inside the block only): it is set back when the connection is next used."""
    database = Database(str(tmp_path / "ticketing.db"))
    try:
        with lock_wait(0.3):
            write(database)
        with database.begin() as conn:
            outside = conn.exec_driver_sql("PRAGMA busy_timeout").scalar()
        with lock_wait(0.3), database.begin() as conn:
            inside = conn.exec_driver_sql("PRAGMA busy_timeout").scalar()
    finally:
        database.dispose()

    assert (inside, outside) == (300, LOCK_WAIT * 1000)


def test_a_read_only_database_says_so(database: Database, database_url: str) -> None:
    with read_only(database, database_url), pytest.raises(sa.exc.DBAPIError) as refused:
        write(database)

    assert unavailable_reason(refused.value) == READ_ONLY
    write(database)  # the read-only connection was dropped with the error: writable again


@pytest.mark.parametrize(
    "error",
    [
        ValueError("not a database error"),
        sa.exc.IntegrityError("INSERT ...", {}, sqlite3.IntegrityError("UNIQUE constraint")),
    ],
)
def test_other_errors_are_not_unavailability(error: BaseException) -> None:
    assert unavailable_reason(error) is None


class DriverError(Exception):
    """A driver's error as sqlite3 (``sqlite_errorname``) or psycopg (``sqlstate``) raise it."""

    def __init__(self, **attributes: str | None) -> None:
        super().__init__("the driver's text")
        self.__dict__.update(attributes)


@pytest.mark.parametrize(
    ("orig", "reason"),
    [
        (DriverError(sqlite_errorname="SQLITE_BUSY"), LOCKED),
        (DriverError(sqlite_errorname="SQLITE_READONLY_DIRECTORY"), READ_ONLY),
        (DriverError(sqlite_errorname="SQLITE_FULL"), "the disk holding the database is full: "
                                                      "nothing can be stored"),
        (DriverError(sqlite_errorname="SQLITE_IOERR_WRITE"),
         "the database cannot be written (an I/O error of its disk)"),
        (DriverError(sqlite_errorname="SQLITE_ERROR"), None),  # no such table: a bug, not a state
        (DriverError(sqlstate="55P03"), LOCKED_BY_TRANSACTION),
        (DriverError(sqlstate="25006"), READ_ONLY),
        (DriverError(sqlstate="53300"), "the database is out of resources (disk, memory or "
                                        "connections)"),
        (DriverError(sqlstate="57P01"), "the database is unreachable; retry shortly"),
        (DriverError(sqlstate=None), "the database is unreachable; retry shortly"),  # no connection
        (DriverError(sqlstate="42P01"), None),  # undefined table
    ],
)  # fmt: skip
def test_each_unavailability_has_its_reason(orig: Exception, reason: str | None) -> None:
    assert unavailable_reason(sa.exc.OperationalError("SELECT 1", {}, orig)) == reason
