"""The emulator's OAuth 2.0 token endpoint, ``POST /oauth_token.do``, and its tokens on the Table
API, over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from servicenow_emulator import (
    DEFAULT_PASSWORD,
    DEFAULT_USERS,
    Emulator,
    RunningEmulator,
    User,
    run_in_thread,
)
from servicenow_emulator.__main__ import _build_emulator, _parser
from servicenow_emulator.app import DEFAULT_OAUTH_CLIENT_ID, DEFAULT_OAUTH_CLIENT_SECRET

INCIDENTS = "/api/now/table/incident"
TOKEN = "/oauth_token.do"
CLIENT, SECRET = "test-client", "test-client-secret"
OTHER_CLIENT, OTHER_SECRET = "other-client", "other-client-secret"
BOB_PASSWORD = "bob-pw"
ACCESS_DENIED = {"error_description": "access_denied", "error": "server_error"}
UNAUTHENTICATED = {
    "error": {
        "detail": "Required to provide Auth information",
        "message": "User Not Authenticated",
    },
    "status": "failure",
}


@pytest.fixture(scope="module")
def server() -> Iterator[RunningEmulator]:
    users = [*DEFAULT_USERS, User("bob", "Bob Builder", BOB_PASSWORD), User("svc.sync", "Sync")]
    emulator = Emulator(
        users=users,
        oauth_clients={CLIENT: SECRET, OTHER_CLIENT: OTHER_SECRET},
        oauth_client_user="svc.sync",
    )
    with run_in_thread(emulator) as running:
        yield running


@pytest.fixture
def emulator(server: RunningEmulator) -> Iterator[Emulator]:
    server.emulator.reset()
    yield server.emulator
    server.emulator.reset()


@pytest.fixture
def http(server: RunningEmulator, emulator: Emulator) -> Iterator[httpx.Client]:
    """No auth of its own: each request names its credentials."""
    with httpx.Client(base_url=server.url, timeout=5) as client:
        yield client


def token(http: httpx.Client, **form: str) -> httpx.Response:
    """A token request with the test client's credentials in the form, unless ``form`` names
    others."""
    return http.post(TOKEN, data={"client_id": CLIENT, "client_secret": SECRET, **form})


def password_grant(http: httpx.Client, user: str = "bob", password: str = BOB_PASSWORD) -> Any:
    response = token(http, grant_type="password", username=user, password=password)
    assert response.status_code == 200, response.text
    return response.json()


def bearer(access_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {access_token}"}


def create_as(http: httpx.Client, access_token: str) -> httpx.Response:
    return http.post(INCIDENTS, json={"short_description": "x"}, headers=bearer(access_token))


# ---- grants -------------------------------------------------------------------------------


def test_password_grant_answers_servicenows_shape(http: httpx.Client) -> None:
    response = token(http, grant_type="password", username="bob", password=BOB_PASSWORD)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json;charset=UTF-8"
    body = response.json()
    assert list(body) == ["access_token", "refresh_token", "scope", "token_type", "expires_in"]
    assert body["scope"] == "useraccount"
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 1800
    assert len(body["access_token"]) >= 40
    assert body["access_token"] != body["refresh_token"]


def test_password_grant_token_acts_as_its_user_on_the_table_api(http: httpx.Client) -> None:
    access = password_grant(http)["access_token"]
    listed = http.get(INCIDENTS, headers=bearer(access))
    assert listed.status_code == 200
    assert listed.json() == {"result": []}
    created = create_as(http, access)
    assert created.status_code == 201
    assert created.json()["result"]["sys_created_by"] == "bob"


def test_client_credentials_grant_acts_as_the_oauth_client_user(http: httpx.Client) -> None:
    response = token(http, grant_type="client_credentials")
    assert response.status_code == 200
    body = response.json()
    assert list(body) == ["access_token", "scope", "token_type", "expires_in"]  # no refresh
    created = create_as(http, body["access_token"])
    assert created.status_code == 201
    assert created.json()["result"]["sys_created_by"] == "svc.sync"


@pytest.mark.parametrize("grant", ["client_credentials", "password"])
def test_a_client_in_a_basic_header_is_refused_as_servicenow_documents_form_fields(
    http: httpx.Client, grant: str
) -> None:
    form = {"grant_type": grant, "username": "bob", "password": BOB_PASSWORD}
    in_header = http.post(TOKEN, data=form, auth=(CLIENT, SECRET))
    # With the client in the form as well: still refused, so a client that sends both is caught.
    in_both = http.post(
        TOKEN, data={**form, "client_id": CLIENT, "client_secret": SECRET}, auth=(CLIENT, SECRET)
    )

    for response in (in_header, in_both):
        assert response.status_code == 401
        assert response.json() == ACCESS_DENIED


def test_a_client_in_a_basic_header_is_accepted_where_the_emulator_is_told_to() -> None:
    lenient = Emulator(oauth_clients={CLIENT: SECRET}, oauth_basic_client_auth=True)
    with run_in_thread(lenient) as running, httpx.Client(base_url=running.url) as http:
        response = http.post(
            TOKEN, data={"grant_type": "client_credentials"}, auth=(CLIENT, SECRET)
        )
        assert response.status_code == 200, response.text
        assert http.get(INCIDENTS, headers=bearer(response.json()["access_token"])).is_success
        wrong = http.post(TOKEN, data={"grant_type": "client_credentials"}, auth=(CLIENT, "x"))
        assert wrong.status_code == 401


def test_refresh_grant_issues_a_new_working_access_token(
    http: httpx.Client, emulator: Emulator
) -> None:
    first = password_grant(http)
    emulator.expire_tokens()
    assert create_as(http, first["access_token"]).status_code == 401
    response = token(http, grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert response.status_code == 200
    second = response.json()
    assert list(second) == ["access_token", "refresh_token", "scope", "token_type", "expires_in"]
    assert second["refresh_token"] == first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    created = create_as(http, second["access_token"])
    assert created.status_code == 201
    assert created.json()["result"]["sys_created_by"] == "bob"


# ---- refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("form", "auth"),
    [
        pytest.param({"client_id": CLIENT, "client_secret": "wrong-secret-123"}, None, id="form"),
        pytest.param({}, (CLIENT, "wrong-secret-123"), id="basic"),
        pytest.param({}, (CLIENT, SECRET), id="basic-right-secret"),
        pytest.param({"client_id": "nobody", "client_secret": SECRET}, None, id="unknown"),
        pytest.param({"client_id": CLIENT}, None, id="no-secret"),
        pytest.param({}, None, id="no-client"),
    ],
)
def test_a_refused_client_answers_servicenows_401(
    http: httpx.Client, form: dict[str, str], auth: tuple[str, str] | None
) -> None:
    data = {"grant_type": "password", "username": "bob", "password": BOB_PASSWORD, **form}
    response = http.post(TOKEN, data=data, auth=auth)
    assert response.status_code == 401
    assert response.headers["Content-Type"] == "application/json;charset=UTF-8"
    assert response.json() == ACCESS_DENIED
    assert "wrong-secret-123" not in response.text
    assert SECRET not in response.text
    assert BOB_PASSWORD not in response.text


@pytest.mark.parametrize(
    ("user", "password"),
    [("bob", "wrong-password-456"), ("john.doe", "anything"), ("nobody", "x")],
)
def test_a_refused_user_answers_401(http: httpx.Client, user: str, password: str) -> None:
    response = token(http, grant_type="password", username=user, password=password)
    assert response.status_code == 401
    assert response.json() == ACCESS_DENIED
    assert password not in response.text


@pytest.mark.parametrize(
    ("form", "error", "description"),
    [
        (
            {"grant_type": "authorization_code", "code": "c"},
            "unsupported_grant_type",
            "grant_type must be one of password, client_credentials, refresh_token",
        ),
        ({}, "invalid_request", "Missing parameter: grant_type"),
        (
            {"grant_type": "password", "username": "bob"},
            "invalid_request",
            "Missing parameter: password",
        ),
        ({"grant_type": "refresh_token"}, "invalid_request", "Missing parameter: refresh_token"),
    ],
)
def test_a_malformed_request_answers_400(
    http: httpx.Client, form: dict[str, str], error: str, description: str
) -> None:
    response = token(http, **form)
    assert response.status_code == 400
    assert response.json() == {"error_description": description, "error": error}


def test_a_json_body_is_not_a_form(http: httpx.Client) -> None:
    body = {"grant_type": "client_credentials", "client_id": CLIENT, "client_secret": SECRET}
    response = http.post(TOKEN, json=body)
    assert response.status_code == 401  # no client in a form
    assert response.json() == ACCESS_DENIED


def test_a_bad_refresh_token_answers_401(http: httpx.Client) -> None:
    refresh = password_grant(http)["refresh_token"]
    unknown = token(http, grant_type="refresh_token", refresh_token="not-a-token")
    assert unknown.status_code == 401
    assert unknown.json() == ACCESS_DENIED
    # A refresh token belongs to the client it was issued to.
    stolen = token(
        http,
        grant_type="refresh_token",
        refresh_token=refresh,
        client_id=OTHER_CLIENT,
        client_secret=OTHER_SECRET,
    )
    assert stolen.status_code == 401
    assert stolen.json() == ACCESS_DENIED


# ---- expiry -------------------------------------------------------------------------------


def test_an_expired_access_token_answers_the_table_apis_401(
    http: httpx.Client, emulator: Emulator
) -> None:
    emulator.token_lifetime = 0.05
    body = token(http, grant_type="client_credentials").json()
    assert body["expires_in"] == 0
    time.sleep(0.1)
    response = http.get(INCIDENTS, headers=bearer(body["access_token"]))
    assert response.status_code == 401
    assert response.json() == UNAUTHENTICATED
    assert response.headers["WWW-Authenticate"] == 'BASIC realm="Service-now"'


def test_expire_tokens_expires_access_tokens_but_not_refresh_tokens(
    http: httpx.Client, emulator: Emulator
) -> None:
    first = password_grant(http)
    other = token(http, grant_type="client_credentials").json()
    assert emulator.oauth_stats()["oauth_tokens_active"] == 2
    emulator.expire_tokens()
    assert emulator.oauth_stats()["oauth_tokens_active"] == 0
    for access in (first["access_token"], other["access_token"]):
        assert http.get(INCIDENTS, headers=bearer(access)).status_code == 401
    refreshed = token(http, grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert refreshed.status_code == 200


def test_an_expired_refresh_token_is_refused(http: httpx.Client, emulator: Emulator) -> None:
    emulator.token_lifetime = 0.0005  # refresh tokens last 100 times that: 50 ms
    refresh = password_grant(http)["refresh_token"]
    time.sleep(0.1)
    response = token(http, grant_type="refresh_token", refresh_token=refresh)
    assert response.status_code == 401
    assert response.json() == ACCESS_DENIED


def test_control_route_sets_the_lifetime_and_expires_tokens(
    http: httpx.Client, emulator: Emulator
) -> None:
    state = http.post("/__emulator/oauth", json={"token_lifetime": 1.5}).json()
    assert state["token_lifetime"] == 1.5
    assert emulator.token_lifetime == 1.5
    access = password_grant(http)
    assert access["expires_in"] == 1
    state = http.post("/__emulator/oauth", json={"expire_tokens": True}).json()
    assert state["oauth_tokens_active"] == 0
    assert http.get(INCIDENTS, headers=bearer(access["access_token"])).status_code == 401
    assert http.get("/__emulator/oauth").json() == state


@pytest.mark.parametrize(
    "body",
    [{"token_lifetime": -1}, {"token_lifetime": "soon"}, {"expire_tokens": "yes"}],
)
def test_control_route_refuses_bad_values(
    http: httpx.Client, emulator: Emulator, body: dict[str, Any]
) -> None:
    response = http.post("/__emulator/oauth", json=body)
    assert response.status_code == 400
    assert emulator.token_lifetime == 1800


def test_reset_forgets_tokens_and_the_lifetime_but_keeps_clients(
    http: httpx.Client, emulator: Emulator
) -> None:
    emulator.token_lifetime = 5
    access = password_grant(http)
    emulator.reset()
    assert emulator.token_lifetime == 1800
    assert http.get(INCIDENTS, headers=bearer(access["access_token"])).status_code == 401
    refreshed = token(http, grant_type="refresh_token", refresh_token=access["refresh_token"])
    assert refreshed.status_code == 401
    assert password_grant(http)["expires_in"] == 1800


# ---- counts, log, faults ------------------------------------------------------------------


def test_stats_count_token_requests_per_grant(http: httpx.Client, emulator: Emulator) -> None:
    assert emulator.oauth_stats() == {
        "token_lifetime": 1800.0,
        "oauth_token_requests": {"password": 0, "client_credentials": 0, "refresh_token": 0},
        "oauth_tokens_active": 0,
    }
    refresh = password_grant(http)["refresh_token"]
    token(http, grant_type="password", username="bob", password="wrong")  # refused: counted
    token(http, grant_type="client_credentials")
    token(http, grant_type="refresh_token", refresh_token=refresh)
    token(http, grant_type="implicit")  # unsupported: not counted
    stats = emulator.oauth_stats()
    assert stats["oauth_token_requests"] == {
        "password": 2,
        "client_credentials": 1,
        "refresh_token": 1,
    }
    assert stats["oauth_tokens_active"] == 3
    assert http.get("/__emulator/oauth").json() == stats
    assert emulator.stats()["requests"] == 5  # in the API request log too


def test_the_request_log_never_holds_credentials(http: httpx.Client, emulator: Emulator) -> None:
    password_grant(http)
    token(http, grant_type="client_credentials")
    log = repr(emulator.requests)
    for secret in (SECRET, BOB_PASSWORD):
        assert secret not in log
    assert [(r["method"], r["path"], r["status"]) for r in emulator.requests] == [
        ("POST", TOKEN, 200),
        ("POST", TOKEN, 200),
    ]


def test_faults_and_down_apply_to_the_token_endpoint(
    http: httpx.Client, emulator: Emulator
) -> None:
    emulator.add_fault("503", method="POST")
    assert token(http, grant_type="client_credentials").status_code == 503
    emulator.down = True
    assert token(http, grant_type="client_credentials").status_code == 503
    emulator.down = False
    assert token(http, grant_type="client_credentials").status_code == 200


# ---- defaults, construction, command line --------------------------------------------------


def test_the_default_client_acts_as_admin(emulator_url: str) -> None:
    client = {"client_id": DEFAULT_OAUTH_CLIENT_ID, "client_secret": DEFAULT_OAUTH_CLIENT_SECRET}
    data = {"grant_type": "client_credentials", **client}
    access = httpx.post(emulator_url + TOKEN, data=data).json()["access_token"]
    created = httpx.post(emulator_url + INCIDENTS, json={}, headers=bearer(access))
    assert created.json()["result"]["sys_created_by"] == "admin"
    form = {"grant_type": "password", "username": "admin", "password": DEFAULT_PASSWORD, **client}
    assert httpx.post(emulator_url + TOKEN, data=form).status_code == 200


def test_construction_refuses_bad_oauth_settings() -> None:
    with pytest.raises(ValueError, match="oauth_client_user"):
        Emulator(oauth_client_user="nobody")
    with pytest.raises(ValueError, match="token_lifetime"):
        Emulator(token_lifetime=-1)
    Emulator(oauth_clients={}, oauth_client_user="nobody")  # no clients: nobody to act as


def test_command_line_sets_the_token_lifetime() -> None:
    emulator = _build_emulator(_parser().parse_args(["--token-lifetime=60"]))
    assert emulator.token_lifetime == 60
    assert _build_emulator(_parser().parse_args([])).token_lifetime == 1800
