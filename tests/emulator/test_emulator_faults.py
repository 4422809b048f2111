"""Fault injection, latency, control endpoints, the threaded server and the command line."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import servicenow_emulator
from servicenow_emulator import DEFAULT_PASSWORD, Emulator, RunningEmulator, run_in_thread

INCIDENTS = "/api/now/table/incident"


@pytest.fixture(scope="module")
def server() -> Iterator[RunningEmulator]:
    with run_in_thread(Emulator()) as running:
        yield running


@pytest.fixture
def emulator(server: RunningEmulator) -> Emulator:
    server.emulator.reset()
    return server.emulator


@pytest.fixture
def client(server: RunningEmulator, emulator: Emulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, auth=("admin", DEFAULT_PASSWORD), timeout=5) as http:
        yield http


def test_429_with_retry_after_is_consumed(client: httpx.Client, emulator: Emulator) -> None:
    emulator.add_fault("429", count=2, retry_after=3)
    for _ in range(2):
        response = client.get(INCIDENTS)
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "3"
        assert response.headers["Content-Type"] == "application/json;charset=UTF-8"
        body = response.json()
        assert (body["error"]["message"], body["status"]) == ("Too many requests", "failure")
    assert client.get(INCIDENTS).status_code == 200


def test_fault_for_one_method_waits_for_it(client: httpx.Client, emulator: Emulator) -> None:
    emulator.add_fault("503", method="post", retry_after=1)
    assert client.get(INCIDENTS).status_code == 200
    response = client.post(INCIDENTS, json={})
    assert (response.status_code, response.headers["Retry-After"]) == (503, "1")
    assert emulator.incidents == []
    assert client.post(INCIDENTS, json={}).status_code == 201


@pytest.mark.parametrize(
    ("kind", "message"), [("500", "Internal Server Error"), ("502", "Bad Gateway")]
)
def test_5xx_faults_use_the_error_envelope(
    client: httpx.Client, emulator: Emulator, kind: str, message: str
) -> None:
    emulator.add_fault(kind)
    response = client.get(INCIDENTS)
    assert response.status_code == int(kind)
    assert response.json()["error"]["message"] == message
    assert "Retry-After" not in response.headers


def test_hibernation_page(client: httpx.Client, emulator: Emulator) -> None:
    emulator.add_fault("html")
    response = client.get(INCIDENTS)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert "Your instance is hibernating" in response.text


def test_down_answers_503_until_up(client: httpx.Client, emulator: Emulator) -> None:
    emulator.down = True
    assert client.get(INCIDENTS).status_code == 503
    assert client.post(INCIDENTS, json={}).status_code == 503
    emulator.down = False
    assert client.get(INCIDENTS).status_code == 200


def test_drop_after_commit_creates_yet_answers_504(
    client: httpx.Client, emulator: Emulator
) -> None:
    emulator.add_fault("drop_after_commit", method="POST")
    response = client.post(INCIDENTS, json={"short_description": "ambiguous"})
    assert response.status_code == 504
    assert [i["short_description"] for i in emulator.incidents] == ["ambiguous"]


def test_timeout_stalls_then_answers(client: httpx.Client, emulator: Emulator) -> None:
    emulator.add_fault("timeout", seconds=0.3)
    with pytest.raises(httpx.ReadTimeout):
        client.get(INCIDENTS, timeout=0.05)
    emulator.add_fault("timeout", seconds=0.2)
    started = time.monotonic()
    assert client.get(INCIDENTS).status_code == 200
    assert time.monotonic() - started >= 0.2


def test_unknown_fault_kind_is_refused(emulator: Emulator) -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        emulator.add_fault("418")


def test_latency_overlaps_for_concurrent_requests(
    server: RunningEmulator, emulator: Emulator
) -> None:
    emulator.latency_ms = 200

    async def burst() -> list[int]:
        auth = ("admin", DEFAULT_PASSWORD)
        async with httpx.AsyncClient(base_url=server.url, auth=auth, timeout=5) as http:
            responses = await asyncio.gather(*(http.get(INCIDENTS) for _ in range(8)))
        return [r.status_code for r in responses]

    started = time.monotonic()
    assert asyncio.run(burst()) == [200] * 8
    elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < 0.8  # serial would take 1.6 s


# ---- control endpoints --------------------------------------------------------------------


def test_control_endpoints(server: RunningEmulator, emulator: Emulator) -> None:
    control = httpx.Client(base_url=f"{server.url}/__emulator", timeout=5)  # no auth needed
    api = httpx.Client(base_url=server.url, auth=("admin", DEFAULT_PASSWORD), timeout=5)
    with control, api:
        fault = {"kind": "429", "count": 2, "retry_after": 1, "method": "POST"}
        assert control.post("/faults", json=fault).json()["pending_faults"] == 2
        assert control.post("/faults", json={"kind": "teapot"}).status_code == 400
        assert control.post("/latency", json={"ms": 5}).json()["latency_ms"] == 5
        assert api.post(INCIDENTS, json={}).status_code == 429
        assert control.post("/down", json={"down": True}).json()["down"] is True
        assert control.post("/down", json={"down": "yes"}).status_code == 400
        assert api.get(INCIDENTS).status_code == 503
        control.post("/down", json={"down": False})
        created = api.post(INCIDENTS, json={"work_notes": "hi"}).json()  # the second 429
        assert "error" in created
        sys_id = api.post(INCIDENTS, json={"work_notes": "hi"}).json()["result"]["sys_id"]
        assert [e["value"] for e in control.get(f"/journal/{sys_id}").json()] == ["hi"]
        httpx.get(f"{server.url}{INCIDENTS}?sysparm_limit=1")  # unauthenticated
        log = control.get("/requests").json()
        assert [(r["method"], r["status"]) for r in log] == [
            ("POST", 429),
            ("GET", 503),
            ("POST", 429),
            ("POST", 201),
            ("GET", 401),
        ]
        assert log[-1] == {
            "method": "GET",
            "path": INCIDENTS,
            "query": "sysparm_limit=1",
            "status": 401,
        }
        state = control.get("/state").json()
        assert state == {
            "incidents": 1,
            "journal_entries": 1,
            "users": 4,
            "groups": 3,
            "pending_faults": 0,
            "requests": 5,
            "latency_ms": 5,
            "down": False,
        }
        reset = control.post("/reset").json()
        assert (reset["incidents"], reset["requests"], reset["latency_ms"]) == (0, 0, 0)


def test_requests_log_never_holds_headers(client: httpx.Client, emulator: Emulator) -> None:
    client.get(INCIDENTS, headers={"X-Secret": "s3cr3t"})
    assert DEFAULT_PASSWORD not in repr(emulator.requests)
    assert "s3cr3t" not in repr(emulator.requests)
    assert set(emulator.requests[0]) == {"method", "path", "query", "status"}


# ---- server and command line --------------------------------------------------------------


def test_run_in_thread_serves_on_a_free_port_and_stops() -> None:
    with run_in_thread() as running:
        host, port = running.url.removeprefix("http://").split(":")
        assert host == "127.0.0.1"
        assert httpx.get(running.url + INCIDENTS).status_code == 401
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection((host, int(port)), timeout=1),
    ):
        pass


def test_command_line_serves_seeded_incidents() -> None:
    package_root = Path(servicenow_emulator.__file__).resolve().parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(package_root), os.environ.get("PYTHONPATH", "")]),
    }
    command = [
        sys.executable,
        "-m",
        "servicenow_emulator",
        "--port=0",
        "--seed=2",
        "--user=bob:pw",
        "--reader=viewer:pw",
        "--token=jane.smith:tok",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        url = line.split()[3]
        assert "admin/admin-password" in line
        assert url.startswith("http://127.0.0.1:")
        listed = httpx.get(url + INCIDENTS, auth=("bob", "pw"), timeout=5).json()["result"]
        assert [i["number"] for i in listed] == ["INC0010001", "INC0010002"]
        bearer = {"Authorization": "Bearer tok"}
        created = httpx.post(url + INCIDENTS, json={}, headers=bearer, timeout=5).json()
        assert created["result"]["sys_created_by"] == "jane.smith"
        assert httpx.post(url + INCIDENTS, json={}, auth=("viewer", "pw")).status_code == 403
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout:
            process.stdout.close()
