"""``GET /api/integrations/{id}`` tells how its deliveries stand: paused until when and why,
failing, delivering or idle, with its pending and dead events and its last delivery."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import httpx
from servicenow_emulator import Emulator

from ..conftest import ADMIN_TOKEN, wait_until
from .conftest import (
    ANOMALY,
    SEED_TIME,
    TICKET_REQUEST,
    Host,
    StartHost,
    create_integration,
    ok,
    settled,
    tickets_path,
)

PASSWORD = ADMIN_TOKEN.split(":")[1]
DELIVERY_FIELDS = {"pending", "dead", "paused_until", "last_error", "last_delivered_at"}


def linked_host(start_host: StartHost, emulator_url: str, **settings: Any) -> tuple[Host, str]:
    """A host with an integration and a ticket; the integration's path."""
    host = start_host(**settings)
    integration = create_integration(host, emulator_url)
    ok(host.api.post("/api/anomalies", json=ANOMALY), 201)
    ok(host.api.post(tickets_path(), json=TICKET_REQUEST))
    return host, f"/api/integrations/{integration['id']}"


def comment(host: Host, message: str) -> None:
    ok(host.api.post("/api/anomalies/12345/comments", json={"message": message}), 201)


def state_of(host: Host, path: str, status: str) -> dict[str, Any]:
    """The integration as shown once its status is ``status``."""
    shown: dict[str, Any] = wait_until(
        lambda: (got := ok(host.api.get(path)))["status"] == status and got, timeout=20
    )
    return shown


def when(shown: str) -> datetime:
    assert re.fullmatch(SEED_TIME + "Z", shown), shown
    return datetime.strptime(shown, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def test_an_outage_shows_as_paused_with_its_reason_counts_and_last_delivery(
    database_url: str, start_host: StartHost, emulator: Emulator, emulator_url: str
) -> None:
    host, path = linked_host(
        start_host, emulator_url, database=database_url,
        backoff_initial=0.5, backoff_max=1.0, doubt_seconds=1.0,  # a 503 may come after a write
    )  # fmt: skip
    fresh = ok(host.api.get(path))
    emulator.latency_ms = 1000
    comment(host, "slowly")
    delivering = state_of(host, path, "delivering")
    settled(host)
    emulator.latency_ms = 0
    idle = state_of(host, path, "idle")

    emulator.down = True  # every request answered 503, as during an instance's outage
    comment(host, "during the outage")
    comment(host, "still during the outage")
    paused = state_of(host, path, "paused")
    listed = ok(host.api.get("/api/integrations"))
    emulator.down = False
    back = state_of(host, path, "idle")

    assert fresh == {
        "id": fresh["id"], "type": "servicenow", "category": "ticketing",
        "api_url": emulator_url, "connected": True, "status": "idle",
        "created": fresh["created"], "pending": 0, "dead": 0, "inbound": {"enabled": False},
    }  # fmt: skip
    assert (delivering["connected"], delivering["pending"], delivering["dead"]) == (True, 1, 0)
    assert "last_error" not in delivering
    assert (idle["connected"], idle["pending"], idle["dead"]) == (True, 0, 0)
    delivered_before = when(idle["last_delivered_at"])
    assert paused["connected"] is False
    assert (paused["pending"], paused["dead"]) == (2, 0)
    assert when(paused["paused_until"]) >= delivered_before
    assert "503" in paused["last_error"]
    assert "The instance is down" in paused["last_error"]
    assert "\n" not in paused["last_error"]
    assert paused["last_delivered_at"] == idle["last_delivered_at"]
    assert [entry["id"] for entry in listed] == [paused["id"]]
    assert DELIVERY_FIELDS & set(listed[0]) >= {"pending", "dead", "last_error"}
    assert (back["connected"], back["pending"], back["dead"]) == (True, 0, 0)
    assert not {"paused_until", "last_error"} & set(back)
    assert when(back["last_delivered_at"]) >= delivered_before
    for shown in (fresh, delivering, idle, paused, listed, back):
        assert PASSWORD not in str(shown)


def test_a_dead_event_shows_as_failing_with_its_error(
    database_url: str, start_host: StartHost, emulator: Emulator, emulator_url: str
) -> None:
    host, path = linked_host(start_host, emulator_url, database=database_url, max_attempts=1)
    emulator.add_fault("500", method="PATCH")  # this call's failure, not an outage

    comment(host, "refused once")
    failing = state_of(host, path, "failing")

    assert failing["connected"] is True  # the instance answers; one event failed
    assert (failing["pending"], failing["dead"]) == (0, 1)
    assert "500" in failing["last_error"]
    assert "paused_until" not in failing


def test_creating_an_integration_keeps_the_seed_shape(host: Host, emulator_url: str) -> None:
    created = create_integration(host, emulator_url)

    assert list(created) == ["id", "type", "category", "api_url", "connected", "status", "created"]
    assert (created["connected"], created["status"]) == (True, "idle")


def test_the_openapi_document_describes_the_delivery_fields(host: Host) -> None:
    with httpx.Client(base_url=host.url) as anonymous:
        document = ok(anonymous.get("/openapi.json"))

    answer = document["paths"]["/api/integrations/{integration_id}"]["get"]["responses"]["200"]
    name = answer["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    fields = document["components"]["schemas"][name]["properties"]
    assert DELIVERY_FIELDS | {"connected", "status", "error"} <= set(fields)
    assert all(fields[field].get("description") for field in DELIVERY_FIELDS | {"status"})
    assert fields["status"]["enum"] == [
        "idle", "delivering", "paused", "failing", "credentials unreadable"
    ]  # fmt: skip
