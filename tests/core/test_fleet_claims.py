"""The outbox's fleet side: claims under a per-instance limit shared by every process, the 429
pause, wake-up bookkeeping and the operator's counts, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from servicenow_emulator import Emulator

from ticketing_core import errors
from ticketing_core.models import TicketChanges
from ticketing_core.policies import AddWorkNote, ChangeTicket, WorkNotesOnly
from ticketing_core.sync.database import Database
from ticketing_core.sync.delivery import deliver_run
from ticketing_core.sync.outbox import (
    DELIVERED,
    PENDING,
    LeaseLost,
    NewEvent,
    Outbox,
    OutboxEvent,
    pauses,
)
from ticketing_core.sync.service import SyncService
from ticketing_servicenow import ServiceNowProvider


def notes(integration_id: int, tickets: int, per_ticket: int = 1) -> list[NewEvent]:
    return [
        NewEvent(integration_id, f"t{t}", AddWorkNote(f"note {n}"))
        for t in range(tickets)
        for n in range(per_ticket)
    ]


def test_claim_next_prefers_the_named_ticket_then_its_integration_then_any(
    database: Database,
) -> None:
    outbox = Outbox(database)
    outbox.enqueue([NewEvent(2, "other", AddWorkNote("x"))])
    outbox.enqueue(notes(1, 3))

    first = outbox.claim_next(prefer="1:t2", instance_limit=8)
    second = outbox.claim_next(prefer="1:t2", instance_limit=8)  # t2 has one in flight
    third = outbox.claim_next(prefer="1:nothing", instance_limit=8)
    fourth = outbox.claim_next(prefer="1:t2", instance_limit=8)

    picked = [
        [(e.integration_id, e.ticket_id) for e in run] for run in (first, second, third, fourth)
    ]
    assert picked == [[(1, "t2")], [(1, "t0")], [(1, "t1")], [(2, "other")]]
    assert outbox.claim_next(instance_limit=8) == []


def test_a_run_is_the_tickets_next_due_events_in_order(database: Database) -> None:
    outbox = Outbox(database)
    outbox.enqueue(notes(1, 2, per_ticket=5))

    run = outbox.claim_next(prefer="1:t1", instance_limit=8, batch=3)
    rest = outbox.claim_next(prefer="1:t1", instance_limit=8, batch=10)

    assert [(e.ticket_id, texts(e)) for e in run] == [
        ("t1", "note 0"), ("t1", "note 1"), ("t1", "note 2"),
    ]  # fmt: skip
    assert [(e.ticket_id, texts(e)) for e in rest] == [("t0", f"note {n}") for n in range(5)]
    assert [s.in_flight for s in outbox.stats()] == [2]  # two tickets, eight claims


def test_a_change_of_fields_ends_its_run(database: Database) -> None:
    """Settled as soon as it is sent, so that inbound sync reading the ticket back at once
    knows the status it finds as the one this integration set (not someone else's)."""
    outbox = Outbox(database)
    change = ChangeTicket(TicketChanges(status="Resolved"))
    outbox.enqueue(
        [NewEvent(1, "t0", AddWorkNote("note 0")), NewEvent(1, "t0", change),
         NewEvent(1, "t0", AddWorkNote("note 1"))]
    )  # fmt: skip

    run = outbox.claim_next(instance_limit=8, batch=10)

    assert [e.action for e in run] == [AddWorkNote("note 0"), change]


def test_a_run_stops_before_an_event_that_is_not_due(database: Database) -> None:
    outbox = Outbox(database, backoff_initial=60)
    outbox.enqueue(notes(1, 1, per_ticket=3))
    [head] = outbox.claim_next(instance_limit=8)
    outbox.settle_failed(
        head, errors.ProviderUnavailable("down", sent=False)
    )  # due again in a minute

    assert outbox.claim_next(instance_limit=8, batch=3) == []


def test_a_run_cut_short_gives_back_what_it_did_not_attempt(database: Database) -> None:
    outbox = Outbox(database)
    outbox.enqueue(notes(1, 1, per_ticket=4))
    run = outbox.claim_next(instance_limit=8, batch=4)
    sent: list[str] = []

    def deliver(event: OutboxEvent) -> None:
        if texts(event) == "note 2":
            raise errors.ProviderUnavailable("down", sent=False)
        sent.append(texts(event))

    outcomes = deliver_run(outbox, deliver, run)

    assert sent == ["note 0", "note 1"]
    assert [(o.status, o.error is not None) for _, o in outcomes] == [
        (DELIVERED, False), (DELIVERED, False), (PENDING, True),
    ]  # fmt: skip
    counts = outbox.counts()
    assert (counts[DELIVERED], counts[PENDING]) == (2, 2)
    [last] = outbox.entries(status=PENDING, limit=1)  # note 3: given back, free, not in doubt
    assert (texts(last), last.in_doubt, last.claims) == ("note 3", False, 0)


def texts(event: OutboxEvent) -> str:
    assert isinstance(event.action, AddWorkNote)
    return event.action.text


def test_racing_claimers_never_hold_more_than_the_instance_limit(database: Database) -> None:
    """Eight 'workers', each with its own Outbox (as separate processes would have), race for 60
    tickets of one integration under a limit of 3; each holds what it claims until told."""
    outboxes = [Outbox(Database(database.url)) for _ in range(8)]
    outboxes[0].enqueue(notes(1, 60))
    held: list[object] = []
    lock = threading.Lock()
    peak = 0

    def worker(outbox: Outbox) -> int:
        nonlocal peak
        delivered = 0
        while run := outbox.claim_next(instance_limit=3):
            [event] = run
            with lock:
                held.append(event)
                peak = max(peak, len(held))
            time.sleep(0.002)  # hold it a moment, so that claims overlap
            with lock:
                held.remove(event)
            assert outbox.settle_delivered(event)
            delivered += 1
        return delivered

    try:
        with ThreadPoolExecutor(8) as pool:
            delivered = sum(pool.map(worker, outboxes))
    finally:
        for outbox in outboxes[1:]:
            outbox.database.dispose()

    assert delivered == 60
    assert peak <= 3
    assert outboxes[0].counts()[DELIVERED] == 60


def test_live_claims_count_against_the_limit_until_settled(database: Database) -> None:
    outbox = Outbox(database)
    outbox.enqueue(notes(1, 5))

    claimed = [outbox.claim_next(instance_limit=2) for _ in range(3)]

    assert [len(run) for run in claimed] == [1, 1, 0]
    outbox.settle_failed(claimed[0][0], errors.ProviderUnavailable("HTTP 500", status_code=500))
    assert outbox.claim_next(instance_limit=2) != []


def test_a_429_pauses_claims_of_that_integration_only(database: Database) -> None:
    outbox = Outbox(database, backoff_initial=30)
    outbox.enqueue(notes(1, 3) + notes(2, 1))
    [event] = outbox.claim_next(prefer="1:t0", instance_limit=8)

    outbox.settle_failed(event, errors.RateLimited("slow down", retry_after=30))

    [after] = outbox.claim_next(prefer="1:t1", instance_limit=8)
    assert after.integration_id == 2
    assert outbox.claim_next(instance_limit=8) == []
    assert outbox.claim(10) == []  # nor does the in-process dispatcher's


def test_due_tickets_are_those_with_an_unclaimed_event_due(database: Database) -> None:
    outbox = Outbox(database)
    outbox.enqueue(notes(1, 3, per_ticket=2))
    assert outbox.claim_next(prefer="1:t1", instance_limit=8)

    assert outbox.due_tickets() == ["1:t0", "1:t2"]
    assert outbox.due_tickets(waiting=3600) == []


def test_the_relay_wakes_one_ticket_per_free_slot_and_none_while_paused(
    database: Database,
) -> None:
    outbox = Outbox(database, backoff_initial=30)
    outbox.enqueue(notes(1, 10) + notes(2, 10) + notes(3, 2))
    for _ in range(3):
        assert outbox.claim_next(prefer="1:t0", instance_limit=4)  # three of integration 1's four
    [limited] = outbox.claim_next(prefer="3:t0", instance_limit=8)
    outbox.settle_failed(limited, errors.RateLimited("slow down", retry_after=30))

    woken = outbox.due_tickets(instance_limit=4)

    assert [key.split(":")[0] for key in woken] == ["1", "2", "2", "2", "2"]


def test_events_stored_in_a_callers_transaction_wake_once_it_commits(
    database: Database,
) -> None:
    outbox = Outbox(database)
    woken: list[set[str]] = []
    outbox.on_stored = lambda tickets: woken.append(set(tickets))

    with database.begin() as conn:
        outbox.enqueue(notes(1, 2), conn)
        outbox.enqueue([NewEvent(3, "x", AddWorkNote("y"))], conn)
        assert woken == []  # not visible to a dispatcher yet

    assert set().union(*woken) == {"1:t0", "1:t1", "3:x"}


def test_events_of_a_rolled_back_transaction_wake_nothing(database: Database) -> None:
    outbox = Outbox(database)
    woken: list[set[str]] = []
    outbox.on_stored = lambda tickets: woken.append(set(tickets))

    def failing_request() -> None:
        with database.begin() as conn:
            outbox.enqueue(notes(1, 1), conn)
            raise RuntimeError("the host's request failed")

    with pytest.raises(RuntimeError):
        failing_request()

    assert woken == []
    assert outbox.counts()["pending"] == 0


def test_a_wake_up_that_fails_after_the_commit_loses_nothing(database: Database) -> None:
    outbox = Outbox(database)

    def broken(tickets: object) -> None:
        raise RuntimeError("the dispatcher is gone")

    outbox.on_stored = broken
    with database.begin() as conn:
        stored = outbox.enqueue(notes(1, 2), conn)

    assert stored == 2
    assert outbox.counts()["pending"] == 2  # committed, and the caller heard no error


def test_stats_count_each_integrations_events_and_live_claims(database: Database) -> None:
    outbox = Outbox(database)
    outbox.enqueue(notes(1, 4) + notes(2, 1))
    [first] = outbox.claim_next(prefer="1:t0", instance_limit=8)
    [second] = outbox.claim_next(prefer="1:t1", instance_limit=8)
    assert outbox.claim_next(prefer="1:t2", instance_limit=8)
    outbox.settle_delivered(first)
    outbox.settle_failed(second, errors.AuthenticationFailed("no"))

    one, two = outbox.stats()

    assert (one.integration_id, one.pending, one.dead, one.delivered, one.in_flight) == (
        1, 2, 1, 1, 1,
    )  # fmt: skip
    assert one.oldest_pending_seconds is not None
    assert one.oldest_pending_seconds >= 0
    assert (two.integration_id, two.pending, two.in_flight) == (2, 1, 0)


@pytest.mark.parametrize("sent_before_dying", [0, 1, 2])
def test_a_dead_workers_run_of_identical_notes_is_redone_one_by_one_each_once(
    database: Database, emulator: Emulator, provider: ServiceNowProvider, sent_before_dying: int
) -> None:
    [incident] = emulator.seed_incidents(1)
    # Wide margins: a loaded machine may take a few hundred milliseconds between two lines.
    outbox = Outbox(database, lease_seconds=1.0, doubt_seconds=1.0)
    service = SyncService(
        database, provider_for=lambda *_: provider, policy_for=lambda *_: WorkNotesOnly(),
        comment_on_anomaly=lambda *_: None, outbox=outbox, delivery_deadline=0.6,
    )  # fmt: skip
    text = "Anomaly 7 status changed to Active"  # the same text twice: a status set twice
    outbox.enqueue([NewEvent(1, incident["sys_id"], AddWorkNote(text)) for _ in range(2)])
    dying = outbox.claim_next(instance_limit=8, batch=10)
    for event in dying[:sent_before_dying]:  # it sent these, then died before settling any
        service.delivery(event)
    time.sleep(2.5)  # lease + doubt: its claims may be taken over

    runs = []
    while run := outbox.claim_next(instance_limit=8, batch=10):
        runs.append(len(run))
        deliver_run(outbox, service.delivery, run)

    assert runs == [1, 1]  # each in doubt, so each alone, counted after the one before settled
    assert outbox.counts()[DELIVERED] == 2
    notes = [
        e["value"] for e in emulator.journal(incident["sys_id"]) if e["element"] == "work_notes"
    ]
    assert notes == [text, text]


def test_a_stalled_claim_counts_against_the_limit_until_it_may_be_taken_over(
    database: Database,
) -> None:
    outbox = Outbox(database, lease_seconds=0.5, doubt_seconds=1.0)
    outbox.enqueue(notes(1, 2))
    [stalled] = outbox.claim_next(instance_limit=1)
    time.sleep(0.7)  # its lease is over; it may still be sending

    assert outbox.claim_next(instance_limit=1) == []  # it still counts
    time.sleep(0.9)  # lease + doubt: it may be taken over, and no longer counts
    assert [e.ticket_id for e in outbox.claim_next(instance_limit=1)] == ["t0"]
    with pytest.raises(LeaseLost):
        outbox.confirm(stalled)  # taken over: the stalled worker may not send


def test_a_shorter_429_never_shortens_the_pause(database: Database) -> None:
    outbox = Outbox(database, backoff_initial=0.1, backoff_max=1)
    outbox.enqueue(notes(1, 3))
    [first] = outbox.claim_next(prefer="1:t0", instance_limit=8)
    [second] = outbox.claim_next(prefer="1:t1", instance_limit=8)

    outbox.settle_failed(
        first, errors.RateLimited("slow down", retry_after=120)
    )  # above backoff_max
    outbox.settle_failed(second, errors.RateLimited("slow down"))

    assert outbox.claim_next(instance_limit=8) == []
    with database.read() as conn:
        [until] = conn.execute(sa.select(pauses.c.until)).scalars()
        assert (until - database.now(conn)).total_seconds() > 100
