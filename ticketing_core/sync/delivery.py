"""Delivery: how one claimed event reaches its ticket, exactly once in effect.

Every event goes through four steps, written here and nowhere else:

1. **check**: a note in doubt (an earlier attempt may have landed: its worker died, or the call
   failed after the request left) is looked for on its ticket first, keyed by the event's
   idempotency key and counting the identical notes delivered there before it
   (``Provider.has_work_note``). Found, it is settled delivered and nothing is sent;
2. **confirm**: just before sending, the claim is confirmed (:meth:`Outbox.confirm
   <ticketing_core.sync.outbox.Outbox.confirm>`). A worker whose lease was lost sends nothing; a
   note in doubt whose doubt window was still open when it was claimed is not sent but looked for
   again when the window ends (the service may still be working on the earlier attempt);
3. **send**: one attempt, keyed, within the delivery deadline;
4. **settle**: delivered, or failed (retry, pause or dead: :mod:`~ticketing_core.sync.outbox.policy`),
   fenced by the claim's token.

At-least-once attempts plus keyed writes give an exactly-once effect, assuming a worker does not
stall for longer than ``lease_seconds + doubt_seconds`` between confirming its claim and sending,
and that a provider's look counts exactly the notes written with the text (ServiceNow's escapes
what it writes so that it can: :func:`ticketing_servicenow.mapping.journal_safe`).

:class:`Drain` is the loop every dispatcher runs, the in-process one and the Dramatiq actor alike:
claim a run of one ticket's due events, deliver it, settle it, go on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime

import attrs
import sqlalchemy as sa

from ticketing_core.hookspecs import Provider
from ticketing_core.http.budget import call_budget
from ticketing_core.policies import AddWorkNote, ChangeTicket
from ticketing_core.sync.outbox import DELIVERED, PENDING, Outbox, OutboxEvent, StillInDoubt
from ticketing_core.sync.settings import DEFAULT_DELIVERY_DEADLINE, check_lease

log = logging.getLogger(__name__)

Send = Callable[[OutboxEvent], int | None]
"""Steps 1 to 3 for one claimed event: returns once it is at its ticket (with the revision a
note made, when the service's answer told it), raises otherwise."""
ProviderFor = Callable[[int, sa.Connection | None], Provider]


class Delivery:
    """Sends claimed events to their tickets through their integrations' providers (steps 1-3).

    The lease must exceed 4/3 of ``deadline`` (:func:`~ticketing_core.sync.settings.check_lease`).
    """

    def __init__(
        self,
        outbox: Outbox,
        provider_for: ProviderFor,
        *,
        deadline: float = DEFAULT_DELIVERY_DEADLINE,
    ) -> None:
        check_lease(outbox.lease.total_seconds(), deadline)
        self.outbox, self.provider_for, self.deadline = outbox, provider_for, deadline

    def __call__(self, event: OutboxEvent) -> int | None:
        provider = self.provider_for(event.integration_id, None)
        action = event.action
        with call_budget(attempts=1, deadline=self.deadline):
            if isinstance(action, AddWorkNote):
                key = event.idempotency_key
                if event.in_doubt and provider.has_work_note(
                    event.ticket_id, action.text, idempotency_key=key,
                    identical_before=event.identical_before,
                ):  # fmt: skip
                    return None  # found: which revision it made is not known
                self.outbox.confirm(event)
                return provider.add_work_note(event.ticket_id, action.text, idempotency_key=key)
            if isinstance(action, ChangeTicket):
                # Idempotent, but a stale worker must not undo later ones.
                self.outbox.confirm(event)
                # Its revision is not told as ours: a change that changed nothing (sent again,
                # or already so) answers with the revision someone else made.
                provider.update(event.ticket_id, action.changes)
        return None


@attrs.frozen
class Outcome:
    """How one attempt at a claimed event ended."""

    status: str | None
    """The event's status now (delivered, pending, dead), or None: the claim was lost."""
    error: BaseException | None = None
    delivered_at: datetime | None = None


OnAttempt = Callable[[OutboxEvent, Outcome], object]


def deliver_run(
    outbox: Outbox,
    send: Send,
    run: Sequence[OutboxEvent],
    *,
    stopping: Callable[[], bool] = lambda: False,
) -> list[tuple[OutboxEvent, Outcome]]:
    """Deliver a claimed run of one ticket's events in order and settle them (step 4): the
    delivered ones together, in one transaction even when interrupted; the first failure is
    recorded and the rest of the run given back, as it is once ``stopping()`` says so. Returns
    each attempted event with how it ended."""
    delivered, failure = _send_run(outbox, send, run, stopping)
    return _outcomes(delivered, outbox.settle_delivered(*delivered), failure)


def _send_run(
    outbox: Outbox, send: Send, run: Sequence[OutboxEvent], stopping: Callable[[], bool]
) -> tuple[list[OutboxEvent], tuple[OutboxEvent, Outcome] | None]:
    """Send a run's events in order (steps 1-3), settling a failure: the events delivered, to
    be settled by the caller, and the failure. Interrupted (a time limit), it settles the
    delivered ones itself; the one in hand is looked for later."""
    delivered: list[OutboxEvent] = []
    renewed = run[0].claimed_monotonic if run else 0.0
    try:
        for position, event in enumerate(run):
            if position and stopping():
                outbox.release(run[position:])
                break
            # A slow run: keep every claim of it alive, delivered ones too. Renewed at least every
            # quarter lease plus one delivery, so a lease above 4/3 of the deadline never lapses.
            if time.monotonic() - renewed > outbox.lease.total_seconds() / 4:
                outbox.renew(run)
                renewed = time.monotonic()
            try:
                revision = send(event)
            except Exception as exc:
                outbox.release(run[position + 1 :])
                return delivered, (event, _failed(outbox, event, exc))
            delivered.append(event if revision is None else attrs.evolve(event, revision=revision))
    except BaseException:
        outbox.settle_delivered(*delivered)
        raise
    return delivered, None


def _outcomes(
    delivered: Sequence[OutboxEvent],
    settled: dict[int, datetime],
    failure: tuple[OutboxEvent, Outcome] | None,
) -> list[tuple[OutboxEvent, Outcome]]:
    outcomes = []
    for event in delivered:
        if event.id not in settled:
            log.warning("outbox event %s: delivered after its lease was lost", event.id)
        outcomes.append(
            (event, Outcome(DELIVERED, delivered_at=settled[event.id]) if event.id in settled
             else Outcome(None))
        )  # fmt: skip
    return outcomes + ([failure] if failure else [])


def _failed(outbox: Outbox, event: OutboxEvent, error: Exception) -> Outcome:
    status = outbox.settle_failed(event, error)
    if isinstance(error, StillInDoubt):  # a look that found nothing yet: no failure
        log.info("%s", error)
    else:
        log.warning("outbox event %s failed (%s): %s", event.id, status or "lease lost", error)
    return Outcome(status, error)


@attrs.frozen
class Drained:
    """How a drain ended: the runs it delivered, and the ticket to carry on with when its budget
    was spent (more may be due there)."""

    runs: int
    carry_on: str | None = None


@attrs.define
class Drain:
    """The delivery loop: from a ticket, claim a run of due events, deliver and settle it, and
    go on with that ticket, then with other due tickets, until nothing may be claimed.

    ``instance_limit``: tickets of one integration with live claims, across every process.
    ``batch``: events per run. ``on_attempt`` hears of every attempt (metrics);
    ``retry_later(ticket, seconds)`` of an event to retry then (a task queue schedules a
    message; a poller finds it anyway).
    """

    outbox: Outbox
    send: Send
    instance_limit: int
    batch: int = 1
    on_attempt: OnAttempt | None = None
    retry_later: Callable[[str, float], object] | None = None

    def __call__(
        self,
        ticket: str | None = None,
        *,
        stopping: Callable[[], bool] = lambda: False,
        budget: float | None = None,
    ) -> Drained:
        """Drain from ``ticket`` (an ordering key) until nothing is due or ``stopping()``, or
        until a ``budget`` in seconds is spent."""
        started, prefer, runs = time.monotonic(), ticket, 0
        # The last run's delivered events and failure, settled with the next claim: one write
        # transaction per run rather than two.
        delivered: list[OutboxEvent] = []
        failure: tuple[OutboxEvent, Outcome] | None = None

        def spent() -> bool:
            return budget is not None and time.monotonic() - started > budget

        try:
            while not stopping() and not spent():
                if prefer is None:
                    run = self.outbox.claim_next(
                        instance_limit=self.instance_limit, batch=self.batch
                    )
                else:
                    settled, run = self.outbox.settle_and_claim_next(
                        delivered, prefer=prefer, instance_limit=self.instance_limit,
                        batch=self.batch,
                    )  # fmt: skip
                    self._report(_outcomes(delivered, settled, failure))
                    delivered, failure = [], None
                if not run:
                    return Drained(runs)
                runs += 1
                # Between two events of a run: stop when told, or once the budget is spent.
                stop = lambda: stopping() or spent()  # noqa: E731
                delivered, failure = _send_run(self.outbox, self.send, run, stop)
                prefer = run[0].ordering_key
        finally:
            if delivered or failure:
                self._report(
                    _outcomes(delivered, self.outbox.settle_delivered(*delivered), failure)
                )
        return Drained(runs, carry_on=prefer if spent() else None)

    def _report(self, outcomes: Sequence[tuple[OutboxEvent, Outcome]]) -> None:
        """Tell the hooks how each attempt ended. They come after the next claim, so they must
        not stop the drain: its claimed run would wait out its lease."""
        for event, outcome in outcomes:
            try:
                if self.on_attempt is not None:
                    self.on_attempt(event, outcome)
                self._schedule_retry(event, outcome)
            except Exception:
                log.exception("outbox event %s: reporting its attempt failed", event.id)

    def _schedule_retry(self, event: OutboxEvent, outcome: Outcome) -> None:
        if self.retry_later is None or outcome.status != PENDING or outcome.error is None:
            return
        wait = self.outbox.next_attempt_in(event)
        if wait is not None:
            self.retry_later(event.ordering_key, wait)
