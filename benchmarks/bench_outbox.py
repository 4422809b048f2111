"""The outbox against an instance with 50 ms latency: throughput, and how soon a write that landed
but went unanswered is confirmed.

Run with ``nox -s bench``. Figure 1: time to deliver 100 status work notes for 100 anomalies,
against the sequential floor (100 x 50 ms); target at most 0.3 of it. Figure 2: a note whose write
is committed and then answered 503, or whose answer is lost, is looked for on its ticket and settled
delivered: the time from queueing to settled, beside the doubt window (60 s) it used to wait out;
target at most 5 s. Exits non-zero when a target is missed.
"""

from __future__ import annotations

import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from servicenow_emulator import DEFAULT_PASSWORD, Emulator, run_in_thread

from ticketing_core.policies import WorkNotesOnly
from ticketing_core.sync.database import Database
from ticketing_core.sync.dispatch import ThreadedDispatcher
from ticketing_core.sync.outbox import DELIVERED
from ticketing_core.sync.service import SyncService
from ticketing_servicenow import ServiceNowProvider

NOTES = 100
LATENCY_MS = 50
TARGET = 0.3
ROUNDS = 3
LANDED_FAULTS = ("503_after_commit", "close_after_commit")
LANDED_NOTES = 5  # per fault, each on a ticket of its own, one after the other
LANDED_TARGET_S = 5.0
EMULATOR_LOGIN = f"admin:{DEFAULT_PASSWORD}"  # the emulator's built-in development user


@contextmanager
def delivering(
    url: str, emulator: Emulator, database_path: Path, tickets: int
) -> Iterator[SyncService]:
    """A started service with the default outbox, anomalies 1..tickets each linked to an incident
    of their own, and the instance answering after LATENCY_MS."""
    emulator.reset()
    database = Database(str(database_path))
    provider = ServiceNowProvider(api_url=url, api_access_token=EMULATOR_LOGIN)
    service = SyncService(
        database,
        provider_for=lambda _id, _conn: provider,
        policy_for=lambda _id, _conn: WorkNotesOnly(),
        comment_on_anomaly=lambda *_: None,
    )
    for anomaly_id, row in enumerate(emulator.seed_incidents(tickets), start=1):
        service.links.add(
            anomaly_id=anomaly_id,
            integration_id=1,
            ticket_id=row["sys_id"],
            ticket_number=row["number"],
            ticket_url=None,
            status="New",
        )
    emulator.latency_ms = LATENCY_MS
    service.dispatcher = ThreadedDispatcher(service.outbox, service.delivery, poll_interval=0.05)
    service.start()
    try:
        yield service
    finally:
        service.stop()
        provider.close()
        database.dispose()


def wait_delivered(service: SyncService, count: int) -> None:
    while service.outbox.counts()[DELIVERED] < count:
        time.sleep(0.02)


def throughput_round(url: str, emulator: Emulator, database_path: Path) -> float:
    with delivering(url, emulator, database_path, NOTES) as service:
        started = time.perf_counter()
        for anomaly_id in range(1, NOTES + 1):
            service.anomaly_status_changed(anomaly_id, "Acknowledged")
        wait_delivered(service, NOTES)
        elapsed = time.perf_counter() - started
    assert sum(len(emulator.journal(row["sys_id"])) for row in emulator.incidents) == NOTES
    return elapsed


def landed_round(
    url: str, emulator: Emulator, database_path: Path, fault: str
) -> tuple[list[float], float]:
    """Seconds from queueing to settled for notes whose write landed and went unanswered, and
    the outbox's doubt window."""
    times = []
    with delivering(url, emulator, database_path, LANDED_NOTES) as service:
        window = service.outbox.doubt.total_seconds()
        for anomaly_id in range(1, LANDED_NOTES + 1):
            emulator.add_fault(fault, method="PATCH")
            started = time.perf_counter()
            service.anomaly_commented(anomaly_id, "landed, unanswered")
            wait_delivered(service, anomaly_id)
            times.append(time.perf_counter() - started)
    for row in emulator.incidents:
        assert len(emulator.journal(row["sys_id"])) == 1, "each note exactly once"
    return times, window


def main() -> int:
    logging.getLogger("ticketing_core.sync.delivery").setLevel(
        logging.ERROR
    )  # the injected failures
    floor = NOTES * LATENCY_MS / 1000
    with run_in_thread(Emulator()) as running, tempfile.TemporaryDirectory() as tmp:
        times = [
            throughput_round(running.url, running.emulator, Path(tmp) / f"bench-{n}.db")
            for n in range(ROUNDS)
        ]
        landed = {
            fault: landed_round(running.url, running.emulator, Path(tmp) / f"{fault}.db", fault)
            for fault in LANDED_FAULTS
        }
    median = statistics.median(times)
    print(f"1. delivered {NOTES} status work notes for {NOTES} anomalies, {LATENCY_MS} ms latency, "
          f"concurrency 8, SQLite outbox")  # fmt: skip
    print(f"  rounds:           {', '.join(f'{t:.3f} s' for t in times)}")
    print(f"  median:           {median:.3f} s")
    print(f"  sequential floor: {floor:.3f} s ({NOTES} x {LATENCY_MS} ms)")
    print(f"  ratio:            {median / floor:.3f} (target <= {TARGET})")
    print(f"2. a note whose write landed unanswered, queued to confirmed delivered "
          f"({LANDED_NOTES} per fault, default outbox)")  # fmt: skip
    worst = max(max(seconds) for seconds, _ in landed.values())
    window = min(window for _, window in landed.values())
    for fault, (seconds, _) in landed.items():
        print(f"  {fault + ':':19} median {statistics.median(seconds):.2f} s, "
              f"max {max(seconds):.2f} s")  # fmt: skip
    print(f"  doubt window:     {window:.0f} s (waited out before every look until now)")
    print(f"  ratio:            {worst / window:.3f} of the window (target max <= "
          f"{LANDED_TARGET_S:.0f} s)")  # fmt: skip
    return 0 if median / floor <= TARGET and worst <= LANDED_TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
