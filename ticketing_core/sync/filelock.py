"""A lock the processes of one machine take in turn: SQLite's writers queue on it.

SQLite takes its write lock without waiting: a connection that finds it taken sleeps in growing
steps (1, 2, 5, ... up to 100 ms) and tries again, so while another process writes often, a
writer can sleep for tens of milliseconds after the lock came free, and lose it again. Measured
with ``serve --broker`` receiving notifications beside a ``ticketing worker`` delivering, on one
SQLite file: the receiver's transactions waited up to 157 ms to begin. Queued on an ``flock``
instead, a waiter is woken by the kernel the moment the holder lets go (at most 19 ms, the time
the transactions before it take).

The ``filelock`` library polls (every 50 ms by default), which is what this replaces; so the
blocking wait is done here, in a thread of its own, for the caller's wait to be bounded.

The lock only orders writers: SQLite's own lock still guards the file. So where the lock file
cannot be used (no ``fcntl`` on Windows, a directory this user may not write and no file there
yet, a file system without ``flock``), writers wait in SQLite's steps as before, with a warning.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref

try:
    import fcntl
except ImportError:  # Windows: SQLite's own waiting alone
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)


class FileLock:
    """An exclusive ``flock`` on ``path`` (created if missing), for the process that made it (a
    forked child shares its parent's open file, and so its lock: it makes its own). The threads
    of a process take turns before :meth:`acquire` (the database's writer lock has them).
    Without a usable lock file, or once closed, :meth:`acquire` takes nothing and says yes."""

    def __init__(self, path: str) -> None:
        self.pid = os.getpid()
        self._path = path
        self._fd = self._open()
        self._state = threading.Lock()
        self._got = threading.Event()
        self._wanted = False  # a caller waits for the lock
        self._waiting = False  # a thread is blocked in flock for it
        self._closed = False
        fd = self._fd
        self._finalizer = weakref.finalize(self, _close, fd) if fd is not None else None

    def acquire(self, timeout: float) -> bool:
        """Take the lock, waiting at most ``timeout`` seconds; whether it was taken."""
        with self._state:
            if self._usable() is None:
                return True
            if not self._waiting and self._try(fcntl.LOCK_EX | fcntl.LOCK_NB):
                return True
            if not self._waiting:
                threading.Thread(target=self._wait, name="writer-lock", daemon=True).start()
                self._waiting = True
            self._wanted = True
        self._got.wait(timeout)
        with self._state:
            self._wanted = False
            if self._got.is_set():
                self._got.clear()
                return True
            return self._usable() is None  # given up on meanwhile: nothing to wait for

    def release(self) -> None:
        with self._state:
            if self._usable() is not None:
                self._try(fcntl.LOCK_UN)

    def close(self) -> None:
        """Close the file (once no thread waits on it); :meth:`acquire` takes nothing after."""
        with self._state:
            self._closed = True
            if not self._waiting and self._finalizer is not None:
                self._finalizer()

    def _usable(self) -> int | None:
        return None if self._closed or self._fd is None else self._fd

    def _try(self, operation: int) -> bool:
        """``flock``: whether it was done; a lock file that fails otherwise is given up on."""
        assert self._fd is not None
        try:
            fcntl.flock(self._fd, operation)
        except BlockingIOError:
            return False
        except OSError as exc:
            self._give_up(exc)
        return True

    def _wait(self) -> None:
        """Block until the lock is ours; hand it to the caller, or let go of it at once if the
        caller gave up meanwhile."""
        fd = self._fd
        assert fd is not None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            failure: OSError | None = None
        except OSError as exc:
            failure = exc
        with self._state:
            self._waiting = False
            if failure is not None:
                self._give_up(failure)
            elif not self._wanted or self._closed:
                fcntl.flock(fd, fcntl.LOCK_UN)
            if self._wanted:
                self._got.set()  # the lock, or (closed, given up) nothing to wait for
            if self._closed and self._finalizer is not None:
                self._finalizer()

    def _open(self) -> int | None:
        if fcntl is None:
            return None
        try:
            return os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError:
            try:  # made by another user: flock needs no write access
                return os.open(self._path, os.O_RDONLY)
            except OSError as exc:
                self._warn(exc)
        except OSError as exc:
            self._warn(exc)
        return None

    def _give_up(self, error: OSError) -> None:
        self._warn(error)
        self._closed = True
        if not self._waiting and self._finalizer is not None:
            self._finalizer()

    def _warn(self, error: OSError) -> None:
        log.warning(
            "cannot queue SQLite's writers on %s (%s): they wait in SQLite's own steps",
            self._path,
            error.strerror or error,
        )


def _close(fd: int) -> None:
    os.close(fd)
