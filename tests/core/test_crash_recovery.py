"""Kill the delivery worker mid-delivery while the instance is down; a new one delivers each note once."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from servicenow_emulator import Emulator

from ticketing_core.models import Anomaly, TicketDraft
from ticketing_core.policies import AddWorkNote, WorkNotesOnly
from ticketing_core.sync.database import Database
from ticketing_core.sync.outbox import DELIVERED, Outbox
from ticketing_core.sync.service import SyncService
from ticketing_servicenow import ServiceNowProvider

from ..conftest import wait_until

ROOT = Path(__file__).parents[2]
STATUSES = ("Acknowledged", "Resolved", "Active", "Invalid")


def first_notes_failed(outbox: Outbox) -> bool:
    """Each ticket's first note (the linkage note) was tried and failed: the worker is retrying."""
    firsts = [
        event
        for event in outbox.entries()
        if isinstance(event.action, AddWorkNote) and event.action.text.startswith("Linked to")
    ]
    return len(firsts) == 2 and all(event.attempts >= 1 for event in firsts)


def start_worker(database_url: str, api_url: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.core.crash_worker", database_url, api_url],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_killed_worker_loses_nothing_and_duplicates_nothing(
    database_url: str, emulator: Emulator, emulator_url: str, provider: ServiceNowProvider
) -> None:
    database = Database(database_url)
    service = SyncService(
        database,
        provider_for=lambda _id, _conn: provider,
        policy_for=lambda _id, _conn: WorkNotesOnly(),
        comment_on_anomaly=lambda *_: None,
    )
    tickets = [provider.create(TicketDraft(title=f"t{i}", description="d")) for i in range(2)]
    for anomaly_id, ticket in enumerate(tickets, start=1):
        service.link_ticket(Anomaly(anomaly_id, "Record", "Active"), 1, ticket_id=ticket.id)
    outbox = Outbox(database)

    # The instance goes down, slowly: every request hangs two seconds, then fails with 503.
    emulator.latency_ms, emulator.down = 2000, True
    for anomaly_id in (1, 2):
        for status in STATUSES:
            service.anomaly_status_changed(anomaly_id, status)
    first = start_worker(database_url, emulator_url)
    wait_until(lambda: first_notes_failed(outbox), timeout=30)

    # It comes back while the worker's retries are in flight; the worker dies before any answer.
    emulator.down = False
    time.sleep(0.5)
    first.send_signal(signal.SIGKILL)
    first.wait()
    time.sleep(2.5)  # the requests it left behind complete on the server
    emulator.latency_ms = 0

    second = start_worker(database_url, emulator_url)
    try:
        wait_until(lambda: outbox.counts()[DELIVERED] == 2 * (1 + len(STATUSES)), timeout=30)
    finally:
        second.terminate()
        second.wait()
        database.dispose()

    for ticket in tickets:
        assert (
            sum(entry["value"].startswith("Linked to") for entry in emulator.journal(ticket.id))
            == 1
        )
        notes = [
            entry["value"].rsplit(": ", 1)[1]
            for entry in emulator.journal(ticket.id)
            if "Anomaly Status" in entry["value"]
        ]
        assert notes == list(STATUSES)
