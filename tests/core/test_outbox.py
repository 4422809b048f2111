"""The durable outbox and its in-process dispatcher, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

from ticketing_core import errors
from ticketing_core.models import TicketChanges
from ticketing_core.outbox import (
    DEAD,
    DELIVERED,
    PENDING,
    NewEvent,
    Outbox,
    OutboxEvent,
    ThreadedDispatcher,
)
from ticketing_core.policies import AddWorkNote, ChangeTicket
from ticketing_core.store import Database

from ..conftest import wait_until


def note(ticket: str, text: str) -> NewEvent:
    return NewEvent(integration_id=1, ticket_id=ticket, action=AddWorkNote(text), anomaly_id=7)


def test_actions_round_trip_through_the_database(database: Database) -> None:
    outbox = Outbox(database)
    change = ChangeTicket(TicketChanges(status="Resolved", resolution="fixed"))
    outbox.enqueue([note("t1", "hello"), NewEvent(1, "t1", change)])

    assert [e.action for e in outbox.entries()] == [AddWorkNote("hello"), change]


def test_claim_takes_only_the_oldest_event_of_each_ticket(database: Database) -> None:
    outbox = Outbox(database)
    outbox.enqueue([note("a", "a1"), note("a", "a2"), note("b", "b1")])

    claimed = outbox.claim(10)

    assert [e.action.text for e in claimed] == ["a1", "b1"]  # type: ignore[union-attr]
    assert outbox.claim(10) == []  # a2 waits for a1; a1 and b1 are leased
    outbox.delivered(claimed[0].id)
    assert [e.action.text for e in outbox.claim(10)] == ["a2"]  # type: ignore[union-attr]


def test_concurrent_claims_never_share_an_event(database: Database) -> None:
    outbox = Outbox(database)
    outbox.enqueue([note(f"t{i}", "x") for i in range(40)])

    with ThreadPoolExecutor(4) as pool:
        batches = list(pool.map(lambda _: outbox.claim(15), range(4)))

    ids = [e.id for batch in batches for e in batch]
    assert len(ids) == len(set(ids)) == 40


def test_retryable_failure_backs_off_then_dies_after_max_attempts(database: Database) -> None:
    outbox = Outbox(database, max_attempts=3, backoff_initial=0.0)
    outbox.enqueue([note("t", "x")])
    down = errors.ProviderUnavailable("ServiceNow is unavailable: HTTP 503", status_code=503)

    statuses = []
    for _ in range(3):
        (event,) = outbox.claim(1)
        statuses.append(outbox.failed(event, down))

    assert statuses == [PENDING, PENDING, DEAD]
    (dead,) = outbox.entries(status=DEAD)
    assert dead.attempts == 3
    assert dead.last_error == "ProviderUnavailable: ServiceNow is unavailable: HTTP 503"


def test_retry_after_sets_the_next_attempt(database: Database) -> None:
    outbox = Outbox(database)
    outbox.enqueue([note("t", "x")])
    (event,) = outbox.claim(1)

    outbox.failed(event, errors.RateLimited("slow down", retry_after=30))

    (pending,) = outbox.entries()
    assert pending.next_attempt_at - pending.created >= timedelta(seconds=29)
    assert outbox.claim(1) == []


def test_failure_retrying_cannot_fix_is_dead_at_once(database: Database) -> None:
    outbox = Outbox(database)
    outbox.enqueue([note("t", "x")])
    (event,) = outbox.claim(1)

    assert outbox.failed(event, errors.NotFound("No Record found")) == DEAD


def test_dead_events_are_retried_on_request(database: Database) -> None:
    outbox = Outbox(database)
    outbox.enqueue([note("t", "x"), note("u", "y")])
    for event in outbox.claim(2):
        outbox.failed(event, errors.AuthenticationFailed("User Not Authenticated"))

    assert outbox.retry([outbox.entries()[0].id]) == 1
    assert outbox.counts() == {PENDING: 1, DELIVERED: 0, DEAD: 1}
    assert outbox.retry() == 1
    assert [e.claims for e in outbox.claim(5)] == [2, 2]


def test_an_expired_lease_is_claimed_again_and_says_so(database: Database) -> None:
    outbox = Outbox(database, lease_seconds=0.2)
    outbox.enqueue([note("t", "x")])
    (first,) = outbox.claim(1)

    assert outbox.claim(1) == []
    time.sleep(0.3)
    (again,) = outbox.claim(1)

    assert again.id == first.id
    assert (first.claims, again.claims) == (1, 2)


def test_renewing_keeps_a_lease(database: Database) -> None:
    outbox = Outbox(database, lease_seconds=0.3)
    outbox.enqueue([note("t", "x")])
    (event,) = outbox.claim(1)

    time.sleep(0.2)
    outbox.renew([event.id])
    time.sleep(0.2)

    assert outbox.claim(1) == []


def test_dispatcher_delivers_everything_in_order_with_bounded_concurrency(
    database: Database,
) -> None:
    outbox = Outbox(database)
    outbox.enqueue([note(f"t{i % 5}", f"{i}") for i in range(30)])
    delivered: list[tuple[str, int]] = []
    running, peak = 0, 0
    lock = threading.Lock()

    def deliver(event: OutboxEvent) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.02)
        with lock:
            running -= 1
            delivered.append((event.ticket_id, int(event.action.text)))  # type: ignore[union-attr]

    dispatcher = ThreadedDispatcher(outbox, deliver, concurrency=3, poll_interval=0.05)
    dispatcher.start()
    try:
        wait_until(lambda: outbox.counts()[DELIVERED] == 30)
    finally:
        dispatcher.stop()

    assert peak <= 3
    for ticket in {t for t, _ in delivered}:
        order = [n for t, n in delivered if t == ticket]
        assert order == sorted(order)


def test_dispatcher_retries_until_the_provider_recovers(database: Database) -> None:
    outbox = Outbox(database, backoff_initial=0.05, backoff_max=0.1)
    outbox.enqueue([note("t", "x")])
    failures = iter([errors.ProviderUnavailable("down", status_code=503)] * 3)

    def deliver(event: OutboxEvent) -> None:
        failure = next(failures, None)
        if failure is not None:
            raise failure

    dispatcher = ThreadedDispatcher(outbox, deliver, poll_interval=0.02)
    dispatcher.start()
    try:
        wait_until(lambda: outbox.counts()[DELIVERED] == 1)
    finally:
        dispatcher.stop()

    assert outbox.entries()[0].attempts == 3


def test_claiming_nothing_is_harmless(database: Database) -> None:
    outbox = Outbox(database)
    outbox.enqueue([note("t", "x")])

    assert outbox.claim(0) == []
    assert outbox.counts()[PENDING] == 1


def test_a_dead_event_holds_back_its_tickets_later_events(database: Database) -> None:
    outbox = Outbox(database)
    outbox.enqueue([note("t", "first"), note("t", "second"), note("u", "other")])
    first, other = outbox.claim(5)
    outbox.failed(first, errors.NotFound("gone"))
    outbox.delivered(other.id)

    assert outbox.claim(5) == []
    outbox.retry()
    assert [e.action.text for e in outbox.claim(5)] == ["first"]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("error", "in_doubt"),
    [
        (errors.ProviderTimeout("no answer"), True),
        (errors.ProviderUnavailable("lost answer", status_code=504), True),
        (errors.ProviderUnavailable("connection reset"), True),
        (errors.ProviderUnavailable("down", status_code=503), False),
        (errors.RateLimited("slow down", retry_after=0), False),
        (errors.UnexpectedResponse("an HTML page"), False),
    ],
)
def test_only_failures_after_which_the_call_may_have_landed_leave_doubt(
    database: Database, error: Exception, in_doubt: bool
) -> None:
    outbox = Outbox(database, backoff_initial=0.0)
    outbox.enqueue([note("t", "x")])
    (first,) = outbox.claim(1)
    outbox.failed(first, error)
    time.sleep(0.01)

    (again,) = outbox.claim(1)

    assert not first.in_doubt
    assert again.in_doubt is in_doubt
    assert again.first_claimed_at == first.first_claimed_at


def test_a_claim_its_worker_never_settled_leaves_doubt(database: Database) -> None:
    outbox = Outbox(database, lease_seconds=0.1)
    outbox.enqueue([note("t", "x")])
    outbox.claim(1)  # the worker dies here
    time.sleep(0.2)

    (again,) = outbox.claim(1)

    assert again.in_doubt


def test_doubt_stays_until_delivery_and_dates_from_the_first_claim(database: Database) -> None:
    outbox = Outbox(database, backoff_initial=0.0)
    outbox.enqueue([note("t", "x")])
    (first,) = outbox.claim(1)
    outbox.failed(first, errors.ProviderTimeout("no answer"))  # may have landed
    (second,) = outbox.claim(1)
    outbox.failed(second, errors.ProviderUnavailable("down", status_code=503))  # refused

    (third,) = outbox.claim(1)

    assert third.in_doubt
    assert third.first_claimed_at == first.first_claimed_at


def test_outbox_ids_are_never_reused(database: Database) -> None:
    outbox = Outbox(database)
    outbox.enqueue([note("t", "x")])
    (event,) = outbox.claim(1)
    with database.begin() as conn:
        outbox.discard_for_integration(1, conn)

    outbox.enqueue([note("t", "y")])

    assert outbox.entries()[0].id > event.id
