"""Fault injection, latency, control endpoints, the threaded server and the command line."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jira_emulator
import pytest
from jira_emulator import (
    DEFAULT_API_TOKEN,
    DEFAULT_EMAIL,
    JiraEmulator,
    RunningEmulator,
)

MYSELF = "/rest/api/3/myself"
ISSUE = "/rest/api/3/issue"
NEW_ISSUE = {"fields": {"project": {"key": "DQ"}, "issuetype": {"name": "Task"}, "summary": "x"}}


def test_429_with_retry_after_is_consumed(client: httpx.Client, emulator: JiraEmulator) -> None:
    emulator.add_fault("429", count=2, retry_after=7)
    for _ in range(2):
        response = client.get(MYSELF)
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "7"
        assert response.headers["Content-Type"] == "application/json;charset=UTF-8"
        assert response.json() == {"errorMessages": ["Rate limit exceeded."], "errors": {}}
    assert client.get(MYSELF).status_code == 200


def test_429_defaults_retry_after(client: httpx.Client, emulator: JiraEmulator) -> None:
    emulator.add_fault("429")
    assert client.get(MYSELF).headers["Retry-After"] == "1"


def test_fault_for_one_method_waits_for_it(client: httpx.Client, emulator: JiraEmulator) -> None:
    emulator.add_fault("503", method="post")
    assert client.get(MYSELF).status_code == 200
    response = client.post(ISSUE, json=NEW_ISSUE)
    assert response.status_code == 503
    assert response.json()["errorMessages"] == ["Service Unavailable (emulator: injected fault)"]
    assert emulator.issues == []
    assert client.post(ISSUE, json=NEW_ISSUE).status_code == 201


def test_faults_come_before_authentication(server: RunningEmulator, emulator: JiraEmulator) -> None:
    emulator.add_fault("500")
    assert httpx.get(f"{server.url}{MYSELF}").status_code == 500


def test_html_page_with_200(client: httpx.Client, emulator: JiraEmulator) -> None:
    emulator.add_fault("html")
    response = client.get(MYSELF)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert "<html>" in response.text
    assert client.get(MYSELF).json()["displayName"] == "Alice Admin"


def test_timeout_stalls_then_answers(client: httpx.Client, emulator: JiraEmulator) -> None:
    emulator.add_fault("timeout", seconds=0.3)
    started = time.monotonic()
    assert client.get(MYSELF).status_code == 200
    assert time.monotonic() - started >= 0.3
    emulator.add_fault("timeout", seconds=0.5)
    with pytest.raises(httpx.ReadTimeout):
        client.get(MYSELF, timeout=0.1)


def test_drop_after_commit_writes_then_answers_504(
    client: httpx.Client, emulator: JiraEmulator
) -> None:
    emulator.add_fault("drop_after_commit", method="POST")
    response = client.post(ISSUE, json=NEW_ISSUE)
    assert response.status_code == 504
    assert [issue["key"] for issue in emulator.issues] == ["DQ-1"]
    assert client.get(f"{ISSUE}/DQ-1").status_code == 200


def test_down_is_503_until_back(client: httpx.Client, server: RunningEmulator) -> None:
    assert httpx.post(f"{server.url}/__emulator/down", json={"down": True}).json()["down"] is True
    response = client.get(MYSELF)
    assert response.status_code == 503
    assert response.json()["errors"] == {}
    httpx.post(f"{server.url}/__emulator/down", json={"down": False})
    assert client.get(MYSELF).status_code == 200


def test_latency_overlaps_for_concurrent_requests(
    server: RunningEmulator, emulator: JiraEmulator
) -> None:
    emulator.latency_ms = 300

    async def burst() -> list[int]:
        auth = (DEFAULT_EMAIL, DEFAULT_API_TOKEN)
        async with httpx.AsyncClient(base_url=server.url, auth=auth, timeout=5) as http:
            responses = await asyncio.gather(*(http.get(MYSELF) for _ in range(8)))
        return [response.status_code for response in responses]

    started = time.monotonic()
    assert asyncio.run(burst()) == [200] * 8
    elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 1.2  # sequential would take 2.4 s


def test_control_endpoints(client: httpx.Client, server: RunningEmulator) -> None:
    control = httpx.Client(base_url=f"{server.url}/__emulator", timeout=5)
    state = control.post("/faults", json={"kind": "502", "count": 2, "method": "GET"}).json()
    assert state["pending_faults"] == 2
    assert control.post("/latency", json={"ms": 5}).json()["latency_ms"] == 5
    assert client.get(f"{MYSELF}?x=1").status_code == 502
    log = control.get("/requests").json()
    assert log == [{"method": "GET", "path": MYSELF, "query": "x=1", "status": 502}]
    state = control.post("/reset").json()
    assert (state["pending_faults"], state["latency_ms"], state["requests"]) == (0, 0, 0)
    assert control.get("/state").json()["issues"] == 0


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/faults", {"kind": "418"}),
        ("/faults", {}),
        ("/latency", {"ms": "fast"}),
        ("/down", {"down": "yes"}),
    ],
)
def test_bad_control_requests_are_400(
    server: RunningEmulator, emulator: JiraEmulator, path: str, body: dict[str, object]
) -> None:
    response = httpx.post(f"{server.url}/__emulator{path}", json=body)
    assert response.status_code == 400
    assert response.json()["errorMessages"][0].startswith("Invalid emulator control request")


def test_python_api_rejects_unknown_fault(emulator: JiraEmulator) -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        emulator.add_fault("teapot")


def test_request_log_never_holds_headers(client: httpx.Client, emulator: JiraEmulator) -> None:
    client.get(MYSELF)
    [entry] = emulator.requests
    assert set(entry) == {"method", "path", "query", "status"}
    assert DEFAULT_API_TOKEN not in repr(emulator.requests)


def test_tokens_must_name_known_accounts() -> None:
    with pytest.raises(ValueError, match="unknown accounts"):
        JiraEmulator(tokens={"t": "ghost@example.com"})


def test_command_line_serves_until_stopped() -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(jira_emulator.__file__).parents[1])}
    command = [sys.executable, "-m", "jira_emulator", "--port", "0", "--seed", "2"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) as process:
        try:
            assert process.stdout is not None
            banner = process.stdout.readline()
            assert f"Basic auth {DEFAULT_EMAIL}:{DEFAULT_API_TOKEN}" in banner
            url = banner.split()[3]
            auth = (DEFAULT_EMAIL, DEFAULT_API_TOKEN)
            search = httpx.get(f"{url}/rest/api/3/search/jql?jql=project=DQ", auth=auth)
            assert len(search.json()["issues"]) == 2
        finally:
            process.terminate()
