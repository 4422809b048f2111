"""The thread that does inbound work after the receiver has answered: it reads the tickets
stored notifications name as soon as it is woken, and runs each integration's reconciling poll
when due (and at once after it starts, since notifications sent while the host was down are
gone: Business Rules and webhooks do not retry)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from ticketing_core.errors import IntegrationUnusable, ProviderError, RateLimited
from ticketing_core.sync.inbound.engine import Inbound

log = logging.getLogger(__name__)

RETRY_AFTER_FAILURE = 30.0  # seconds an integration rests after a failed read
# Seconds between two rounds of reading while notifications keep coming: those about one ticket
# that arrive meanwhile are read together, once, so a stream of them costs a few reads a second
# per ticket and leaves the process's time to the receiver and the deliveries.
GATHER = 0.3


class InboundWorker:
    """``integrations()`` names the integrations whose polls run here (those with inbound sync
    on), read at every tick; ``tick`` is how often stored notifications and due polls are looked
    for without a wake. ``read(integration_id)`` reads an integration's notified tickets: the
    engine's :meth:`~Inbound.drain` unless given (a fleet's ``serve`` asks its workers instead).
    ``reread_after``: for an integration whose waiting notifications were all there at the
    last call, how long before ``read`` is called again (0: at every round; a fleet's ``serve``
    asks again now and then, in case its message was lost, not at every round)."""

    def __init__(
        self,
        inbound: Inbound,
        integrations: Callable[[], Iterable[int]],
        *,
        tick: float = 1.0,
        read: Callable[[int], object] | None = None,
        reread_after: float = 0.0,
    ) -> None:
        self.inbound = inbound
        self.integrations = integrations
        self.tick = tick
        self.read = inbound.drain if read is None else read
        self.reread_after = reread_after
        self._woken = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_poll: dict[int, float] = {}  # by integration, on the monotonic clock
        self._resting: dict[int, float] = {}  # failed integrations: until when they rest
        self._notified: set[int] = set()  # integrations notified since the last round
        self._notified_lock = threading.Lock()
        self._read_at: dict[int, float] = {}  # when ``read`` was last called, by integration
        inbound.on_notice = self.wake

    def wake(self, integration_id: int | None = None) -> None:
        """Look for work now; ``integration_id``: one that has a new notification."""
        if integration_id is not None:
            with self._notified_lock:
                self._notified.add(integration_id)
        self._woken.set()

    def next_poll(self, integration_id: int) -> float | None:
        """When the integration's next poll is due here (the monotonic clock); None until its
        first poll here has run."""
        return self._next_poll.get(integration_id)

    def start(self) -> None:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="inbound", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        self._stopping.set()
        self._woken.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def run_once(self) -> bool:
        """Read every stored notification, then run every poll that is due; returns whether
        there were notifications to read."""
        with self._notified_lock:
            notified, self._notified = self._notified, set()
        read = False
        now = time.monotonic()
        pending = self.inbound.pending_integrations()
        for integration_id in pending:
            last = self._read_at.get(integration_id)
            if integration_id in notified or last is None or now - last >= self.reread_after:
                self._read_at[integration_id] = now
                read = self._guarded(integration_id, self.read) or read
        for done in set(self._read_at) - set(pending):
            del self._read_at[done]
        now = time.monotonic()
        enabled = set(self.integrations())
        for integration_id in enabled:
            due = self._next_poll.get(integration_id, 0.0) <= now
            if due and self._guarded(integration_id, self.inbound.reconcile):
                self._next_poll[integration_id] = now + self._interval(integration_id)
        for gone in set(self._next_poll) - enabled:  # turned off: polls at once when back on
            del self._next_poll[gone]
        return read

    def _run(self) -> None:
        while not self._stopping.is_set():
            started, read = time.monotonic(), False
            try:
                read = self.run_once()
            except Exception:  # the database, say: the next tick tries again
                log.exception("inbound sync failed; trying again")
            if self._woken.wait(self.tick) and read:  # busy: let the next round gather
                self._stopping.wait(GATHER - (time.monotonic() - started))
            self._woken.clear()

    def _guarded(self, integration_id: int, work: Callable[[int], object]) -> bool:
        """Run ``work`` unless the integration rests after a failure; whether it succeeded."""
        if self._resting.get(integration_id, 0.0) > time.monotonic():
            return False
        try:
            work(integration_id)
        except (ProviderError, IntegrationUnusable) as exc:
            rest = RETRY_AFTER_FAILURE
            if isinstance(exc, RateLimited) and exc.retry_after:
                rest = max(rest, exc.retry_after)
            self._resting[integration_id] = time.monotonic() + rest
            log.warning("integration %s: inbound sync failed: %s", integration_id, exc)
            self.inbound.failed(
                integration_id, f"{type(exc).__name__}: {exc}; again in {rest:.0f} s"
            )
            return False
        self._resting.pop(integration_id, None)
        return True

    def _interval(self, integration_id: int) -> float:
        policy = self.inbound.policy_for(integration_id, None)
        return policy.reconcile_interval_s if policy is not None else 0.0
