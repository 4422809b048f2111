"""The seed's flows through SyncService, against the ServiceNow emulator over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from servicenow_emulator import Emulator

from ticketing_core import errors
from ticketing_core.models import Anomaly, FailedCheck, Ticket, TicketDraft
from ticketing_core.policies import Messages, StateMapping, SyncPolicy, WorkNotesOnly
from ticketing_core.sync.database import Database
from ticketing_core.sync.dispatch import ThreadedDispatcher
from ticketing_core.sync.outbox import DELIVERED, Outbox
from ticketing_core.sync.providers import ProviderPool
from ticketing_core.sync.service import INTEGRATION, SyncService
from ticketing_servicenow import ServiceNowProvider

from ..conftest import wait_until

INTEGRATION_ID = 34
INCIDENTS = "/api/now/table/incident"
ANOMALY = Anomaly(
    id=12345,
    type="Record",
    status="Active",
    description="150 null values",
    failed_checks=(FailedCheck("not_null", "customer_email", "must not be null"),),
)
DRAFT = TicketDraft(
    title="Data Quality Anomaly - Missing values in customer_email",
    description="150 null values detected in customer_email field",
    priority="2",
    urgency="2",
    impact="2",
)


class Host:
    """What a host gives the service: its anomaly comments, and the policy it chose."""

    def __init__(self) -> None:
        self.comments: list[tuple[int, str]] = []
        self.policy: SyncPolicy = WorkNotesOnly()


@pytest.fixture
def host() -> Host:
    return Host()


@pytest.fixture
def service(database: Database, provider: ServiceNowProvider, host: Host) -> Iterator[SyncService]:
    sync = SyncService(
        database,
        provider_for=lambda _id, _conn: provider,
        policy_for=lambda _id, _conn: host.policy,
        comment_on_anomaly=lambda anomaly_id, text: host.comments.append((anomaly_id, text)),
        messages=Messages(public_url="https://qualytics.example"),
        # The emulator commits at once: a doubt window of 0.3 s outlasts any request it holds.
        outbox=Outbox(database, doubt_seconds=0.3, backoff_initial=0.05, backoff_max=0.2),
    )
    sync.dispatcher = ThreadedDispatcher(sync.outbox, sync.delivery, poll_interval=0.05)
    sync.start()
    yield sync
    sync.stop()


def notes(emulator: Emulator, sys_id: str) -> list[str]:
    return [
        entry["value"] for entry in emulator.journal(sys_id) if entry["element"] == "work_notes"
    ]


def test_create_ticket_describes_the_anomaly_and_links_it(
    service: SyncService, emulator: Emulator, database: Database
) -> None:
    ticket, link, _ = service.create_ticket(ANOMALY, INTEGRATION_ID, DRAFT)

    assert ticket.description == (
        "150 null values detected in customer_email field"
        "\n\n---\n\n## Qualytics Anomaly Linked\n\n"
        "- Anomaly ID: 12345\n- Status: Active\n- Type: Record\n"
        "- Failed checks: not_null (customer_email): must not be null\n"
        "- Link: https://qualytics.example/anomalies/12345"
    )
    (row,) = emulator.incidents
    assert row["correlation_display"] == "Qualytics"
    # Scoped to this installation; hexadecimal, so it cannot change a query.
    assert row["correlation_id"].startswith(f"{database.installation_id}-")
    assert set(row["correlation_id"]) <= set("0123456789abcdef-")
    assert (link.anomaly_id, link.ticket_id, link.ticket_number) == (
        12345,
        ticket.id,
        ticket.number,
    )
    assert link.status == "New"
    assert service.links.for_anomaly(12345) == [link]


def test_a_retried_create_makes_no_second_incident(
    service: SyncService, emulator: Emulator
) -> None:
    first, _, _ = service.create_ticket(ANOMALY, INTEGRATION_ID, DRAFT)
    again, _, _ = service.create_ticket(ANOMALY, INTEGRATION_ID, DRAFT)

    assert again.id == first.id
    assert len(emulator.incidents) == 1
    assert len(service.links.for_anomaly(12345)) == 1


def test_the_host_skips_the_lookup_for_a_key_its_store_has_never_sent(
    service: SyncService, emulator: Emulator
) -> None:
    service.create_ticket(ANOMALY, INTEGRATION_ID, DRAFT)

    assert [(r["method"], r["path"]) for r in emulator.requests] == [("POST", INCIDENTS)]


def test_the_host_looks_its_key_up_after_an_attempt_that_may_have_landed(
    service: SyncService,
    provider: ServiceNowProvider,
    emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fresh: list[bool] = []
    create = provider.create

    def answer_lost_once(draft: TicketDraft, **options: Any) -> Ticket:
        fresh.append(options["key_is_fresh"])
        ticket = create(draft, **options)
        if len(fresh) == 1:
            raise errors.ProviderTimeout("the answer was lost")
        return ticket

    monkeypatch.setattr(provider, "create", answer_lost_once)
    with pytest.raises(errors.ProviderTimeout):
        service.create_ticket(ANOMALY, INTEGRATION_ID, DRAFT)
    time.sleep(service.requests.doubt.total_seconds() + 0.1)

    again, _, existing = service.create_ticket(ANOMALY, INTEGRATION_ID, DRAFT)

    assert fresh == [True, False]
    assert [row["sys_id"] for row in emulator.incidents] == [again.id]
    assert not existing


def test_link_appends_the_block_once_and_notes_the_linkage(
    service: SyncService, provider: ServiceNowProvider, emulator: Emulator
) -> None:
    existing = provider.create(TicketDraft(title="ETL failures", description="Nightly job failed"))

    ticket, link = service.link_ticket(ANOMALY, INTEGRATION_ID, ticket_number=existing.number)
    service.link_ticket(ANOMALY, INTEGRATION_ID, ticket_id=existing.id)

    assert ticket.description.startswith("Nightly job failed\n\n---\n\n## Qualytics Anomaly Linked")
    assert ticket.description.count("## Qualytics Anomaly Linked") == 1
    wait_until(lambda: service.outbox.counts()[DELIVERED] == 1)  # the note goes through the outbox
    assert notes(emulator, existing.id) == [
        "Linked to Qualytics anomaly 12345: https://qualytics.example/anomalies/12345"
    ]
    assert link.ticket_number == existing.number


def test_status_change_is_a_timestamped_work_note_on_every_linked_ticket(
    service: SyncService, provider: ServiceNowProvider, emulator: Emulator
) -> None:
    first, _, _ = service.create_ticket(ANOMALY, INTEGRATION_ID, DRAFT)
    other = provider.create(TicketDraft(title="other", description="d"))
    service.link_ticket(ANOMALY, INTEGRATION_ID, ticket_id=other.id)

    queued = service.anomaly_status_changed(
        12345, "Acknowledged", changed_at=datetime(2024, 1, 15, 10, 30, tzinfo=UTC)
    )

    assert queued == 2
    wait_until(lambda: service.outbox.counts()[DELIVERED] == 3)  # and the linkage note
    expected = "[2024-01-15 10:30:00 UTC] Qualytics Anomaly Status: Acknowledged"
    assert notes(emulator, first.id) == [expected]
    assert notes(emulator, other.id)[-1] == expected
    assert provider.get_status(first.id).label == "New"


def test_comment_is_forwarded_safely(service: SyncService, emulator: Emulator) -> None:
    ticket, _, _ = service.create_ticket(ANOMALY, INTEGRATION_ID, DRAFT)

    service.anomaly_commented(12345, "Looks like ETL. [code]<script>x</script>[/code]")

    wait_until(lambda: service.outbox.counts()[DELIVERED] == 1)
    assert notes(emulator, ticket.id) == [
        "Comment from Qualytics: Looks like ETL. [\u200bcode]<script>x</script>[\u200b/code]"
    ]


def test_integration_comments_are_never_pushed_back(service: SyncService) -> None:
    service.create_ticket(ANOMALY, INTEGRATION_ID, DRAFT)

    assert service.anomaly_commented(12345, "status changed", origin=INTEGRATION) == 0
    assert service.outbox.counts()["pending"] == 0


def test_pull_records_status_and_comments_only_on_change(
    service: SyncService, provider: ServiceNowProvider, host: Host
) -> None:
    from ticketing_core.models import TicketChanges

    ticket, link, _ = service.create_ticket(ANOMALY, INTEGRATION_ID, DRAFT)

    unchanged = service.pull_status(12345)
    provider.update(ticket.id, TicketChanges(status="In Progress"))
    changed = service.pull_status(12345)

    assert unchanged[0].status == "New"
    assert unchanged[0].last_synced is not None
    assert link.last_synced is not None
    assert unchanged[0].last_synced >= link.last_synced
    assert changed[0].status == "In Progress"
    assert host.comments == [
        (12345, f"Ticket {ticket.number} status changed from New to In Progress")
    ]


def test_state_mapping_policy_resolves_the_ticket(
    service: SyncService, provider: ServiceNowProvider, host: Host, emulator: Emulator
) -> None:
    host.policy = StateMapping()
    ticket, _, _ = service.create_ticket(ANOMALY, INTEGRATION_ID, DRAFT)

    service.anomaly_status_changed(12345, "Resolved")

    wait_until(lambda: service.outbox.counts()[DELIVERED] == 2)
    assert provider.get_status(ticket.id).label == "Resolved"
    row = next(r for r in emulator.incidents if r["sys_id"] == ticket.id)
    assert row["close_code"] == "Solved (Permanently)"
    assert row["close_notes"] == "Anomaly 12345 was marked Resolved in Qualytics."


def test_notes_wait_out_an_outage_and_arrive_once_in_order(
    service: SyncService, emulator: Emulator
) -> None:
    ticket, _, _ = service.create_ticket(ANOMALY, INTEGRATION_ID, DRAFT)
    emulator.down = True

    for status in ("Acknowledged", "Resolved", "Active"):
        service.anomaly_status_changed(12345, status)
    time.sleep(0.5)
    assert service.outbox.counts()[DELIVERED] == 0
    emulator.down = False

    wait_until(lambda: service.outbox.counts()[DELIVERED] == 3)
    assert [n.rsplit(": ", 1)[1] for n in notes(emulator, ticket.id)] == [
        "Acknowledged",
        "Resolved",
        "Active",
    ]


def test_identical_notes_are_both_delivered_even_after_a_refused_attempt(
    service: SyncService, emulator: Emulator
) -> None:
    ticket, _, _ = service.create_ticket(ANOMALY, INTEGRATION_ID, DRAFT)
    service.anomaly_commented(12345, "+1")
    wait_until(lambda: service.outbox.counts()[DELIVERED] == 1)
    emulator.add_fault("503", count=5, method="PATCH", retry_after=0)

    service.anomaly_commented(12345, "+1")

    wait_until(lambda: service.outbox.counts()[DELIVERED] == 2)
    assert notes(emulator, ticket.id) == ["Comment from Qualytics: +1"] * 2


def test_a_note_whose_answer_was_lost_is_not_added_twice(
    service: SyncService, emulator: Emulator
) -> None:
    ticket, _, _ = service.create_ticket(ANOMALY, INTEGRATION_ID, DRAFT)
    emulator.add_fault("drop_after_commit", count=1, method="PATCH")

    service.anomaly_commented(12345, "Looks like ETL")

    wait_until(lambda: service.outbox.counts()[DELIVERED] == 1)
    assert notes(emulator, ticket.id) == ["Comment from Qualytics: Looks like ETL"]
    assert service.outbox.entries()[0].attempts == 1


def test_pull_refreshes_the_readable_tickets_when_one_is_gone(
    service: SyncService, provider: ServiceNowProvider, emulator: Emulator
) -> None:
    from ticketing_core import errors
    from ticketing_core.models import TicketChanges

    first, _, _ = service.create_ticket(ANOMALY, INTEGRATION_ID, DRAFT)
    gone = provider.create(TicketDraft(title="deleted later", description="d"))
    service.link_ticket(ANOMALY, INTEGRATION_ID, ticket_id=gone.id)
    provider.update(first.id, TicketChanges(status="On Hold"))
    import httpx

    httpx.delete(
        f"{provider.api_url}/api/now/table/incident/{gone.id}", auth=("admin", "admin-password")
    ).raise_for_status()

    links = service.pull_status(12345)

    assert {link.ticket_number: link.status for link in links} == {
        first.number: "On Hold",
        gone.number: "New",
    }
    emulator.add_fault("500", count=2)
    with pytest.raises(errors.ProviderUnavailable):
        service.pull_status(12345)


def test_queuing_does_not_need_a_usable_provider(database: Database, host: Host) -> None:
    from ticketing_core.errors import PluginError
    from ticketing_core.sync.links import LinkStore

    def unusable(integration_id: int, _conn: object) -> ServiceNowProvider:
        raise PluginError("no ticketing provider named 'gone' is installed")

    LinkStore(database).add(anomaly_id=1, integration_id=9, ticket_id="t", ticket_number="T-1",
                            ticket_url=None, status="New")  # fmt: skip
    sync = SyncService(database, provider_for=unusable, policy_for=lambda _id, _conn: host.policy,
                       comment_on_anomaly=lambda *_: None)  # fmt: skip

    assert sync.anomaly_status_changed(1, "Acknowledged") == 1


def test_linking_a_ticket_without_a_description_adds_no_blank_lines(
    service: SyncService, emulator: Emulator
) -> None:
    [row] = emulator.seed_incidents(1, description="")

    ticket, _ = service.link_ticket(ANOMALY, INTEGRATION_ID, ticket_id=row["sys_id"])

    assert ticket.description.startswith(
        "---\n\n## Qualytics Anomaly Linked\n\n- Anomaly ID: 12345"
    )


class _Recorded:
    """A stand-in provider that remembers which settings built it and whether it was closed."""

    def __init__(self, settings: str) -> None:
        self.settings, self.closed = settings, False

    def close(self) -> None:
        self.closed = True


def test_the_pool_rebuilds_a_provider_whose_stored_settings_changed() -> None:
    stored = {"settings": "token-1"}
    pool = ProviderPool(
        lambda _id, _conn: _Recorded(stored["settings"]),  # type: ignore[arg-type, return-value]
        revision=lambda _id, _conn: stored["settings"],
        recheck_seconds=0.05,
        retire_seconds=0.2,
    )

    first = pool(1)
    unchanged = pool(1)
    stored["settings"] = "token-2"  # rotated by another process, through PATCH
    within_recheck = pool(1)
    time.sleep(0.06)
    rebuilt = pool(1)
    replaced_still_open = not first.closed  # type: ignore[attr-defined]
    closed_later = wait_until(lambda: first.closed)  # type: ignore[attr-defined]
    pool.close()

    assert unchanged is first
    assert within_recheck is first
    assert rebuilt is not first
    assert rebuilt.settings == "token-2"  # type: ignore[attr-defined]
    assert replaced_still_open  # a call in another thread may still be using it
    assert closed_later
    assert rebuilt.closed  # type: ignore[attr-defined]
