"""Issue 5's guarantee on the fleet: every note exactly once and in order, within the instance
limit, through worker deaths, lost answers, lost messages and either start order."""

from __future__ import annotations

import signal
import socket
import time
from typing import Any

import httpx
from servicenow_emulator import Emulator

from ticketing_core.sync.outbox import DEAD, DELIVERED, PENDING

from ..conftest import wait_until
from .conftest import INSTANCE_LIMIT, Broker, FleetHost, Workers, connect_instance

ANOMALY = {
    "id": 7,
    "type": "Record",
    "status": "Active",
    "description": "nulls",
    "failed_checks": [],
}
COMMENT = "Comment from Qualytics: fleet comment {:02d}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def link_tickets(host: FleetHost, emulator: Emulator, count: int) -> list[str]:
    """Create the anomaly and link ``count`` seeded incidents: one linkage note each."""
    assert host.api.post("/api/anomalies", json=ANOMALY).status_code == 201
    incidents = emulator.seed_incidents(count)
    for incident in incidents:
        linked = host.api.post(
            "/api/integrations/ticketing/anomalies/7/links", json={"ticket_id": incident["sys_id"]}
        )
        assert linked.status_code == 200, linked.text
    return [incident["sys_id"] for incident in incidents]


def comment(host: FleetHost, count: int, start: int = 0) -> None:
    for n in range(start, start + count):
        posted = host.api.post(
            "/api/anomalies/7/comments", json={"message": f"fleet comment {n:02d}"}
        )
        assert posted.status_code == 201, posted.text


def notes_on(emulator: Emulator, sys_id: str) -> list[str]:
    return [e["value"] for e in emulator.journal(sys_id) if e["element"] == "work_notes"]


def assert_each_note_once_in_order(emulator: Emulator, tickets: list[str], comments: int) -> None:
    expected = [COMMENT.format(n) for n in range(comments)]
    for sys_id in tickets:
        notes = notes_on(emulator, sys_id)
        assert notes[0].startswith("Linked to Qualytics anomaly 7")
        assert notes[1:] == expected, f"{sys_id}: {notes}"


def delivered(host: FleetHost, count: int) -> bool:
    counts = host.runtime.service.outbox.counts()
    return counts[DELIVERED] == count and counts[PENDING] == 0


def test_three_workers_two_deaths_and_lost_answers_deliver_each_note_once_in_order(
    start_fleet_host: Any, workers: Workers, instance: Any
) -> None:
    emulator: Emulator = instance.emulator
    host = start_fleet_host()
    connect_instance(host, instance.url)
    tickets = link_tickets(host, emulator, 20)
    for _ in range(3):
        workers.start()
    # Some notes are stored by the instance and answered 503, some answers are lost on the way.
    emulator.add_fault("503_after_commit", method="PATCH", count=6)
    emulator.add_fault("close_after_commit", method="PATCH", count=6)

    comment(host, 10)
    wait_until(lambda: host.runtime.service.outbox.counts()[DELIVERED] >= 60, timeout=60)
    workers.kill(workers.running[0])  # mid-delivery: others are busy with the rest
    workers.start()
    comment(host, 10, start=10)
    wait_until(lambda: host.runtime.service.outbox.counts()[DELIVERED] >= 250, timeout=60)
    workers.kill(workers.running[1])
    workers.start()

    wait_until(lambda: delivered(host, 20 + 20 * 20), timeout=120)
    assert_each_note_once_in_order(emulator, tickets, 20)
    assert emulator.peak_in_flight <= INSTANCE_LIMIT
    statuses = [r["status"] for r in emulator.requests]
    assert 429 not in statuses  # the cap was never reached
    assert statuses.count(503) == 6  # each 503 came after the note was stored


def test_lost_wakeups_are_relayed_and_a_host_without_workers_waits(
    start_fleet_host: Any, workers: Workers, broker: Broker, instance: Any
) -> None:
    emulator: Emulator = instance.emulator
    host = start_fleet_host()
    connect_instance(host, instance.url)
    tickets = link_tickets(host, emulator, 3)
    comment(host, 4)
    time.sleep(1.5)  # no worker: nothing moves
    assert host.runtime.service.outbox.counts()[PENDING] == 3 + 3 * 4
    assert all(notes_on(emulator, sys_id) == [] for sys_id in tickets)

    broker.lose_messages()  # the broker restarted empty, or was flushed
    workers.start()

    wait_until(lambda: delivered(host, 3 + 3 * 4), timeout=30)
    assert_each_note_once_in_order(emulator, tickets, 4)


def test_a_worker_started_before_the_host_delivers_once_the_host_queues(
    start_fleet_host: Any, workers: Workers, instance: Any
) -> None:
    emulator: Emulator = instance.emulator
    worker = workers.start()  # the database is empty: the worker makes the schema
    time.sleep(2)
    assert worker.poll() is None, worker.stderr.read() if worker.stderr else ""
    host = start_fleet_host()
    connect_instance(host, instance.url)
    tickets = link_tickets(host, emulator, 2)

    comment(host, 3)

    wait_until(lambda: delivered(host, 2 + 2 * 3), timeout=30)
    assert_each_note_once_in_order(emulator, tickets, 3)


def test_an_instance_down_for_longer_than_max_attempts_allow_is_waited_out(
    start_fleet_host: Any, workers: Workers, instance: Any
) -> None:
    """No age limit: events wait as long as an instance is down, however many attempts that
    takes, and arrive once it is back."""
    emulator: Emulator = instance.emulator
    host = start_fleet_host()
    connect_instance(host, instance.url)
    tickets = link_tickets(host, emulator, 3)
    workers.start(max_attempts=2)
    wait_until(lambda: delivered(host, 3), timeout=30)
    emulator.down = True

    comment(host, 3)
    outbox = host.runtime.service.outbox
    wait_until(
        lambda: max((e.attempts for e in outbox.entries(status=PENDING)), default=0) >= 3,
        timeout=30,
    )
    assert outbox.counts()[DEAD] == 0
    emulator.down = False

    wait_until(lambda: delivered(host, 3 + 3 * 3), timeout=60)
    assert_each_note_once_in_order(emulator, tickets, 3)


def test_sigterm_finishes_the_delivery_in_hand_settles_and_exits_within_the_bound(
    start_fleet_host: Any, workers: Workers, instance: Any
) -> None:
    emulator: Emulator = instance.emulator
    host = start_fleet_host()
    connect_instance(host, instance.url)
    tickets = link_tickets(host, emulator, 1)
    worker = workers.start(threads=1)
    wait_until(lambda: delivered(host, 1), timeout=30)
    emulator.latency_ms = 1500  # from now on a delivery takes 1.5 s
    comment(host, 4)  # one run of four notes
    wait_until(lambda: len(notes_on(emulator, tickets[0])) == 2, timeout=30)

    stopped_at = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    code = worker.wait(15)

    assert code == 0
    assert time.monotonic() - stopped_at < 3.0 + 5.0  # one delivery's deadline, plus shutdown
    workers.running.remove(worker)
    landed = len(notes_on(emulator, tickets[0]))
    counts = host.runtime.service.outbox.counts()
    assert counts[DELIVERED] == landed  # what it sent, it settled: nothing left in doubt
    assert counts[PENDING] == 5 - landed
    [stats] = host.runtime.service.outbox.stats()
    assert stats.in_flight == 0  # the rest given back, free for the next worker at once
    emulator.latency_ms = 0
    workers.start()
    wait_until(lambda: delivered(host, 5), timeout=30)
    assert_each_note_once_in_order(emulator, tickets, 4)


def test_a_workers_metrics_add_up_its_processes(
    start_fleet_host: Any, workers: Workers, instance: Any
) -> None:
    emulator: Emulator = instance.emulator
    host = start_fleet_host()
    connect_instance(host, instance.url)
    link_tickets(host, emulator, 4)
    port = free_port()
    workers.start(processes=2, metrics_port=port)
    comment(host, 2)
    wait_until(lambda: delivered(host, 4 + 4 * 2), timeout=30)

    def attempts() -> float:
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        except httpx.TransportError:
            return 0
        lines = [
            line for line in text.splitlines() if line.startswith("ticketing_delivery_attempts")
        ]
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines)

    assert wait_until(lambda: attempts() == 12, timeout=10)
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert 'ticketing_outbox_events{integration="1",status="delivered"} 12.0' in text
    assert 'ticketing_in_flight{integration="1"} 0.0' in text
