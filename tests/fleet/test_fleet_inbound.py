"""Two-way sync beside a Dramatiq fleet (Redis and RabbitMQ, PostgreSQL): the serve process
hears and applies changes; what they queue for other tickets is delivered by the workers."""

from __future__ import annotations

from typing import Any

from servicenow_emulator import Emulator

from ..conftest import wait_until
from .conftest import Workers, connect_instance
from .test_fleet import delivered, link_tickets, notes_on

AGENT = "beth.anglin"


def test_an_agents_note_reaches_the_anomaly_and_the_other_ticket_once(
    start_fleet_host: Any, workers: Workers, instance: Any
) -> None:
    emulator: Emulator = instance.emulator
    host = start_fleet_host()
    connect_instance(host, instance.url)
    first, second = link_tickets(host, emulator, 2)
    workers.start()
    wait_until(lambda: delivered(host, 2), timeout=60)  # the linkage notes
    enabled = host.api.put("/api/integrations/1/inbound", json={"enabled": True})
    assert enabled.status_code == 200, enabled.text
    # The rules as generated, but not skipping the integration user: the host drops echoes.
    emulator.notify_to(f"{host.url}/api/inbound/1", enabled.json()["secret"], None)

    emulator.act_as(AGENT, first, work_notes="fixed upstream", state="2")

    wait_until(lambda: delivered(host, 3), timeout=60)
    emulator.wait_for_notifications()
    wait_until(lambda: not host.runtime.inbound.pending_integrations())
    anomaly = host.api.get("/api/anomalies/7").json()
    copied = [c["message"] for c in anomaly["comments"] if "fixed upstream" in c["message"]]
    assert len(copied) == 1
    assert [note for note in notes_on(emulator, second) if "fixed upstream" in note] == [
        f"Comment from Qualytics: {copied[0]}"
    ]
    assert sum("fixed upstream" in note for note in notes_on(emulator, first)) == 1
    log = host.api.get("/api/integrations/1/sync-log").json()
    assert {"received", "applied", "delivered", "echo dropped"} <= {e["decision"] for e in log}
