"""Two-way sync beside a Dramatiq fleet (Redis and RabbitMQ, PostgreSQL): the serve process
receives notifications and runs the polls; the workers read the notified tickets, apply them,
and deliver what they queue for other tickets."""

from __future__ import annotations

import time
from typing import Any

from servicenow_emulator import Emulator

from ticketing_core.sync.inbound.worker import GATHER

from ..conftest import wait_until
from .conftest import Workers, connect_instance
from .test_fleet import delivered, link_tickets, notes_on

AGENT = "beth.anglin"
OWN_USER = "admin"  # the user of the integration's credentials
NOTES = 6
RELAY_SELDOM = 60.0  # seconds: a relay this slow shows what else woke a delivery


def two_linked(
    start_fleet_host: Any, workers: Workers, instance: Any, **options: Any
) -> tuple[Any, Emulator, str, str]:
    """A fleet host with two incidents linked to anomaly 7, their linkage notes delivered by
    the started workers; ``options``: settings of both."""
    emulator: Emulator = instance.emulator
    host = start_fleet_host(**options)
    connect_instance(host, instance.url)
    first, second = link_tickets(host, emulator, 2)
    workers.start(**options)
    wait_until(lambda: delivered(host, 2), timeout=60)  # the linkage notes
    return host, emulator, first, second


def test_an_agents_note_reaches_the_anomaly_and_the_other_ticket_once(
    start_fleet_host: Any, workers: Workers, instance: Any
) -> None:
    host, emulator, first, second = two_linked(start_fleet_host, workers, instance)
    # The rules as generated, but not skipping the integration user: the host drops echoes.
    emulator.notify_to(f"{host.url}/api/inbound/1", enable_inbound(host), None)

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


def test_the_workers_read_the_notified_tickets_and_serve_only_receives(
    start_fleet_host: Any, workers: Workers, instance: Any
) -> None:
    host, emulator, first, _ = two_linked(start_fleet_host, workers, instance)
    emulator.notify_to(f"{host.url}/api/inbound/1", enable_inbound(host), OWN_USER)
    # serve's own first poll, due at once, is over: the next is minutes away.
    wait_until(lambda: host.runtime.inbound_worker.next_poll(1) is not None)
    workers.kill_all()

    emulator.act_as(AGENT, first, state="2")
    emulator.wait_for_notifications()
    time.sleep(2 * GATHER + 1)  # serve's inbound worker has had rounds to read, had it read

    assert host.runtime.inbound.pending_integrations() == [1]
    assert statuses(host)[first] == "New"
    workers.start()
    wait_until(lambda: statuses(host)[first] == "In Progress", timeout=60)
    wait_until(lambda: not host.runtime.inbound.pending_integrations())


def test_two_worker_processes_apply_each_agent_note_once(
    start_fleet_host: Any, workers: Workers, instance: Any
) -> None:
    """Asks go to either process, and both may read one ticket at once: each note is still
    copied to the anomaly and to the other ticket once."""
    emulator: Emulator = instance.emulator
    host = start_fleet_host()
    connect_instance(host, instance.url)
    first, second = link_tickets(host, emulator, 2)
    workers.start(processes=2)
    wait_until(lambda: delivered(host, 2), timeout=60)  # the linkage notes
    emulator.notify_to(f"{host.url}/api/inbound/1", enable_inbound(host), OWN_USER)

    for n in range(NOTES):
        emulator.act_as(AGENT, (first, second)[n % 2], work_notes=f"agent note {n}")
    emulator.wait_for_notifications()

    wait_until(lambda: delivered(host, 2 + NOTES), timeout=60)  # each on the other ticket
    wait_until(lambda: not host.runtime.inbound.pending_integrations())
    comments = [c["message"] for c in host.api.get("/api/anomalies/7").json()["comments"]]
    assert [sum(f"agent note {n}" in c for c in comments) for n in range(NOTES)] == [1] * NOTES
    for n in range(NOTES):
        copied_to = (second, first)[n % 2]
        assert sum(f"agent note {n}" in note for note in notes_on(emulator, copied_to)) == 1


def statuses(host: Any) -> dict[str, str]:
    links = host.api.get("/api/anomalies/7/ticket-links").json()
    return {link["ticket_id"]: link["status"] for link in links}


def test_a_note_a_workers_read_queued_is_delivered_at_once_not_by_the_relay(
    start_fleet_host: Any, workers: Workers, instance: Any
) -> None:
    host, emulator, first, second = two_linked(
        start_fleet_host, workers, instance, relay_interval=RELAY_SELDOM
    )
    emulator.notify_to(f"{host.url}/api/inbound/1", enable_inbound(host), OWN_USER)

    emulator.act_as(AGENT, first, work_notes="copy me over")

    # Read by a worker, which queues the copy for the other ticket: woken on commit.
    wait_until(lambda: delivered(host, 3), timeout=RELAY_SELDOM / 3)
    assert [note for note in notes_on(emulator, second) if "copy me over" in note] != []


def enable_inbound(host: Any) -> str:
    enabled = host.api.put("/api/integrations/1/inbound", json={"enabled": True})
    assert enabled.status_code == 200, enabled.text
    return str(enabled.json()["secret"])


def test_notifications_lost_while_the_host_was_down_are_caught_by_the_poll(
    start_fleet_host: Any, workers: Workers, instance: Any
) -> None:
    host, emulator, first, second = two_linked(start_fleet_host, workers, instance)
    enable_inbound(host)
    emulator.notify_to("http://127.0.0.1:9/api/inbound/1", "wrong", None)  # nobody listens

    emulator.act_as(AGENT, first, work_notes="heard by the poll", state="2")
    emulator.wait_for_notifications()
    host.runtime.inbound.reconcile(1)

    wait_until(lambda: delivered(host, 3), timeout=60)
    links = host.api.get("/api/anomalies/7/ticket-links").json()
    assert {link["ticket_id"]: link["status"] for link in links}[first] == "In Progress"
    assert [note for note in notes_on(emulator, second) if "heard by the poll" in note] != []
    assert sum("heard by the poll" in note for note in notes_on(emulator, first)) == 1


def test_a_note_the_workers_delivered_is_known_by_its_revision_when_read_back(
    start_fleet_host: Any, workers: Workers, instance: Any
) -> None:
    host, emulator, first, _ = two_linked(start_fleet_host, workers, instance)
    emulator.notify_to(f"{host.url}/api/inbound/1", enable_inbound(host), OWN_USER)
    emulator.act_as(AGENT, first, work_notes="an agent's note")  # applied: a revision known
    wait_until(lambda: delivered(host, 3), timeout=60)  # copied to the other ticket
    emulator.wait_for_notifications()
    wait_until(lambda: not host.runtime.inbound.pending_integrations())

    comment = host.api.post("/api/anomalies/7/comments", json={"message": "ours alone"})
    assert comment.status_code == 201, comment.text
    wait_until(lambda: delivered(host, 5), timeout=60)  # on both tickets, by the workers
    host.runtime.inbound.reconcile(1)  # the rules skip our writes: the poll reads them back

    log = host.api.get("/api/integrations/1/sync-log", params={"ticket_id": first}).json()
    revision = int(emulator_row(emulator, first)["sys_mod_count"])
    assert (log[0]["decision"], log[0]["detail"]) == (
        "echo dropped",
        f"revision {revision}: written by this integration",
    )
    assert [c for c in host.api.get("/api/anomalies/7").json()["comments"]
            if "ours alone" in c["message"] and c["message"] != "ours alone"] == []  # fmt: skip


def emulator_row(emulator: Emulator, sys_id: str) -> dict[str, str]:
    return next(row for row in emulator.incidents if row["sys_id"] == sys_id)
