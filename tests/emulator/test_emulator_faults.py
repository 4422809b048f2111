"""Fault injection, latency, control endpoints, the threaded server and the command line."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import servicenow_emulator
from servicenow_emulator import (
    DEFAULT_PASSWORD,
    DEFAULT_USERS,
    Emulator,
    RunningEmulator,
    User,
    run_in_thread,
)

from ..conftest import wait_until

INCIDENTS = "/api/now/table/incident"
JOURNAL = "/api/now/table/sys_journal_field"
TIMESTAMP = "%Y-%m-%d %H:%M:%S"


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


# ---- faults around the commit -------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_error_after_commit_creates_yet_answers_the_error(
    client: httpx.Client, emulator: Emulator, status: int
) -> None:
    emulator.add_fault(f"{status}_after_commit", method="POST", retry_after=2)
    assert client.get(INCIDENTS).status_code == 200  # not a POST: answered normally
    response = client.post(INCIDENTS, json={"short_description": "committed"})
    assert response.status_code == status
    assert response.headers["Retry-After"] == "2"
    assert response.json()["status"] == "failure"
    assert response.json()["error"]["detail"] == "Injected fault (emulator)"
    assert [i["short_description"] for i in emulator.incidents] == ["committed"]


def test_after_commit_faults_leave_refused_requests_alone(
    client: httpx.Client, emulator: Emulator
) -> None:
    emulator.add_fault("503_after_commit", method="POST")
    response = client.post(INCIDENTS, content=b"not json")
    assert response.status_code == 400  # nothing was committed, so the real error stands
    assert emulator.incidents == []
    assert emulator.stats()["pending_faults"] == 0


def test_close_after_commit_drops_the_connection_unanswered(
    client: httpx.Client, emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    [incident] = emulator.seed_incidents(1)
    url = f"{INCIDENTS}/{incident['sys_id']}"
    emulator.add_fault("close_after_commit", method="PATCH")
    server_log = logging.getLogger("uvicorn.error")  # it does not propagate to the root
    server_log.addHandler(caplog.handler)
    try:
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            client.patch(url, json={"work_notes": "landed"})
    finally:
        server_log.removeHandler(caplog.handler)
    assert [e["value"] for e in emulator.journal(incident["sys_id"])] == ["landed"]
    assert emulator.requests[-1]["status"] is None
    assert caplog.records == []  # the expected hang-up is not logged as an application error
    assert client.get(url).status_code == 200  # the next request gets a fresh connection


def test_close_after_commit_sends_no_status_line(
    server: RunningEmulator, emulator: Emulator
) -> None:
    emulator.add_fault("close_after_commit")
    host, port = server.url.removeprefix("http://").split(":")
    credentials = base64.b64encode(f"admin:{DEFAULT_PASSWORD}".encode()).decode()
    request = f"GET {INCIDENTS} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {credentials}\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request.encode())
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
    assert received == b""  # closed by the server with not a byte written


def test_late_commit_lands_after_the_client_gave_up(
    client: httpx.Client, emulator: Emulator
) -> None:
    [incident] = emulator.seed_incidents(1)
    emulator.add_fault("late_commit", method="PATCH", seconds=0.6)
    with pytest.raises(httpx.ReadTimeout):
        client.patch(f"{INCIDENTS}/{incident['sys_id']}", json={"work_notes": "late"}, timeout=0.3)
    assert emulator.journal(incident["sys_id"]) == []  # not yet: still stalled
    notes = wait_until(lambda: emulator.journal(incident["sys_id"]), timeout=3)
    assert [e["value"] for e in notes] == ["late"]
    assert wait_until(lambda: emulator.requests)[-1]["status"] == 200


def test_late_commit_answers_a_patient_client(client: httpx.Client, emulator: Emulator) -> None:
    emulator.add_fault("late_commit", method="POST", seconds=0.2)
    started = time.monotonic()
    assert client.post(INCIDENTS, json={}).status_code == 201
    assert time.monotonic() - started >= 0.2


def test_timeout_writes_nothing_once_the_client_gave_up(
    client: httpx.Client, emulator: Emulator
) -> None:
    emulator.add_fault("timeout", method="POST", seconds=0.4)
    with pytest.raises(httpx.ReadTimeout):
        client.post(INCIDENTS, json={"short_description": "never"}, timeout=0.1)
    [logged] = wait_until(lambda: emulator.requests, timeout=3)
    assert (logged["method"], logged["status"]) == ("POST", 499)  # the client was gone
    assert emulator.incidents == []


def test_dribble_sends_headers_at_once_then_the_body_byte_by_byte(
    client: httpx.Client, emulator: Emulator
) -> None:
    emulator.add_fault("dribble", seconds=0.03)
    started = time.monotonic()
    with client.stream("GET", INCIDENTS) as response:
        headers_after = time.monotonic() - started
        chunks = list(response.iter_raw())
    elapsed = time.monotonic() - started
    body = b"".join(chunks)
    assert (response.status_code, body) == (200, b'{"result":[]}')
    assert response.headers["Content-Length"] == "13"
    assert response.headers["X-Total-Count"] == "0"
    assert headers_after < 0.2
    assert elapsed - headers_after >= 0.3  # 13 bytes, 12 pauses of 0.03 s after the headers
    assert len(chunks) > 1


def test_dribble_slows_an_error_answer_too(client: httpx.Client, emulator: Emulator) -> None:
    emulator.add_fault("dribble", seconds=0.001)
    response = client.get(f"{INCIDENTS}/missing")
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "No Record found"


# ---- clock skew and read ACLs -------------------------------------------------------------


def test_clock_skew_shifts_every_timestamp_written() -> None:
    emulator = Emulator(clock=lambda: datetime(2026, 3, 1, 12, 0, tzinfo=UTC))
    emulator.clock_skew = timedelta(minutes=10)
    [incident] = emulator.seed_incidents(1, work_notes="skewed")
    stamps = {incident[f] for f in ("sys_created_on", "sys_updated_on", "opened_at")}
    assert stamps == {"2026-03-01 12:10:00"}
    assert emulator.journal(incident["sys_id"])[0]["sys_created_on"] == "2026-03-01 12:10:00"
    emulator.reset()
    assert emulator.clock_skew == timedelta(0)
    assert emulator.seed_incidents(1)[0]["sys_created_on"] == "2026-03-01 12:00:00"


def test_clock_skew_over_http(server: RunningEmulator, client: httpx.Client) -> None:
    control = f"{server.url}/__emulator"
    state = httpx.post(f"{control}/clock", json={"skew_seconds": 600}).json()
    assert state["clock_skew_seconds"] == 600
    assert httpx.post(f"{control}/clock", json={"skew_seconds": "soon"}).status_code == 400
    created = client.post(INCIDENTS, json={"work_notes": "hi"}).json()["result"]
    written = datetime.strptime(created["sys_created_on"], TIMESTAMP).replace(tzinfo=UTC)
    skew = (written - datetime.now(UTC)).total_seconds()
    assert 595 <= skew <= 601
    assert httpx.post(f"{control}/reset").json()["clock_skew_seconds"] == 0


def test_journal_read_acl_refuses_a_user_yet_shows_work_notes() -> None:
    auditor = User("auditor", "Ann Auditor", "pw", can_read_journal=False)
    with run_in_thread(Emulator(users=[*DEFAULT_USERS, auditor])) as running:
        [incident] = running.emulator.seed_incidents(1, work_notes="visible note")
        [entry] = running.emulator.journal(incident["sys_id"])
        with httpx.Client(base_url=running.url, auth=("auditor", "pw"), timeout=5) as http:
            for path in (JOURNAL, f"{JOURNAL}/{entry['sys_id']}"):
                refused = http.get(path)
                assert refused.status_code == 403
                assert refused.json() == {
                    "error": {
                        "message": "Operation Failed",
                        "detail": "ACL Exception Read Failed: the read ACL on sys_journal_field"
                        " denies auditor (emulator)",
                    },
                    "status": "failure",
                }
            params = {"sysparm_display_value": "true", "sysparm_fields": "work_notes"}
            shown = http.get(f"{INCIDENTS}/{incident['sys_id']}", params=params)
            assert shown.status_code == 200
            assert "visible note" in shown.json()["result"]["work_notes"]
        admin = httpx.get(f"{running.url}{JOURNAL}", auth=("admin", DEFAULT_PASSWORD))
        assert [e["value"] for e in admin.json()["result"]] == ["visible note"]


def test_deny_tables_refuses_every_user(
    server: RunningEmulator, client: httpx.Client, emulator: Emulator
) -> None:
    [incident] = emulator.seed_incidents(1, work_notes="hidden")
    control = f"{server.url}/__emulator"
    state = httpx.post(f"{control}/acl", json={"deny_read": ["sys_journal_field"]}).json()
    assert state["deny_read"] == ["sys_journal_field"]
    assert emulator.deny_tables == {"sys_journal_field"}
    assert client.get(JOURNAL).status_code == 403
    params = {"sysparm_display_value": "true"}
    work_notes = client.get(f"{INCIDENTS}/{incident['sys_id']}", params=params).json()
    assert "hidden" in work_notes["result"]["work_notes"]
    for bad in ({"deny_read": "sys_journal_field"}, {"deny_read": ["nope"]}, {}):
        assert httpx.post(f"{control}/acl", json=bad).status_code == 400
    emulator.reset()
    assert client.get(JOURNAL).status_code == 200


# ---- requests in flight -------------------------------------------------------------------


async def _burst(url: str, n: int) -> list[httpx.Response]:
    auth = ("admin", DEFAULT_PASSWORD)
    async with httpx.AsyncClient(base_url=url, auth=auth, timeout=5) as http:
        return list(await asyncio.gather(*(http.get(INCIDENTS) for _ in range(n))))


def test_peak_in_flight_counts_overlapping_requests(
    server: RunningEmulator, emulator: Emulator
) -> None:
    emulator.latency_ms = 200
    assert [r.status_code for r in asyncio.run(_burst(server.url, 5))] == [200] * 5
    stats = emulator.stats()
    assert (stats["peak_in_flight"], stats["in_flight"]) == (5, 0)
    assert (emulator.peak_in_flight, emulator.in_flight) == (5, 0)
    emulator.reset()
    assert emulator.peak_in_flight == 0


def test_max_in_flight_answers_429_beyond_the_cap(
    server: RunningEmulator, emulator: Emulator
) -> None:
    control = f"{server.url}/__emulator"
    assert httpx.post(f"{control}/limits", json={"max_in_flight": 2}).json()["max_in_flight"] == 2
    for bad in (0, "two", True, 1.5):
        assert httpx.post(f"{control}/limits", json={"max_in_flight": bad}).status_code == 400
    emulator.latency_ms = 300
    responses = asyncio.run(_burst(server.url, 5))
    assert sorted(r.status_code for r in responses) == [200, 200, 429, 429, 429]
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.headers["Retry-After"] == "1"
    assert refused.json()["error"]["message"] == "Too many requests"
    assert emulator.peak_in_flight == 2
    assert httpx.post(f"{control}/limits", json={"max_in_flight": None}).status_code == 200
    assert [r.status_code for r in asyncio.run(_burst(server.url, 3))] == [200] * 3
    emulator.max_in_flight = 1
    emulator.reset()
    assert emulator.max_in_flight is None


# ---- control endpoints --------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind", ["late_commit", "dribble", "close_after_commit", "500_after_commit", "timeout"]
)
def test_control_queues_every_fault_kind(
    server: RunningEmulator, emulator: Emulator, kind: str
) -> None:
    fault = {"kind": kind, "seconds": 0.01, "method": "DELETE"}
    assert httpx.post(f"{server.url}/__emulator/faults", json=fault).json()["pending_faults"] == 1


@pytest.mark.parametrize(
    "kind", ["418_after_commit", "after_commit", "close", "dribble_after_commit"]
)
def test_unknown_after_commit_kinds_are_refused(
    server: RunningEmulator, emulator: Emulator, kind: str
) -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        emulator.add_fault(kind)
    assert httpx.post(f"{server.url}/__emulator/faults", json={"kind": kind}).status_code == 400


def test_faults_over_http_act_like_python_ones(
    client: httpx.Client, server: RunningEmulator
) -> None:
    fault = {"kind": "502_after_commit", "method": "POST", "retry_after": 4}
    httpx.post(f"{server.url}/__emulator/faults", json=fault)
    response = client.post(INCIDENTS, json={"short_description": "over http"})
    assert (response.status_code, response.headers["Retry-After"]) == (502, "4")
    assert client.get(INCIDENTS).json()["result"][0]["short_description"] == "over http"


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
            "clock_skew_seconds": 0,
            "deny_read": [],
            "notifications": {
                "url": None,
                "integration_user": None,
                "pending": 0,
                "sent": 0,
                "failed": 0,
            },
            "pending_faults": 0,
            "requests": 5,
            "latency_ms": 5,
            "down": False,
            "in_flight": 0,
            "peak_in_flight": 1,
            "max_in_flight": None,
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
