"""The provider's whole contract replayed from cassettes recorded against a ServiceNow-shaped server.

These run offline; ``nox -s record`` re-records them (see tests/conftest.py for a real instance).
Keys and texts are fixed so that request bodies match their recordings.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ticketing_core import errors
from ticketing_core.models import SearchQuery, TicketChanges, TicketDraft
from ticketing_servicenow import ServiceNowProvider

from ..conftest import ADMIN_TOKEN, RECORD_TOKEN_VARIABLE, SECRET_HEADERS

CASSETTES = Path(__file__).parent / "cassettes"
DRAFT = TicketDraft(
    title="ticketing recorded contract",
    description="Created by tests/servicenow/test_recorded.py",
    priority="2",
    urgency="2",
    impact="2",
    external_source="ticketing tests",
)


@pytest.fixture
def recorded(recorded_target: tuple[str, str]) -> Iterator[ServiceNowProvider]:
    url, token = recorded_target
    provider = ServiceNowProvider(api_url=url, api_access_token=token, max_retry_wait=2.0)
    yield provider
    provider.close()


@pytest.mark.vcr
def test_incident_lifecycle(recorded: ServiceNowProvider) -> None:
    recorded.validate()

    created = recorded.create(DRAFT, idempotency_key="ticketing-recorded-lifecycle-1")
    assert created.status == "New"
    assert recorded.get(created.id) == created
    assert recorded.find(created.number).id == created.id
    again = recorded.create(DRAFT, idempotency_key="ticketing-recorded-lifecycle-1")
    assert again.id == created.id

    updated = recorded.update(created.id, TicketChanges(status="In Progress", urgency="1"))
    assert (updated.status, updated.urgency, updated.priority) == ("In Progress", "1", "2")

    recorded.add_work_note(created.id, "Recorded work note")
    assert recorded.get_status(created.id).label == "In Progress"

    found = recorded.search(SearchQuery(text=created.number, status="2", size=5))
    assert [t.id for t in found.items] == [created.id]
    assert found.total == 1


@pytest.mark.vcr
def test_inbound_reads(recorded: ServiceNowProvider) -> None:
    start = recorded.changed_since(None)
    created = recorded.create(DRAFT, idempotency_key="ticketing-recorded-inbound-1")
    recorded.add_work_note(created.id, "Recorded inbound note")

    page = recorded.changed_since(start.cursor, overlap=1.0)
    assert created.id in [t.id for t in page.tickets]
    [again] = recorded.get_many([created.id])
    assert (again.revision, again.updated_by) == (1, created.updated_by)
    [entry] = recorded.journal_since(created.id, None)
    assert (entry.kind, entry.text, entry.author) == (
        "work_note",
        "Recorded inbound note",
        created.updated_by,
    )
    assert {"New", "In Progress", "Resolved"} <= {s.label for s in recorded.states()}


@pytest.mark.vcr
def test_missing_record_is_not_found(recorded: ServiceNowProvider) -> None:
    with pytest.raises(errors.NotFound, match="No Record found"):
        recorded.get("0123456789abcdef0123456789abcdef")


@pytest.mark.vcr
def test_wrong_credentials_are_rejected(recorded_target: tuple[str, str]) -> None:
    provider = ServiceNowProvider(api_url=recorded_target[0], api_access_token="admin:wrong")

    with pytest.raises(errors.AuthenticationFailed, match="User Not Authenticated"):
        provider.validate()


def test_cassettes_hold_no_secret() -> None:
    cassettes = list(CASSETTES.rglob("*.yaml"))
    assert len(cassettes) >= 3, "cassettes are recorded and committed"
    recorded_with = os.environ.get(RECORD_TOKEN_VARIABLE, "")  # a real instance's, if recording
    secrets = [ADMIN_TOKEN.split(":")[1], "Basic ", "Bearer "]
    secrets += [part for part in recorded_with.split(":") if len(part) >= 4]
    for cassette in cassettes:
        text = cassette.read_text()
        for secret in secrets:
            assert secret not in text, f"{cassette.name} contains {secret!r}"
        for header in SECRET_HEADERS:
            assert f"\n      {header}:" not in text.lower(), f"{cassette.name} keeps {header}"


def test_session_cookies_and_oauth_tokens_are_not_recorded() -> None:
    from ..conftest import without_secrets

    issued = (
        b'{"access_token": "ACCESS-SECRET", "refresh_token": "REFRESH-SECRET", "expires_in": 1}'
    )
    response = {
        "headers": {"Set-Cookie": ["JSESSIONID=SESSION-SECRET"], "Server": ["ServiceNow"]},
        "body": {"string": issued},
    }

    recorded = without_secrets(response)

    assert recorded["headers"] == {"Server": ["ServiceNow"]}
    assert b"SECRET" not in recorded["body"]["string"]
