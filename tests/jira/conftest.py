"""Jira fixtures: one emulator served for the session, emptied before each test, and clients of it."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from jira_emulator import (
    DEFAULT_ACCOUNTS,
    DEFAULT_API_TOKEN,
    DEFAULT_EMAIL,
    Account,
    JiraEmulator,
    RunningEmulator,
    run_in_thread,
)
from ticketing_jira import JiraProvider

BASIC_TOKEN = f"{DEFAULT_EMAIL}:{DEFAULT_API_TOKEN}"
BEARER = "oauth-access-token"  # John Doe's
READER = Account("reader@example.com", "Rita Reader", "reader-token", read_only=True)
JOHN = next(a for a in DEFAULT_ACCOUNTS if a.display_name == "John Doe")
# Newfoundland: behind UTC by a half-hour offset that changes with daylight saving time, so a
# JQL date written in the wrong zone misses changes instead of only repeating some.
NEWFOUNDLAND = Account(
    "nl@example.com", "Nell Newfoundland", "nl-token", time_zone="America/St_Johns"
)
NEWFOUNDLAND_TOKEN = f"{NEWFOUNDLAND.email}:nl-token"


@pytest.fixture(scope="session")
def server() -> Iterator[RunningEmulator]:
    accounts = [*DEFAULT_ACCOUNTS, READER, NEWFOUNDLAND]
    emulator = JiraEmulator(accounts=accounts, tokens={BEARER: JOHN.email})
    with run_in_thread(emulator) as running:
        yield running


@pytest.fixture
def emulator(server: RunningEmulator) -> JiraEmulator:
    """The served emulator, emptied (issues, faults, request log) before each test."""
    server.emulator.reset()
    return server.emulator


@pytest.fixture
def client(server: RunningEmulator, emulator: JiraEmulator) -> Iterator[httpx.Client]:
    """Plain HTTP to the emulator as the admin account."""
    auth = (DEFAULT_EMAIL, DEFAULT_API_TOKEN)
    with httpx.Client(base_url=server.url, auth=auth, timeout=5) as http:
        yield http


@pytest.fixture
def provider(server: RunningEmulator, emulator: JiraEmulator) -> Iterator[JiraProvider]:
    """The Jira provider on project DQ (a software project), as the admin account."""
    jira = JiraProvider(api_url=server.url, api_access_token=BASIC_TOKEN)
    yield jira
    jira.close()


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A local HTTP endpoint that records what is posted to it and answers ``status``."""

    url: str
    posts: list[Received] = field(default_factory=list)
    status: int = 204
    on_post: Any = None  # called with each Received before answering, if set

    def events(self) -> list[str]:
        return [post.json()["webhookEvent"] for post in self.posts]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    record = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            received = Received(dict(self.headers.items()), self.rfile.read(length))
            record.posts.append(received)
            if record.on_post is not None:
                record.on_post(received)
            self.send_response(record.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:  # keep test output quiet
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    record.url = f"http://127.0.0.1:{http.server_address[1]}/hook"
    thread = threading.Thread(target=http.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield record
    finally:
        http.shutdown()
        http.server_close()
