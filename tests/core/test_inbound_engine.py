"""The inbound engine's exactly-once rule when readers race, on SQLite and PostgreSQL, against
the ServiceNow emulator over real HTTP."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Sequence

import attrs
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servicenow_emulator import Emulator

from ticketing_core.models import Notice, Ticket, TicketChanges
from ticketing_core.policies import ChangeTicket, InboundPolicy, WorkNotesOnly
from ticketing_core.sync.database import Database
from ticketing_core.sync.delivery import Drain
from ticketing_core.sync.inbound import Inbound, InboundWorker
from ticketing_core.sync.inbound.intake import BatchedIntake
from ticketing_core.sync.outbox import DELIVERED, PENDING, NewEvent
from ticketing_core.sync.service import SyncService
from ticketing_servicenow import ServiceNowProvider

INTEGRATION_ID = 3
READERS = 8


class Anomalies:
    def __init__(self) -> None:
        self.comments: list[tuple[int, str, str]] = []
        self._lock = threading.Lock()

    def comment(self, anomaly_id: int, text: str, origin: str, conn: sa.Connection) -> None:
        with self._lock:
            self.comments.append((anomaly_id, text, origin))

    def set_status(self, anomaly_id: int, status: str, conn: sa.Connection) -> bool:
        return False


@pytest.fixture
def inbound(database: Database, provider: ServiceNowProvider) -> tuple[Inbound, Anomalies]:
    service = SyncService(
        database,
        provider_for=lambda _id, _conn: provider,
        policy_for=lambda _id, _conn: WorkNotesOnly(),
        comment_on_anomaly=lambda *_: None,
    )
    anomalies = Anomalies()
    return Inbound(service, lambda _id, _conn: InboundPolicy(), anomalies), anomalies


def test_racing_readers_of_one_change_apply_it_once(
    inbound: tuple[Inbound, Anomalies], provider: ServiceNowProvider, emulator: Emulator
) -> None:
    engine, anomalies = inbound
    [row] = emulator.seed_incidents(1)
    for anomaly_id in (1, 2):
        engine.service.links.add(
            anomaly_id=anomaly_id, integration_id=INTEGRATION_ID, ticket_id=row["sys_id"],
            ticket_number=row["number"], ticket_url=None, status="New",
        )  # fmt: skip
    emulator.act_as("beth.anglin", row["sys_id"], state="2", work_notes="looked at it")
    start = threading.Barrier(READERS)

    def read_and_apply() -> None:
        tickets = provider.get_many([row["sys_id"]])
        start.wait()
        engine.apply(INTEGRATION_ID, tickets, provider, InboundPolicy())

    readers = [threading.Thread(target=read_and_apply) for _ in range(READERS)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()

    texts = sorted(text for _, text, _ in anomalies.comments)
    assert texts == sorted(
        [f"Ticket {row['number']} status changed from New to In Progress by beth.anglin"] * 2
        + [f"Work note on {row['number']} by beth.anglin: looked at it"] * 2
    )
    decisions = [logged.entry.decision for logged in engine.log.entries(INTEGRATION_ID)]
    assert decisions.count("applied") == 4  # two anomalies, a status and a note each
    assert decisions.count("duplicate") == READERS - 1


def test_notifications_stored_together_each_wait_for_their_commit() -> None:
    batches: list[int] = []
    gate = threading.Event()

    def store(received: Sequence[tuple[int, Notice]]) -> None:
        gate.wait(5)  # the first batch is held while the others queue up
        if any(notice.ticket_id == "bad" for _, notice in received):
            raise RuntimeError("the database is gone")
        batches.append(len(received))

    intake = BatchedIntake(store)
    outcomes: dict[str, str] = {}

    def put(ticket_id: str) -> None:
        try:
            intake.put(1, Notice(ticket_id, "update"))
            outcomes[ticket_id] = "stored"
        except RuntimeError as exc:
            outcomes[ticket_id] = str(exc)

    first = threading.Thread(target=put, args=("t0",))
    first.start()
    time.sleep(0.1)
    rest = [threading.Thread(target=put, args=(f"t{n}",)) for n in range(1, 20)]
    for thread in rest:
        thread.start()
    time.sleep(0.2)
    gate.set()
    for thread in [first, *rest]:
        thread.join()

    assert batches == [1, 19]  # 20 notifications, two transactions
    assert set(outcomes.values()) == {"stored"}
    with pytest.raises(RuntimeError, match="the database is gone"):
        intake.put(1, Notice("bad", "update"))


def test_a_coroutine_awaits_its_notification_s_commit_on_its_own_loop() -> None:
    """One call into the loop completes a batch; a waiter that gave up is skipped, and a
    failed batch fails every waiter of it."""
    stored: list[list[str]] = []
    gate, first_taken = threading.Event(), threading.Event()

    def store(received: Sequence[tuple[int, Notice]]) -> None:
        first_taken.set()
        gate.wait(5)
        if any(notice.ticket_id == "bad" for _, notice in received):
            raise RuntimeError("the database is gone")
        stored.append([notice.ticket_id for _, notice in received])

    intake = BatchedIntake(store)

    async def main() -> tuple[list[object], BaseException | None]:
        loop = asyncio.get_running_loop()
        calls = 0
        call_soon = loop.call_soon_threadsafe

        def counted(*args: object, **kwargs: object) -> object:
            nonlocal calls
            calls += 1
            return call_soon(*args, **kwargs)  # type: ignore[arg-type]

        loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
        first = intake.submit_async(1, Notice("t0", "update"))
        await asyncio.to_thread(first_taken.wait, 5)  # t0's batch is being written
        calls = 0  # to_thread's own call into the loop aside
        rest = [intake.submit_async(1, Notice(f"t{n}", "update")) for n in range(1, 6)]
        rest[0].cancel()
        gate.set()
        results = await asyncio.gather(first, *rest, return_exceptions=True)
        assert calls == 2  # two batches, one wake-up each
        failed: BaseException | None = None
        try:
            await intake.submit_async(1, Notice("bad", "update"))
        except RuntimeError as exc:
            failed = exc
        return list(results), failed

    results, failed = asyncio.run(main())

    assert stored == [["t0"], ["t1", "t2", "t3", "t4", "t5"]]
    assert results[0] is None
    assert results[2:] == [None] * 4
    assert isinstance(results[1], asyncio.CancelledError)
    assert str(failed) == "the database is gone"


REVISIONS = st.integers(min_value=0, max_value=2**31 - 1)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(applied=st.none() | REVISIONS, told=st.lists(st.none() | REVISIONS, min_size=1, max_size=4))
def test_a_notification_is_read_only_if_its_revision_is_not_applied_yet(
    inbound: tuple[Inbound, Anomalies], applied: int | None, told: list[int | None]
) -> None:
    """A replay, a duplicate or a notification the poll overtook costs no read of its ticket;
    one without a revision (Jira's comments) or with a newer one is read."""
    engine, _ = inbound
    ticket_id = uuid.uuid4().hex
    if applied is not None:
        with engine.database.begin() as conn:
            ticket = Ticket(id=ticket_id, number="INC0010001", title="t", revision=applied)
            engine.state.claim_revision(conn, INTEGRATION_ID, ticket)

    for revision in told:
        engine.notify(INTEGRATION_ID, Notice(ticket_id, "update", "beth.anglin", revision))

    def expected(revision: int | None) -> str:
        if applied is None or revision is None or revision > applied:
            return "received"
        return "duplicate" if revision == applied else "stale"

    waiting = engine.state.waiting(INTEGRATION_ID, set())
    assert (ticket_id in waiting) == ("received" in map(expected, told))
    logged = engine.log.entries(INTEGRATION_ID, ticket_id=ticket_id)
    assert sorted(e.entry.decision for e in logged) == sorted(map(expected, told))
    engine.state.forget(INTEGRATION_ID, waiting)


def test_a_reader_that_read_a_notification_before_it_came_again_leaves_the_new_one(
    inbound: tuple[Inbound, Anomalies],
) -> None:
    """Two readers of one integration (two worker processes): the first reads a notification
    and forgets it, the ticket is notified again, and the second, which read the first one
    too, forgets what it read. The new notification must still wait to be read."""
    engine, _ = inbound
    ticket_id = uuid.uuid4().hex
    engine.notify(INTEGRATION_ID, Notice(ticket_id, "update", "beth.anglin", None))
    first_reader = engine.state.waiting(INTEGRATION_ID, set())
    second_reader = engine.state.waiting(INTEGRATION_ID, set())

    engine.state.forget(INTEGRATION_ID, first_reader)
    engine.notify(INTEGRATION_ID, Notice(ticket_id, "journal", "beth.anglin", None))
    engine.state.forget(INTEGRATION_ID, second_reader)

    assert list(engine.state.waiting(INTEGRATION_ID, set())) == [ticket_id]
    engine.state.forget(INTEGRATION_ID, engine.state.waiting(INTEGRATION_ID, set()))


def test_a_fleet_s_serve_asks_again_only_for_new_notifications_or_after_a_while(
    inbound: tuple[Inbound, Anomalies],
) -> None:
    """serve --broker's inbound worker asks the workers to read (here: ``asked``) when a
    notification is stored, not at every round while notifications wait; then again after
    ``reread_after``, in case its ask was lost."""
    engine, _ = inbound
    integration_id = 77
    asked: list[int] = []
    worker = InboundWorker(engine, tuple, read=asked.append, reread_after=3600)

    engine.notify(integration_id, Notice(uuid.uuid4().hex, "update", "beth.anglin", None))
    worker.run_once()
    worker.run_once()
    assert asked.count(integration_id) == 1
    engine.notify(integration_id, Notice(uuid.uuid4().hex, "update", "beth.anglin", None))
    worker.run_once()
    assert asked.count(integration_id) == 2
    worker.reread_after = 0  # the while is over
    worker.run_once()
    assert asked.count(integration_id) == 3
    engine.state.forget(integration_id, engine.state.waiting(integration_id, set()))


# -- the third guard against echoes: the revisions our own writes' answers told ------------------


@attrs.frozen
class Linked:
    """An incident linked to anomaly 1, its current revision applied."""

    sys_id: str
    number: str
    journal_reads: list[str]
    """The tickets whose journal the engine read since."""


@pytest.fixture
def linked(
    inbound: tuple[Inbound, Anomalies], provider: ServiceNowProvider, emulator: Emulator
) -> Linked:
    engine, _ = inbound
    [row] = emulator.seed_incidents(1)
    engine.service.links.add(
        anomaly_id=1, integration_id=INTEGRATION_ID, ticket_id=row["sys_id"],
        ticket_number=row["number"], ticket_url=None, status="New",
    )  # fmt: skip
    engine.apply(INTEGRATION_ID, provider.get_many([row["sys_id"]]), provider, InboundPolicy())
    journal_reads: list[str] = []
    read_journal = provider.journal_since

    def counted(ticket_id: str, after: object) -> object:
        journal_reads.append(ticket_id)
        return read_journal(ticket_id, after)  # type: ignore[arg-type]

    provider.journal_since = counted  # type: ignore[method-assign]
    return Linked(row["sys_id"], row["number"], journal_reads)


def deliver_all(engine: Inbound) -> None:
    outbox = engine.service.outbox
    Drain(outbox, engine.service.delivery, instance_limit=1)()
    assert outbox.counts()[DELIVERED] >= 1
    assert not outbox.counts()[PENDING]


def test_a_revision_our_own_note_made_is_dropped_without_reading_the_journal(
    inbound: tuple[Inbound, Anomalies],
    provider: ServiceNowProvider,
    linked: Linked,
) -> None:
    engine, anomalies = inbound
    sys_id, journal_reads = linked.sys_id, linked.journal_reads
    engine.service.anomaly_commented(1, "Our own note")
    deliver_all(engine)
    [delivered] = engine.service.outbox.entries(DELIVERED)
    ticket = provider.get_many([sys_id])[0]

    engine.apply(INTEGRATION_ID, [ticket], provider, InboundPolicy())

    assert delivered.revision == ticket.revision
    assert journal_reads == []
    assert anomalies.comments == []
    # The journal up to our write is ours: the next read starts there, not at the link.
    assert engine.state.revisions(INTEGRATION_ID, [sys_id])[sys_id][1] == ticket.updated_at
    newest = engine.log.entries(INTEGRATION_ID, ticket_id=sys_id)[0].entry
    assert (newest.decision, newest.detail) == (
        "echo dropped",
        f"revision {ticket.revision}: written by this integration",
    )


def test_a_change_by_someone_before_our_own_write_is_still_applied(
    inbound: tuple[Inbound, Anomalies],
    provider: ServiceNowProvider,
    emulator: Emulator,
    linked: Linked,
) -> None:
    engine, anomalies = inbound
    sys_id, number, journal_reads = linked.sys_id, linked.number, linked.journal_reads
    emulator.act_as("beth.anglin", sys_id, state="2")  # its notification lost
    engine.service.anomaly_commented(1, "Our own note")
    deliver_all(engine)  # the ticket's newest revision is ours, the one before is not

    engine.apply(INTEGRATION_ID, provider.get_many([sys_id]), provider, InboundPolicy())

    assert journal_reads == [sys_id]
    assert [text for _, text, _ in anomalies.comments] == [
        f"Ticket {number} status changed from New to In Progress by someone"
    ]


def test_a_change_of_ours_that_changed_nothing_does_not_take_a_persons_revision(
    inbound: tuple[Inbound, Anomalies],
    provider: ServiceNowProvider,
    emulator: Emulator,
    linked: Linked,
) -> None:
    engine, anomalies = inbound
    sys_id, number, journal_reads = linked.sys_id, linked.number, linked.journal_reads
    emulator.act_as("beth.anglin", sys_id, state="2", work_notes="on it")  # notification lost
    # Our own change to the same state: the instance saves nothing and answers the agent's
    # revision; then a note of ours makes the next one.
    change = ChangeTicket(TicketChanges(status="2"))
    engine.service.outbox.enqueue([NewEvent(INTEGRATION_ID, sys_id, change, 1)])
    deliver_all(engine)
    engine.service.anomaly_commented(1, "Our own note")
    deliver_all(engine)

    engine.apply(INTEGRATION_ID, provider.get_many([sys_id]), provider, InboundPolicy())

    assert journal_reads == [sys_id]
    assert f"Work note on {number} by beth.anglin: on it" in [
        text for _, text, _ in anomalies.comments
    ]
