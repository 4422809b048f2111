"""The durable outbox and its in-process dispatcher, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import pytest
import sqlalchemy as sa

from ticketing_core import errors
from ticketing_core.http import retry_after_seconds
from ticketing_core.models import TicketChanges
from ticketing_core.policies import AddWorkNote, ChangeTicket
from ticketing_core.sync.database import Database
from ticketing_core.sync.dispatch import ThreadedDispatcher
from ticketing_core.sync.outbox import (
    DEAD,
    DELIVERED,
    PENDING,
    LeaseLost,
    NewEvent,
    Outbox,
    OutboxEvent,
    StillInDoubt,
    pauses,
)

from ..conftest import wait_until


def note(ticket: str, text: str) -> NewEvent:
    return NewEvent(integration_id=1, ticket_id=ticket, action=AddWorkNote(text), anomaly_id=7)


def other(ticket: str, text: str) -> NewEvent:
    """A note for a second integration."""
    return NewEvent(integration_id=2, ticket_id=ticket, action=AddWorkNote(text), anomaly_id=7)


def test_actions_round_trip_through_the_database(database: Database) -> None:
    outbox = Outbox(database)
    change = ChangeTicket(TicketChanges(status="Resolved", resolution="fixed"))
    outbox.enqueue([note("t1", "hello"), NewEvent(1, "t1", change)])

    assert [e.action for e in outbox.entries()] == [change, AddWorkNote("hello")]  # newest first


def test_claim_takes_only_the_oldest_event_of_each_ticket(database: Database) -> None:
    outbox = Outbox(database)
    outbox.enqueue([note("a", "a1"), note("a", "a2"), note("b", "b1")])

    claimed = outbox.claim(10)

    assert [e.action.text for e in claimed] == ["a1", "b1"]  # type: ignore[union-attr]
    assert outbox.claim(10) == []  # a2 waits for a1; a1 and b1 are leased
    outbox.settle_delivered(claimed[0])
    assert [e.action.text for e in outbox.claim(10)] == ["a2"]  # type: ignore[union-attr]


def test_concurrent_claims_never_share_an_event(database: Database) -> None:
    outbox = Outbox(database)
    outbox.enqueue([note(f"t{i}", "x") for i in range(40)])

    with ThreadPoolExecutor(4) as pool:
        batches = list(pool.map(lambda _: outbox.claim(15), range(4)))

    ids = [e.id for batch in batches for e in batch]
    assert len(ids) == len(set(ids)) == 40


def test_retryable_failure_backs_off_then_dies_after_max_attempts(database: Database) -> None:
    outbox = Outbox(database, max_attempts=3, backoff_initial=0.0, doubt_seconds=0)
    outbox.enqueue([note("t", "x")])
    broken = errors.ProviderUnavailable("ServiceNow is unavailable: HTTP 500", status_code=500)

    statuses = []
    for _ in range(3):
        (event,) = outbox.claim(1)
        statuses.append(outbox.settle_failed(event, broken))

    assert statuses == [PENDING, PENDING, DEAD]
    (dead,) = outbox.entries(status=DEAD)
    assert dead.attempts == 3
    assert dead.last_error == "ProviderUnavailable: ServiceNow is unavailable: HTTP 500"


OUTAGES = [
    errors.RateLimited("ServiceNow rate limit: HTTP 429", retry_after=0),
    errors.ProviderUnavailable("ServiceNow is unavailable: HTTP 503", status_code=503),
    errors.ProviderUnavailable("cannot connect", sent=False),
    errors.ProviderTimeout("ServiceNow did not answer in 20 s"),
    errors.UnexpectedResponse("an HTML page in place of JSON", status_code=200, outage=True),
]


def claim_when_due(outbox: Outbox) -> OutboxEvent:
    claimed: list[OutboxEvent] = []
    wait_until(lambda: bool(claimed.extend(outbox.claim(1)) or claimed), timeout=10)
    return claimed[0]


def test_an_outage_is_waited_out_however_many_attempts_it_takes(database: Database) -> None:
    """Events wait as long as the instance is down: outage failures are not counted against
    max_attempts, and the failures that are counted still park the event once there are enough."""
    outbox = Outbox(
        database, max_attempts=2, backoff_initial=0.01, backoff_max=0.05, doubt_seconds=0
    )
    outbox.enqueue([note("t", "x")])

    statuses = [outbox.settle_failed(claim_when_due(outbox), outage) for outage in OUTAGES * 2]

    assert statuses == [PENDING] * 10  # five times max_attempts
    [waiting] = outbox.entries()
    assert (waiting.attempts, waiting.outage_attempts) == (10, 10)
    broken = errors.ProviderUnavailable("ServiceNow is unavailable: HTTP 500", status_code=500)
    assert outbox.settle_failed(claim_when_due(outbox), broken) == PENDING
    assert outbox.settle_failed(claim_when_due(outbox), broken) == DEAD
    assert outbox.retry() == 1
    [retried] = outbox.entries()
    assert (retried.attempts, retried.outage_attempts) == (0, 0)


def pause_seconds(database: Database) -> float:
    with database.read() as conn:
        return float(conn.execute(sa.select(pauses.c.seconds)).scalar_one())


def test_an_outage_pauses_the_integration_doubling_while_it_lasts(database: Database) -> None:
    """One call per pause probes a service that is down, rather than one per waiting ticket;
    calls already on their way when it began do not lengthen it."""
    # A pause of 0.5 s at first: the claims below come well within it, even on a loaded machine.
    outbox = Outbox(database, backoff_initial=0.5, backoff_max=2.0, doubt_seconds=0)
    outbox.enqueue([note(f"t{n}", "x") for n in range(6)] + [other("u", "y")])
    down = errors.ProviderUnavailable("ServiceNow is unavailable: HTTP 503", status_code=503)
    [first] = outbox.claim_next(prefer="1:t0", instance_limit=8)
    [in_flight] = outbox.claim_next(prefer="1:t1", instance_limit=8)

    outbox.settle_failed(first, down)
    assert [e.integration_id for e in outbox.claim(10)] == [2]  # integration 1 waits
    assert outbox.claim_next(instance_limit=8) == []
    outbox.settle_failed(in_flight, down)  # sent before the pause: no longer
    assert pause_seconds(database) == 0.5

    lengths = []
    for _ in range(3):  # each probe after a pause fails too
        probe = claim_when_due(outbox)
        outbox.settle_failed(probe, down)
        lengths.append(pause_seconds(database))
    assert lengths == [1.0, 2.0, 2.0]

    time.sleep(2.0 + 2.0 + 0.1)  # the pause, then longer than backoff_max: the outage is over
    outbox.settle_failed(claim_when_due(outbox), down)
    assert pause_seconds(database) == 0.5  # a new outage starts again from backoff_initial
    assert outbox.counts()[DEAD] == 0


def pause_row(database: Database) -> tuple[float, float]:
    """The integration's pause: seconds left (negative once over), and its length."""
    with database.read() as conn:
        until, seconds = conn.execute(sa.select(pauses.c.until, pauses.c.seconds)).one()
        return (until - database.now(conn)).total_seconds(), float(seconds)


def test_a_call_failing_alone_while_others_are_delivered_is_counted(database: Database) -> None:
    """A 504 or a timeout of one call while the instance delivers the others is that call's
    own (a slow business rule, a gateway refusing its body): counted against it, so it is
    parked once there are enough, and the integration is not paused for it."""
    outbox = Outbox(
        database, max_attempts=2, backoff_initial=0.01, backoff_max=0.05, doubt_seconds=0
    )
    outbox.enqueue([note("t", "poison"), note("u", "fine"), note("v", "fine too")])
    gateway = errors.ProviderUnavailable("ServiceNow is unavailable: HTTP 504", status_code=504)
    poison, *healthy = outbox.claim(3)
    statuses = []
    for other_call in healthy:
        assert outbox.settle_delivered(other_call)  # after the poison event was claimed
        statuses.append(outbox.settle_failed(poison, gateway))
        assert pause_row(database)[0] <= 0  # not paused
        poison = claim_when_due(outbox) if statuses[-1] == PENDING else poison

    assert statuses == [PENDING, DEAD]
    [dead] = outbox.entries(status=DEAD)
    assert (dead.attempts, dead.outage_attempts) == (2, 0)


def test_a_delivery_ends_the_outage_and_its_doubling(database: Database) -> None:
    outbox = Outbox(database, backoff_initial=0.2, backoff_max=0.8, doubt_seconds=0)
    outbox.enqueue([note(f"t{n}", "x") for n in range(4)])
    down = errors.ProviderUnavailable("ServiceNow is unavailable: HTTP 503", status_code=503)
    outbox.settle_failed(claim_when_due(outbox), down)
    outbox.settle_failed(claim_when_due(outbox), down)
    assert pause_row(database)[1] == 0.4

    assert outbox.settle_delivered(claim_when_due(outbox))  # the instance is back
    assert pause_row(database)[1] == 0.0
    outbox.settle_failed(
        claim_when_due(outbox), down
    )  # a new outage starts from the shortest pause
    assert pause_row(database)[1] == 0.2


def test_the_wait_a_service_asks_for_is_the_pause_up_to_an_hour(database: Database) -> None:
    outbox = Outbox(database, backoff_initial=5, doubt_seconds=0)
    outbox.enqueue([note("t", "x"), note("u", "y")])
    first, second = outbox.claim(2)

    outbox.settle_failed(first, errors.RateLimited("slow down", retry_after=0.1))
    assert 0 < pause_row(database)[0] <= 0.1  # not backoff_initial's 5 s
    time.sleep(0.15)
    outbox.settle_failed(second, errors.RateLimited("slow down", retry_after=864_000))  # ten days
    assert 3590 < pause_row(database)[0] <= 3600


def test_retry_after_is_read_as_finite_seconds_up_to_an_hour() -> None:
    def asked(value: str) -> float | None:
        return retry_after_seconds(httpx.Response(429, headers={"Retry-After": value}))

    assert [asked(v) for v in ("1", "0.5", "-3", "864000", "inf", "nan", "soon")] == [
        1.0, 0.5, 0.0, 3600.0, None, None, None,
    ]  # fmt: skip


def test_an_integration_this_host_cannot_use_keeps_its_events_without_spending_attempts(
    database: Database,
) -> None:
    """A key that cannot decrypt the credentials, an address the rule refuses: nothing was sent,
    so however often it happens the event stays pending, its attempts untouched, and the
    integration's fleet claims pause meanwhile."""
    outbox = Outbox(database, max_attempts=1, backoff_max=0.3)
    outbox.enqueue([note("t", "x"), note("u", "y")])
    unusable = errors.IntegrationUnusable("integration 1's credentials cannot be decrypted")

    statuses = []
    for _ in range(3):
        (event,) = outbox.claim(1)
        statuses.append(outbox.settle_failed(event, unusable))
        paused = outbox.claim_next(instance_limit=8)  # the other ticket's event, due, waits too
        time.sleep(0.35)

    assert statuses == [PENDING] * 3
    assert paused == []
    waiting = {e.ticket_id: e for e in outbox.entries()}
    assert {(e.status, e.attempts) for e in waiting.values()} == {(PENDING, 0)}
    assert waiting["t"].last_error == f"IntegrationUnusable: {unusable}"


def test_retry_after_sets_the_next_attempt(database: Database) -> None:
    outbox = Outbox(database)
    outbox.enqueue([note("t", "x")])
    (event,) = outbox.claim(1)

    outbox.settle_failed(event, errors.RateLimited("slow down", retry_after=30))

    (pending,) = outbox.entries()
    assert pending.next_attempt_at - pending.created >= timedelta(seconds=29)
    assert outbox.claim(1) == []


def test_failure_retrying_cannot_fix_is_dead_at_once(database: Database) -> None:
    outbox = Outbox(database)
    outbox.enqueue([note("t", "x")])
    (event,) = outbox.claim(1)

    assert outbox.settle_failed(event, errors.NotFound("No Record found")) == DEAD


def test_dead_events_are_retried_on_request(database: Database) -> None:
    outbox = Outbox(database)
    outbox.enqueue([note("t", "x"), note("u", "y")])
    for event in outbox.claim(2):
        outbox.settle_failed(event, errors.AuthenticationFailed("User Not Authenticated"))

    assert outbox.retry([outbox.entries()[0].id]) == 1
    assert outbox.counts() == {PENDING: 1, DELIVERED: 0, DEAD: 1}
    assert outbox.retry() == 1
    retried = outbox.claim(5)
    assert [(e.claims, e.attempts, e.in_doubt) for e in retried] == [(2, 0, False)] * 2


def test_an_expired_lease_is_claimed_again_after_the_doubt_window(database: Database) -> None:
    # Wide margins: a loaded machine may take a few hundred milliseconds between two lines.
    outbox = Outbox(database, lease_seconds=1.0, doubt_seconds=1.5)
    outbox.enqueue([note("t", "x")])
    (first,) = outbox.claim(1)

    assert outbox.claim(1) == []
    time.sleep(1.1)
    assert outbox.claim(1) == []  # the dead worker's request may still be landing
    time.sleep(1.5)
    (again,) = outbox.claim(1)

    assert again.id == first.id
    assert (first.claims, again.claims) == (1, 2)
    assert again.in_doubt


def test_renewing_keeps_a_lease(database: Database) -> None:
    outbox = Outbox(database, lease_seconds=0.3, doubt_seconds=0)
    outbox.enqueue([note("t", "x")])
    (event,) = outbox.claim(1)

    time.sleep(0.2)
    assert outbox.renew([event]) == 1
    time.sleep(0.2)

    assert outbox.claim(1) == []


def test_a_stale_workers_late_settle_cannot_undo_another_delivery(database: Database) -> None:
    outbox = Outbox(database, lease_seconds=0.5, doubt_seconds=0, backoff_initial=0.0)
    outbox.enqueue([note("t", "x")])
    (stale,) = outbox.claim(1)
    time.sleep(0.6)  # the first worker stalls past its lease
    (current,) = outbox.claim(1)
    assert outbox.settle_delivered(current)

    assert not outbox.settle_failed(stale, errors.ProviderTimeout("no answer"))
    assert not outbox.settle_delivered(stale)
    assert outbox.renew([stale]) == 0
    with pytest.raises(LeaseLost):
        outbox.confirm(stale)
    (settled,) = outbox.entries()
    assert (settled.status, settled.attempts, settled.last_error) == (DELIVERED, 0, None)
    assert outbox.claim(1) == []


def test_a_worker_whose_lease_was_taken_over_cannot_confirm_its_claim(database: Database) -> None:
    outbox = Outbox(database, lease_seconds=0.3, doubt_seconds=0)
    outbox.enqueue([note("t", "x")])
    (stale,) = outbox.claim(1)
    time.sleep(0.4)
    (current,) = outbox.claim(1)

    with pytest.raises(LeaseLost):
        outbox.confirm(stale)
    outbox.confirm(current)  # the current holder can


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
    outbox = Outbox(database, backoff_initial=0.05, backoff_max=0.1, doubt_seconds=0)
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
    outbox.settle_failed(first, errors.NotFound("gone"))
    outbox.settle_delivered(other)

    assert outbox.claim(5) == []
    outbox.retry()
    assert [e.action.text for e in outbox.claim(5)] == ["first"]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("error", "in_doubt"),
    [
        (errors.ProviderTimeout("no answer"), True),
        (errors.ProviderUnavailable("lost answer", status_code=504), True),
        (errors.ProviderUnavailable("committed, then 503", status_code=503), True),
        (errors.ProviderUnavailable("connection reset"), True),
        (errors.UnexpectedResponse("an HTML page"), True),
        (errors.ProviderUnavailable("connection refused", sent=False), False),
        (errors.RateLimited("slow down", retry_after=0), False),
        (errors.PermissionDenied("ACL"), False),
    ],
)
def test_only_failures_after_which_the_call_may_have_landed_leave_doubt(
    database: Database, error: Exception, in_doubt: bool
) -> None:
    outbox = Outbox(database, backoff_initial=0.0, doubt_seconds=0)
    outbox.enqueue([note("t", "x")])
    (first,) = outbox.claim(1)
    outbox.settle_failed(first, error)
    outbox.retry()  # a failure retrying cannot fix parked it: put it back

    (again,) = outbox.claim(1)

    assert not first.in_doubt
    assert again.in_doubt is in_doubt


def test_a_note_that_may_have_landed_is_looked_for_at_once_but_not_sent_within_the_window(
    database: Database,
) -> None:
    outbox = Outbox(database, backoff_initial=0.0, doubt_seconds=0.4)
    outbox.enqueue([note("t", "x")])
    (first,) = outbox.claim(1)
    outbox.settle_failed(first, errors.ProviderTimeout("no answer"))

    (looking,) = outbox.claim(1)  # due at once: to look for it on the ticket
    assert looking.in_doubt
    with pytest.raises(StillInDoubt) as still:  # not there: the instance may still add it
        outbox.confirm(looking)
    assert outbox.settle_failed(looking, still.value) == PENDING
    assert outbox.claim(1) == []
    time.sleep(0.5)
    (again,) = outbox.claim(1)
    outbox.confirm(again)  # the window is over: free to send

    assert again.attempts == 1  # looking early spent no attempt
    assert not outbox.claim(1)


def test_a_change_that_may_have_landed_is_not_retried_within_the_doubt_window(
    database: Database,
) -> None:
    outbox = Outbox(database, backoff_initial=0.0, doubt_seconds=0.4)
    outbox.enqueue([NewEvent(1, "t", ChangeTicket(TicketChanges(status="In Progress")))])
    (first,) = outbox.claim(1)
    outbox.settle_failed(first, errors.ProviderTimeout("no answer"))

    assert outbox.claim(1) == []  # nothing to look for
    time.sleep(0.5)
    assert [e.id for e in outbox.claim(1)] == [first.id]


def test_a_claim_its_worker_never_settled_leaves_doubt(database: Database) -> None:
    outbox = Outbox(database, lease_seconds=0.1, doubt_seconds=0)
    outbox.enqueue([note("t", "x")])
    outbox.claim(1)  # the worker dies here
    time.sleep(0.2)

    (again,) = outbox.claim(1)

    assert again.in_doubt


def test_doubt_lasts_until_a_check_resolves_it(database: Database) -> None:
    outbox = Outbox(database, backoff_initial=0.0, doubt_seconds=0)
    outbox.enqueue([note("t", "x")])
    (first,) = outbox.claim(1)
    outbox.settle_failed(first, errors.ProviderTimeout("no answer"))  # may have landed
    (second,) = outbox.claim(1)
    outbox.settle_failed(second, errors.RateLimited("slow down", retry_after=0))  # refused: no news
    (third,) = outbox.claim(1)
    assert third.in_doubt

    outbox.confirm(third)  # the ticket was checked: the note is not there
    outbox.settle_failed(third, errors.RateLimited("slow down", retry_after=0))

    (fourth,) = outbox.claim(1)
    assert not fourth.in_doubt


def test_notes_in_doubt_know_how_many_identical_ones_went_to_their_ticket_before(
    database: Database,
) -> None:
    outbox = Outbox(database, doubt_seconds=0, backoff_initial=0.0)
    outbox.enqueue([note("t", "same"), note("u", "same"), note("t", "same"), note("t", "other")])

    def deliver_in_doubt() -> list[tuple[str, str, int]]:
        seen = []
        while batch := outbox.claim(5):
            for event in batch:
                if not event.in_doubt:  # make each one doubtful: only then is the count needed
                    outbox.settle_failed(event, errors.ProviderTimeout("no answer"))
                    continue
                seen.append((event.ticket_id, event.action.text, event.identical_before))  # type: ignore[union-attr]
                outbox.settle_delivered(event)
        return seen

    assert deliver_in_doubt() == [
        ("t", "same", 0), ("u", "same", 0), ("t", "same", 1), ("t", "other", 0),
    ]  # fmt: skip
    with database.begin() as conn:  # pruning must not forget what was delivered
        conn.exec_driver_sql("UPDATE sync_outbox SET delivered_at = '2000-01-01 00:00:00'")
    assert outbox.prune() == 4
    outbox.enqueue([note("t", "same"), note("t", "same")])

    assert deliver_in_doubt() == [("t", "same", 2), ("t", "same", 3)]


def test_delivered_events_are_pruned_after_the_retention(database: Database) -> None:
    outbox = Outbox(database, retention=timedelta(seconds=0.3))
    outbox.enqueue([note("t", "x"), note("u", "y"), note("v", "z")])
    delivered, _kept, dead = outbox.claim(3)
    outbox.settle_delivered(delivered)
    outbox.settle_failed(dead, errors.NotFound("gone"))

    assert outbox.prune() == 0
    time.sleep(0.4)
    assert outbox.prune() == 1
    assert {e.status for e in outbox.entries()} == {PENDING, DEAD}


def test_listing_is_newest_first_and_filters_by_status(database: Database) -> None:
    outbox = Outbox(database)
    outbox.enqueue([note(f"t{i}", str(i)) for i in range(5)])
    for event in outbox.claim(2):
        outbox.settle_failed(event, errors.NotFound("gone"))

    assert [e.action.text for e in outbox.entries(limit=3)] == ["4", "3", "2"]  # type: ignore[union-attr]
    assert [e.action.text for e in outbox.entries(DEAD)] == ["1", "0"]  # type: ignore[union-attr]


def test_one_integration_cannot_take_every_delivery_slot(database: Database) -> None:
    outbox = Outbox(database)
    outbox.enqueue([NewEvent(1, f"slow{i}", AddWorkNote("x")) for i in range(10)])
    outbox.enqueue([NewEvent(2, "healthy", AddWorkNote("y"))])
    release = threading.Event()
    delivered_healthy = threading.Event()

    def deliver(event: OutboxEvent) -> None:
        if event.integration_id == 1:
            release.wait(10)  # a slow instance
        else:
            delivered_healthy.set()

    dispatcher = ThreadedDispatcher(outbox, deliver, concurrency=4, poll_interval=0.05)
    dispatcher.start()
    try:
        assert delivered_healthy.wait(5)
    finally:
        release.set()
        dispatcher.stop()


def test_stop_returns_within_its_timeout_and_keeps_leases_renewed(database: Database) -> None:
    outbox = Outbox(database, lease_seconds=0.3, doubt_seconds=0)
    outbox.enqueue([note("t", "x")])
    release = threading.Event()
    started = threading.Event()

    def deliver(event: OutboxEvent) -> None:
        started.set()
        release.wait(10)

    dispatcher = ThreadedDispatcher(outbox, deliver, poll_interval=0.02)
    dispatcher.start()
    try:
        assert started.wait(5)
        began = time.monotonic()
        stopper = threading.Thread(target=dispatcher.stop, kwargs={"timeout": 0.8})
        stopper.start()
        time.sleep(0.6)  # two leases long: still held, because stop renews while it waits
        assert outbox.claim(1) == []
        stopper.join(5)
        assert time.monotonic() - began < 1.2
    finally:
        release.set()
    wait_until(lambda: outbox.counts()[DELIVERED] == 1)


# SQLite's writers go one at a time, so its ids are commit order by construction.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_tickets_events_follow_commit_order_on_postgresql(database: Database) -> None:
    outbox = Outbox(database)
    first_inserted = threading.Event()
    with database.engine.begin() as early:
        outbox.enqueue([note("t", "early")], conn=early)
        first_inserted.set()

        def enqueue_late() -> None:
            outbox.enqueue([note("t", "late")])

        late = threading.Thread(target=enqueue_late)
        late.start()
        time.sleep(0.3)  # the later transaction waits for this one's ticket lock
        assert outbox.counts()[PENDING] == 0
    late.join(5)

    (first,) = outbox.claim(5)
    assert first.action == AddWorkNote("early")
    outbox.settle_delivered(first)
    assert [e.action for e in outbox.claim(5)] == [AddWorkNote("late")]


def test_outbox_ids_are_never_reused(database: Database) -> None:
    outbox = Outbox(database)
    outbox.enqueue([note("t", "x")])
    (event,) = outbox.claim(1)
    with database.begin() as conn:
        outbox.discard_for_integration(1, conn)

    outbox.enqueue([note("t", "y")])

    assert outbox.entries()[0].id > event.id


def test_a_backlog_of_one_integration_does_not_hide_another(database: Database) -> None:
    outbox = Outbox(database)
    outbox.enqueue([NewEvent(1, f"busy{i}", AddWorkNote("x")) for i in range(50)])
    outbox.enqueue([NewEvent(2, "other", AddWorkNote("y"))])

    claimed = outbox.claim(2, instance_limit=1)

    assert (2, "other") in [(e.integration_id, e.ticket_id) for e in claimed]


def test_retrying_a_dead_event_in_doubt_still_waits_out_its_window(database: Database) -> None:
    outbox = Outbox(database, max_attempts=1, doubt_seconds=0.5, backoff_initial=0.0)
    outbox.enqueue([note("t", "x"), note("u", "y")])
    in_doubt, refused = outbox.claim(2)
    broken = errors.ProviderUnavailable("HTTP 500", status_code=500)  # after the commit, maybe
    assert outbox.settle_failed(in_doubt, broken) == DEAD
    assert outbox.settle_failed(refused, errors.PermissionDenied("ACL")) == DEAD

    assert outbox.retry() == 2

    looking, sending = outbox.claim(2)  # both at once: one to be looked for first
    outbox.confirm(sending)
    with pytest.raises(StillInDoubt) as still:  # not found: not sent before the window ends
        outbox.confirm(looking)
    time.sleep(0.6)
    with pytest.raises(StillInDoubt):  # that claim's look came too early, however late it ends
        outbox.confirm(looking)
    outbox.settle_failed(looking, still.value)
    (after_the_window,) = outbox.claim(1)
    outbox.confirm(after_the_window)  # looked for once the instance was done with it


def test_identical_notes_count_per_ticket_whichever_integration_delivered_them(
    database: Database,
) -> None:
    """An integration deleted and another linking the same ticket: the notes delivered before
    are on the ticket, so a look for an identical one counts them, pruned or not."""
    outbox = Outbox(database, backoff_initial=0.0, doubt_seconds=0, retention=timedelta(0))
    outbox.enqueue([note("t", "same"), note("t", "same")])
    for _ in range(2):
        outbox.settle_delivered(outbox.claim(1)[0])
    outbox.prune()  # one way to be counted: in the tally
    outbox.enqueue([note("t", "same")])
    outbox.settle_delivered(outbox.claim(1)[0])  # the other: delivered and kept
    with database.begin() as conn:
        outbox.discard_for_integration(1, conn)
    outbox.enqueue([other("t", "same")])
    (first,) = outbox.claim(1)
    outbox.settle_failed(first, errors.ProviderTimeout("no answer"))

    (looking,) = outbox.claim(1)

    assert looking.in_doubt
    assert looking.identical_before == 3


def test_a_failed_look_leaves_the_doubt_window_where_the_send_put_it(database: Database) -> None:
    outbox = Outbox(database, backoff_initial=0.0, doubt_seconds=0.5)
    outbox.enqueue([note("t", "x")])
    (sent,) = outbox.claim(1)
    outbox.settle_failed(
        sent, errors.ProviderTimeout("no answer")
    )  # the window ends 0.5 s from now
    time.sleep(0.3)
    (looking,) = outbox.claim(1)
    outbox.settle_failed(
        looking, errors.ProviderTimeout("no answer to the look")
    )  # a read: sent nothing
    time.sleep(0.3)

    (again,) = outbox.claim(1)
    outbox.confirm(again)  # 0.6 s after the send: free to send

    assert again.in_doubt
    assert again.attempts == 2
