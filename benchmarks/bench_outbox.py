"""Time to deliver 100 status work notes for 100 anomalies against an instance with 50 ms latency.

Run with ``nox -s bench``. Compares with the sequential floor (100 x 50 ms) and exits non-zero when the
delivery takes more than 0.3 of it.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from servicenow_emulator import DEFAULT_PASSWORD, Emulator, run_in_thread

from ticketing_core.outbox import DELIVERED, ThreadedDispatcher
from ticketing_core.policies import WorkNotesOnly
from ticketing_core.service import SyncService
from ticketing_core.store import Database
from ticketing_servicenow import ServiceNowProvider

NOTES = 100
LATENCY_MS = 50
TARGET = 0.3
ROUNDS = 3
EMULATOR_LOGIN = f"admin:{DEFAULT_PASSWORD}"  # the emulator's built-in development user


def one_round(url: str, emulator: Emulator, database_path: Path) -> float:
    emulator.reset()
    database = Database(str(database_path))
    provider = ServiceNowProvider(api_url=url, api_access_token=EMULATOR_LOGIN)
    service = SyncService(
        database,
        provider_for=lambda _id, _conn: provider,
        policy_for=lambda _id, _conn: WorkNotesOnly(),
        comment_on_anomaly=lambda *_: None,
    )
    for anomaly_id, row in enumerate(emulator.seed_incidents(NOTES), start=1):
        service.links.add(
            anomaly_id=anomaly_id,
            integration_id=1,
            ticket_id=row["sys_id"],
            ticket_number=row["number"],
            ticket_url=None,
            status="New",
        )
    emulator.latency_ms = LATENCY_MS
    service.dispatcher = ThreadedDispatcher(service.outbox, service.deliver, poll_interval=0.05)
    service.start()
    try:
        started = time.perf_counter()
        for anomaly_id in range(1, NOTES + 1):
            service.anomaly_status_changed(anomaly_id, "Acknowledged")
        while service.outbox.counts()[DELIVERED] < NOTES:
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
    finally:
        service.stop()
        provider.close()
        database.dispose()
    assert sum(len(emulator.journal(row["sys_id"])) for row in emulator.incidents) == NOTES
    return elapsed


def main() -> int:
    floor = NOTES * LATENCY_MS / 1000
    with run_in_thread(Emulator()) as running, tempfile.TemporaryDirectory() as tmp:
        times = [
            one_round(running.url, running.emulator, Path(tmp) / f"bench-{n}.db")
            for n in range(ROUNDS)
        ]
    median = statistics.median(times)
    print(f"delivered {NOTES} status work notes for {NOTES} anomalies, {LATENCY_MS} ms latency, "
          f"concurrency 8, SQLite outbox")  # fmt: skip
    print(f"  rounds:           {', '.join(f'{t:.3f} s' for t in times)}")
    print(f"  median:           {median:.3f} s")
    print(f"  sequential floor: {floor:.3f} s ({NOTES} x {LATENCY_MS} ms)")
    print(f"  ratio:            {median / floor:.3f} (target <= {TARGET})")
    return 0 if median / floor <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
