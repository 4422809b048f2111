"""Jira fixtures: one emulator served for the session, emptied before each test, and clients of it."""

from __future__ import annotations

from collections.abc import Iterator

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


@pytest.fixture(scope="session")
def server() -> Iterator[RunningEmulator]:
    emulator = JiraEmulator(accounts=[*DEFAULT_ACCOUNTS, READER], tokens={BEARER: JOHN.email})
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
