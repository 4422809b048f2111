"""Authentication, the integration endpoints and the OpenAPI document, over real HTTP."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from servicenow_emulator import Emulator

from ..conftest import ADMIN_TOKEN, BEARER_TOKEN
from .conftest import SEED_TIME, Host, StartHost, create_integration, ok

SECRET = ADMIN_TOKEN.partition(":")[2]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/integrations"),
        ("POST", "/api/anomalies"),
        ("GET", "/api/integrations/ticketing/tickets/search"),
        ("GET", "/api/anomalies/12345/ticket-links"),
        ("PUT", "/api/integrations/1/inbound"),
        ("POST", "/api/integrations/1/inbound/secret"),
        ("GET", "/api/integrations/1/sync-log"),
    ],
)
@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong-token", "Basic aG9zdDpwYXNzd29yZA==", "Bearer"]
)
def test_the_api_needs_the_bearer_token(
    host: Host, method: str, path: str, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}

    with httpx.Client(base_url=host.url) as anonymous:
        response = anonymous.request(method, path, headers=headers)

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json() == {"detail": "missing or invalid API token"}


def test_openapi_is_public_and_lists_every_endpoint(host: Host) -> None:
    with httpx.Client(base_url=host.url) as anonymous:
        document = ok(anonymous.get("/openapi.json"))

    assert document["info"]["title"] == "ticketing host"
    assert {path: sorted(ops) for path, ops in document["paths"].items()} == {
        "/api/integrations": ["get", "post"],
        "/api/integrations/{integration_id}": ["delete", "get", "patch"],
        "/api/integrations/ticketing/tickets/search": ["get"],
        "/api/integrations/ticketing/anomalies/{anomaly_id}/tickets": ["post"],
        "/api/integrations/ticketing/anomalies/{anomaly_id}/links": ["post"],
        "/api/anomalies/{anomaly_id}/ticket-links": ["get"],
        "/api/anomalies/{anomaly_id}/ticket-links/sync": ["post"],
        "/api/anomalies": ["post"],
        "/api/anomalies/{anomaly_id}": ["get", "put"],
        "/api/anomalies/{anomaly_id}/comments": ["post"],
        "/api/integrations/{integration_id}/inbound": ["put"],
        "/api/integrations/{integration_id}/inbound/secret": ["post"],
        "/api/integrations/{integration_id}/sync-log": ["get"],
        "/api/inbound/{integration_id}": ["post"],
    }
    assert "HTTPBearer" in document["components"]["securitySchemes"]


def test_creating_an_integration_validates_and_returns_the_seed_shape(
    host: Host, emulator: Emulator, emulator_url: str
) -> None:
    body = {"type": "servicenow", "api_url": emulator_url + "/", "api_access_token": ADMIN_TOKEN}

    response = host.api.post("/api/integrations", json=body)

    created = ok(response, 201)
    assert list(created) == ["id", "type", "category", "api_url", "connected", "status", "created"]
    assert created["type"] == "servicenow"
    assert created["category"] == "ticketing"
    assert created["api_url"] == emulator_url
    assert (created["connected"], created["status"]) == (True, "idle")
    assert re.fullmatch(SEED_TIME + "Z", created["created"])
    validation = emulator.requests[-1]
    assert (validation["method"], validation["path"]) == ("GET", "/api/now/table/incident")
    assert "sysparm_limit=1" in validation["query"]
    listed = host.api.get("/api/integrations")
    fetched = host.api.get(f"/api/integrations/{created['id']}")
    # Answers after a create's also tell how its deliveries stand (see test_integration_state).
    idle = created | {"pending": 0, "dead": 0, "inbound": {"enabled": False}}
    assert listed.json() == [idle]
    assert fetched.json() == idle
    for text in (response.text, listed.text, fetched.text):
        assert SECRET not in text


def test_rejected_credentials_are_400_and_nothing_is_stored(host: Host, emulator_url: str) -> None:
    body = {"type": "servicenow", "api_url": emulator_url, "api_access_token": "admin:Wr0ngPass"}

    response = host.api.post("/api/integrations", json=body)

    assert response.status_code == 400
    assert "User Not Authenticated" in response.json()["detail"]
    assert "Wr0ngPass" not in response.text
    assert ok(host.api.get("/api/integrations")) == []


def test_plain_http_is_refused_unless_allowed(
    start_host: StartHost, emulator: Emulator, emulator_url: str
) -> None:
    host = start_host(allow_http=False)
    body = {"type": "servicenow", "api_url": emulator_url, "api_access_token": ADMIN_TOKEN}

    response = host.api.post("/api/integrations", json=body)

    assert response.status_code == 400
    assert "refusing plain-HTTP api_url" in response.json()["detail"]
    assert emulator.requests == []
    assert ok(host.api.get("/api/integrations")) == []


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [("type", "jira-cloud", "servicenow"), ("sync_policy", "mirror", "state-mapping, work-notes")],
)
def test_unknown_type_or_policy_is_422_naming_the_installed_ones(
    host: Host, emulator_url: str, field: str, value: str, named: str
) -> None:
    body = {"type": "servicenow", "api_url": emulator_url, "api_access_token": ADMIN_TOKEN}

    response = host.api.post("/api/integrations", json=body | {field: value})

    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", field]
    assert named in error["msg"]
    assert SECRET not in response.text


def test_a_rejected_body_never_echoes_the_token(host: Host) -> None:
    response = host.api.post("/api/integrations", json={"api_access_token": ADMIN_TOKEN})

    assert response.status_code == 422
    assert {tuple(error["loc"]) for error in response.json()["detail"]} == {
        ("body", "type"),
        ("body", "api_url"),
    }
    assert SECRET not in response.text


def test_a_failing_instance_is_502_with_its_reason(
    host: Host, emulator: Emulator, emulator_url: str
) -> None:
    emulator.add_fault("500")
    body = {"type": "servicenow", "api_url": emulator_url, "api_access_token": ADMIN_TOKEN}

    response = host.api.post("/api/integrations", json=body)

    assert response.status_code == 502
    assert "Injected fault" in response.json()["detail"]
    assert ok(host.api.get("/api/integrations")) == []


def test_deleting_an_integration_forgets_it_and_its_links(
    host: Host, ticket: dict[str, object]
) -> None:
    integration_id = ticket["integration_id"]

    response = host.api.delete(f"/api/integrations/{integration_id}")

    assert response.status_code == 204
    assert response.content == b""
    assert host.api.get(f"/api/integrations/{integration_id}").status_code == 404
    assert ok(host.api.get("/api/anomalies/12345/ticket-links")) == []
    assert host.api.delete(f"/api/integrations/{integration_id}").status_code == 404


def test_unknown_integration_is_404(host: Host) -> None:
    response = host.api.get("/api/integrations/999")

    assert response.status_code == 404
    assert response.json() == {"detail": "integration 999 does not exist"}


def test_bearer_token_credentials_work_too(host: Host, emulator_url: str) -> None:
    created = create_integration(host, emulator_url, token=BEARER_TOKEN)

    assert created["connected"] is True


@pytest.mark.parametrize(
    "options", [{"transport": "x"}, {"timeout": "abc"}, {"colour": "red"}, {"max_attempts": "z"}]
)
def test_options_a_provider_cannot_use_are_400(
    host: Host, emulator_url: str, options: dict[str, str]
) -> None:
    body = {"type": "servicenow", "api_url": emulator_url, "api_access_token": ADMIN_TOKEN}

    response = host.api.post("/api/integrations", json=body | {"options": options})

    assert response.status_code == 400
    assert response.json()["detail"].startswith("options: servicenow cannot use them")
    assert ok(host.api.get("/api/integrations")) == []


@pytest.mark.parametrize("api_url", ["http://[::1", "http://127.0.0.1:abc", "ftp://x"])
def test_malformed_urls_are_400(host: Host, api_url: str) -> None:
    body = {"type": "servicenow", "api_url": api_url, "api_access_token": ADMIN_TOKEN}

    response = host.api.post("/api/integrations", json=body)

    assert response.status_code == 400
    assert "api_url must be an absolute https:// URL" in response.json()["detail"]


CONTROL_CHARACTERS = ["\x00", "\r", "\n", "\x1b", "\x7f"]


@pytest.mark.parametrize("control", CONTROL_CHARACTERS)
@pytest.mark.parametrize("token", ["Secret{}token", "admin:Secret{}password"])
def test_a_token_with_a_control_character_is_422_naming_it_and_not_echoed(
    host: Host, emulator: Emulator, emulator_url: str, token: str, control: str
) -> None:
    body = {"type": "servicenow", "api_url": emulator_url, "api_access_token": token}

    response = host.api.post(
        "/api/integrations", json=body | {"api_access_token": token.format(control)}
    )

    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "api_access_token"]
    assert error["msg"].startswith("the access token must not")
    assert "Secret" not in response.text
    assert emulator.requests == []  # refused before anything was sent
    assert ok(host.api.get("/api/integrations")) == []


@pytest.mark.parametrize("control", CONTROL_CHARACTERS)
def test_patching_in_a_token_with_a_control_character_is_422_and_keeps_the_stored_one(
    host: Host, integration: dict[str, Any], control: str
) -> None:
    path = f"/api/integrations/{integration['id']}"

    response = host.api.patch(path, json={"api_access_token": f"admin:Secret{control}password"})

    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "api_access_token"]
    assert "Secret" not in response.text
    assert ok(host.api.get(path))["connected"] is True
    assert host.api.get("/api/integrations/ticketing/tickets/search").status_code == 200


@pytest.mark.parametrize("option", ["client_id", "client_secret"])
def test_oauth_options_with_a_control_character_are_422_naming_the_option(
    host: Host, emulator_url: str, option: str
) -> None:
    options = {"client_id": "client", "client_secret": "secret"} | {option: "Secret\x00value"}
    body = {
        "type": "servicenow",
        "api_url": emulator_url,
        "api_access_token": "",
        "options": options,
    }

    response = host.api.post("/api/integrations", json=body)

    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "options", option]
    assert "Secret" not in response.text


def test_deleting_an_integration_drops_its_queued_syncs_and_its_id_is_not_reused(
    host: Host, emulator: Emulator, emulator_url: str
) -> None:
    first = create_integration(host, emulator_url)
    ok(host.api.post("/api/anomalies", json={"id": 5, "type": "Record", "status": "Active",
                                             "description": "d", "failed_checks": []}), 201)  # fmt: skip
    path = "/api/integrations/ticketing/anomalies/5/tickets"
    ok(host.api.post(path, json={"title": "t", "description": "d", "priority": "3",
                                 "urgency": "3", "impact": "3"}))  # fmt: skip
    emulator.down = True
    ok(host.api.put("/api/anomalies/5", json={"status": "Acknowledged"}))

    assert host.api.delete(f"/api/integrations/{first['id']}").status_code == 204
    emulator.down = False
    second = create_integration(host, emulator_url)

    assert second["id"] != first["id"]
    assert host.runtime.service.outbox.counts() == {"pending": 0, "delivered": 0, "dead": 0}


def test_options_must_be_text(host: Host, emulator_url: str) -> None:
    body = {"type": "servicenow", "api_url": emulator_url, "api_access_token": ADMIN_TOKEN}

    response = host.api.post("/api/integrations", json=body | {"options": {"close_code": 5}})

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "options", "close_code"]


@pytest.mark.parametrize("invisible", ["\x00", "\r\nX-Evil: 1", "\x85", "\u200b"])
@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_an_api_url_with_a_control_or_invisible_character_is_422_naming_it(
    host: Host, emulator: Emulator, emulator_url: str, invisible: str, method: str
) -> None:
    body = {"type": "servicenow", "api_url": emulator_url, "api_access_token": ADMIN_TOKEN}
    if method == "PATCH":
        created = create_integration(host, emulator_url)
        emulator.reset()
    bad = {"api_url": f"{emulator_url}/{invisible}now"}

    response = (
        host.api.post("/api/integrations", json=body | bad)
        if method == "POST"
        else host.api.patch(f"/api/integrations/{created['id']}", json=bad)
    )

    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "api_url"]
    assert error["msg"].startswith("api_url must not contain control or invisible characters")
    assert emulator.requests == []  # refused before anything was sent
