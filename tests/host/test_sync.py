"""Status changes and comments pushed as work notes; the manual pull. Over real HTTP."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from servicenow_emulator import Emulator

from ticketing_core.models import TicketChanges
from ticketing_core.policies import AddWorkNote
from ticketing_servicenow import ServiceNowProvider

from .conftest import (
    ANOMALY,
    TICKET_REQUEST,
    Host,
    StartHost,
    create_integration,
    incident,
    links_path,
    ok,
    settled,
    tickets_path,
    wait_until,
    work_notes,
)

STATUS_NOTE = r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\] Qualytics Anomaly Status: Acknowledged"


@pytest.fixture
def linked(host: Host, emulator: Emulator, ticket: dict[str, Any]) -> list[str]:
    """The sys_ids of two tickets linked to the anomaly: one created from it, one linked."""
    [row] = emulator.seed_incidents(1)
    ok(host.api.post(links_path(), json={"ticket_id": row["sys_id"]}))
    return [ticket["ticket"]["ticket_id"], row["sys_id"]]


def notes_after_linking(emulator: Emulator, sys_id: str) -> list[str]:
    return [note for note in work_notes(emulator, sys_id) if not note.startswith("Linked to")]


def work_notes_queued(host: Host) -> list[str]:
    entries = host.runtime.service.outbox.entries()
    return [event.action.text for event in entries if isinstance(event.action, AddWorkNote)]


def delivered_note(emulator: Emulator, sys_id: str) -> str:
    """The one work note the outbox delivered to the ticket, once it is there."""
    [note] = wait_until(lambda: notes_after_linking(emulator, sys_id))
    return note


def test_a_status_change_is_a_work_note_on_every_linked_ticket(
    host: Host, emulator: Emulator, linked: list[str]
) -> None:
    changed = ok(host.api.put("/api/anomalies/12345", json={"status": "Acknowledged"}))

    assert changed["status"] == "Acknowledged"
    for sys_id in linked:
        assert re.fullmatch(STATUS_NOTE, delivered_note(emulator, sys_id))
        assert incident(emulator, sys_id)["state"] == "1"
    assert settled(host) == {"pending": 0, "delivered": 3, "dead": 0}  # and the linkage note


def test_the_same_status_again_notes_nothing(host: Host, linked: list[str]) -> None:
    ok(host.api.put("/api/anomalies/12345", json={"status": "Active"}))

    assert settled(host)["delivered"] == 1  # the linkage note only
    assert [note for note in work_notes_queued(host) if "Status" in note] == []


@pytest.mark.parametrize("status", ["Closed", "acknowledged", None, 3])
def test_an_unknown_status_is_422_and_changes_nothing(
    host: Host, anomaly: dict[str, Any], status: object
) -> None:
    response = host.api.put("/api/anomalies/12345", json={"status": status})

    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["detail"]] == [["body", "status"]]
    assert ok(host.api.get("/api/anomalies/12345"))["status"] == "Active"


def test_a_comment_is_a_work_note_with_code_tags_neutralised(
    host: Host, emulator: Emulator, linked: list[str]
) -> None:
    message = "ETL issue, see [code]<img src=x onerror=alert(1)>[/code]"
    neutralised = "ETL issue, see [\u200bcode]<img src=x onerror=alert(1)>[\u200b/code]"

    comment = ok(host.api.post("/api/anomalies/12345/comments", json={"message": message}), 201)

    assert list(comment) == ["id", "message", "origin", "created"]
    assert (comment["message"], comment["origin"]) == (message, "user")
    for sys_id in linked:
        assert delivered_note(emulator, sys_id) == f"Comment from Qualytics: {neutralised}"
    assert ok(host.api.get("/api/anomalies/12345"))["comments"] == [comment]


def test_a_blank_comment_is_422_and_stores_nothing(host: Host, linked: list[str]) -> None:
    response = host.api.post("/api/anomalies/12345/comments", json={"message": "  "})

    assert response.status_code == 422
    assert response.json() == {"detail": "comment text must not be empty"}
    assert ok(host.api.get("/api/anomalies/12345"))["comments"] == []


def test_pulling_records_status_and_comments_only_on_a_change(
    host: Host, emulator: Emulator, provider: ServiceNowProvider, linked: list[str]
) -> None:
    created_id, other_id = linked
    before = ok(host.api.get("/api/anomalies/12345/ticket-links"))

    unchanged = ok(host.api.post("/api/anomalies/12345/ticket-links/sync"))
    provider.update(other_id, TicketChanges(status="In Progress"))
    pulled = ok(host.api.post("/api/anomalies/12345/ticket-links/sync"))

    assert [link["status"] for link in unchanged] == ["New", "New"]
    assert all(a["last_synced"] >= b["last_synced"] for a, b in zip(unchanged, before, strict=True))
    assert [link["status"] for link in pulled] == ["New", "In Progress"]
    assert pulled == ok(host.api.get("/api/anomalies/12345/ticket-links"))
    anomaly = ok(host.api.get("/api/anomalies/12345"))
    assert anomaly["status"] == "Active"
    [comment] = anomaly["comments"]
    assert comment["origin"] == "integration"
    assert (
        comment["message"]
        == f"Ticket {pulled[1]['ticket_number']} status changed from New to In Progress"
    )
    # The integration's own comment is never pushed back to a ticket: no echo.
    assert all(note.startswith("Linked to") for note in work_notes_queued(host))
    assert notes_after_linking(emulator, created_id) == []
    assert notes_after_linking(emulator, other_id) == []


def test_a_pull_that_reads_no_ticket_is_502(
    host: Host, emulator: Emulator, linked: list[str]
) -> None:
    settled(host)  # the linkage note is delivered: the faults are for the pull alone
    emulator.add_fault("500", count=len(linked), method="GET")  # a 502 or 503 would be retried

    response = host.api.post("/api/anomalies/12345/ticket-links/sync")

    assert response.status_code == 502
    assert "ServiceNow is unavailable: Internal Server Error" in response.json()["detail"]


def test_pulling_for_an_unknown_anomaly_is_404(host: Host) -> None:
    assert host.api.post("/api/anomalies/999/ticket-links/sync").status_code == 404


def test_a_host_pushes_to_tickets_of_integrations_another_process_made(
    start_host: StartHost, emulator: Emulator, emulator_url: str
) -> None:
    other = start_host()  # shares the database; started before the integration existed
    first = start_host()
    create_integration(first, emulator_url)
    ok(first.api.post("/api/anomalies", json=ANOMALY), 201)
    sys_id = ok(first.api.post(tickets_path(), json=TICKET_REQUEST))["ticket"]["ticket_id"]

    ok(other.api.put("/api/anomalies/12345", json={"status": "Acknowledged"}, timeout=5))

    assert re.fullmatch(STATUS_NOTE, delivered_note(emulator, sys_id))


def scrape(host: Host) -> dict[str, float]:
    scraped = httpx.get(f"{host.url}/metrics")  # no token: for a Prometheus on the inside
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain")
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in scraped.text.splitlines()
        if line and not line.startswith("#")
    }


def test_metrics_show_the_outbox_and_the_deliveries_in_prometheus_text(
    host: Host, emulator: Emulator, linked: list[str]
) -> None:
    wait_until(lambda: settled(host)["delivered"] == 1)  # the linkage note
    delivered = 'ticketing_delivery_attempts_total{integration="1",outcome="delivered"}'
    latencies = 'ticketing_delivery_latency_seconds_count{integration="1"}'
    before = scrape(host)

    ok(host.api.put("/api/anomalies/12345", json={"status": "Acknowledged"}))
    wait_until(lambda: settled(host)["delivered"] == 3)
    after = scrape(host)

    assert after['ticketing_outbox_events{integration="1",status="delivered"}'] == 3
    assert after['ticketing_outbox_events{integration="1",status="pending"}'] == 0
    assert after['ticketing_in_flight{integration="1"}'] == 0
    assert after[delivered] - before.get(delivered, 0) == 2
    assert after[latencies] - before.get(latencies, 0) == 2


def test_a_ticket_is_linked_through_one_integration_at_a_time(
    start_host: StartHost, emulator: Emulator, emulator_url: str
) -> None:
    """Two integrations to one instance, each linked to one incident, would each count the
    other's identical notes as their own: the second link is refused."""
    host = start_host()
    first, second = create_integration(host, emulator_url), create_integration(host, emulator_url)
    ok(host.api.post("/api/anomalies", json=ANOMALY), 201)
    created = ok(
        host.api.post(tickets_path(), json=TICKET_REQUEST | {"integration_id": first["id"]})
    )
    number = created["ticket"]["ticket_number"]

    refused = host.api.post(
        links_path(), json={"ticket_number": number, "integration_id": second["id"]}
    )

    assert refused.status_code == 409
    assert f"linked through integration {first['id']}" in refused.json()["detail"]


def test_notes_delivered_before_an_integration_was_recreated_still_count(
    start_host: StartHost, emulator: Emulator, emulator_url: str
) -> None:
    """Delete the integration, connect the instance again and relink the incident: the notes
    from before are on the ticket, and a refused identical note is still delivered."""
    host = start_host(doubt_seconds=1.0, backoff_initial=0.1, backoff_max=0.5)
    first = create_integration(host, emulator_url)
    ok(host.api.post("/api/anomalies", json=ANOMALY), 201)
    created = ok(
        host.api.post(tickets_path(), json=TICKET_REQUEST | {"integration_id": first["id"]})
    )
    sys_id, number = created["ticket"]["ticket_id"], created["ticket"]["ticket_number"]
    outbox = host.runtime.service.outbox
    ok(host.api.post(f"/api/anomalies/{ANOMALY['id']}/comments", json={"message": "LGTM"}), 201)
    wait_until(lambda: outbox.counts()["pending"] == 0)
    assert host.api.delete(f"/api/integrations/{first['id']}").status_code == 204
    second = create_integration(host, emulator_url)
    ok(host.api.post(links_path(), json={"ticket_number": number, "integration_id": second["id"]}))
    wait_until(lambda: outbox.counts()["pending"] == 0)
    emulator.add_fault("503", method="PATCH")  # refused: nothing stored

    ok(host.api.post(f"/api/anomalies/{ANOMALY['id']}/comments", json={"message": "LGTM"}), 201)

    wait_until(lambda: outbox.counts()["pending"] == 0, timeout=30)
    assert work_notes(emulator, sys_id).count("Comment from Qualytics: LGTM") == 2
