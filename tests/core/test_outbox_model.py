"""The outbox as a state machine: random interleavings of three workers never lose or double a note.

Hypothesis drives claims, renewals, holds, sends, settles, crashes and the passing of time against a
reference model of each event, and a fake ticket records the notes that landed. A fake clock stands
in for the database's (``Database.now``); the workers' own clocks move with it (``hold`` measures a
claim's age on the process's monotonic clock). The workers follow the deliverer's protocol
(``SyncService.deliver``): a note in doubt is looked for first, the claim is confirmed just before
sending, and a worker never stalls between confirming its claim and sending (a rule does both in
one step): the assumption the module docstring of :mod:`ticketing_core.sync.outbox` states.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

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
from ticketing_core.policies import AddWorkNote
from ticketing_core.sync.database import Database
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

    def _settle_delivered(self, worker: Worker, claim: Claim) -> None:
        event = claim.event
        valid = self._valid(event)
        assert bool(self.outbox.settle_delivered(event)) is valid, (
            "delivered() must follow the fence"
        )
        worker.claims.remove(claim)
        if valid:
            note = self._note(event)
            note.status, note.token, note.lease_until = DELIVERED, None, None
            self.delivered_at, self.pause_seconds = self.now, 0.0
            self.pause_until = self.pause_until or self.now

    def _settle_failed(
        self, worker: Worker, claim: Claim, error: errors.ProviderError, *, landed: bool
    ) -> None:
        event = claim.event
        valid = self._valid(event)
        status = self.outbox.settle_failed(event, error)
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

    def _act(self, pick: int, look_first: bool) -> tuple[Worker, Claim] | None:
        """A worker takes up one of its claims: looks (if in doubt) and holds, in either order.

        Returns the claim when the worker is to send now; None when it is done with it (the note
        was found on the ticket, or the claim is no longer its own). ``look_first`` is the
        deliverer's order (look, then hold).
        """
        candidates = self._claims(sent=False)
        worker, claim = candidates[pick % len(candidates)]
        event = claim.event
        note = self._note(event)
        if look_first and event.in_doubt and self._present(event):
            self._settle_delivered(worker, claim)
            return None
        valid = self._valid(event)
        # The worker's own clock has moved with the database's since it loaded the claim: hold()
        # skips the write for a claim younger than a third of a lease (by the process's clock).
        age = self.now - claim.claimed_at
        aged = attrs.evolve(event, claimed_monotonic=time.monotonic() - age.total_seconds())
        # The look follows the claim: it proves something only if the window was over by then.
        window_open = note.doubt_until is not None and claim.claimed_at < note.doubt_until
        try:
            self.outbox.confirm(aged)
        except LeaseLost:
            assert not valid, "hold() refused a claim that is still this worker's"
            worker.claims.remove(claim)  # it must not send
            return None
        except StillInDoubt as still:
            assert valid, "hold() spoke of doubt for a claim that is no longer this worker's"
            assert event.in_doubt, "hold() refused a claim free to send"
            assert window_open, "hold() refused a claim whose window is over"
            status = self.outbox.settle_failed(event, still)
            assert status == PENDING
            worker.claims.remove(claim)
            note.token, note.lease_until = None, None
            note.due_lo = note.due_hi = note.doubt_until  # type: ignore[assignment]
            return None
        assert not (valid and event.in_doubt and window_open), "sent within the doubt window"
        assert valid, "hold() confirmed a claim that is no longer this worker's"
        if event.in_doubt or age >= timedelta(seconds=LEASE / 3):
            note.lease_until = self.now + timedelta(seconds=LEASE)
        if event.in_doubt:
            note.ambiguous = False
        if not look_first and event.in_doubt and self._present(event):
            self._settle_delivered(worker, claim)
            return None
        return worker, claim

    def _land(self, claim: Claim) -> None:
        self.ticket[claim.event.ticket_id].append(self._text(claim.event))

    @precondition(lambda self: self._claims(sent=False))
    @rule(pick=st.integers(0, 20), look_first=st.booleans())
    def hold(self, pick: int, look_first: bool) -> None:
        """A worker looks and confirms its claim, then stalls or dies before sending."""
        self._begin()
        self._act(pick, look_first)  # when it goes on, it confirms its claim again

    @precondition(lambda self: self._claims(sent=False))
    @rule(pick=st.integers(0, 20), look_first=st.booleans())
    def deliver(self, pick: int, look_first: bool) -> None:
        """A worker sends a note, the service adds it, the worker settles it delivered."""
        self._begin()
        if acting := self._act(pick, look_first):
            worker, claim = acting
            self._land(claim)
            self._settle_delivered(worker, claim)

    @precondition(lambda self: self._claims(sent=False))
    @rule(
        pick=st.integers(0, 20),
        look_first=st.booleans(),
        how=st.sampled_from(
            ["refused", "timeout-before-landing", "landed-answer-lost", "500", "landed-then-500"]
        ),
    )
    def fail(self, pick: int, look_first: bool, how: str) -> None:
        """A worker sends a note and fails: refused (nothing landed), timed out (it may have:
        both outages), or answered 500 (it may have: counted towards dead)."""
        self._begin()
        if acting := self._act(pick, look_first):
            worker, claim = acting
            if how == "refused":
                refusal = errors.RateLimited("ServiceNow rate limit: HTTP 429", retry_after=None)
                self._settle_failed(worker, claim, refusal, landed=False)
                return
            if how in ("landed-answer-lost", "landed-then-500"):
                self._land(claim)
            failure = (
                errors.ProviderUnavailable("ServiceNow is unavailable: HTTP 500", status_code=500)
                if how.endswith("500")
                else errors.ProviderTimeout("ServiceNow did not answer in 30 s")
            )
            self._settle_failed(worker, claim, failure, landed=True)

    @precondition(lambda self: self._claims(sent=False))
    @rule(pick=st.integers(0, 20), look_first=st.booleans())
    def send(self, pick: int, look_first: bool) -> None:
        """A worker sends a note, the service adds it; the answer is still on its way."""
        self._begin()
        if acting := self._act(pick, look_first):
            _, claim = acting
            self._land(claim)
            claim.sent = True

    @precondition(lambda self: self._claims(sent=True))
    @rule(pick=st.integers(0, 20), answered=st.booleans())
    def settle_sent(self, pick: int, answered: bool) -> None:
        """The answer to a sent note arrives (delivered) or is lost (an ambiguous timeout)."""
        self._begin()
        candidates = self._claims(sent=True)
        worker, claim = candidates[pick % len(candidates)]
        if answered:
            self._settle_delivered(worker, claim)
        else:
            timeout = errors.ProviderTimeout("ServiceNow did not answer in 30 s")
            self._settle_failed(worker, claim, timeout, landed=True)

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
        """Drive everything to completion with one fresh worker, then check the end state."""
        if self.in_step:
            return  # a step failed: report that, not what follows from it
        for _ in range(4 * MAX_EVENTS + 10):
            counts = self.outbox.counts()
            if counts[PENDING] == counts[DEAD] == 0:
                break
            self.clock.now += timedelta(seconds=LEASE + DOUBT + BACKOFF_MAX + 1)
            self.outbox.retry()
            for event in self.outbox.claim(len(TICKETS)):
                if event.in_doubt and self._present(event):
                    assert self.outbox.settle_delivered(event)
                    continue
                self.outbox.confirm(event)
                assert self._text(event) not in self.ticket[event.ticket_id], (
                    f"event {event.id} landed but is not in doubt"
                )
                self.ticket[event.ticket_id].append(self._text(event))
                assert self.outbox.settle_delivered(event)
        assert self.outbox.counts() == {PENDING: 0, DELIVERED: len(self.notes), DEAD: 0}
        assert self.ticket == self.enqueued, "every note lands exactly once, in order"


def test_outbox_never_loses_or_doubles_a_note(database: Database) -> None:
    run_state_machine_as_test(lambda: OutboxMachine(database), settings=MODEL_SETTINGS)
