"""``ticketing demo``: every flow of the seed, offline, against a local ServiceNow emulator."""

from __future__ import annotations

import secrets
import tempfile
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import click
import httpx
from servicenow_emulator import DEFAULT_PASSWORD, Emulator, RunningEmulator, run_in_thread

import ticketing_core
from ticketing_core.hookspecs import Provider
from ticketing_core.models import Ticket, TicketChanges, TicketDraft
from ticketing_core.sync.outbox import PENDING

from .app import create_app, runtime_of
from .runtime import HostRuntime
from .server import serve_in_thread
from .settings import Settings

SERVICENOW_TOKEN = f"admin:{DEFAULT_PASSWORD}"
ANOMALY_ID = 12345
DELIVERY_TIMEOUT = 30.0
ANOMALY_PATH = f"/anomalies/{ANOMALY_ID}"
TICKETING_PATH = f"/integrations/ticketing/anomalies/{ANOMALY_ID}"
ANOMALY = {
    "id": ANOMALY_ID,
    "type": "Record",
    "status": "Active",
    "description": "150 null values in customer_email",
    "datastore": "warehouse",
    "container": "customers",
    "field": "customer_email",
    "failed_checks": [
        {"rule": "not_null", "field": "customer_email", "description": "must not be null"}
    ],
}
TICKET_REQUEST = {
    "title": "Data Quality Anomaly - Missing values in customer_email",
    "description": "150 null values detected in customer_email field",
    "priority": "2",
    "urgency": "2",
    "impact": "2",
    "category": "Data",
    "subcategory": "Data Quality",
    "assigned_to": "john.doe",
    "assigned_group": "Data Engineering",
}
COMMENT = "Investigating with data team. Looks like ETL pipeline issue."
AGENT = "beth.anglin"  # a ServiceNow user of the emulator's, not the integration's


def main() -> None:
    """Start an emulator and the host (temporary database), run the flows, stop everything."""
    token = secrets.token_urlsafe(16)
    with tempfile.TemporaryDirectory() as tmp, run_in_thread(Emulator()) as snow:
        settings = Settings(
            database=str(Path(tmp) / "demo.db"),
            public_url="https://qualytics.example.com",
            allow_http=True,
            allow_private_hosts=True,  # the emulator listens on 127.0.0.1
            api_token=token,
        )
        app = create_app(settings)
        with (
            serve_in_thread(app) as host,
            httpx.Client(
                base_url=f"{host.url}/api", headers={"Authorization": f"Bearer {token}"}
            ) as api,
            closing(
                ticketing_core.connect(
                    "servicenow",
                    api_url=snow.url,
                    api_access_token=SERVICENOW_TOKEN,
                    allow_http=True,
                )
            ) as agent,
        ):
            run_demo(api, agent, snow, runtime_of(app))
            two_way(api, snow.emulator, host.url, runtime_of(app))


def run_demo(
    api: httpx.Client, agent: Provider, snow: RunningEmulator, runtime: HostRuntime
) -> None:
    """The seed's flows over real HTTP; ``agent`` plays a ServiceNow user working on incidents."""
    other = create_and_link(api, agent, snow.url)
    push_changes(api, runtime)
    agent.update(other.id, TicketChanges(status="In Progress"))
    click.echo(f"The agent moved {other.number} to In Progress")
    pull_changes(api)
    for link in call(api, "GET", f"{ANOMALY_PATH}/ticket-links"):
        click.echo(f"Work notes on {link['ticket_number']} in ServiceNow:")
        for entry in snow.emulator.journal(link["ticket_id"]):
            if entry["element"] == "work_notes":
                click.echo(f"  {entry['value']}")


def create_and_link(api: httpx.Client, agent: Provider, servicenow_url: str) -> Ticket:
    """Connect ServiceNow, record the anomaly, create a ticket and link an agent's; returns that one."""
    connection = {
        "type": "servicenow",
        "api_url": servicenow_url,
        "api_access_token": SERVICENOW_TOKEN,
    }
    integration = call(api, "POST", "/integrations", connection)
    click.echo(f"Connected integration {integration['id']}: servicenow at {servicenow_url}")
    call(api, "POST", "/anomalies", ANOMALY)
    click.echo(f"Recorded anomaly {ANOMALY_ID}: Record, Active, not_null failed on customer_email")
    created = call(api, "POST", f"{TICKETING_PATH}/tickets", TICKET_REQUEST)
    click.echo(created["message"])
    other = agent.create(
        TicketDraft(title="Nightly customer load failed", description="Stopped at 02:00.")
    )
    click.echo(f"A ServiceNow agent opened {other.number} about the nightly load")
    linked = call(api, "POST", f"{TICKETING_PATH}/links", {"ticket_number": other.number})
    click.echo(linked["message"])
    return other


def push_changes(api: httpx.Client, runtime: HostRuntime) -> None:
    """Change the anomaly's status and comment on it; wait for the work notes to be delivered."""
    anomaly = call(api, "PUT", ANOMALY_PATH, {"status": "Acknowledged"})
    click.echo(f"Anomaly {ANOMALY_ID} status changed to {anomaly['status']}")
    call(api, "POST", f"{ANOMALY_PATH}/comments", {"message": COMMENT})
    click.echo(f"Commented on anomaly {ANOMALY_ID}: {COMMENT}")
    counts = wait_for_deliveries(runtime)
    click.echo(
        f"Background sync: {counts['delivered']} work notes delivered, {counts['dead']} failed"
    )


def pull_changes(api: httpx.Client) -> None:
    """Pull the tickets' statuses; show the links and the comments the pull left."""
    for link in call(api, "POST", f"{ANOMALY_PATH}/ticket-links/sync"):
        click.echo(
            f"Pulled {link['ticket_number']}: {link['status']} (synced {link['last_synced']})"
        )
    anomaly = call(api, "GET", ANOMALY_PATH)
    click.echo(f"Anomaly {ANOMALY_ID} is still {anomaly['status']}; its comments:")
    for comment in anomaly["comments"]:
        click.echo(f"  [{comment['origin']}] {comment['message']}")


def two_way(api: httpx.Client, emulator: Emulator, host_url: str, runtime: HostRuntime) -> None:
    """Turn two-way sync on, install the printed rules (the emulator plays them), and let an
    agent resolve the first incident with a work note: the anomaly hears of both."""
    answer = call(api, "PUT", "/integrations/1/inbound", {"status_map": {}, "enabled": True})
    click.echo(f"Two-way sync on: ServiceNow notifies {answer['endpoint']}")
    emulator.notify_to(f"{host_url}/api/inbound/1", answer["secret"], "admin")
    [first, *_] = call(api, "GET", f"{ANOMALY_PATH}/ticket-links")
    heard_before = len(call(api, "GET", ANOMALY_PATH)["comments"])
    emulator.act_as(
        AGENT, first["ticket_id"], state="6", close_code="Solved (Permanently)",
        close_notes="Backfilled customer_email.", work_notes="Backfill done; job fixed.",
    )  # fmt: skip
    click.echo(f"The agent {AGENT} resolved {first['ticket_number']} with a work note")
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while len(comments := call(api, "GET", ANOMALY_PATH)["comments"]) < heard_before + 2:
        if time.monotonic() > deadline:
            raise click.ClickException("the anomaly did not hear of the agent's change")
        time.sleep(0.05)
    click.echo(f"Anomaly {ANOMALY_ID} heard, without a pull:")
    for comment in comments[heard_before:]:
        click.echo(f"  [{comment['origin']}] {comment['message']}")
    wait_for_deliveries(runtime)


def call(api: httpx.Client, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """One API call; a non-2xx answer stops the demo with the API's own message."""
    response = api.request(method, path, json=body)
    if response.is_error:
        raise click.ClickException(f"{method} {path} -> {response.status_code}: {response.text}")
    return response.json()


def wait_for_deliveries(runtime: HostRuntime) -> dict[str, int]:
    """Wait (bounded) until the outbox holds nothing pending; returns its counts."""
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while (counts := runtime.service.outbox.counts())[PENDING]:
        if time.monotonic() > deadline:
            raise click.ClickException(f"work notes still pending after {DELIVERY_TIMEOUT:.0f} s")
        time.sleep(0.05)
    return counts
