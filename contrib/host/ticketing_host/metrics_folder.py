"""The folder where a ``ticketing worker``'s processes add up their metrics, and its removal.

Prometheus' multiprocess mode keeps one file per process in a folder named by
``PROMETHEUS_MULTIPROC_DIR``. Each ``ticketing worker`` makes its own in the temporary directory and
removes it on every exit it sees: a normal one, an error, SIGINT, SIGTERM and SIGHUP (also while it is
still checking its database and broker, before Dramatiq handles those signals). A worker that is
SIGKILLed, or that Dramatiq restarts in place on SIGHUP (``exec``, which skips every clean-up), cannot
remove its folder: the next ``ticketing worker`` started with the same temporary directory does.

A folder's owner holds an exclusive ``flock`` on the folder's lock file for as long as the worker or
any process it forked lives; the kernel releases it when they are gone, however they end. A folder
whose lock can be taken is abandoned. The lock file gets its name only once it is locked, so a folder
being made (no lock file yet) is never taken for an abandoned one. Folders of other users, folders
without a lock file (made by earlier versions, or being made) and folders whose lock is held are left
alone.

POSIX only (``fcntl``), like Dramatiq's fork functions the worker runs.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

PREFIX = "ticketing-metrics-"
LOCK_FILE = "owner.lock"  # not *.db: the multiprocess collector reads only those


@contextmanager
def metrics_folder(directory: str | None = None) -> Iterator[str]:
    """A new folder in ``directory`` (the temporary directory by default), locked by this process
    and those it forks, removed on exit; first removes the folders of workers that are gone."""
    directory = directory or tempfile.gettempdir()
    remove_abandoned(directory)
    path = tempfile.mkdtemp(prefix=PREFIX, dir=directory)
    lock = -1
    try:
        lock = _locked_owner_file(path)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        if lock >= 0:
            os.close(lock)


def _locked_owner_file(folder: str) -> int:
    making = os.path.join(folder, f".{LOCK_FILE}")
    lock = os.open(making, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # new: nobody else can hold it
        os.rename(making, os.path.join(folder, LOCK_FILE))
    except BaseException:
        os.close(lock)
        raise
    return lock


def remove_abandoned(directory: str | None = None) -> list[str]:
    """Remove the metrics folders in ``directory`` whose workers are gone; return their paths."""
    removed = []
    with os.scandir(directory or tempfile.gettempdir()) as entries:
        folders = [
            entry.path
            for entry in entries
            if entry.name.startswith(PREFIX) and entry.is_dir(follow_symlinks=False)
        ]
    for folder in folders:
        try:
            lock = os.open(os.path.join(folder, LOCK_FILE), os.O_RDWR | os.O_NOFOLLOW)
        except OSError:
            continue  # no lock file (an earlier version's, or being made), or not ours to open
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its worker, or a process it forked, still runs
        else:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        finally:
            os.close(lock)
    return removed
