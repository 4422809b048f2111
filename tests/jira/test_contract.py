"""The Jira provider passes the conformance kit, against the Jira emulator."""

from __future__ import annotations

import pytest
from jira_emulator import DEFAULT_API_TOKEN, DEFAULT_EMAIL, JiraEmulator, RunningEmulator

from ticketing_core.testing import ProviderContract

from .conftest import BASIC_TOKEN


class JiraFake:
    """The kit's view of the Jira emulator; notes are the issue's comments."""

    def __init__(self, emulator: JiraEmulator, url: str) -> None:
        self.emulator = emulator
        self.url = url
        self.token = BASIC_TOKEN
        self.wrong_token = f"{DEFAULT_EMAIL}:not-{DEFAULT_API_TOKEN}"

    def seed(self, count: int, title: str) -> None:
        self.emulator.seed_issues(count, summary=f"{title} {{i}}")

    def fail_next(
        self,
        kind: str,
        *,
        count: int = 1,
        retry_after: float | None = None,
        method: str | None = None,
    ) -> None:
        seconds = None if retry_after is None else int(retry_after)
        self.emulator.add_fault(kind, count=count, retry_after=seconds, method=method)

    def notes(self, ticket_id: str) -> list[str]:
        return [comment["text"] for comment in self.emulator.comments(ticket_id)]


class TestJiraContract(ProviderContract):
    provider_name = "jira"
    distribution = "ticketing-jira"

    @pytest.fixture
    def service(self, emulator: JiraEmulator, server: RunningEmulator) -> JiraFake:
        return JiraFake(emulator, server.url)
