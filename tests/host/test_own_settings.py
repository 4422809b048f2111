"""An integration a process's own settings refuse (plain http without --allow-http, a private
address without --allow-private-hosts, a host outside --allowed-hosts) is that process's problem,
not the events': they stay pending, spending no attempts, the process says once which flag it
lacks, and a process started with the flag delivers them, each once."""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from servicenow_emulator import Emulator
from ticketing_host.db import integrations
from ticketing_host.runtime import HostRuntime
from ticketing_host.settings import Settings

from ticketing_core.sync.outbox import OutboxEvent

from ..conftest import ADMIN_TOKEN, SECRET_KEY, wait_until
from .conftest import (
    ANOMALY,
    TICKET_REQUEST,
    Host,
    StartHost,
    create_integration,
    ok,
    tickets_path,
    work_notes,
)
from .test_commands import TICKETING, WITH_KEY, free_port


@pytest.mark.parametrize(
    ("strict", "flag", "variable"),
    [
        ({"allow_http": False}, "--allow-http", "TICKETING_ALLOW_HTTP"),
        ({"allow_private_hosts": False}, "--allow-private-hosts", "TICKETING_ALLOW_PRIVATE_HOSTS"),
        ({"allowed_hosts": ("*.service-now.com",)}, "--allowed-hosts", "TICKETING_ALLOWED_HOSTS"),
    ],
)
def test_events_a_process_may_not_deliver_stay_pending_until_one_with_the_flag_does(
    database_url: str,
    start_host: StartHost,
    emulator: Emulator,
    emulator_url: str,
    caplog: pytest.LogCaptureFixture,
    strict: dict[str, Any],
    flag: str,
    variable: str,
) -> None:
    lab = start_host(database=database_url)
    integration = create_integration(lab, emulator_url)
    ok(lab.api.post("/api/anomalies", json=ANOMALY), 201)
    sys_id = ok(lab.api.post(tickets_path(), json=TICKET_REQUEST))["ticket"]["ticket_id"]
    lab.runtime.stop()
    sent_before = len(emulator.requests)

    guarded = start_host(database=database_url, backoff_max=0.2, **strict)
    for n in range(3):
        ok(guarded.api.post("/api/anomalies/12345/comments", json={"message": f"held {n}"}), 201)
    events, said = refused_for_a_while(guarded, caplog)

    assert [(event.status, event.attempts) for event in events] == [("pending", 0)] * 3
    reason = next(event.last_error for event in events if event.last_error)
    assert f"{flag} ({variable})" in reason
    assert len(emulator.requests) == sent_before  # nothing was sent
    [warning] = said  # one line for the integration, not one per event or attempt
    assert warning.startswith(f"integration {integration['id']} uses {emulator_url}")
    assert f"{flag} ({variable})" in warning
    assert warning.endswith("its events stay pending")
    assert ADMIN_TOKEN.split(":")[1] not in warning + reason

    restarted = start_host(database=database_url)  # with the flag again
    expected = [f"Comment from Qualytics: held {n}" for n in range(3)]
    wait_until(lambda: work_notes(emulator, sys_id) == expected, timeout=20)
    counts = wait_until(
        lambda: (c := restarted.runtime.service.outbox.counts())["pending"] == 0 and c
    )
    assert counts == {"pending": 0, "delivered": 3, "dead": 0}
    assert work_notes(emulator, sys_id) == expected  # each once


def test_serve_names_the_integrations_it_cannot_use_as_it_starts(
    tmp_path: Path, emulator_url: str
) -> None:
    database = str(tmp_path / "serve.db")
    lab = HostRuntime(
        Settings(database, public_url="https://q.example", allow_http=True, secret_key=SECRET_KEY)
    )
    lab.store.add_integration(
        type="servicenow", api_url=emulator_url, api_access_token=ADMIN_TOKEN,
        sync_policy="work-notes", options={},
    )  # fmt: skip
    lab.stop()
    command = [TICKETING, "serve", "--port", str(free_port()), "--database", database,
               "--allow-private-hosts"]  # fmt: skip

    with subprocess.Popen(command, env=WITH_KEY, stderr=subprocess.PIPE, text=True) as serve:
        try:
            said = [serve.stderr.readline() for _ in range(2)] if serve.stderr else []
        finally:
            serve.terminate()

    assert said[0] == (
        f"warning: integration 1 uses {emulator_url}: this server was started without "
        "--allow-http (TICKETING_ALLOW_HTTP); its events stay pending\n"
    )
    assert said[1].startswith("Generated API token")


def test_credentials_a_process_cannot_decrypt_are_said_once_and_their_events_wait(
    database_url: str,
    start_host: StartHost,
    emulator: Emulator,
    emulator_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    lab = start_host(database=database_url)
    integration = create_integration(lab, emulator_url)
    ok(lab.api.post("/api/anomalies", json=ANOMALY), 201)
    ok(lab.api.post(tickets_path(), json=TICKET_REQUEST))
    lab.runtime.stop()

    other_key = Fernet.generate_key().decode()
    wrong = start_host(database=database_url, secret_key=other_key, backoff_max=0.2)
    for n in range(3):
        ok(wrong.api.post("/api/anomalies/12345/comments", json={"message": f"held {n}"}), 201)
    events, said = refused_for_a_while(wrong, caplog)

    assert [(event.status, event.attempts) for event in events] == [("pending", 0)] * 3
    [warning] = said
    assert warning.startswith(f"integration {integration['id']}'s credentials cannot be decrypted")
    assert "TICKETING_SECRET_KEY" in warning
    assert other_key not in warning


def test_a_call_needing_an_integration_the_server_may_not_use_is_503_naming_the_flag(
    start_host: StartHost, emulator: Emulator, emulator_url: str
) -> None:
    lab = start_host()
    create_integration(lab, emulator_url)
    lab.runtime.stop()
    sent_before = len(emulator.requests)

    response = start_host(allow_http=False).api.get("/api/integrations/ticketing/tickets/search")

    assert response.status_code == 503
    detail = response.json()["detail"]
    assert "this server was started without --allow-http (TICKETING_ALLOW_HTTP)" in detail
    assert len(emulator.requests) == sent_before


def test_events_of_an_integration_whose_provider_is_not_installed_here_stay_pending(
    start_host: StartHost, emulator: Emulator, emulator_url: str
) -> None:
    """A worker started without the distribution of an integration's provider (a Jira one on a
    machine without ticketing-jira) is that worker's problem, not the events'."""
    host = start_host(backoff_max=0.2)
    integration = create_integration(host, emulator_url)
    ok(host.api.post("/api/anomalies", json=ANOMALY), 201)
    ok(host.api.post(tickets_path(), json=TICKET_REQUEST))
    with host.runtime.database.begin() as conn:  # as stored by a host that has an acme plugin
        conn.execute(integrations.update().values(type="acme"))
    host.runtime.pool.forget(integration["id"])
    sent_before = len(emulator.requests)

    ok(host.api.post("/api/anomalies/12345/comments", json={"message": "held"}), 201)

    outbox = host.runtime.service.outbox
    [event] = wait_until(lambda: [e for e in outbox.entries() if e.last_error])
    assert (event.status, event.attempts) == ("pending", 0)
    assert "no acme provider is installed in this server" in event.last_error
    assert len(emulator.requests) == sent_before


def refused_for_a_while(
    host: Host, caplog: pytest.LogCaptureFixture
) -> tuple[list[OutboxEvent], list[str]]:
    """Let a host that may not deliver its events try for a while (a few pauses, refused again
    and again), stop it, and return its events and the warnings it logged."""
    outbox = host.runtime.service.outbox
    wait_until(lambda: any(event.last_error for event in outbox.entries()))
    time.sleep(1.0)
    events = outbox.entries()
    host.runtime.stop()
    said = [
        record.getMessage()
        for record in caplog.records
        if record.name == "ticketing_host.runtime" and record.levelno == logging.WARNING
    ]
    return events, said
