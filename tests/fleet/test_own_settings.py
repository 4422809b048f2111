"""A worker whose own settings refuse an integration (here: plain http without --allow-http) leaves
its events pending, spending no attempts, and says once which flag it lacks; a worker started with
the flag delivers them, each once and in order."""

from __future__ import annotations

import time
from typing import Any

from servicenow_emulator import Emulator

from ticketing_core.sync.outbox import PENDING, events, pauses

from ..conftest import wait_until
from .conftest import FleetHost, Workers, connect_instance
from .test_fleet import assert_each_note_once_in_order, comment, delivered, link_tickets, notes_on


def end_pauses(host: FleetHost) -> None:
    """What waiting out the pause of a refused integration (a minute) does, at once."""
    database = host.runtime.database
    with database.begin() as conn:
        now = database.now(conn)
        conn.execute(pauses.update().values(until=now))
        conn.execute(events.update().where(events.c.status == PENDING).values(next_attempt_at=now))


def test_a_worker_without_allow_http_leaves_events_pending_until_one_with_it_delivers(
    start_fleet_host: Any, workers: Workers, instance: Any
) -> None:
    emulator: Emulator = instance.emulator
    host = start_fleet_host()
    connect_instance(host, instance.url)
    tickets = link_tickets(host, emulator, 2)
    comment(host, 2)
    outbox = host.runtime.service.outbox

    refusing = workers.start(access=("--allow-private-hosts",))
    wait_until(lambda: any(event.last_error for event in outbox.entries()), timeout=30)
    time.sleep(2)  # relay passes and wake-ups: nothing else is tried
    waiting = outbox.entries()
    workers.kill(refusing)
    said = refusing.stderr.read().decode() if refusing.stderr else ""

    assert [(event.status, event.attempts) for event in waiting] == [(PENDING, 0)] * 6
    assert all(notes_on(emulator, sys_id) == [] for sys_id in tickets)
    reason = next(event.last_error for event in waiting if event.last_error)
    assert "this worker was started without --allow-http (TICKETING_ALLOW_HTTP)" in reason
    [warning] = [line for line in said.splitlines() if "[ticketing_host.runtime]" in line]
    assert "[WARNING]" in warning
    assert f"integration 1 uses {instance.url}: this worker was started without --allow-http " in (
        warning
    )
    assert warning.endswith("its events stay pending")
    started = f"warning: integration 1 uses {instance.url}: this worker was started without "
    assert started in said.splitlines()[0]  # said before it started, too

    end_pauses(host)
    workers.start()  # with --allow-http

    wait_until(lambda: delivered(host, 2 + 2 * 2), timeout=30)
    assert_each_note_once_in_order(emulator, tickets, 2)
