"""Storing notifications many at a time: each caller waits until its notification is committed
(so a 202 still means stored), but one write transaction carries every notification that
arrived while the previous one was being written. On SQLite, where writers take turns, this is
what lets a receiver keep up with a burst."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError

import attrs

from ticketing_core.models import Notice

MAX_BATCH = 500  # notifications per transaction


@attrs.define
class _Waiting:
    integration_id: int
    notice: Notice
    stored: Future[None] = attrs.field(factory=Future)


Store = Callable[[Sequence[tuple[int, Notice]]], object]


class BatchedIntake:
    """``store(items)`` writes a batch in one transaction. :meth:`submit` gives a future that is
    done once the notification's batch is committed, or failed with what storing it raised;
    :meth:`put` waits for it."""

    def __init__(self, store: Store, *, timeout: float = 10.0) -> None:
        self._store = store
        self.timeout = timeout
        self._queue: queue.SimpleQueue[_Waiting] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, integration_id: int, notice: Notice) -> Future[None]:
        waiting = _Waiting(integration_id, notice)
        self._queue.put(waiting)
        self._ensure_writer()
        return waiting.stored

    def put(self, integration_id: int, notice: Notice) -> None:
        """Store the notification: returns once committed, raises :class:`TimeoutError` when
        that takes longer than the timeout."""
        self.submit(integration_id, notice).result(self.timeout)

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
            error: BaseException | None = None
            try:
                self._store([(each.integration_id, each.notice) for each in batch])
            except BaseException as exc:  # every caller of the batch hears of it
                error = exc
            for each in batch:
                try:
                    if error is None:
                        each.stored.set_result(None)
                    else:
                        each.stored.set_exception(error)
                except InvalidStateError:
                    pass  # its caller stopped waiting (cancelled the future)
