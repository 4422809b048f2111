"""A running host (uvicorn in a thread, SQLite in tmp_path) in front of the ServiceNow emulator."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TypeVar

import attrs
import httpx
import pytest
from fastapi import FastAPI
from servicenow_emulator import Emulator
from ticketing_host.app import create_app, runtime_of
from ticketing_host.demo import ANOMALY, ANOMALY_ID, TICKET_REQUEST  # the seed's example payloads
from ticketing_host.runtime import HostRuntime
from ticketing_host.server import serve_in_thread
from ticketing_host.settings import Settings

from ..conftest import ADMIN_TOKEN, SECRET_KEY, wait_until

T = TypeVar("T")

API_TOKEN = "host-api-token-for-tests"
PUBLIC_URL = "https://qualytics.example"
SEED_TICKET_KEYS = [
    "ticket_id", "ticket_number", "title", "description", "status", "priority", "urgency", "impact",
    "category", "subcategory", "created_at", "updated_at", "assigned_to", "url",
]  # fmt: skip
SEED_TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d"


@attrs.frozen
class Host:
    """A served host app and an authenticated client for it."""

    url: str
    app: FastAPI
    api: httpx.Client

    @property
    def runtime(self) -> HostRuntime:
        return runtime_of(self.app)


StartHost = Callable[..., Host]


@pytest.fixture
def start_host(tmp_path: Path) -> Iterator[StartHost]:
    """Start a host; keyword arguments override its Settings. Everything stops after the test."""
    with ExitStack() as stack:

        def start(**overrides: Any) -> Host:
            settings = Settings(
                database=str(tmp_path / "host.db"),
                public_url=PUBLIC_URL,
                allow_http=True,
                allow_private_hosts=True,  # the emulator listens on 127.0.0.1
                api_token=API_TOKEN,
                secret_key=SECRET_KEY,
            )
            app = create_app(attrs.evolve(settings, **overrides))
            running = stack.enter_context(serve_in_thread(app))
            api = stack.enter_context(
                httpx.Client(
                    base_url=running.url,
                    headers={"Authorization": f"Bearer {API_TOKEN}"},
                    timeout=30,
                )
            )
            return Host(running.url, app, api)

        yield start


@pytest.fixture
def host(start_host: StartHost, emulator: Emulator) -> Host:
    return start_host()


@pytest.fixture
def integration(host: Host, emulator_url: str) -> dict[str, Any]:
    return create_integration(host, emulator_url)


@pytest.fixture
def anomaly(host: Host) -> dict[str, Any]:
    created: dict[str, Any] = ok(host.api.post("/api/anomalies", json=ANOMALY), 201)
    return created


@pytest.fixture
def ticket(host: Host, integration: dict[str, Any], anomaly: dict[str, Any]) -> dict[str, Any]:
    """A ticket created from the anomaly: the create endpoint's whole response."""
    result: dict[str, Any] = ok(host.api.post(tickets_path(), json=TICKET_REQUEST))
    return result


def create_integration(
    host: Host, api_url: str, token: str = ADMIN_TOKEN, **fields: Any
) -> dict[str, Any]:
    body = {"type": "servicenow", "api_url": api_url, "api_access_token": token, **fields}
    created: dict[str, Any] = ok(host.api.post("/api/integrations", json=body), 201)
    return created


def tickets_path(anomaly_id: int = ANOMALY_ID) -> str:
    return f"/api/integrations/ticketing/anomalies/{anomaly_id}/tickets"


def links_path(anomaly_id: int = ANOMALY_ID) -> str:
    return f"/api/integrations/ticketing/anomalies/{anomaly_id}/links"


def ok(response: httpx.Response, status: int = 200) -> Any:
    """The JSON body of a response that must have ``status``."""
    assert response.status_code == status, response.text
    return response.json()


def work_notes(emulator: Emulator, sys_id: str) -> list[str]:
    return [e["value"] for e in emulator.journal(sys_id) if e["element"] == "work_notes"]


def incident(emulator: Emulator, sys_id: str) -> dict[str, str]:
    return next(row for row in emulator.incidents if row["sys_id"] == sys_id)


def settled(host: Host) -> dict[str, int]:
    """The outbox counts, once nothing is pending any more."""
    outbox = host.runtime.service.outbox
    wait_until(lambda: outbox.counts()["pending"] == 0)
    return outbox.counts()


from .inbound_helpers import deployed, deployment, inbound_linked  # noqa: E402, F401 - fixtures
