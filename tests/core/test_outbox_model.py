"""The outbox as a state machine: random interleavings of three workers never lose or double a note.

Hypothesis drives claims, renewals, deliveries, settles, crashes and the passing of time against a
reference model of each event, and a fake ticket records the notes that landed. The workers run
:mod:`ticketing_core.sync.delivery` itself, not a copy of it: a worker delivers a claimed event
with :func:`~ticketing_core.sync.delivery.deliver_run` through a
:class:`~ticketing_core.sync.delivery.Delivery`, which looks for a note in doubt, confirms the
claim, sends and settles as it does in production. Its provider is a fake service
(:class:`FakeService`): it answers the look from the fake ticket and lands the note, or fails, as
the rule being played says. A note whose answer is still on its way is settled later with the
outbox's settle calls, as ``deliver_run`` makes them.

The module has one order, look then confirm, and the workers follow it (the model no longer plays
a confirm-then-look order of its own). A worker that stalls or dies after confirming its claim,
before sending, sends nothing; if it goes on, it delivers the claim again from the start, looking
and confirming again: it never sends on an old confirmation, the assumption the module docstring
of :mod:`ticketing_core.sync.delivery` states.

A fake clock stands in for the database's (``Database.now``); the workers' own clocks move with
it (``confirm`` and ``deliver_run``'s renewal measure a claim's age on the process's monotonic
clock, so the event a worker delivers has its ``claimed_monotonic`` set back by the fake time that
passed since its claim).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import cast

import attrs
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from ticketing_core import errors
from ticketing_core.hookspecs import Provider
from ticketing_core.policies import AddWorkNote
from ticketing_core.sync.database import Database
from ticketing_core.sync.delivery import Delivery, Outcome, deliver_run
from ticketing_core.sync.outbox import (
    DEAD,
    DELIVERED,
    PENDING,
    LeaseLost,
    NewEvent,
    Outbox,
    OutboxEvent,
    StillInDoubt,
    events,
    note_tally,
    pauses,
)

LEASE, DOUBT = 10.0, 20.0  # seconds of the fake clock
DEADLINE = 5.0  # a delivery's, under 3/4 of the lease as Delivery demands (the fake never waits)
BACKOFF_INITIAL, BACKOFF_MAX = 1.0, 8.0
MAX_ATTEMPTS = 2  # low, so that events die and are retried
TICKETS = ("t1", "t2", "t3")
WORKERS = (0, 1, 2)
MAX_EVENTS = 12
EPSILON = timedelta(milliseconds=1)  # slack on the jittered backoff's bounds
START = datetime(2030, 1, 1, tzinfo=UTC)

MODEL_SETTINGS = settings(
    max_examples=50,
    stateful_step_count=50,
    deadline=None,
    database=None,  # no .hypothesis directory in the work tree
    suppress_health_check=[HealthCheck.too_slow],
)


@dataclass
class Clock:
    now: datetime = START


@dataclass
class Note:
    """The model of one stored event: what the outbox's row should say."""

    id: int
    ticket: str
    text: str
    due_lo: datetime  # next_attempt_at is jittered: it lies in [due_lo, due_hi]
    due_hi: datetime
    status: str = PENDING
    attempts: int = 0
    outage_attempts: int = 0  # of those, failures during an outage: never counted to dead
    token: str | None = None  # the fencing token of the current claim
    lease_until: datetime | None = None
    ambiguous: bool = False
    doubt_until: datetime | None = None  # the service may still be working on an attempt


@dataclass
class Claim:
    """What a worker remembers of a claim; ``sent`` once its note went out unanswered."""

    event: OutboxEvent
    claimed_at: datetime  # on the fake clock
    sent: bool = False


@dataclass
class Worker:
    claims: list[Claim] = field(default_factory=list)


class _Stalled(BaseException):
    """The worker stalls or dies after confirming its claim, before its note leaves: nothing is
    sent and nothing settled (``deliver_run`` settles only what an ``Exception`` ends)."""


class _AnswerOnItsWay(BaseException):
    """The note was sent and landed; its answer is still on its way: settled later."""


FAILURES = ("refused", "timeout-before-landing", "landed-answer-lost", "500", "landed-then-500")


class FakeService:
    """The provider ``Delivery`` talks to: it looks at the model's fake ticket and lands notes on
    it, or fails, as the rule being played says (:attr:`play`). It records the calls made.

    The plays: ``delivered`` (landed and answered), ``refused`` (429, nothing landed),
    ``timeout-before-landing``, ``landed-answer-lost`` (a timeout), ``500``, ``landed-then-500``,
    ``stalls`` (:class:`_Stalled`, nothing landed) and ``sent`` (landed, :class:`_AnswerOnItsWay`).
    """

    def __init__(self, ticket: dict[str, list[str]]) -> None:
        self.ticket = ticket
        self.play = "delivered"
        self.calls: list[tuple[str, str, str, str, int | None]] = []

    def has_work_note(
        self, ticket_id: str, text: str, *, idempotency_key: str, identical_before: int
    ) -> bool:
        self.calls.append(("look", ticket_id, text, idempotency_key, identical_before))
        return self.ticket[ticket_id].count(text) > identical_before

    def add_work_note(
        self, ticket_id: str, text: str, *, idempotency_key: str | None = None
    ) -> None:
        self.calls.append(("add", ticket_id, text, idempotency_key or "", None))
        play = self.play
        if play == "stalls":
            raise _Stalled
        if play == "refused":
            raise errors.RateLimited("ServiceNow rate limit: HTTP 429", retry_after=None)
        if play == "timeout-before-landing":
            raise errors.ProviderTimeout("ServiceNow did not answer in 30 s")
        if play == "500":
            raise errors.ProviderUnavailable("ServiceNow is unavailable: HTTP 500", status_code=500)
        self.ticket[ticket_id].append(text)
        if play == "landed-answer-lost":
            raise errors.ProviderTimeout("ServiceNow did not answer in 30 s")
        if play == "landed-then-500":
            raise errors.ProviderUnavailable("ServiceNow is unavailable: HTTP 500", status_code=500)
        if play == "sent":
            raise _AnswerOnItsWay
        assert play == "delivered", play


class OutboxMachine(RuleBasedStateMachine):
    def __init__(self, database: Database) -> None:
        super().__init__()
        with database.begin() as conn:  # a fresh outbox per example
            conn.execute(events.delete())
            conn.execute(note_tally.delete())
            conn.execute(pauses.delete())
        self.clock = Clock()
        database.now = lambda conn: self.clock.now  # type: ignore[method-assign]
        self.database = database
        self.outbox = Outbox(
            database,
            max_attempts=MAX_ATTEMPTS,
            lease_seconds=LEASE,
            doubt_seconds=DOUBT,
            backoff_initial=BACKOFF_INITIAL,
            backoff_max=BACKOFF_MAX,
        )
        self.notes: dict[int, Note] = {}
        self.enqueued: dict[str, list[str]] = {t: [] for t in TICKETS}  # texts, in enqueue order
        self.ticket: dict[str, list[str]] = {t: [] for t in TICKETS}  # the notes that landed
        self.workers = {w: Worker() for w in WORKERS}
        # The integration's outage pause: claims wait until then; its length, which probes double
        # and a delivery resets; when a delivery last succeeded.
        self.pause_until: datetime | None = None
        self.pause_seconds = 0.0
        self.delivered_at: datetime | None = None
        self.in_step = False  # set while a step runs: teardown must not mask its failure
        self.service = FakeService(self.ticket)
        self.delivery = Delivery(
            self.outbox,
            lambda integration_id, conn: cast(Provider, self.service),
            deadline=DEADLINE,
        )

    # -- helpers ------------------------------------------------------------------------------

    def _begin(self) -> None:
        self.in_step = True

    @property
    def now(self) -> datetime:
        return self.clock.now

    def _note(self, event: OutboxEvent) -> Note:
        return self.notes[event.id]

    def _valid(self, event: OutboxEvent) -> bool:
        """Whether this claim's token is still the event's (the model's view of the fence)."""
        note = self._note(event)
        return note.status == PENDING and note.token == event.claim_token

    def _text(self, event: OutboxEvent) -> str:
        assert isinstance(event.action, AddWorkNote)
        return event.action.text

    def _present(self, event: OutboxEvent) -> bool:
        """The keyed check of the ticket: did this note land already?"""
        return self.ticket[event.ticket_id].count(self._text(event)) > event.identical_before

    def _claims(self, *, sent: bool) -> list[tuple[Worker, Claim]]:
        return [
            (worker, claim)
            for worker in self.workers.values()
            for claim in worker.claims
            if claim.sent == sent
        ]

    def _eligible(self, note: Note) -> bool:
        """Whether the outbox may hand this event out now (its due time aside)."""
        if note.status != PENDING:
            return False
        earlier = [n for n in self.notes.values() if n.ticket == note.ticket and n.id < note.id]
        if any(n.status != DELIVERED for n in earlier):
            return False
        return note.lease_until is None or note.lease_until <= self.now - timedelta(seconds=DOUBT)

    def _delivered(self, worker: Worker, claim: Claim, status: str | None) -> None:
        """The worker settled its claim delivered: ``status`` is what that did (DELIVERED, or
        None when the claim was lost)."""
        event = claim.event
        valid = self._valid(event)
        assert status in (DELIVERED, None), f"event {event.id}: settled {status}"
        assert (status == DELIVERED) is valid, "settling delivered must follow the fence"
        worker.claims.remove(claim)
        if valid:
            note = self._note(event)
            note.status, note.token, note.lease_until = DELIVERED, None, None
            self.delivered_at, self.pause_seconds = self.now, 0.0
            self.pause_until = self.pause_until or self.now

    def _failed(
        self,
        worker: Worker,
        claim: Claim,
        error: BaseException,
        status: str | None,
        *,
        landed: bool,
    ) -> None:
        """The worker settled its claim failed with ``error``: ``status`` is what that did (None
        when the claim was lost)."""
        assert isinstance(error, errors.ProviderError), f"failed with {error!r}"
        event = claim.event
        valid = self._valid(event)
        worker.claims.remove(claim)
        if not valid:
            assert status is None, "a lost claim must record nothing"
            return
        note = self._note(event)
        note.attempts += 1
        up = self.delivered_at is not None and self.delivered_at > claim.claimed_at
        if isinstance(error, errors.RateLimited) or (error.outage and not up):
            note.outage_attempts += 1
            expected = PENDING
            lo = hi = self._pause_after(claim, error)
        else:
            counted = note.attempts - note.outage_attempts
            expected = PENDING if counted < MAX_ATTEMPTS else DEAD
            exponential = min(BACKOFF_MAX, BACKOFF_INITIAL * 2 ** (counted - 1))
            asked = min(getattr(error, "retry_after", None) or 0.0, BACKOFF_MAX)
            lo = self.now + timedelta(seconds=max(exponential * 0.8, asked))
            hi = self.now + timedelta(seconds=max(exponential * 1.2, asked))
        assert status == expected, f"event {event.id}: {status}, not {expected}"
        note.status, note.token, note.lease_until = expected, None, None
        if landed:  # looked for when due; not sent again before the window is over
            note.ambiguous, note.doubt_until = True, self.now + timedelta(seconds=DOUBT)
        note.due_lo, note.due_hi = lo - EPSILON, hi + EPSILON

    def _pause_after(self, claim: Claim, error: errors.ProviderError) -> datetime:
        """The integration's pause after an outage failure of ``claim``; when the event is due.

        A call claimed before the pause ended changes nothing; a probe claimed within
        BACKOFF_MAX after it ended, with no delivery since, doubles it; anything else starts a
        new outage. A Retry-After is the pause.
        """
        asked = getattr(error, "retry_after", None)
        last = self.pause_until
        if last is not None and claim.claimed_at < last:
            until, seconds = last, self.pause_seconds
        else:
            seconds = BACKOFF_INITIAL
            window = timedelta(seconds=BACKOFF_MAX)
            if last is not None and self.pause_seconds and claim.claimed_at <= last + window:
                seconds = max(seconds, 2 * self.pause_seconds)
            seconds = min(BACKOFF_MAX, seconds)
            until = self.now + timedelta(seconds=seconds if asked is None else 0)
        if asked is not None:
            until = max(until, self.now + timedelta(seconds=min(asked, 3600)))
        self.pause_until = until if last is None else max(last, until)
        self.pause_seconds = seconds
        return until

    # -- rules --------------------------------------------------------------------------------

    @initialize(tickets=st.lists(st.sampled_from(TICKETS), min_size=2, max_size=6))
    def start(self, tickets: list[str]) -> None:
        """The host has stored a first batch of notes."""
        self._begin()
        self._enqueue(tickets)

    @precondition(lambda self: len(self.notes) < MAX_EVENTS)
    @rule(tickets=st.lists(st.sampled_from(TICKETS), min_size=1, max_size=3))
    def enqueue(self, tickets: list[str]) -> None:
        """The host stores notes (one transaction) for some of the integration's tickets."""
        self._begin()
        self._enqueue(tickets)

    def _enqueue(self, tickets: list[str]) -> None:
        texts = [f"n{len(self.notes) + i}" for i in range(len(tickets))]
        stored = self.outbox.enqueue(
            [NewEvent(1, t, AddWorkNote(text)) for t, text in zip(tickets, texts, strict=True)]
        )
        assert stored == len(tickets)
        with self.database.read() as conn:
            rows = conn.execute(
                sa.select(events.c.id, events.c.action).where(events.c.id.not_in(list(self.notes)))
            ).all()
        ids = {action["text"]: event_id for event_id, action in rows}
        assert sorted(ids) == sorted(texts)
        assert [ids[text] for text in texts] == sorted(ids.values()), "ids follow enqueue order"
        for t, text in zip(tickets, texts, strict=True):
            self.notes[ids[text]] = Note(ids[text], t, text, due_lo=self.now, due_hi=self.now)
            self.enqueued[t].append(text)

    @rule(worker=st.sampled_from(WORKERS), limit=st.integers(1, 3))
    def claim(self, worker: int, limit: int) -> None:
        """A worker leases due events: only the eligible ones, and every one surely due."""
        self._begin()
        paused = self.pause_until is not None and self.now < self.pause_until
        eligible = [n for n in self.notes.values() if self._eligible(n) and not paused]
        possible = {n.id for n in eligible if n.due_lo <= self.now}
        surely = {n.id for n in eligible if n.due_hi <= self.now}
        claimed = self.outbox.claim(limit)
        ids = [event.id for event in claimed]
        assert len(ids) <= limit
        assert set(ids) <= possible, f"claimed {ids}, only {sorted(possible)} may be"
        assert len({event.ticket_id for event in claimed}) == len(ids), "one per ticket"
        if len(possible) <= limit:
            assert surely <= set(ids), f"due events {sorted(surely - set(ids))} were not claimed"
        for event in claimed:
            note = self._note(event)
            assert event.attempts == note.attempts, f"event {event.id}: attempts differ"
            note.ambiguous = note.ambiguous or note.lease_until is not None
            if note.text in self.ticket[note.ticket]:
                assert event.in_doubt, f"event {event.id} may have landed but is not in doubt"
            assert event.in_doubt == note.ambiguous, f"event {event.id}: in doubt differs"
            note.token, note.lease_until = event.claim_token, self.now + timedelta(seconds=LEASE)
            self.workers[worker].claims.append(Claim(event, claimed_at=self.now))

    def _deliver(self, pick: int, play: str) -> None:
        """A worker delivers one of its claims: ``deliver_run`` through the real ``Delivery``
        (look if in doubt, confirm, send, settle), the fake service playing ``play``."""
        candidates = self._claims(sent=False)
        worker, claim = candidates[pick % len(candidates)]
        event = claim.event
        note = self._note(event)
        valid = self._valid(event)
        text = self._text(event)
        # The worker's own clock has moved with the database's since it loaded the claim:
        # confirm() skips the write for a claim younger than a third of a lease, and deliver_run
        # renews a run older than a quarter of one (by the process's clock).
        age = self.now - claim.claimed_at
        aged = attrs.evolve(event, claimed_monotonic=time.monotonic() - age.total_seconds())
        # The look follows the claim: it proves something only if the window was over by then.
        window_open = note.doubt_until is not None and claim.claimed_at < note.doubt_until
        found = event.in_doubt and self._present(event)
        self.service.play, self.service.calls = play, []
        outcome: Outcome | None = None
        try:
            [(settled, outcome)] = deliver_run(self.outbox, self.delivery, [aged])
            assert settled.id == event.id
        except _Stalled:
            assert play == "stalls"
        except _AnswerOnItsWay:
            assert play == "sent"
        calls = self.service.calls
        if age > timedelta(seconds=LEASE / 4) and valid:  # deliver_run renewed it first
            note.lease_until = self.now + timedelta(seconds=LEASE)

        key = event.idempotency_key
        looks = [call for call in calls if call[0] == "look"]
        adds = [call for call in calls if call[0] == "add"]
        if event.in_doubt:  # a note in doubt is looked for first, and only such a note
            assert looks == [("look", event.ticket_id, text, key, event.identical_before)], calls
            assert calls[0][0] == "look", f"sent before looking: {calls}"
        else:
            assert not looks, f"looked for event {event.id}, which is not in doubt"
        assert adds in ([], [("add", event.ticket_id, text, key, None)]), calls
        if found:  # settled delivered, nothing sent
            assert not adds, f"event {event.id} was found on its ticket, and sent all the same"
            assert outcome is not None
            assert outcome.error is None, outcome
            self._delivered(worker, claim, outcome.status)
            return
        if not adds:  # the confirm refused it
            assert outcome is not None
            assert outcome.error is not None, outcome
            error = outcome.error
            if isinstance(error, LeaseLost):
                assert not valid, "confirm() refused a claim that is still this worker's"
                assert outcome.status is None, "a lost claim must record nothing"
                worker.claims.remove(claim)
            elif isinstance(error, StillInDoubt):
                assert valid, "confirm() spoke of doubt for a claim no longer this worker's"
                assert event.in_doubt, "confirm() refused a claim free to send"
                assert window_open, "confirm() refused a claim whose window is over"
                assert outcome.status == PENDING
                worker.claims.remove(claim)
                note.token, note.lease_until = None, None
                note.due_lo = note.due_hi = note.doubt_until  # type: ignore[assignment]
            else:
                raise AssertionError(f"event {event.id}: nothing sent, and {error!r}")
            return
        # The confirm let the note go.
        assert valid, "a worker whose claim is lost sent its note"
        assert not (event.in_doubt and window_open), "sent within the doubt window"
        if event.in_doubt or age >= timedelta(seconds=LEASE / 3):
            note.lease_until = self.now + timedelta(seconds=LEASE)
        if event.in_doubt:
            note.ambiguous = False
        if play == "stalls":  # when it goes on, it delivers the claim again from the start
            assert outcome is None
            return
        if play == "sent":
            assert outcome is None
            claim.sent = True
            return
        assert outcome is not None
        if play == "delivered":
            assert outcome.error is None, outcome
            self._delivered(worker, claim, outcome.status)
        else:
            assert outcome.error is not None, outcome
            self._failed(worker, claim, outcome.error, outcome.status, landed=play != "refused")

    @precondition(lambda self: self._claims(sent=False))
    @rule(pick=st.integers(0, 20))
    def hold(self, pick: int) -> None:
        """A worker looks and confirms its claim, then stalls or dies before sending."""
        self._begin()
        self._deliver(pick, "stalls")

    @precondition(lambda self: self._claims(sent=False))
    @rule(pick=st.integers(0, 20))
    def deliver(self, pick: int) -> None:
        """A worker sends a note, the service adds it, the worker settles it delivered."""
        self._begin()
        self._deliver(pick, "delivered")

    @precondition(lambda self: self._claims(sent=False))
    @rule(pick=st.integers(0, 20), how=st.sampled_from(FAILURES))
    def fail(self, pick: int, how: str) -> None:
        """A worker sends a note and fails: refused (nothing landed), timed out (it may have:
        both outages), or answered 500 (it may have: counted towards dead)."""
        self._begin()
        self._deliver(pick, how)

    @precondition(lambda self: self._claims(sent=False))
    @rule(pick=st.integers(0, 20))
    def send(self, pick: int) -> None:
        """A worker sends a note, the service adds it; the answer is still on its way."""
        self._begin()
        self._deliver(pick, "sent")

    @precondition(lambda self: self._claims(sent=True))
    @rule(pick=st.integers(0, 20), answered=st.booleans())
    def settle_sent(self, pick: int, answered: bool) -> None:
        """The answer to a sent note arrives (delivered) or is lost (an ambiguous timeout); the
        worker settles it as ``deliver_run`` does."""
        self._begin()
        candidates = self._claims(sent=True)
        worker, claim = candidates[pick % len(candidates)]
        event = claim.event
        if answered:
            settled = self.outbox.settle_delivered(event)
            self._delivered(worker, claim, DELIVERED if event.id in settled else None)
        else:
            timeout = errors.ProviderTimeout("ServiceNow did not answer in 30 s")
            status = self.outbox.settle_failed(event, timeout)
            self._failed(worker, claim, timeout, status, landed=True)

    @precondition(lambda self: self._claims(sent=False) or self._claims(sent=True))
    @rule(worker=st.sampled_from(WORKERS))
    def renew(self, worker: int) -> None:
        """A worker extends the leases it still holds, and only those."""
        self._begin()
        claims = self.workers[worker].claims
        valid = [claim for claim in claims if self._valid(claim.event)]
        renewed = self.outbox.renew([claim.event for claim in claims])
        assert renewed == len(valid), f"renewed {renewed} leases, not {len(valid)}"
        for claim in valid:
            self._note(claim.event).lease_until = self.now + timedelta(seconds=LEASE)

    @precondition(lambda self: self._claims(sent=False) or self._claims(sent=True))
    @rule(worker=st.sampled_from(WORKERS))
    def crash(self, worker: int) -> None:
        """A worker dies: it forgets its claims, sent or not; their leases are left to expire."""
        self._begin()
        self.workers[worker].claims.clear()

    @rule(seconds=st.sampled_from([1.0, LEASE / 2, LEASE, LEASE + 1]))
    def time_passes(self, seconds: float) -> None:
        """The clock moves a little: leases may expire, backoffs pass."""
        self._begin()
        self.clock.now += timedelta(seconds=seconds)

    @rule(beyond=st.sampled_from([0.0, 1.0, BACKOFF_MAX]))
    def leases_expire(self, beyond: float) -> None:
        """The clock moves past the lease and the doubt window: unsettled claims may be taken."""
        self._begin()
        self.clock.now += timedelta(seconds=LEASE + DOUBT + beyond)

    @precondition(lambda self: any(n.status == DEAD for n in self.notes.values()))
    @rule()
    def retry_dead(self) -> None:
        """An operator puts dead events back in line."""
        self._begin()
        dead = [n for n in self.notes.values() if n.status == DEAD]
        assert self.outbox.retry() == len(dead)
        for note in dead:
            note.status, note.attempts, note.outage_attempts = PENDING, 0, 0
            note.lease_until = None
            note.due_lo = note.due_hi = self.now  # looked for at once if in doubt

    # -- invariants ---------------------------------------------------------------------------

    @invariant()
    def nothing_lost_or_doubled(self) -> None:
        with self.database.read() as conn:
            rows = conn.execute(
                sa.select(
                    events.c.id,
                    events.c.ticket_id,
                    events.c.status,
                    events.c.attempts,
                    events.c.outage_attempts,
                    events.c.claim_token,
                    events.c.lease_until,
                    events.c.next_attempt_at,
                )
            ).all()
        assert sorted(row.id for row in rows) == sorted(self.notes), "an event was lost"
        for row in rows:  # the row is what the model says
            note = self.notes[row.id]
            assert row.status == note.status, f"event {row.id}: {row.status}, not {note.status}"
            assert row.claim_token == note.token, f"event {row.id}: claim token differs"
            if note.status == PENDING:
                assert row.attempts == note.attempts, f"event {row.id}: attempts differ"
                assert row.outage_attempts == note.outage_attempts, f"event {row.id}: outages"
                assert row.lease_until == note.lease_until, f"event {row.id}: lease differs"
                assert note.due_lo <= row.next_attempt_at <= note.due_hi, (
                    f"event {row.id}: due at {row.next_attempt_at}"
                )
        claimed = Counter(row.ticket_id for row in rows if row.claim_token is not None)
        assert all(n <= 1 for n in claimed.values()), f"two claims on one ticket: {claimed}"
        held = Counter(
            claim.event.ticket_id
            for worker in self.workers.values()
            for claim in worker.claims
            if self._valid(claim.event)
        )
        assert all(n <= 1 for n in held.values()), f"two live claims on one ticket: {held}"

        for t in TICKETS:
            landed = self.ticket[t]
            assert len(landed) == len(set(landed)), f"a note landed twice on {t}: {landed}"
            assert landed == self.enqueued[t][: len(landed)], (
                f"{t}: landed {landed}, enqueued {self.enqueued[t]}"
            )
        delivered = [n for n in self.notes.values() if n.status == DELIVERED]
        for note in delivered:
            assert self.ticket[note.ticket].count(note.text) == 1, f"{note.text} delivered unseen"
        self.in_step = False

    def teardown(self) -> None:
        """Drive everything to completion with one fresh worker (``deliver_run`` through the
        ``Delivery``, every note answered), then check the end state."""
        if self.in_step:
            return  # a step failed: report that, not what follows from it
        for _ in range(4 * MAX_EVENTS + 10):
            counts = self.outbox.counts()
            if counts[PENDING] == counts[DEAD] == 0:
                break
            self.clock.now += timedelta(seconds=LEASE + DOUBT + BACKOFF_MAX + 1)
            self.outbox.retry()
            self.service.play = "delivered"
            for event in self.outbox.claim(len(TICKETS)):
                if not (event.in_doubt and self._present(event)):  # not found: it is sent
                    assert self._text(event) not in self.ticket[event.ticket_id], (
                        f"event {event.id} landed but is not in doubt"
                    )
                [(_, outcome)] = deliver_run(self.outbox, self.delivery, [event])
                assert outcome.status == DELIVERED, f"event {event.id}: {outcome}"
        assert self.outbox.counts() == {PENDING: 0, DELIVERED: len(self.notes), DEAD: 0}
        assert self.ticket == self.enqueued, "every note lands exactly once, in order"


def test_outbox_never_loses_or_doubles_a_note(database: Database) -> None:
    run_state_machine_as_test(lambda: OutboxMachine(database), settings=MODEL_SETTINGS)
