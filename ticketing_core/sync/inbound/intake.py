"""Storing notifications many at a time: each caller waits until its notification is committed
(so a 202 still means stored), but one write transaction carries every notification that
arrived while the previous one was being written. On SQLite, where writers take turns, this is
what lets a receiver keep up with a burst."""

from __future__ import annotations

import asyncio
import contextlib
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
    stored: Future[None] | asyncio.Future[None] = attrs.field(factory=Future)
    loop: asyncio.AbstractEventLoop | None = None
    """The event loop ``stored`` belongs to, if it is an asyncio future."""


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
        self._enqueue(waiting)
        return waiting.stored  # type: ignore[return-value]

    def submit_async(self, integration_id: int, notice: Notice) -> asyncio.Future[None]:
        """:meth:`submit` for a coroutine: a future of the running event loop. The futures of
        one batch are completed by one call into their loop, not a wake-up each."""
        loop = asyncio.get_running_loop()
        waiting = _Waiting(integration_id, notice, loop.create_future(), loop)
        self._enqueue(waiting)
        return waiting.stored  # type: ignore[return-value]

    def _enqueue(self, waiting: _Waiting) -> None:
        self._queue.put(waiting)
        self._ensure_writer()

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
            by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
            for each in batch:
                if each.loop is None:
                    _settle(each.stored, error)
                else:
                    by_loop.setdefault(each.loop, []).append(each.stored)  # type: ignore[arg-type]
            for loop, futures in by_loop.items():
                with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                    loop.call_soon_threadsafe(_settle_all, futures, error)


def _settle(stored: Future[None] | asyncio.Future[None], error: BaseException | None) -> None:
    try:
        if error is None:
            stored.set_result(None)
        else:
            stored.set_exception(error)
    except (InvalidStateError, asyncio.InvalidStateError):
        pass  # its caller stopped waiting (cancelled the future)


def _settle_all(futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for stored in futures:
        _settle(stored, error)
