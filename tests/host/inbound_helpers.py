"""Helpers and the fixture of the two-way sync tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import pytest
from servicenow_emulator import Emulator

from ..conftest import postgres_schema
from ..fleet.conftest import TIMING, Workers, queue_of_its_own
from .conftest import (
    ANOMALY,
    TICKET_REQUEST,
    Host,
    StartHost,
    create_integration,
    ok,
    settled,
    tickets_path,
    wait_until,
)

Linked = tuple[Host, int, str, str]
"""A host with inbound sync on: (host, integration id, the linked incident's sys_id, secret)."""

AGENT = "beth.anglin"
OWN_USER = "admin"  # the user of the tests' integration credentials (ADMIN_TOKEN)
ANOMALY_PATH = f"/api/anomalies/{ANOMALY['id']}"


def ticket_from_anomaly(host: Host, emulator_url: str, **integration: Any) -> tuple[int, str]:
    """An integration, the seed's anomaly and an incident created from it: their ids."""
    integration_id = create_integration(host, emulator_url, **integration)["id"]
    ok(host.api.post("/api/anomalies", json=ANOMALY), 201)
    created = ok(host.api.post(tickets_path(), json=TICKET_REQUEST))
    return integration_id, created["ticket"]["ticket_id"]


def enable(host: Host, integration_id: int, **options: Any) -> dict[str, Any]:
    path = f"/api/integrations/{integration_id}/inbound"
    answer: dict[str, Any] = ok(host.api.put(path, json={"enabled": True, **options}))
    return answer


def receiver(host: Host, integration_id: int) -> str:
    return f"{host.url}/api/inbound/{integration_id}"


def install_rules(
    emulator: Emulator, host: Host, integration_id: int, secret: str, skip: str | None = OWN_USER
) -> None:
    """What an administrator does with the printed rules: the emulator now notifies the host."""
    emulator.notify_to(receiver(host, integration_id), secret, skip)


def comments(host: Host) -> list[str]:
    return [c["message"] for c in ok(host.api.get(ANOMALY_PATH))["comments"]]


def log_of(host: Host, integration_id: int, **query: Any) -> list[dict[str, Any]]:
    path = f"/api/integrations/{integration_id}/sync-log"
    entries: list[dict[str, Any]] = ok(host.api.get(path, params=query))
    return entries


def decisions(host: Host, integration_id: int, **query: Any) -> list[str]:
    return [entry["decision"] for entry in log_of(host, integration_id, **query)]


def quiet(host: Host, emulator: Emulator) -> None:
    """Nothing more is on its way: notifications sent, read, and deliveries settled."""
    for _ in range(3):
        emulator.wait_for_notifications()
        wait_until(lambda: not host.runtime.inbound.pending_integrations())
        settled(host)


DEPLOYMENTS = ["sqlite", "postgresql", "fleet-redis", "fleet-rabbitmq"]
"""Where two-way sync's fault tests run: the embedded default on each database, and beside a
Dramatiq fleet (``ticketing worker`` processes on PostgreSQL) with each broker."""


@pytest.fixture(params=["sqlite", "postgresql"])
def deployment(request: pytest.FixtureRequest) -> str:
    """The embedded default on each database; a module may widen it to :data:`DEPLOYMENTS`."""
    return str(request.param)


@pytest.fixture
def deployed(deployment: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The host's settings for ``deployment``; for a fleet, with ``start_workers`` to call once
    the host is up (the workers are killed afterwards)."""
    if deployment == "sqlite":
        yield {"database": str(tmp_path / "host.db")}
        return
    with ExitStack() as stack:
        database = stack.enter_context(postgres_schema())
        if deployment == "postgresql":
            yield {"database": database}
            return
        broker = stack.enter_context(queue_of_its_own(deployment.removeprefix("fleet-")))
        workers = Workers(database, broker, Path(stack.enter_context(TemporaryDirectory())))
        stack.callback(workers.kill_all)
        yield {"database": database, "broker": broker.url, "queue": broker.queue,
               "relay_interval": 1.0, **TIMING, "start_workers": workers.start}  # fmt: skip


def start_deployed(start_host: StartHost, deployed: dict[str, Any]) -> Host:
    """A host as :func:`deployed` says, and its fleet's workers, if it has one."""
    settings = dict(deployed)
    start_workers = settings.pop("start_workers", None)
    host = start_host(**settings)
    if start_workers is not None:
        start_workers()
    return host


@pytest.fixture
def inbound_linked(
    start_host: StartHost, emulator: Emulator, emulator_url: str, deployed: dict[str, Any]
) -> Linked:
    """A host (see :func:`deployed`) with inbound sync on, its rules installed in the emulator,
    and an incident created from the anomaly: (host, integration id, sys_id, secret)."""
    host = start_deployed(start_host, deployed)
    integration_id, sys_id = ticket_from_anomaly(host, emulator_url)
    # A fleet's workers may take a while to start on a loaded machine.
    outbox = host.runtime.service.outbox
    wait_until(lambda: outbox.counts()["pending"] == 0, timeout=60)
    answer = enable(host, integration_id)
    install_rules(emulator, host, integration_id, answer["secret"])
    # The worker's first poll runs now, not at its next tick: one landing mid-test would read
    # (and apply) the change a test means a notification to bring.
    worker = host.runtime.inbound_worker
    assert worker is not None
    worker.wake()
    wait_until(lambda: worker.next_poll(integration_id) is not None, timeout=30)
    quiet(host, emulator)
    return host, integration_id, sys_id, answer["secret"]
