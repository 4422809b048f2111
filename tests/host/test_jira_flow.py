"""The seed's whole flow through the reference service with a Jira integration (type "jira"), and
two-way sync with Jira's webhooks on each database and beside a fleet on each broker."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from jira_emulator import DEFAULT_API_TOKEN, DEFAULT_EMAIL, JiraEmulator, run_in_thread
from jira_emulator.server import RunningEmulator
from ticketing_jira import JiraProvider

from ticketing_core.models import TicketChanges

from .conftest import (
    ANOMALY,
    ANOMALY_ID,
    Host,
    StartHost,
    links_path,
    ok,
    settled,
    tickets_path,
    wait_until,
)
from .inbound_helpers import DEPLOYMENTS, start_deployed

JIRA_TOKEN = f"{DEFAULT_EMAIL}:{DEFAULT_API_TOKEN}"


@pytest.fixture(scope="module")
def jira_server() -> Iterator[RunningEmulator]:
    with run_in_thread(JiraEmulator()) as running:
        yield running


@pytest.fixture
def jira(jira_server: RunningEmulator) -> JiraEmulator:
    jira_server.emulator.reset()
    return jira_server.emulator


@pytest.fixture(params=DEPLOYMENTS)
def deployment(request: pytest.FixtureRequest) -> str:
    """Two-way sync with Jira, on each database and beside a fleet on each broker."""
    return str(request.param)


@pytest.fixture
def jira_host(start_host: StartHost, jira: JiraEmulator, jira_server: RunningEmulator) -> Host:
    return with_jira(start_host(), jira_server)


def with_jira(host: Host, jira_server: RunningEmulator) -> Host:
    """The host with a Jira integration and the seed's anomaly."""
    body = {"type": "jira", "api_url": jira_server.url, "api_access_token": JIRA_TOKEN}
    integration = ok(host.api.post("/api/integrations", json=body), 201)
    assert (integration["type"], integration["connected"]) == ("jira", True)
    ok(host.api.post("/api/anomalies", json=ANOMALY), 201)
    return host


def comments(jira: JiraEmulator, key: str) -> list[str]:
    return [comment["text"] for comment in jira.comments(key)]


def test_seed_flow_against_jira(
    jira_host: Host, jira: JiraEmulator, jira_server: RunningEmulator
) -> None:
    api = jira_host.api
    request = {"title": "Nulls in customer_email", "description": "150 nulls", "priority": "High"}

    created: dict[str, Any] = ok(api.post(tickets_path(), json=request))
    ticket = created["ticket"]
    assert ticket["ticket_number"].startswith("DQ-")
    assert "## Qualytics Anomaly Linked" in ticket["description"]
    assert f"https://qualytics.example/anomalies/{ANOMALY_ID}" in ticket["description"]
    assert (
        created["message"]
        == f"Ticket {ticket['ticket_number']} created and linked to anomaly 12345"
    )

    (other,) = jira.seed_issues(1, summary="Nightly load failed")
    linked = ok(api.post(links_path(), json={"ticket_number": other["key"]}))
    assert linked["message"] == f"Ticket {other['key']} linked to anomaly 12345"

    ok(api.put(f"/api/anomalies/{ANOMALY_ID}", json={"status": "Acknowledged"}))
    ok(api.post(f"/api/anomalies/{ANOMALY_ID}/comments", json={"message": "ETL issue"}), 201)
    assert settled(jira_host)["dead"] == 0

    for key in (ticket["ticket_number"], other["key"]):
        notes = comments(jira, key)
        assert any(n.endswith("Qualytics Anomaly Status: Acknowledged") for n in notes), notes
        assert "Comment from Qualytics: ETL issue" in notes
    assert comments(jira, other["key"])[0].startswith("Linked to Qualytics anomaly 12345")

    agent = JiraProvider(api_url=jira_server.url, api_access_token=JIRA_TOKEN)
    agent.update(other["id"], TicketChanges(status="In Progress"))
    agent.close()
    links = ok(api.post(f"/api/anomalies/{ANOMALY_ID}/ticket-links/sync"))

    assert {link["ticket_number"]: link["status"] for link in links} == {
        ticket["ticket_number"]: "To Do",
        other["key"]: "In Progress",
    }
    anomaly = ok(api.get(f"/api/anomalies/{ANOMALY_ID}"))
    assert anomaly["status"] == "Acknowledged"
    assert anomaly["comments"][-1]["message"] == (
        f"Ticket {other['key']} status changed from To Do to In Progress"
    )


def test_jira_priorities_are_checked_against_the_providers_choices(jira_host: Host) -> None:
    request = {"title": "t", "description": "d", "priority": "2"}

    response = jira_host.api.post(tickets_path(), json=request)

    assert response.status_code == 422
    assert "priority" in response.text
    assert "Highest" in response.text


def test_integration_options_reach_the_provider(
    start_host: StartHost, jira: JiraEmulator, jira_server: RunningEmulator
) -> None:
    host = start_host()
    body = {"type": "jira", "api_url": jira_server.url, "api_access_token": JIRA_TOKEN}
    ok(host.api.post("/api/integrations", json=body | {"options": {"project": "SD"}}), 201)
    ok(host.api.post("/api/anomalies", json=ANOMALY), 201)

    created = ok(host.api.post(tickets_path(), json={"title": "t", "description": "d",
                                                     "priority": "High"}))  # fmt: skip
    ok(host.api.put(f"/api/anomalies/{ANOMALY_ID}", json={"status": "Acknowledged"}))
    settled(host)

    key = created["ticket"]["ticket_number"]
    assert key.startswith("SD-")
    assert [c["internal"] for c in jira.comments(key)] == [True]  # a service desk: internal notes


def test_unknown_integration_options_are_refused(
    start_host: StartHost, jira: JiraEmulator, jira_server: RunningEmulator
) -> None:
    host = start_host()
    body = {"type": "jira", "api_url": jira_server.url, "api_access_token": JIRA_TOKEN}

    response = host.api.post("/api/integrations", json=body | {"options": {"colour": "red"}})

    assert response.status_code == 400
    assert "colour" in response.json()["detail"]
    assert ok(host.api.get("/api/integrations")) == []


def test_state_mapping_resolves_jira_issues_too(
    start_host: StartHost, jira: JiraEmulator, jira_server: RunningEmulator
) -> None:
    host = start_host()
    body = {"type": "jira", "api_url": jira_server.url, "api_access_token": JIRA_TOKEN,
            "sync_policy": "state-mapping"}  # fmt: skip
    ok(host.api.post("/api/integrations", json=body), 201)
    ok(host.api.post("/api/anomalies", json=ANOMALY), 201)
    created = ok(host.api.post(tickets_path(), json={"title": "t", "description": "d",
                                                     "priority": "High"}))  # fmt: skip

    ok(host.api.put(f"/api/anomalies/{ANOMALY_ID}", json={"status": "Resolved"}))

    assert settled(host)["dead"] == 0
    key = created["ticket"]["ticket_number"]
    assert next(i for i in jira.issues if i["key"] == key)["status"] == "Done"


def test_two_way_sync_with_jira_webhooks(
    start_host: StartHost,
    deployed: dict[str, Any],
    jira: JiraEmulator,
    jira_server: RunningEmulator,
) -> None:
    jira_host = with_jira(start_deployed(start_host, deployed), jira_server)
    api = jira_host.api
    request = {"title": "Nulls in customer_email", "description": "150 nulls", "priority": "High"}
    key = ok(api.post(tickets_path(), json=request))["ticket"]["ticket_number"]
    settled(jira_host)
    enabled = ok(api.put("/api/integrations/1/inbound", json={"enabled": True}))
    assert '"jira:issue_updated"' in enabled["business_rule"]
    jira.add_webhook(
        f"{jira_host.url}/api/inbound/1",
        enabled["secret"],
        events=("jira:issue_updated", "comment_created"),
    )

    jira.act_as("john.doe@example.com", key, status="In Progress", comment="On it.")
    jira.wait_for_webhooks()
    wait_until(lambda: not jira_host.runtime.inbound.pending_integrations())
    settled(jira_host)

    [link] = ok(api.get(f"/api/anomalies/{ANOMALY_ID}/ticket-links"))
    messages = [c["message"] for c in ok(api.get(f"/api/anomalies/{ANOMALY_ID}"))["comments"]]
    assert link["status"] == "In Progress"
    assert any(
        m.startswith(f"Ticket {key} status changed from To Do to In Progress") for m in messages
    )
    assert (
        sum(m.startswith(f"Comment on {key} by ") and m.endswith(": On it.") for m in messages) == 1
    )
    assert sum("On it." in text for text in comments(jira, key)) == 1  # not pushed back
    log = ok(api.get("/api/integrations/1/sync-log"))
    assert {"received", "applied"} <= {entry["decision"] for entry in log}
