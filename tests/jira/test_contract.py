"""The Jira provider passes the conformance kit, inbound checks included, against the Jira
emulator, on the service desk project (where Jira tells internal comments from public ones)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest
from jira_emulator import DEFAULT_API_TOKEN, DEFAULT_EMAIL, JiraEmulator, RunningEmulator

from ticketing_core.testing import InboundContract

from .conftest import BASIC_TOKEN, JOHN, Receiver

PROJECT = "SD"
WEBHOOK_SECRET = "conformance-webhook-secret"


class JiraFake:
    """The kit's view of the Jira emulator: notes are the issue's comments, the agent is John
    working in Jira, and notifications are the webhooks Jira posts to a local receiver."""

    agent = JOHN.account_id

    def __init__(self, emulator: JiraEmulator, url: str, receiver: Receiver) -> None:
        self.emulator = emulator
        self.url = url
        self.token = BASIC_TOKEN
        self.wrong_token = f"{DEFAULT_EMAIL}:not-{DEFAULT_API_TOKEN}"
        self.receiver = receiver
        emulator.add_webhook(receiver.url, WEBHOOK_SECRET)

    def seed(self, count: int, title: str) -> None:
        self.emulator.seed_issues(count, project=PROJECT, summary=f"{title} {{i}}")

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

    def act_as_agent(
        self,
        ticket_id: str,
        *,
        status: str | None = None,
        note: str | None = None,
        comment: str | None = None,
    ) -> None:
        if status is not None:
            self.emulator.act_as(JOHN.email, ticket_id, status=status)
        if note is not None:
            self.emulator.act_as(JOHN.email, ticket_id, comment=note, internal=True)
        if comment is not None:
            self.emulator.act_as(JOHN.email, ticket_id, comment=comment)

    def seed_at_one_time(self, count: int, title: str) -> None:
        at = datetime.now(UTC).replace(second=0)  # one millisecond, and one JQL minute
        self.emulator.seed_issues(count, project=PROJECT, at=at, summary=f"{title} {{i}}")

    def notification_for(self, ticket_id: str) -> bytes:
        assert self.emulator.wait_for_webhooks()
        for post in reversed(self.receiver.posts):
            if post.json()["issue"]["id"] == ticket_id:
                return post.body
        raise AssertionError(f"Jira posted no webhook about issue {ticket_id}")

    def notification_elsewhere(self, ticket_id: str) -> bytes:
        body: dict[str, Any] = json.loads(self.notification_for(ticket_id))
        issue = body["issue"]
        issue["key"] = "OTHER-" + issue["key"].rpartition("-")[2]
        issue["fields"]["project"] = {"id": "10099", "key": "OTHER", "name": "Other"}
        return json.dumps(body).encode()


class TestJiraContract(InboundContract):
    provider_name = "jira"
    distribution = "ticketing-jira"
    options: ClassVar[dict[str, Any]] = {"project": PROJECT, "issue_type": "[System] Incident"}

    @pytest.fixture
    def service(
        self, emulator: JiraEmulator, server: RunningEmulator, receiver: Receiver
    ) -> JiraFake:
        return JiraFake(emulator, server.url, receiver)
