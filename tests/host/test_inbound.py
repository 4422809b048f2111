"""Two-way sync through the host, over real HTTP: the ServiceNow emulator plays the generated
Business Rules (signed notifications to the receiver) and an agent acting on incidents. The tests
on a linked incident run on SQLite and PostgreSQL and beside a fleet on Redis and RabbitMQ."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
import ticketing_host.inbound
from hypothesis import given, settings
from hypothesis import strategies as st
from servicenow_emulator import Emulator

from ticketing_core.notifications import TICKETING_V1, sign
from ticketing_core.sync.inbound import engine as inbound_engine

from .conftest import (
    ANOMALY,
    Host,
    StartHost,
    incident,
    links_path,
    ok,
    settled,
    work_notes,
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


def test_enabling_shows_the_secret_once_and_the_integration_never(
    host: Host, integration: dict[str, Any]
) -> None:
    integration_id = integration["id"]

    first = enable(host, integration_id)
    again = enable(host, integration_id, copy_entries=False)
    shown = ok(host.api.get(f"/api/integrations/{integration_id}"))

    assert first["enabled"] is True
    assert first["endpoint"] == f"https://qualytics.example/api/inbound/{integration_id}"
    assert len(first["secret"]) >= 40
    assert first["endpoint"] in first["business_rule"]
    assert "async" in first["business_rule"].lower()
    assert again == {"enabled": True, "endpoint": first["endpoint"]}
    assert shown["inbound"]["enabled"] is True
    assert shown["inbound"]["copy_entries"] is False
    assert first["secret"] not in json.dumps(shown)


def test_a_status_map_naming_a_state_the_instance_lacks_is_refused(
    host: Host, integration: dict[str, Any]
) -> None:
    path = f"/api/integrations/{integration['id']}/inbound"

    refused = host.api.put(path, json={"enabled": True, "status_map": {"Fixed": "Resolved"}})

    assert refused.status_code == 422
    assert "no state 'Fixed'" in refused.json()["detail"]
    assert "Resolved" in refused.json()["detail"]
    assert ok(host.api.get(f"/api/integrations/{integration['id']}"))["inbound"] == {
        "enabled": False
    }


def test_an_agent_resolving_the_incident_is_heard_and_named_on_the_anomaly(
    inbound_linked: Linked, emulator: Emulator
) -> None:
    host, integration_id, sys_id, _ = inbound_linked
    number = incident(emulator, sys_id)["number"]

    emulator.act_as(AGENT, sys_id, state="6", close_code="Solved (Permanently)", close_notes="ok")
    quiet(host, emulator)

    [link] = ok(host.api.get(f"{ANOMALY_PATH}/ticket-links"))
    assert link["status"] == "Resolved"
    assert f"Ticket {number} status changed from New to Resolved by {AGENT}" in comments(host)
    assert ok(host.api.get(ANOMALY_PATH))["status"] == ANOMALY["status"]  # no map: unchanged
    assert {"received", "applied"} <= set(decisions(host, integration_id, ticket_id=sys_id))


def test_the_status_map_moves_the_anomaly_and_is_not_pushed_back(
    inbound_linked: Linked, emulator: Emulator
) -> None:
    host, integration_id, sys_id, _ = inbound_linked
    enable(host, integration_id, status_map={"Resolved": "Resolved"})
    notes_before = work_notes(emulator, sys_id)

    emulator.act_as(AGENT, sys_id, state="6", close_code="Solved (Permanently)", close_notes="ok")
    quiet(host, emulator)

    assert ok(host.api.get(ANOMALY_PATH))["status"] == "Resolved"
    assert work_notes(emulator, sys_id) == notes_before  # the ticket is not told its own news
    applied = log_of(host, integration_id, anomaly_id=ANOMALY["id"])
    assert any("anomaly status -> Resolved" in entry["detail"] for entry in applied)


def test_a_work_note_by_an_agent_becomes_a_comment_that_names_ticket_and_author(
    inbound_linked: Linked, emulator: Emulator
) -> None:
    host, _, sys_id, _ = inbound_linked
    number = incident(emulator, sys_id)["number"]
    notes_before = work_notes(emulator, sys_id)

    emulator.act_as(AGENT, sys_id, work_notes="Root cause: a null-filling job; fixed upstream.")
    emulator.act_as(AGENT, sys_id, comments="Thanks, closing soon.")
    quiet(host, emulator)

    # In one second: ServiceNow's journal times cannot order them, so neither can we.
    copied = [c for c in comments(host) if c.startswith(("Work note on", "Comment on"))]
    assert sorted(copied, reverse=True) == [
        f"Work note on {number} by {AGENT}: Root cause: a null-filling job; fixed upstream.",
        f"Comment on {number} by {AGENT}: Thanks, closing soon.",
    ]
    assert work_notes(emulator, sys_id)[: len(notes_before)] == notes_before
    assert len(work_notes(emulator, sys_id)) == len(notes_before) + 1  # only the agent's


def test_a_ping_pong_between_two_tickets_settles_in_one_round_trip(
    inbound_linked: Linked, emulator: Emulator
) -> None:
    """An agent's note on ticket A reaches the anomaly, then ticket B (pushed by the
    integration). B's change is the integration's own: the rules here do not skip it, so the
    host must drop the echo itself; nothing goes back to A; then all is quiet."""
    host, integration_id, first, secret = inbound_linked
    [row] = emulator.seed_incidents(1)
    second = row["sys_id"]
    ok(host.api.post(links_path(), json={"ticket_id": second}))
    install_rules(emulator, host, integration_id, secret, skip=None)
    quiet(host, emulator)
    before = {sys_id: len(emulator.journal(sys_id)) for sys_id in (first, second)}

    emulator.act_as(AGENT, first, work_notes="ping")
    quiet(host, emulator)
    time.sleep(0.5)
    quiet(host, emulator)

    after = {sys_id: len(emulator.journal(sys_id)) for sys_id in (first, second)}
    assert after == {first: before[first] + 1, second: before[second] + 1}
    [forwarded] = work_notes(emulator, second)[-1:]
    assert forwarded.endswith(f"by {AGENT}: ping")
    assert "echo dropped" in decisions(host, integration_id, ticket_id=second)
    assert sum("ping" in c for c in comments(host)) == 1


def test_notifications_lost_while_the_host_was_down_are_caught_by_the_poll(
    inbound_linked: Linked, emulator: Emulator
) -> None:
    host, integration_id, sys_id, _ = inbound_linked
    emulator.notify_to("http://127.0.0.1:9/api/inbound/1", "wrong", OWN_USER)  # nobody listens

    emulator.act_as(AGENT, sys_id, state="2", work_notes="looking into it")
    emulator.wait_for_notifications()
    assert emulator.stats()["notifications"]["failed"] >= 1
    host.runtime.inbound.reconcile(integration_id)

    [link] = ok(host.api.get(f"{ANOMALY_PATH}/ticket-links"))
    assert link["status"] == "In Progress"
    assert any(c.endswith(f"by {AGENT}: looking into it") for c in comments(host))
    assert ok(host.api.get(f"/api/integrations/{integration_id}"))["inbound"]["last_polled_at"]


def test_duplicate_and_replayed_notifications_apply_once(
    inbound_linked: Linked, emulator: Emulator
) -> None:
    host, integration_id, sys_id, secret = inbound_linked
    emulator.act_as(AGENT, sys_id, work_notes="once only")
    quiet(host, emulator)
    body = json.dumps(emulator.notification_for(sys_id, "journal")).encode()

    for _ in range(3):
        headers = sign(TICKETING_V1, secret, body, time.time())
        replayed = httpx.post(receiver(host, integration_id), content=body, headers=headers)
        assert replayed.status_code == 202
    quiet(host, emulator)

    assert sum(c.endswith("once only") for c in comments(host)) == 1
    assert "duplicate" in decisions(host, integration_id, ticket_id=sys_id)


def _forged(secret: str, body: bytes, why: str) -> tuple[dict[str, str], bytes]:
    """Headers and body of a notification altered in the way ``why`` says."""
    now = time.time()
    signed = sign(TICKETING_V1, secret, body, now)
    return {
        "no signature": ({}, body),
        "wrong secret": (sign(TICKETING_V1, "x" * 43, body, now), body),
        "body changed": (signed, body.replace(b'"update"', b'"journal"')),
        "re-serialised": (signed, json.dumps(json.loads(body), indent=1).encode()),
        "stale": (sign(TICKETING_V1, secret, body, now - 330), body),
        "future": (sign(TICKETING_V1, secret, body, now + 330), body),
        "header case and junk": ({"x-ticketing-signature": "v1=" + "A" * 44}, body),
    }[why]


@pytest.mark.parametrize(
    "why",
    [
        "no signature", "wrong secret", "body changed", "re-serialised", "stale", "future",
        "header case and junk",
    ],
)  # fmt: skip
def test_forged_stale_or_altered_notifications_are_refused(
    inbound_linked: Linked, emulator: Emulator, why: str
) -> None:
    host, integration_id, sys_id, secret = inbound_linked
    body = json.dumps(emulator.notification_for(sys_id)).encode()
    headers, sent = _forged(secret, body, why)

    refused = httpx.post(receiver(host, integration_id), content=sent, headers=headers)

    assert refused.status_code == 401, why
    assert refused.json()["detail"].startswith("notification refused")
    assert decisions(host, integration_id)[0] == "refused"
    assert secret not in json.dumps(log_of(host, integration_id))


def test_the_receiver_answers_unknown_and_malformed_notifications_with_4xx(
    inbound_linked: Linked, emulator: Emulator
) -> None:
    host, integration_id, sys_id, secret = inbound_linked

    def post(body: bytes, integration: int = integration_id) -> httpx.Response:
        headers = sign(TICKETING_V1, secret, body, time.time())
        return httpx.post(receiver(host, integration), content=body, headers=headers)

    other_table = dict(emulator.notification_for(sys_id), table="problem")
    assert post(b"{}", integration=integration_id + 1).status_code == 404
    assert post(b"not json").status_code == 422
    assert post(b"[1, 2]").status_code == 422
    assert post(json.dumps(other_table).encode()).status_code == 422
    assert post(b"x" * (1024 * 1024 + 1)).status_code == 413
    ok(host.api.put(f"/api/integrations/{integration_id}/inbound", json={"enabled": False}))
    assert post(json.dumps(emulator.notification_for(sys_id)).encode()).status_code == 404


def test_a_rotated_secret_keeps_the_previous_one_valid(
    inbound_linked: Linked, emulator: Emulator
) -> None:
    host, integration_id, sys_id, old = inbound_linked

    rotated = ok(host.api.post(f"/api/integrations/{integration_id}/inbound/secret"))
    body = json.dumps(emulator.notification_for(sys_id)).encode()

    for secret in (old, rotated["secret"]):
        headers = sign(TICKETING_V1, secret, body, time.time())
        accepted = httpx.post(receiver(host, integration_id), content=body, headers=headers)
        assert accepted.status_code == 202
    assert rotated["secret"] != old
    assert rotated["previous_secret_valid_until"]
    assert (
        rotated["secret"] in rotated["business_rule"] or "generateMac" in rotated["business_rule"]
    )


@pytest.mark.parametrize("minutes", [10, -10])
def test_a_host_clock_ten_minutes_off_refuses_notifications_and_the_poll_catches_up(
    inbound_linked: Linked, emulator: Emulator, minutes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    host, integration_id, sys_id, _ = inbound_linked
    monkeypatch.setattr(ticketing_host.inbound, "now", lambda: time.time() + 60 * minutes)

    emulator.act_as(AGENT, sys_id, state="3", hold_reason="1")
    emulator.wait_for_notifications()
    host.runtime.inbound.reconcile(integration_id)

    assert "refused" in decisions(host, integration_id)
    [link] = ok(host.api.get(f"{ANOMALY_PATH}/ticket-links"))
    assert link["status"] == "On Hold"


def test_a_state_retired_after_the_host_read_the_choices_is_recorded_and_still_followed(
    inbound_linked: Linked, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    host, integration_id, sys_id, _ = inbound_linked
    # The host read the choices, "On Hold" among them, in its first poll (the fixture's).
    emulator.set_choice("incident", "state", "3", "On Hold", inactive=True)
    # That list is now older than the engine trusts one (a fleet's workers read theirs first).
    monkeypatch.setattr(inbound_engine, "STATES_MAX_AGE", 0.0)

    emulator.act_as(AGENT, sys_id, state="3", hold_reason="1")
    quiet(host, emulator)

    [link] = ok(host.api.get(f"{ANOMALY_PATH}/ticket-links"))
    assert link["status"] == "On Hold"
    [unknown] = [e for e in log_of(host, integration_id) if e["decision"] == "unknown state"]
    assert "'On Hold' is not in the instance's state choices" in unknown["detail"]


def test_the_pull_of_many_links_reads_a_hundred_tickets_a_request(
    host: Host, emulator: Emulator, integration: dict[str, Any], anomaly: dict[str, Any]
) -> None:
    rows = emulator.seed_incidents(150)
    for row in rows:
        ok(host.api.post(links_path(), json={"ticket_id": row["sys_id"]}))
    settled(host)
    before = len(emulator.requests)

    pulled = ok(host.api.post(f"{ANOMALY_PATH}/ticket-links/sync"))

    reads = [r for r in emulator.requests[before:] if r["path"] == "/api/now/table/incident"]
    assert len(pulled) == 150
    assert len(reads) == 2  # ceil(150 / 100)


NOTIFICATION_FIELDS = (
    "table",
    "sys_id",
    "sys_mod_count",
    "sys_updated_on",
    "sys_updated_by",
    "event",
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
notification_bodies = st.one_of(
    st.binary(max_size=200),
    st.dictionaries(st.sampled_from(NOTIFICATION_FIELDS) | st.text(max_size=8), json_values).map(
        lambda value: json.dumps(value).encode()
    ),
    st.fixed_dictionaries(
        {name: st.text(max_size=40) | json_values for name in NOTIFICATION_FIELDS}
    ).map(lambda value: json.dumps(value).encode()),
)


def test_hostile_notifications_get_a_4xx_or_are_stored_for_a_ticket_read(
    host: Host, integration: dict[str, Any]
) -> None:
    integration_id = integration["id"]
    secret = enable(host, integration_id)["secret"]

    @settings(max_examples=60, deadline=None)
    @given(body=notification_bodies, signed=st.booleans(), skew=st.integers(-400, 400))
    def check(body: bytes, signed: bool, skew: int) -> None:
        headers = sign(TICKETING_V1, secret if signed else "not-it", body, time.time() + skew)

        answer = httpx.post(receiver(host, integration_id), content=body, headers=headers)

        assert answer.status_code in (202, 401, 422), answer.text
        assert isinstance(answer.json(), dict)
        if not signed or abs(skew) > 300:
            assert answer.status_code == 401
        if answer.status_code == 202:
            notice = json.loads(body)
            assert notice["table"] == "incident"
            assert notice["event"] in ("update", "journal")

    check()


def test_the_sync_log_tells_why_a_note_did_or_did_not_arrive(
    start_host: StartHost, emulator: Emulator, emulator_url: str
) -> None:
    host = start_host(max_attempts=2, backoff_initial=0.1, backoff_max=0.2, doubt_seconds=1.0)
    integration_id, sys_id = ticket_from_anomaly(host, emulator_url)

    emulator.add_fault("503_after_commit", method="PATCH")
    ok(host.api.post(f"{ANOMALY_PATH}/comments", json={"message": "lands, unanswered"}), 201)
    settled(host)
    emulator.add_fault("500", method="PATCH", count=2)
    ok(host.api.post(f"{ANOMALY_PATH}/comments", json={"message": "never lands"}), 201)
    settled(host)

    entries = log_of(host, integration_id, ticket_id=sys_id)
    outbound = [(e["decision"], e["detail"]) for e in reversed(entries) if e["direction"] == "out"]
    assert [decision for decision, _ in outbound] == ["in doubt", "checked", "in doubt", "dead"]
    assert "lands, unanswered" in outbound[0][1]
    assert "503" in outbound[0][1]
    assert "never lands" in outbound[3][1]
    assert "500" in outbound[3][1]
    assert all(e["anomaly_id"] == ANOMALY["id"] for e in entries if e["direction"] == "out")


def test_a_pull_that_finds_a_new_status_is_a_row_of_the_sync_log(
    host: Host, emulator: Emulator, ticket: dict[str, Any]
) -> None:
    sys_id = ticket["ticket"]["ticket_id"]
    emulator.act_as(AGENT, sys_id, state="2")

    ok(host.api.post(f"{ANOMALY_PATH}/ticket-links/sync"))

    [pulled] = [e for e in log_of(host, 1, ticket_id=sys_id) if e["decision"] == "pulled"]
    assert pulled["detail"] == "status New -> In Progress, pulled"
    assert pulled["anomaly_id"] == ANOMALY["id"]


def test_a_notification_that_cannot_be_stored_in_time_is_a_503_not_a_traceback(
    host: Host, emulator: Emulator, integration: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    integration_id = integration["id"]
    secret = enable(host, integration_id)["secret"]
    [row] = emulator.seed_incidents(1)
    monkeypatch.setattr(host.runtime.inbound._intake, "timeout", 0.5)
    body = json.dumps(emulator.notification_for(row["sys_id"])).encode()

    # Another process holds SQLite's write lock (this engine begins every transaction IMMEDIATE).
    with host.runtime.database.engine.begin() as blocker:
        blocker.exec_driver_sql("SELECT 1")
        headers = sign(TICKETING_V1, secret, body, time.time())
        answer = httpx.post(receiver(host, integration_id), content=body, headers=headers)

    assert answer.status_code == 503
    assert answer.json()["detail"].startswith("the notification could not be stored in time")
    assert answer.headers["Retry-After"] == "5"
