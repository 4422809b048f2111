"""Jira answers the JSON parser cannot take: the shared HTTP layer reports them, as for ServiceNow."""

from __future__ import annotations

import httpx
import pytest
from ticketing_jira import JiraProvider

from ticketing_core.errors import ProviderError, UnexpectedResponse

NESTED = b"[" * 200_000


def jira_answering(status: int, body: bytes) -> JiraProvider:
    def answer(_: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers={"Content-Type": "application/json"})

    return JiraProvider(
        api_url="https://acme.atlassian.net",
        api_access_token="you@acme.com:token",
        transport=httpx.MockTransport(answer),
        max_attempts=1,
    )


def test_json_nested_too_deeply_is_an_unexpected_response() -> None:
    with jira_answering(200, NESTED) as jira, pytest.raises(UnexpectedResponse) as caught:
        jira.get("10001")

    assert str(caught.value) == "Jira sent JSON nested too deeply to read (HTTP 200)"


def test_an_error_answer_nested_too_deeply_keeps_its_status() -> None:
    with jira_answering(400, NESTED) as jira, pytest.raises(ProviderError) as caught:
        jira.get("10001")

    assert caught.value.status_code == 400
    assert str(caught.value) == (
        "Jira rejected the request: HTTP 400 Bad Request "
        "(its error body is unreadable: JSON nested too deeply)"
    )
