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
"""

from __future__ import annotations

import os
import threading

try:
    import fcntl
except ImportError:  # Windows: SQLite's own waiting alone
    fcntl = None  # type: ignore[assignment]


class FileLock:
    """An exclusive ``flock`` on ``path`` (created if missing), for the process that made it (a
    forked child shares its parent's open file, and so its lock: it makes its own). The threads
    of a process take turns before :meth:`acquire` (the database's writer lock has them)."""

    def __init__(self, path: str) -> None:
        self.pid = os.getpid()
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        self._state = threading.Lock()
        self._got = threading.Event()
        self._wanted = False  # a caller waits for the lock
        self._waiting = False  # a thread is blocked in flock for it

    @staticmethod
    def supported() -> bool:
        return fcntl is not None

    def acquire(self, timeout: float) -> bool:
        """Take the lock, waiting at most ``timeout`` seconds; whether it was taken."""
        with self._state:
            if (fd := self._fd) is None:
                return False
            if not self._waiting:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    self._waiting = True
                    threading.Thread(
                        target=self._wait, args=(fd,), name="writer-lock", daemon=True
                    ).start()
            self._wanted = True
        self._got.wait(timeout)
        with self._state:
            self._wanted = False
            if self._got.is_set():
                self._got.clear()
                return True
            return False

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        with self._state:
            if self._fd is not None and not self._waiting:
                os.close(self._fd)
                self._fd = None

    def _wait(self, fd: int) -> None:
        """Block until the lock is ours; hand it to the caller, or let go of it at once if the
        caller gave up meanwhile."""
        fcntl.flock(fd, fcntl.LOCK_EX)
        with self._state:
            self._waiting = False
            if self._wanted:
                self._got.set()
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
