"""SQLite's writers of one machine queue on a lock file: its waits are bounded, a waiter that
gave up lets the lock go, and a write transaction in another process holds it."""

from __future__ import annotations

import fcntl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from ticketing_core.sync.database import LOCKED, Database, lock_wait, unavailable_reason
from ticketing_core.sync.filelock import FileLock

from ..conftest import wait_until

HOLDER = """
import sys
from ticketing_core.sync.filelock import FileLock
from ticketing_core.sync.database import Database
path, what = sys.argv[1], sys.argv[2]
if what == "lock":
    lock = FileLock(path)
    assert lock.acquire(timeout=5)
    print("held", flush=True)
    sys.stdin.readline()
    lock.release()
else:
    database = Database(path)
    with database.begin() as conn:
        conn.exec_driver_sql("UPDATE installation SET created = created")
        print("held", flush=True)
        sys.stdin.readline()
print("released", flush=True)
sys.stdin.readline()
"""


@contextmanager
def held_elsewhere(path: Path, what: str) -> Iterator[subprocess.Popen[str]]:
    """Another process holding ``path``'s lock (``"lock"``) or a write transaction on the
    database ``path`` (``"transaction"``), until a line is written to its stdin."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), what],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None
    assert holder.stdout is not None
    try:
        assert holder.stdout.readline() == "held\n"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def release(holder: subprocess.Popen[str]) -> None:
    assert holder.stdin is not None
    assert holder.stdout is not None
    holder.stdin.write("\n")
    holder.stdin.flush()
    assert holder.stdout.readline() == "released\n"


def write(database: Database) -> None:
    with database.begin() as conn:
        conn.exec_driver_sql("UPDATE installation SET created = created")


def free(path: Path) -> bool:
    """Whether nobody holds the lock on ``path`` (taken and let go at once)."""
    with path.open("a") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(file, fcntl.LOCK_UN)
        return True


@pytest.fixture
def lock_path(tmp_path: Path) -> Path:
    return tmp_path / "lock"


@pytest.fixture
def lock(lock_path: Path) -> Iterator[FileLock]:
    taken = FileLock(str(lock_path))
    yield taken
    taken.close()


def test_a_lock_another_process_holds_is_waited_for_at_most_the_timeout(
    lock: FileLock, lock_path: Path
) -> None:
    with held_elsewhere(lock_path, "lock") as holder:
        started = time.monotonic()
        taken = lock.acquire(timeout=0.3)
        waited = time.monotonic() - started
        release(holder)
        taken_after_release = lock.acquire(timeout=5)
        lock.release()

    assert not taken
    assert 0.25 < waited < 2
    assert taken_after_release


def test_a_waiter_that_gave_up_lets_the_lock_go(lock: FileLock, lock_path: Path) -> None:
    with held_elsewhere(lock_path, "lock") as holder:
        assert not lock.acquire(timeout=0.1)  # its wait goes on in a thread of its own
        release(holder)
        wait_until(lambda: free(lock_path), timeout=5)


def test_a_write_transaction_holds_the_machine_lock_and_bounded_waits_still_end(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ticketing.db"
    database = Database(str(path))
    database.dispose()  # as a host stopping does: its next write opens the lock file again
    try:
        with held_elsewhere(path, "transaction") as holder:
            held = not free(Path(f"{path}-writer"))
            started = time.monotonic()
            with (
                lock_wait(0.3),
                pytest.raises(sa.exc.OperationalError) as refused,
                database.begin() as conn,
            ):
                conn.exec_driver_sql("UPDATE installation SET created = created")
            waited = time.monotonic() - started
            release(holder)
        with database.begin() as conn:  # its turn now
            conn.exec_driver_sql("UPDATE installation SET created = created")
    finally:
        database.dispose()

    assert held
    assert 0.25 < waited < 2
    assert unavailable_reason(refused.value) == LOCKED


def test_without_a_usable_lock_file_writers_wait_in_sqlite_as_before(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ticketing.db"
    Path(f"{path}-writer").mkdir()  # a lock file that cannot be opened (root ignores modes)
    database = Database(str(path))
    try:
        with database.begin() as conn:
            conn.exec_driver_sql("UPDATE installation SET created = created")
        with held_elsewhere(path, "transaction") as holder:
            with lock_wait(0.3), pytest.raises(sa.exc.OperationalError) as refused:
                write(database)
            release(holder)
        write(database)
    finally:
        database.dispose()

    assert unavailable_reason(refused.value) == LOCKED
    assert "cannot queue SQLite's writers on" in caplog.text
