"""What ticketing_core.http assumes of httpx, httpcore and httpx-auth beyond their documented APIs.

Each test states one assumption of ``ticketing_core/http/_httpx_auth_adapter.py`` or
``ticketing_core/http/pool.py``; a release of those libraries that breaks it fails here first."""

from __future__ import annotations

import secrets
from contextlib import AbstractContextManager
from urllib.parse import parse_qs

import httpcore
import httpx
import pytest
from httpx._transports.default import map_httpcore_exceptions
from httpx_auth import OAuth2, OAuth2ClientCredentials

from ticketing_core.http import _httpx_auth_adapter as adapter
from ticketing_core.http.network import NetworkPolicy, tls_context
from ticketing_core.http.pool import httpx_errors

# -- httpx-auth ------------------------------------------------------------------------------------


def never() -> tuple[str, str, int, str]:
    raise AssertionError("no token request expected")


def test_an_expired_token_is_renewed_through_its_refresh_token() -> None:
    key = secrets.token_hex(8)
    cache = OAuth2.token_cache
    assert cache.get_token(key, on_missing_token=lambda: (key, "first", 1800, "r1")) == "first"
    refreshed_with: list[str] = []

    def refresh(token: str) -> tuple[str, str, int, str]:
        refreshed_with.append(token)
        return key, "second", 1800, "r2"

    adapter.expire(key, "first")
    assert cache.get_token(key, on_missing_token=never, on_expired_token=refresh) == "second"
    assert refreshed_with == ["r1"]


def test_a_token_renewed_meanwhile_is_not_expired() -> None:
    key = secrets.token_hex(8)
    cache = OAuth2.token_cache
    cache.get_token(key, on_missing_token=lambda: (key, "renewed", 1800, "r"))

    adapter.expire(key, "refused-earlier")

    assert cache.get_token(key, on_missing_token=never, on_expired_token=never) == "renewed"


def test_a_grant_posts_the_added_form_and_caches_under_the_new_key() -> None:
    forms: list[dict[str, list[str]]] = []

    def token_endpoint(request: httpx.Request) -> httpx.Response:
        assert request.url.query == b""
        forms.append(parse_qs(request.content.decode()))
        return httpx.Response(200, json={"access_token": "t", "expires_in": 1800})

    with httpx.Client(transport=httpx.MockTransport(token_endpoint)) as client:
        grant = OAuth2ClientCredentials("https://x.test/token", "id", "secret", client=client)
        adapter.add_form(grant, client_id="id", client_secret="secret")
        adapter.rekey(grant, "our-key")
        answer = grant.request_new_token()

    assert answer == ("our-key", "t", 1800)
    assert forms == [
        {"grant_type": ["client_credentials"], "client_id": ["id"], "client_secret": ["secret"]}
    ]


# -- httpx and httpcore ----------------------------------------------------------------------------

HTTPCORE_ERRORS = [
    value
    for name in httpcore.__all__
    if isinstance(value := getattr(httpcore, name), type) and issubclass(value, Exception)
]


def raised_through(mapping: AbstractContextManager[None], error: type[Exception]) -> Exception:
    try:
        with mapping:
            raise error("message")
    except Exception as exc:  # whatever comes out is the answer
        return exc
    raise AssertionError("nothing raised")


@pytest.mark.parametrize("error", HTTPCORE_ERRORS, ids=lambda error: error.__name__)
def test_httpcore_errors_become_what_httpx_makes_of_them(error: type[Exception]) -> None:
    ours = raised_through(httpx_errors(), error)
    theirs = raised_through(map_httpcore_exceptions(), error)

    assert (type(ours), str(ours)) == (type(theirs), str(theirs))


POOL_SETTINGS = [
    "_ssl_context",
    "_max_connections",
    "_max_keepalive_connections",
    "_keepalive_expiry",
    "_http1",
    "_http2",
    "_retries",
    "_local_address",
    "_uds",
    "_socket_options",
]


def test_the_checked_pool_is_set_up_as_httpx_sets_up_its_own() -> None:
    ours, theirs = NetworkPolicy().transport(), httpx.HTTPTransport(verify=tls_context())
    try:
        for setting in POOL_SETTINGS:
            assert getattr(ours._pool, setting) == getattr(theirs._pool, setting), setting
        assert type(ours._pool) is type(theirs._pool)
    finally:
        ours.close()
        theirs.close()
