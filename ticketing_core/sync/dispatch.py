"""Dispatchers run the delivery loop (:class:`~ticketing_core.sync.delivery.Drain`) somewhere:
:class:`ThreadedDispatcher` in this process (the embedded default); a task queue elsewhere (the
host's Dramatiq fleet runs the same loop in its actor)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from ticketing_core.sync.delivery import Drain, OnAttempt, Send
from ticketing_core.sync.outbox import Outbox, OutboxEvent
from ticketing_core.sync.settings import (
    DEFAULT_CONCURRENCY,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_PRUNE_INTERVAL,
    DEFAULT_RUN_LENGTH,
)

log = logging.getLogger(__name__)


class Dispatcher(Protocol):
    """What a :class:`~ticketing_core.sync.service.SyncService` needs of a dispatcher."""

    def start(self) -> None:
        """Begin delivering due events, including those left by an earlier process."""

    def wake(self, tickets: Collection[str] = ()) -> None:
        """New events were stored for these tickets (ordering keys): look for work now rather
        than at the next poll."""

    def stop(self, timeout: float | None = None) -> None:
        """Stop claiming; wait up to ``timeout`` for deliveries in flight."""


class Every:
    """Runs ``action`` when called, at most once per ``seconds``: at the first call when
    ``at_start``, else once ``seconds`` have passed. A run that raises is tried at the next call."""

    def __init__(self, seconds: float, action: Callable[[], object], *, at_start: bool) -> None:
        self.seconds, self.action = seconds, action
        self._last = float("-inf") if at_start else time.monotonic()

    def __call__(self) -> None:
        if time.monotonic() - self._last > self.seconds:
            self.action()
            self._last = time.monotonic()


class ThreadedDispatcher:
    """In-process delivery: up to ``concurrency`` drains at once, each delivering one ticket's
    events at a time.

    One integration gets at most ``instance_limit`` tickets in flight (default all but one), so a
    slow or down instance cannot hold every slot while another integration's events wait.
    ``prune`` runs every ``prune_interval`` seconds (default: the outbox's own pruning);
    ``on_attempt`` hears of every attempt and how it ended (metrics).
    """

    def __init__(
        self,
        outbox: Outbox,
        send: Send,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        instance_limit: int | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        prune: Callable[[], object] | None = None,
        prune_interval: float = DEFAULT_PRUNE_INTERVAL,
        on_attempt: OnAttempt | None = None,
    ) -> None:
        self.outbox = outbox
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.drain = Drain(
            outbox,
            self._tracked(send),
            instance_limit=instance_limit or max(1, concurrency - 1),
            batch=DEFAULT_RUN_LENGTH,
            on_attempt=on_attempt,
        )
        self._prune = Every(prune_interval, prune or outbox.prune, at_start=True)
        self._renew = Every(outbox.lease.total_seconds() / 3, self._renew_in_flight, at_start=True)
        self._wakeup = threading.Event()
        self._stopping = threading.Event()  # claim nothing more
        self._halted = threading.Event()  # and stop renewing: the loop ends
        self._woken: list[str] = []  # tickets to drain first
        self._in_flight: dict[int, OutboxEvent] = {}  # events being sent, by id
        self._drains = 0
        self._idle = threading.Condition()
        self._pool: ThreadPoolExecutor | None = None
        self._loop: threading.Thread | None = None

    def start(self) -> None:
        self._stopping.clear()
        self._halted.clear()
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="ticketing-deliver")
        self._loop = threading.Thread(target=self._run, name="ticketing-outbox", daemon=True)
        self._loop.start()

    def wake(self, tickets: Collection[str] = ()) -> None:
        with self._idle:
            self._woken.extend(sorted(tickets))
        self._wakeup.set()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop claiming and wait up to ``timeout`` for deliveries in flight, renewing their leases
        meanwhile. Returns by then; a delivery still running settles when it ends (its call has
        its own deadline) or, if the process exits first, is taken over after its lease."""
        self._stopping.set()
        self._wakeup.set()
        with self._idle:
            self._idle.wait_for(lambda: not self._drains, timeout)
        self._halted.set()
        self._wakeup.set()
        if self._loop is not None:
            self._loop.join(self.poll_interval)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        while not self._halted.is_set():
            try:
                if not self._stopping.is_set():
                    self._start_drains()
                self._renew()
                self._prune()
            except Exception:
                log.exception("outbox dispatch failed; retrying after the poll interval")
            self._wakeup.wait(self.poll_interval)
            self._wakeup.clear()

    def _start_drains(self) -> None:
        """A drain for each ticket woken or due, while slots are free."""
        with self._idle:
            free = self.concurrency - self._drains
            tickets, self._woken = list(dict.fromkeys(self._woken))[:free], []
        if len(tickets) < free:
            due = self.outbox.due_tickets(instance_limit=self.drain.instance_limit)
            tickets += [ticket for ticket in due if ticket not in tickets][: free - len(tickets)]
        with self._idle:
            self._drains += len(tickets)
        for ticket in tickets:
            assert self._pool is not None
            self._pool.submit(self._run_drain, ticket)

    def _run_drain(self, ticket: str) -> None:
        runs = 0
        try:
            runs = self.drain(ticket, stopping=self._stopping.is_set).runs
        except Exception:
            log.exception("outbox delivery failed; its events are retried after their lease")
        finally:
            with self._idle:
                self._drains -= 1
                self._idle.notify_all()
            if runs:  # a slot is free, and more may be due
                self._wakeup.set()

    def _tracked(self, send: Send) -> Send:
        """``send``, with the event known to be in flight while it is sent (its lease renewed)."""

        def tracked(event: OutboxEvent) -> int | None:
            with self._idle:
                self._in_flight[event.id] = event
            try:
                return send(event)
            finally:
                with self._idle:
                    self._in_flight.pop(event.id, None)

        return tracked

    def _renew_in_flight(self) -> None:
        with self._idle:
            in_flight = list(self._in_flight.values())
        self.outbox.renew(in_flight)
