"""The ServiceNow provider passes the conformance kit, against the emulator."""

from __future__ import annotations

import json
from typing import ClassVar

import pytest
from servicenow_emulator import DEFAULT_PASSWORD, Emulator
from servicenow_emulator.notify import encode

from ticketing_core.testing import InboundContract

from ..conftest import ADMIN_TOKEN


class ServiceNowFake:
    """The kit's view of the ServiceNow emulator."""

    agent = "beth.anglin"

    def __init__(self, emulator: Emulator, url: str) -> None:
        self.emulator = emulator
        self.url = url
        self.token = ADMIN_TOKEN
        self.wrong_token = f"admin:not-{DEFAULT_PASSWORD}"

    def seed(self, count: int, title: str) -> None:
        self.emulator.seed_incidents(count, short_description=f"{title} {{i}}")

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
        journal = self.emulator.journal(ticket_id)
        return [entry["value"] for entry in journal if entry["element"] == "work_notes"]

    def act_as_agent(
        self,
        ticket_id: str,
        *,
        status: str | None = None,
        note: str | None = None,
        comment: str | None = None,
    ) -> None:
        fields = {"state": status, "work_notes": note, "comments": comment}
        given = {name: value for name, value in fields.items() if value is not None}
        self.emulator.act_as(self.agent, ticket_id, **given)

    def seed_at_one_time(self, count: int, title: str) -> None:
        self.seed(count, title)  # the emulator seeds at one instant

    def notification_for(self, ticket_id: str) -> bytes:
        return encode(self.emulator.notification_for(ticket_id))

    def notification_elsewhere(self, ticket_id: str) -> bytes:
        return json.dumps(
            json.loads(self.notification_for(ticket_id)) | {"table": "problem"}
        ).encode()


class TestServiceNowContract(InboundContract):
    provider_name = "servicenow"
    distribution = "ticketing-framework"
    note_method = "PATCH"  # a work note is a write to the incident's work_notes field
    secret_options_example: ClassVar[dict[str, str]] = {"client_id": "emulator-client"}

    @pytest.fixture
    def service(self, emulator: Emulator, emulator_url: str) -> ServiceNowFake:
        return ServiceNowFake(emulator, emulator_url)
