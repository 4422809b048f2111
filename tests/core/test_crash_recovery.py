"""Kill the delivery worker mid-delivery while the instance is down; a new one delivers each note once."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from servicenow_emulator import Emulator

from ticketing_core.models import Anomaly, TicketDraft
from ticketing_core.outbox import DELIVERED, Outbox
from ticketing_core.policies import WorkNotesOnly
from ticketing_core.service import SyncService
from ticketing_core.store import Database
from ticketing_servicenow import ServiceNowProvider

ROOT = Path(__file__).parents[2]
STATUSES = ("Acknowledged", "Resolved", "Active", "Invalid")


def wait_until(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


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
        provider_for=lambda _: provider,
        policy_for=lambda _: WorkNotesOnly(),
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
    wait_until(lambda: all(e.attempts >= 1 for e in outbox.entries() if e.status != DELIVERED
                           and e.action.text.endswith("Acknowledged")))  # type: ignore[union-attr]  # fmt: skip

    # It comes back while the worker's retries are in flight; the worker dies before any answer.
    emulator.down = False
    time.sleep(0.5)
    first.send_signal(signal.SIGKILL)
    first.wait()
    time.sleep(2.5)  # the requests it left behind complete on the server
    emulator.latency_ms = 0

    second = start_worker(database_url, emulator_url)
    try:
        wait_until(lambda: outbox.counts()[DELIVERED] == 2 * len(STATUSES))
    finally:
        second.terminate()
        second.wait()
        database.dispose()

    for ticket in tickets:
        notes = [
            entry["value"].rsplit(": ", 1)[1]
            for entry in emulator.journal(ticket.id)
            if "Anomaly Status" in entry["value"]
        ]
        assert notes == list(STATUSES)
