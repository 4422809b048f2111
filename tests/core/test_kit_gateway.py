"""The conformance kit's gateway: a reverse proxy that passes requests on to a fake service, or
answers in its place with pages of its own (here in front of the ServiceNow emulator)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from servicenow_emulator import Emulator

from ticketing_core.testing import BAD_GATEWAY_PAGE, Gateway

from ..conftest import ADMIN_TOKEN

INCIDENTS = "/api/now/table/incident"
AUTH = httpx.BasicAuth(*ADMIN_TOKEN.split(":"))


@pytest.fixture
def gateway(emulator_url: str) -> Iterator[Gateway]:
    with Gateway(emulator_url) as gateway:
        yield gateway


@pytest.fixture
def client(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, auth=AUTH, timeout=10) as client:
        yield client


def test_requests_and_answers_pass_through(
    emulator: Emulator, emulator_url: str, client: httpx.Client
) -> None:
    created = client.post(INCIDENTS, json={"short_description": "through the gateway"})
    sys_id = created.json()["result"]["sys_id"]
    found = client.get(INCIDENTS, params={"sysparm_query": f"sys_id={sys_id}"})
    direct = httpx.get(f"{emulator_url}{INCIDENTS}/{sys_id}", auth=AUTH)
    relayed = client.get(f"{INCIDENTS}/{sys_id}")

    assert created.status_code == 201
    assert [r["sys_id"] for r in found.json()["result"]] == [sys_id]
    assert (relayed.status_code, relayed.json()) == (direct.status_code, direct.json())
    assert relayed.headers["content-type"] == direct.headers["content-type"]
    assert [r["method"] for r in emulator.requests] == ["POST", "GET", "GET", "GET"]


def test_the_services_errors_pass_through(gateway: Gateway) -> None:
    answer = httpx.get(f"{gateway.url}{INCIDENTS}", auth=httpx.BasicAuth("admin", "wrong"))

    assert answer.status_code == 401
    assert "error" in answer.json()


def test_queued_pages_answer_instead_of_the_service(
    emulator: Emulator, gateway: Gateway, client: httpx.Client
) -> None:
    gateway.fail_next(502, BAD_GATEWAY_PAGE, content_type="text/html", count=2)
    gateway.fail_next(404, "404 page not found\n", content_type="text/plain")

    answers = [client.get(INCIDENTS) for _ in range(4)]

    assert [a.status_code for a in answers] == [502, 502, 404, 200]
    assert answers[0].text == BAD_GATEWAY_PAGE
    assert answers[0].headers["content-type"].startswith("text/html")
    assert answers[2].headers["content-type"].startswith("text/plain")
    assert len(emulator.requests) == 1  # the pages never reached the service


def test_clear_forgets_pages_not_sent(gateway: Gateway, client: httpx.Client) -> None:
    gateway.fail_next(502, BAD_GATEWAY_PAGE, content_type="text/html", count=5)
    assert client.get(INCIDENTS).status_code == 502

    gateway.clear()

    assert client.get(INCIDENTS).status_code == 200


def test_the_service_hanging_up_hangs_up_the_gateway(
    emulator: Emulator, client: httpx.Client
) -> None:
    emulator.add_fault("close_after_commit", method="POST")

    with pytest.raises(httpx.RemoteProtocolError):
        client.post(INCIDENTS, json={"short_description": "answer lost"})

    assert client.get(INCIDENTS).status_code == 200  # a new connection works
