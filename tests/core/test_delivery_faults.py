"""Exactly-once delivery under the faults that bite: writes committed then answered 503 or never
answered, a commit that lands after the client gave up, a skewed instance clock, an integration user
denied the journal table. Over real HTTP against the emulator, on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servicenow_emulator import Emulator

from ticketing_core.models import Anomaly, TicketDraft
from ticketing_core.policies import WorkNotesOnly
from ticketing_core.sync.database import Database
from ticketing_core.sync.dispatch import ThreadedDispatcher
from ticketing_core.sync.outbox import DEAD, DELIVERED, PENDING, Outbox
from ticketing_core.sync.service import SyncService
from ticketing_servicenow import ServiceNowProvider, mapping

from ..conftest import wait_until

ANOMALY = Anomaly(id=1, type="Record", status="Active")
# The emulator finishes a request at once unless told to stall: after 0.3 s an attempt has landed or
# never will. A test that stalls the instance widens the window past the stall.
DOUBT_SECONDS = 0.3


@pytest.fixture
def service(database: Database, provider: ServiceNowProvider) -> Iterator[SyncService]:
    sync = SyncService(
        database,
        provider_for=lambda _id, _conn: provider,
        policy_for=lambda _id, _conn: WorkNotesOnly(),
        comment_on_anomaly=lambda *_: None,
        outbox=Outbox(database, doubt_seconds=DOUBT_SECONDS, backoff_initial=0.05, backoff_max=0.2),
        delivery_deadline=0.5,
    )
    sync.dispatcher = ThreadedDispatcher(sync.outbox, sync.delivery, poll_interval=0.05)
    sync.start()
    yield sync
    sync.stop()


@pytest.fixture
def ticket_id(service: SyncService) -> str:
    ticket, _, _ = service.create_ticket(ANOMALY, 1, TicketDraft(title="t", description="d"))
    return ticket.id


def notes(emulator: Emulator, sys_id: str) -> list[str]:
    return [e["value"] for e in emulator.journal(sys_id) if e["element"] == "work_notes"]


def delivered(service: SyncService, count: int) -> None:
    wait_until(lambda: service.outbox.counts()[DELIVERED] == count, timeout=30)


@pytest.mark.parametrize(
    "instance",
    ["plain", "clock ahead 10 min", "clock behind 10 min", "journal table denied"],
)
def test_ten_comments_through_ambiguous_failures_arrive_once_each_in_order(
    service: SyncService, emulator: Emulator, ticket_id: str, instance: str
) -> None:
    if instance.startswith("clock"):
        emulator.clock_skew = timedelta(minutes=10 if "ahead" in instance else -10)
    if instance == "journal table denied":
        emulator.deny_tables = {"sys_journal_field"}
    # Three commits answered 503, three answers lost, spread over the ten PATCHes.
    for kind in ("503_after_commit", "close_after_commit") * 3:
        emulator.add_fault(kind, method="PATCH")

    for n in range(10):
        service.anomaly_commented(ANOMALY.id, f"comment {n}")

    delivered(service, 10)
    assert notes(emulator, ticket_id) == [f"Comment from Qualytics: comment {n}" for n in range(10)]
    assert sum(e.attempts for e in service.outbox.entries()) == 6


def test_identical_comments_in_one_second_one_ambiguous_both_arrive_once(
    service: SyncService, emulator: Emulator, ticket_id: str
) -> None:
    service.anomaly_commented(ANOMALY.id, "+1")
    delivered(service, 1)
    emulator.add_fault("close_after_commit", method="PATCH")

    service.anomaly_commented(ANOMALY.id, "+1")

    delivered(service, 2)
    assert notes(emulator, ticket_id) == ["Comment from Qualytics: +1"] * 2
    [second, _] = service.outbox.entries()
    assert second.attempts == 1  # it failed once, then the check found it had landed


def test_identical_comments_the_first_lost_before_commit_both_arrive(
    service: SyncService, emulator: Emulator, ticket_id: str
) -> None:
    emulator.add_fault("503", method="PATCH")  # refused before anything was written

    service.anomaly_commented(ANOMALY.id, "+1")
    service.anomaly_commented(ANOMALY.id, "+1")

    delivered(service, 2)
    assert notes(emulator, ticket_id) == ["Comment from Qualytics: +1"] * 2


def test_a_note_committed_after_the_client_gave_up_is_not_sent_again(
    service: SyncService, emulator: Emulator, ticket_id: str
) -> None:
    service.outbox.doubt = timedelta(seconds=1.5)
    emulator.add_fault("late_commit", method="PATCH", seconds=1.0)  # past the 0.5 s deadline

    service.anomaly_commented(ANOMALY.id, "slow instance")

    delivered(service, 1)
    assert notes(emulator, ticket_id) == ["Comment from Qualytics: slow instance"]
    [event] = service.outbox.entries()
    assert event.attempts == 1


def test_one_note_during_an_outage_costs_one_request_per_attempt(
    service: SyncService, emulator: Emulator, ticket_id: str
) -> None:
    service.outbox.doubt = timedelta(0)
    emulator.reset()  # forget the create's requests; the incident goes too, so recreate it
    [row] = emulator.seed_incidents(1)
    service.links.add(anomaly_id=2, integration_id=1, ticket_id=row["sys_id"],
                      ticket_number=row["number"], ticket_url=None, status="New")  # fmt: skip
    emulator.down = True

    service.anomaly_commented(2, "during the outage")
    wait_until(lambda: service.outbox.entries()[0].attempts >= 3)
    emulator.down = False
    delivered(service, 1)

    attempts = service.outbox.entries()[0].attempts
    # One PATCH per attempt; once in doubt, one read before each later one: never stacked retries.
    assert len(emulator.requests) <= 2 * (attempts + 1)
    assert notes(emulator, row["sys_id"]) == ["Comment from Qualytics: during the outage"]


def test_an_outage_longer_than_max_attempts_is_waited_out_with_few_probes(
    service: SyncService, emulator: Emulator, ticket_id: str
) -> None:
    """Issue 9: events wait as long as the instance is down. Twenty tickets' notes through an
    outage of twelve times max_attempts' worth of backoff: none parked as dead, each delivered
    once when it is back, and the down instance probed a few calls per pause, not per ticket."""
    service.outbox.max_attempts, service.outbox.backoff_max = 1, 0.4
    # Distinct drafts: an identical create request would get the first one's ticket.
    drafts = [TicketDraft(title=f"t{n}", description="d") for n in range(19)]
    tickets = [ticket_id] + [service.create_ticket(ANOMALY, 1, d)[0].id for d in drafts]
    emulator.down = True
    sent_before = len(emulator.requests)

    service.anomaly_commented(ANOMALY.id, "during the outage")
    time.sleep(3.0)
    probes = len(emulator.requests) - sent_before
    assert service.outbox.counts()[DEAD] == 0
    emulator.down = False

    delivered(service, 20)
    for sys_id in tickets:
        assert notes(emulator, sys_id) == ["Comment from Qualytics: during the outage"]
    # Pauses of 0.05, 0.1, 0.2, then 0.4 s: at most 12 in 3 s, each letting at most 7 deliveries
    # through (the dispatcher's share for one integration; the first to fail pauses the others).
    # Per ticket, backing off alone: 200 or so.
    assert probes <= 7 * 12, probes
    assert max(e.attempts for e in service.outbox.entries()) > service.outbox.max_attempts


def test_a_create_committed_after_the_client_gave_up_is_made_once(
    database: Database, provider: ServiceNowProvider, emulator: Emulator
) -> None:
    from ticketing_core import errors

    sync = SyncService(
        database,
        provider_for=lambda _id, _conn: provider,
        policy_for=lambda _id, _conn: WorkNotesOnly(),
        comment_on_anomaly=lambda *_: None,
        outbox=Outbox(database, doubt_seconds=1.5),  # past the instance's 1 s stall
        interactive_deadline=0.5,
    )
    draft = TicketDraft(title="t", description="d")
    emulator.add_fault("late_commit", method="POST", seconds=1.0)

    with pytest.raises(errors.ProviderTimeout):
        sync.create_ticket(ANOMALY, 1, draft)
    # Retried at once: the first POST may still land, so nothing is sent.
    with pytest.raises(errors.Conflict):
        sync.create_ticket(ANOMALY, 1, draft)
    time.sleep(1.6)
    ticket, link, _ = sync.create_ticket(ANOMALY, 1, draft)

    assert [row["sys_id"] for row in emulator.incidents] == [ticket.id]
    assert link.ticket_id == ticket.id
    assert [r["method"] for r in emulator.requests].count("POST") == 1


# --- hostile texts (issue 16) ------------------------------------------------------------------

FAULTS_THAT_LAND = ("503_after_commit", "close_after_commit")
# A journal header as the integration user's own entries show it.
FORGED_HEADER = "2026-12-07 10:00:00 - System Administrator (Work notes)"


def journal_text(comment: str) -> str:
    return mapping.journal_safe(f"Comment from Qualytics: {comment}")


@pytest.mark.parametrize("fault", FAULTS_THAT_LAND)
@pytest.mark.parametrize(
    "comment",
    [
        "Findings:\n\nRun 42 - nightly load (prod)\nfailed at step 3",  # pasted run summary
        "ends in blank lines\n\n",
        "\n\n2026-12-07 10:00:00 - Jane Doe (Contractor) (Work notes)\nquoted from the UI",
    ],
)
def test_texts_shaped_like_journal_entries_arrive_once_after_a_write_that_landed(
    service: SyncService, emulator: Emulator, ticket_id: str, comment: str, fault: str
) -> None:
    emulator.add_fault(fault, method="PATCH")

    service.anomaly_commented(ANOMALY.id, comment)

    delivered(service, 1)
    assert notes(emulator, ticket_id) == [journal_text(comment)]


comments = (
    st.lists(
        st.one_of(
            st.sampled_from(
                ["", "Run 42 - nightly load (prod)", FORGED_HEADER, "[code]", "\u200b"]
            ),
            st.text(st.characters(exclude_categories=["Cs"]), max_size=20),
        ),
        min_size=1,
        max_size=5,
    )
    .map("\n".join)
    .filter(str.strip)
)


def test_generated_texts_arrive_once_through_writes_that_landed(
    service: SyncService, emulator: Emulator, ticket_id: str
) -> None:
    """Each generated text, after a commit answered 503 or a lost answer, is on the ticket once
    more than before (the ticket keeps every earlier example's notes, as a real one would)."""

    @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
    @given(comment=comments, fault=st.sampled_from(FAULTS_THAT_LAND))
    def arrives_once(comment: str, fault: str) -> None:
        before = notes(emulator, ticket_id).count(journal_text(comment))
        emulator.add_fault(fault, method="PATCH")

        service.anomaly_commented(ANOMALY.id, comment)

        wait_until(lambda: service.outbox.counts()[PENDING] == 0, timeout=30)
        assert notes(emulator, ticket_id).count(journal_text(comment)) == before + 1

    arrives_once()


@pytest.mark.parametrize("journal_table", ["readable", "denied"])
def test_a_forged_entry_in_an_earlier_comment_does_not_count_for_a_later_note(
    service: SyncService, emulator: Emulator, ticket_id: str, journal_table: str
) -> None:
    """Issue 16: a comment embedding a blank line, a journal header and a later note's text must
    not pass for that note when the note's write is refused before anything is stored."""
    if journal_table == "denied":
        emulator.deny_tables = {"sys_journal_field"}
    service.anomaly_commented(ANOMALY.id, f"x\n\n{FORGED_HEADER}\nComment from Qualytics: T")
    delivered(service, 1)
    emulator.add_fault("503", method="PATCH")  # refused: nothing stored

    service.anomaly_commented(ANOMALY.id, "T")

    delivered(service, 2)
    assert notes(emulator, ticket_id).count("Comment from Qualytics: T") == 1


# --- looking first (issue 16) ------------------------------------------------------------------


@pytest.fixture
def minute_of_doubt(service: SyncService) -> SyncService:
    """ServiceNow's own doubt window: a minute."""
    service.outbox.doubt = timedelta(seconds=60)
    return service


@pytest.mark.parametrize("fault", FAULTS_THAT_LAND)
def test_a_note_that_landed_is_confirmed_within_seconds_not_after_the_window(
    minute_of_doubt: SyncService, emulator: Emulator, ticket_id: str, fault: str
) -> None:
    emulator.add_fault(fault, method="PATCH")
    started = time.monotonic()

    minute_of_doubt.anomaly_commented(ANOMALY.id, "landed")

    delivered(minute_of_doubt, 1)
    assert time.monotonic() - started < 5
    assert notes(emulator, ticket_id) == [journal_text("landed")]


def test_ten_notes_through_six_writes_that_landed_take_seconds(
    minute_of_doubt: SyncService, emulator: Emulator, ticket_id: str
) -> None:
    """Issue 16: 3 commits answered 503 and 3 lost answers in a row held one ticket's 10 notes
    for more than 6 minutes."""
    for kind in FAULTS_THAT_LAND * 3:
        emulator.add_fault(kind, method="PATCH")
    started = time.monotonic()

    for n in range(10):
        minute_of_doubt.anomaly_commented(ANOMALY.id, f"comment {n}")

    delivered(minute_of_doubt, 10)
    assert time.monotonic() - started < 30
    assert notes(emulator, ticket_id) == [journal_text(f"comment {n}") for n in range(10)]


def test_a_note_not_there_yet_waits_out_the_window_before_it_is_sent(
    service: SyncService, emulator: Emulator, ticket_id: str
) -> None:
    """Refused before anything was stored, but the instance might still be working on it: the
    look finds nothing, so the note is sent again only once the doubt window is over."""
    service.outbox.doubt = timedelta(seconds=2)
    emulator.add_fault("503", method="PATCH")
    started = time.monotonic()

    service.anomaly_commented(ANOMALY.id, "not there yet")

    delivered(service, 1)
    assert time.monotonic() - started >= 2
    assert notes(emulator, ticket_id) == [journal_text("not there yet")]
    patches = [r for r in emulator.requests if r["method"] == "PATCH"]
    assert len(patches) == 2  # the refused one and the one after the window: never in between


def test_a_look_that_began_inside_the_window_does_not_let_the_note_be_sent(
    database: Database, provider: ServiceNowProvider, emulator: Emulator
) -> None:
    """A look whose answer comes after the window ended but which read the ticket within it
    proves nothing: the instance may still have committed the earlier write after that read."""
    sync = SyncService(
        database,
        provider_for=lambda _id, _conn: provider,
        policy_for=lambda _id, _conn: WorkNotesOnly(),
        comment_on_anomaly=lambda *_: None,
        outbox=Outbox(database, doubt_seconds=2.5, backoff_initial=0.05, backoff_max=0.2),
        delivery_deadline=1.0,
    )
    ticket, _, _ = sync.create_ticket(ANOMALY, 1, TicketDraft(title="t", description="d"))
    sync.dispatcher = ThreadedDispatcher(sync.outbox, sync.delivery, poll_interval=0.05)
    # The PATCH is read at 0 s and committed at 3.3 s; the client gives up at 1 s, so the window
    # ends at about 3.5 s. The first look is asked to wait 2 s; the second reads the ticket at
    # about 3.05 s, before the commit, and its answer trickles in until about 3.9 s.
    emulator.add_fault("late_commit", method="PATCH", seconds=3.3)
    emulator.add_fault("429", method="GET", retry_after=2)
    emulator.add_fault("dribble", method="GET", seconds=0.03)
    sync.start()
    try:
        sync.anomaly_commented(ANOMALY.id, "once")
        wait_until(lambda: sync.outbox.counts()[DELIVERED] == 1, timeout=20)
    finally:
        sync.stop()

    assert notes(emulator, ticket.id) == [journal_text("once")]
