"""The inbound engine's exactly-once rule when readers race, on SQLite and PostgreSQL, against
the ServiceNow emulator over real HTTP."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa
from servicenow_emulator import Emulator

from ticketing_core.policies import InboundPolicy, WorkNotesOnly
from ticketing_core.sync.database import Database
from ticketing_core.sync.inbound import Inbound
from ticketing_core.sync.service import SyncService
from ticketing_servicenow import ServiceNowProvider

INTEGRATION_ID = 3
READERS = 8


class Anomalies:
    def __init__(self) -> None:
        self.comments: list[tuple[int, str, str]] = []
        self._lock = threading.Lock()

    def comment(self, anomaly_id: int, text: str, origin: str, conn: sa.Connection) -> None:
        with self._lock:
            self.comments.append((anomaly_id, text, origin))

    def set_status(self, anomaly_id: int, status: str, conn: sa.Connection) -> bool:
        return False


@pytest.fixture
def inbound(database: Database, provider: ServiceNowProvider) -> tuple[Inbound, Anomalies]:
    service = SyncService(
        database,
        provider_for=lambda _id, _conn: provider,
        policy_for=lambda _id, _conn: WorkNotesOnly(),
        comment_on_anomaly=lambda *_: None,
    )
    anomalies = Anomalies()
    return Inbound(service, lambda _id, _conn: InboundPolicy(), anomalies), anomalies


def test_racing_readers_of_one_change_apply_it_once(
    inbound: tuple[Inbound, Anomalies], provider: ServiceNowProvider, emulator: Emulator
) -> None:
    engine, anomalies = inbound
    [row] = emulator.seed_incidents(1)
    for anomaly_id in (1, 2):
        engine.service.links.add(
            anomaly_id=anomaly_id, integration_id=INTEGRATION_ID, ticket_id=row["sys_id"],
            ticket_number=row["number"], ticket_url=None, status="New",
        )  # fmt: skip
    emulator.act_as("beth.anglin", row["sys_id"], state="2", work_notes="looked at it")
    start = threading.Barrier(READERS)

    def read_and_apply() -> None:
        tickets = provider.get_many([row["sys_id"]])
        start.wait()
        engine.apply(INTEGRATION_ID, tickets, provider, InboundPolicy())

    readers = [threading.Thread(target=read_and_apply) for _ in range(READERS)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()

    texts = sorted(text for _, text, _ in anomalies.comments)
    assert texts == sorted(
        [f"Ticket {row['number']} status changed from New to In Progress by beth.anglin"] * 2
        + [f"Work note on {row['number']} by beth.anglin: looked at it"] * 2
    )
    decisions = [logged.entry.decision for logged in engine.log.entries(INTEGRATION_ID)]
    assert decisions.count("applied") == 4  # two anomalies, a status and a note each
    assert decisions.count("duplicate") == READERS - 1
