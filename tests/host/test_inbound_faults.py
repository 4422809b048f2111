"""Two-way sync under the faults issue 18 names, over real HTTP, on SQLite and PostgreSQL and
beside a Dramatiq fleet on Redis and on RabbitMQ: refusals during the poll, tickets deleted,
reopened and cancelled, an unreadable journal, late commits, reordered notifications, edits on
both sides at once."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import httpx
import pytest
from servicenow_emulator import DEFAULT_PASSWORD, Emulator

from ticketing_core.notifications import TICKETING_V1, sign

from .conftest import (
    Host,
    StartHost,
    incident,
    ok,
    settled,
)
from .inbound_helpers import (
    AGENT,
    ANOMALY_PATH,
    DEPLOYMENTS,
    OWN_USER,
    Linked,
    comments,
    decisions,
    enable,
    install_rules,
    log_of,
    quiet,
    receiver,
    ticket_from_anomaly,
)


@pytest.fixture(params=DEPLOYMENTS)
def deployment(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def link_status(host: Host) -> str:
    [link] = ok(host.api.get(f"{ANOMALY_PATH}/ticket-links"))
    return str(link["status"])


def test_a_429_with_retry_after_during_the_poll_is_waited_out(
    inbound_linked: Linked, emulator: Emulator
) -> None:
    host, integration_id, sys_id, _ = inbound_linked
    emulator.notify_to(None)
    emulator.act_as(AGENT, sys_id, state="2")
    emulator.add_fault("429", method="GET", retry_after=1)

    host.runtime.inbound.reconcile(integration_id)

    assert link_status(host) == "In Progress"


def test_a_deleted_ticket_is_noted_and_its_link_keeps_what_it_knew(
    inbound_linked: Linked, emulator: Emulator, emulator_url: str
) -> None:
    host, integration_id, sys_id, secret = inbound_linked
    emulator.notify_to(None)  # the agent's change is heard only through the notification below
    emulator.act_as(AGENT, sys_id, state="2")
    body = json.dumps(emulator.notification_for(sys_id)).encode()
    gone = httpx.delete(
        f"{emulator_url}/api/now/table/incident/{sys_id}", auth=("admin", DEFAULT_PASSWORD)
    )
    assert gone.status_code == 204

    headers = sign(TICKETING_V1, secret, body, time.time())
    assert httpx.post(receiver(host, integration_id), content=body, headers=headers).status_code
    quiet(host, emulator)

    assert "not found" in decisions(host, integration_id, ticket_id=sys_id)
    assert link_status(host) == "New"


def test_resolved_reopened_and_cancelled_are_each_heard_in_order(
    inbound_linked: Linked, emulator: Emulator
) -> None:
    host, _, sys_id, _ = inbound_linked
    seen = []

    for state in ("6", "2", "8"):
        fields = {"close_code": "Solved (Permanently)", "close_notes": "x"} if state == "6" else {}
        emulator.act_as(AGENT, sys_id, state=state, **fields)
        quiet(host, emulator)
        seen.append(link_status(host))

    assert seen == ["Resolved", "In Progress", "Canceled"]
    changes = [c for c in comments(host) if "status changed" in c]
    assert [c.split(" from ")[1].split(" by ")[0] for c in changes] == [
        "New to Resolved",
        "Resolved to In Progress",
        "In Progress to Canceled",
    ]


def test_an_unreadable_journal_is_noted_and_the_status_still_follows(
    inbound_linked: Linked, emulator: Emulator
) -> None:
    host, integration_id, sys_id, _ = inbound_linked
    emulator.deny_tables = {"sys_journal_field"}

    emulator.act_as(AGENT, sys_id, state="2", work_notes="you cannot read me")
    quiet(host, emulator)

    assert link_status(host) == "In Progress"
    assert "entries unreadable" in decisions(host, integration_id, ticket_id=sys_id)
    assert not any("you cannot read me" in c for c in comments(host))


def test_a_commit_that_lands_late_is_caught_by_the_overlap_of_the_next_poll(
    inbound_linked: Linked, emulator: Emulator
) -> None:
    host, integration_id, sys_id, _ = inbound_linked
    emulator.notify_to(None)
    host.runtime.inbound.reconcile(integration_id)  # the cursor is now
    emulator.clock_skew = timedelta(seconds=-60)  # a change stamped a minute before the cursor

    emulator.act_as(AGENT, sys_id, state="2")
    host.runtime.inbound.reconcile(integration_id)

    assert link_status(host) == "In Progress"


def test_reordered_notifications_leave_the_newest_state(
    inbound_linked: Linked, emulator: Emulator
) -> None:
    host, integration_id, sys_id, secret = inbound_linked
    emulator.notify_to(None)
    emulator.act_as(AGENT, sys_id, state="2")
    first = json.dumps(emulator.notification_for(sys_id)).encode()
    emulator.act_as(AGENT, sys_id, state="3", hold_reason="1")
    second = json.dumps(emulator.notification_for(sys_id)).encode()

    for body in (second, first):  # the later change's notification arrives first
        headers = sign(TICKETING_V1, secret, body, time.time())
        posted = httpx.post(receiver(host, integration_id), content=body, headers=headers)
        assert posted.status_code == 202
        quiet(host, emulator)

    assert link_status(host) == "On Hold"
    assert sum("status changed" in c for c in comments(host)) == 1  # read once, at its newest
    # The older one came after the newer was applied: logged stale, and its ticket not read again.
    older = f"revision {json.loads(first)['sys_mod_count']}:"
    log = log_of(host, integration_id, ticket_id=sys_id)
    assert [e["decision"] for e in log if older in e["detail"]] == ["stale"]


def test_edits_on_both_sides_at_once_each_arrive_once(
    inbound_linked: Linked, emulator: Emulator
) -> None:
    host, _, sys_id, _ = inbound_linked
    notes_before = len(emulator.journal(sys_id))

    ok(host.api.post(f"{ANOMALY_PATH}/comments", json={"message": "from the host"}), 201)
    emulator.act_as(AGENT, sys_id, work_notes="from the agent")
    quiet(host, emulator)
    time.sleep(0.3)
    quiet(host, emulator)

    journal = [entry["value"] for entry in emulator.journal(sys_id)]
    assert len(journal) == notes_before + 2
    assert sum("from the host" in value for value in journal) == 1
    assert sum("from the agent" in value for value in journal) == 1
    assert [c for c in comments(host) if "from the agent" in c] == [
        f"Work note on {emulator.incidents[0]['number']} by {AGENT}: from the agent"
    ]
    assert OWN_USER not in {c.split(" by ")[-1].split(":")[0] for c in comments(host)}


def test_a_persons_status_change_followed_by_a_note_of_ours_is_still_heard(
    inbound_linked: Linked, emulator: Emulator
) -> None:
    host, integration_id, sys_id, _ = inbound_linked
    emulator.notify_to(None)  # read by the poll, after our note made us the last writer
    emulator.act_as(AGENT, sys_id, state="2")
    ok(host.api.post(f"{ANOMALY_PATH}/comments", json={"message": "a note of ours"}), 201)
    settled(host)
    assert incident(emulator, sys_id)["sys_updated_by"] == OWN_USER

    host.runtime.inbound.reconcile(integration_id)

    assert link_status(host) == "In Progress"
    [heard] = [c for c in comments(host) if "status changed" in c]
    # "someone": the last writer was us. (The worker's own first poll may have read the
    # ticket before our note landed, and then named the agent.)
    assert heard.endswith(("from New to In Progress by someone", f"In Progress by {AGENT}"))


def test_our_own_status_change_followed_by_an_agents_note_is_not_credited_to_the_agent(
    start_host: StartHost, emulator: Emulator, emulator_url: str
) -> None:
    host = start_host()
    integration_id, sys_id = ticket_from_anomaly(host, emulator_url, sync_policy="state-mapping")
    secret = enable(host, integration_id)["secret"]
    install_rules(emulator, host, integration_id, secret)
    ok(host.api.put(ANOMALY_PATH, json={"status": "Resolved"}))  # resolves the ticket
    settled(host)

    emulator.act_as(AGENT, sys_id, work_notes="confirmed fixed")
    quiet(host, emulator)

    assert link_status(host) == "Resolved"
    assert not [c for c in comments(host) if "status changed" in c]
    assert any(c.endswith(f"by {AGENT}: confirmed fixed") for c in comments(host))
    assert "echo dropped" in decisions(host, integration_id, ticket_id=sys_id)


def test_turning_two_way_sync_off_and_on_copies_no_note_twice(
    inbound_linked: Linked, emulator: Emulator
) -> None:
    host, integration_id, sys_id, _ = inbound_linked
    emulator.act_as(AGENT, sys_id, work_notes="note one")
    quiet(host, emulator)
    path = f"/api/integrations/{integration_id}/inbound"
    ok(host.api.put(path, json={"enabled": False}))
    secret = enable(host, integration_id)["secret"]
    install_rules(emulator, host, integration_id, secret)

    emulator.act_as(AGENT, sys_id, work_notes="note two")
    quiet(host, emulator)

    copied = [c for c in comments(host) if c.startswith("Work note on")]
    assert [c.rsplit(": ", 1)[1] for c in copied] == ["note one", "note two"]


def test_an_instance_clock_behind_the_hosts_loses_no_note(
    start_host: StartHost, emulator: Emulator, emulator_url: str
) -> None:
    emulator.clock_skew = timedelta(minutes=-10)  # its notes carry times before the link's
    host = start_host()
    integration_id, sys_id = ticket_from_anomaly(host, emulator_url)
    enable(host, integration_id)

    emulator.act_as(AGENT, sys_id, work_notes="root cause found")
    host.runtime.inbound.reconcile(integration_id)  # its notifications would be refused as stale

    assert any(c.endswith(f"by {AGENT}: root cause found") for c in comments(host))
