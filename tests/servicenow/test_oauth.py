"""OAuth 2.0 against the emulator's /oauth_token.do: the grants, renewal before expiry and on a
401, one token shared by threads, and the command line's options."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import vcr
from click.testing import CliRunner
from httpx_auth import OAuth2
from servicenow_emulator import Emulator
from servicenow_emulator.app import DEFAULT_OAUTH_CLIENT_ID, DEFAULT_OAUTH_CLIENT_SECRET

from ticketing_core.cli import cli
from ticketing_core.errors import AuthenticationFailed, InvalidInput
from ticketing_core.models import TicketDraft
from ticketing_servicenow import ServiceNowProvider

from ..conftest import ADMIN_TOKEN

OAUTH = {"client_id": DEFAULT_OAUTH_CLIENT_ID, "client_secret": DEFAULT_OAUTH_CLIENT_SECRET}


@pytest.fixture(autouse=True)
def no_cached_tokens() -> None:
    """Each test starts without tokens, as a new process would (the cache is process-wide)."""
    OAuth2.token_cache.clear()


def grants(emulator: Emulator) -> dict[str, int]:
    counts: dict[str, int] = emulator.oauth_stats()["oauth_token_requests"]
    return counts


def statuses(emulator: Emulator) -> list[tuple[str, int | None]]:
    return [(r["path"], r["status"]) for r in emulator.requests]


def test_the_password_grant_gets_one_token_for_every_call(
    emulator: Emulator, emulator_url: str
) -> None:
    with ServiceNowProvider(api_url=emulator_url, api_access_token=ADMIN_TOKEN, **OAUTH) as snow:
        ticket = snow.create(TicketDraft(title="OAuth", description="d"))
        snow.add_work_note(ticket.id, "with a bearer token")

    assert grants(emulator) == {"password": 1, "client_credentials": 0, "refresh_token": 0}
    assert statuses(emulator)[0] == ("/oauth_token.do", 200)
    assert [s for _, s in statuses(emulator)] == [200, 201, 200]


def test_an_empty_token_uses_the_client_credentials_grant(
    emulator: Emulator, emulator_url: str
) -> None:
    with ServiceNowProvider(api_url=emulator_url, api_access_token="", **OAUTH) as snow:
        snow.validate()

    assert grants(emulator)["client_credentials"] == 1
    assert grants(emulator)["password"] == 0


class Recording(httpx.HTTPTransport):
    """The provider's transport, keeping each token request (its headers and form) as sent."""

    def __init__(self) -> None:
        super().__init__()
        self.token_requests: list[tuple[httpx.Headers, dict[str, list[str]]]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth_token.do":
            form = parse_qs(request.read().decode())
            self.token_requests.append((request.headers, form))
        return super().handle_request(request)


@pytest.mark.parametrize(
    ("login", "grant"), [("", "client_credentials"), (ADMIN_TOKEN, "password")]
)
def test_every_grant_sends_the_client_as_form_fields_and_no_authorization_header(
    emulator: Emulator, emulator_url: str, login: str, grant: str
) -> None:
    recording = Recording()
    with ServiceNowProvider(
        api_url=emulator_url, api_access_token=login, transport=recording, **OAUTH
    ) as snow:
        snow.validate()
        emulator.expire_tokens()
        snow.validate()  # renewed: by the refresh-token grant where one was issued

    grants_sent = [form["grant_type"] for _, form in recording.token_requests]
    renewal = "refresh_token" if grant == "password" else grant
    assert grants_sent == [[grant], [renewal]]
    for headers, form in recording.token_requests:
        assert "authorization" not in headers
        assert form["client_id"] == [DEFAULT_OAUTH_CLIENT_ID]
        assert form["client_secret"] == [DEFAULT_OAUTH_CLIENT_SECRET]
    # The emulator, strict as ServiceNow documents, refuses a client in a Basic header.
    assert [status for path, status in statuses(emulator) if path == "/oauth_token.do"] == [
        200,
        200,
    ]


def test_the_client_secret_stays_out_of_logs_reprs_and_errors(
    emulator: Emulator, emulator_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-client-secret-in-form"
    with ServiceNowProvider(api_url=emulator_url, api_access_token="", **OAUTH) as snow:
        snow.validate()
    refused = ServiceNowProvider(
        api_url=emulator_url, api_access_token="", client_id=DEFAULT_OAUTH_CLIENT_ID,
        client_secret=wrong,
    )  # fmt: skip
    with refused, pytest.raises(AuthenticationFailed) as caught:
        refused.validate()

    assert grants(emulator)["client_credentials"] == 2
    for text in (caplog.text, repr(snow), repr(refused), str(caught.value), repr(caught.value)):
        assert DEFAULT_OAUTH_CLIENT_SECRET not in text
        assert wrong not in text


def test_a_cassette_of_the_client_credentials_grant_holds_no_secret(
    emulator_url: str, tmp_path: Path, vcr_config: dict[str, Any]
) -> None:
    cassette = tmp_path / "client-credentials.yaml"
    with (
        vcr.VCR(**vcr_config).use_cassette(str(cassette), record_mode="all"),
        ServiceNowProvider(api_url=emulator_url, api_access_token="", **OAUTH) as snow,
    ):
        snow.validate()

    recorded = cassette.read_text()
    assert "grant_type=client_credentials" in recorded
    assert f"client_id={DEFAULT_OAUTH_CLIENT_ID}" in recorded
    assert DEFAULT_OAUTH_CLIENT_SECRET not in recorded
    assert "authorization:" not in recorded.lower()


def test_an_expired_token_is_renewed_once_on_the_401_and_the_call_sent_again(
    emulator: Emulator, emulator_url: str
) -> None:
    with ServiceNowProvider(api_url=emulator_url, api_access_token=ADMIN_TOKEN, **OAUTH) as snow:
        ticket = snow.create(TicketDraft(title="OAuth", description="d"))
        emulator.expire_tokens()
        snow.add_work_note(ticket.id, "after expiry")

    assert [text for text in emulator.journal(ticket.id) if text["value"] == "after expiry"]
    assert grants(emulator)["refresh_token"] == 1
    assert statuses(emulator)[-3:] == [
        (f"/api/now/table/incident/{ticket.id}", 401),
        ("/oauth_token.do", 200),
        (f"/api/now/table/incident/{ticket.id}", 200),
    ]


def test_a_token_about_to_expire_is_refreshed_before_it_is_used(
    emulator: Emulator, emulator_url: str
) -> None:
    emulator.token_lifetime = 30.5  # renewed 30 s before expiry: stale after half a second

    with ServiceNowProvider(api_url=emulator_url, api_access_token=ADMIN_TOKEN, **OAUTH) as snow:
        snow.validate()
        time.sleep(0.7)
        snow.validate()

    assert grants(emulator) == {"password": 1, "client_credentials": 0, "refresh_token": 1}
    assert 401 not in [status for _, status in statuses(emulator)]


def test_threads_and_providers_of_one_integration_share_one_token(
    emulator: Emulator, emulator_url: str
) -> None:
    providers = [
        ServiceNowProvider(api_url=emulator_url, api_access_token=ADMIN_TOKEN, **OAUTH)
        for _ in range(2)
    ]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: providers[n % 2].validate(), range(16)))
    for provider in providers:
        provider.close()

    assert grants(emulator)["password"] == 1


def test_a_rejected_client_fails_authentication_naming_oauth(
    emulator: Emulator, emulator_url: str
) -> None:
    with (
        ServiceNowProvider(
            api_url=emulator_url, api_access_token=ADMIN_TOKEN,
            client_id=DEFAULT_OAUTH_CLIENT_ID, client_secret="wrong-client-secret",
        ) as snow,
        pytest.raises(AuthenticationFailed, match="OAuth token endpoint refused client") as caught,
    ):  # fmt: skip
        snow.validate()

    assert "wrong-client-secret" not in str(caught.value)
    assert [path for path, _ in statuses(emulator)] == ["/oauth_token.do"]


def test_oauth_needs_both_client_options_and_a_user_password_token(emulator_url: str) -> None:
    with pytest.raises(InvalidInput, match="both client_id and client_secret"):
        ServiceNowProvider(api_url=emulator_url, api_access_token=ADMIN_TOKEN, client_id="x")
    with pytest.raises(InvalidInput, match="user:password"):
        ServiceNowProvider(api_url=emulator_url, api_access_token="a-bearer-token", **OAUTH)


# -- the command line --------------------------------------------------------------------------


def run(emulator_url: str, *args: str, **env: str) -> Any:
    base = {"TICKETING_PROVIDER": "servicenow", "TICKETING_URL": emulator_url}
    return CliRunner().invoke(cli, [args[0], "--allow-http", *args[1:]], env=base | env)


def test_the_command_line_takes_an_oauth_client(emulator: Emulator, emulator_url: str) -> None:
    by_option = run(
        emulator_url, "check", "--token", ADMIN_TOKEN,
        "--oauth-client-id", DEFAULT_OAUTH_CLIENT_ID,
        "--oauth-client-secret", DEFAULT_OAUTH_CLIENT_SECRET,
    )  # fmt: skip
    by_environment = run(
        emulator_url, "check",
        TICKETING_OAUTH_CLIENT_ID=DEFAULT_OAUTH_CLIENT_ID,
        TICKETING_OAUTH_CLIENT_SECRET=DEFAULT_OAUTH_CLIENT_SECRET,
    )  # fmt: skip

    assert by_option.exit_code == 0, by_option.output
    assert by_environment.exit_code == 0, by_environment.output  # no token: client credentials
    assert grants(emulator)["password"] == 1
    assert grants(emulator)["client_credentials"] == 1


def test_the_command_line_reports_a_rejected_client_with_exit_3(emulator_url: str) -> None:
    result = run(
        emulator_url, "check", "--token", ADMIN_TOKEN,
        "--oauth-client-id", DEFAULT_OAUTH_CLIENT_ID, "--oauth-client-secret", "nope-secret",
    )  # fmt: skip

    assert result.exit_code == 3
    assert result.output.startswith("error: the OAuth token endpoint refused client")
    assert "nope-secret" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_the_command_line_needs_both_oauth_options(emulator_url: str) -> None:
    result = run(emulator_url, "check", "--oauth-client-id", "x")

    assert result.exit_code == 2
    assert "OAuth needs both --oauth-client-id and --oauth-client-secret" in result.output
