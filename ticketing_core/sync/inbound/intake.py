"""Storing notifications many at a time: each caller waits until its notification is committed
(so a 202 still means stored), but one write transaction carries every notification that
arrived while the previous one was being written. On SQLite, where writers take turns, this is
what lets a receiver keep up with a burst."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence

import attrs

from ticketing_core.models import Notice

MAX_BATCH = 500  # notifications per transaction


@attrs.define
class _Waiting:
    integration_id: int
    notice: Notice
    done: threading.Event = attrs.field(factory=threading.Event)
    error: BaseException | None = None


Store = Callable[[Sequence[tuple[int, Notice]]], object]


class BatchedIntake:
    """``store(items)`` writes a batch in one transaction; :meth:`put` returns once the
    notification's batch is committed, or raises what storing it raised."""

    def __init__(self, store: Store, *, timeout: float = 10.0) -> None:
        self._store = store
        self._timeout = timeout
        self._queue: queue.SimpleQueue[_Waiting] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def put(self, integration_id: int, notice: Notice) -> None:
        waiting = _Waiting(integration_id, notice)
        self._queue.put(waiting)
        self._ensure_writer()
        if not waiting.done.wait(self._timeout):
            raise TimeoutError(f"the notification was not stored within {self._timeout:.0f} s")
        if waiting.error is not None:
            raise waiting.error

    def _ensure_writer(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._write, name="intake", daemon=True)
                self._thread.start()

    def _write(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._store([(each.integration_id, each.notice) for each in batch])
            except BaseException as exc:  # every caller of the batch hears of it
                for each in batch:
                    each.error = exc
            for each in batch:
                each.done.set()
