"""Credentials a provider's calls carry: Basic or Bearer from an access token, or OAuth tokens from
an OAuth client; each refused before any request when it cannot travel as given."""

from __future__ import annotations

import re
from collections.abc import Generator

import httpx

from ticketing_core.errors import InvalidInput
from ticketing_core.http.budget import remaining_seconds
from ticketing_core.http.oauth import OAuth, OAuthClient

# C0 and C1 controls, DEL: NUL, CR and LF would end or break a header line; none belongs in one.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class BearerAuth(httpx.Auth):
    """OAuth or API bearer token; the token stays out of ``repr``."""

    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request

    def __repr__(self) -> str:
        return "BearerAuth(<redacted>)"


def auth_for(
    api_access_token: str,
    oauth: OAuthClient | None,
    *,
    transport: httpx.BaseTransport,
    timeout: float,
) -> httpx.Auth:
    """The auth of a provider's calls: :func:`auth_from_token`, or with ``oauth`` tokens from its
    token endpoint, asked through ``transport`` within the current call budget."""
    if oauth is None:
        return auth_from_token(api_access_token)
    check_credential("api_access_token", api_access_token, "the access token")
    check_credential("client_id", oauth.client_id, "the OAuth client_id")
    check_credential("client_secret", oauth.client_secret, "the OAuth client_secret")
    if api_access_token and ":" not in api_access_token:
        raise InvalidInput(
            "with an OAuth client the access token is user:password (password grant) or empty "
            "(client-credentials grant)",
            field="api_access_token",
        )
    return OAuth(oauth, api_access_token, transport, timeout, remaining_seconds)


def check_credential(field: str, value: str, name: str) -> None:
    """Refuse a credential that cannot travel as given, as :class:`InvalidInput` naming ``field``
    (the message calls it ``name``): a control character (NUL, CR, LF, ...), which no header
    carries and no service issues, or text that is not UTF-8. The value is never quoted."""
    if found := _CONTROL.search(value):
        raise InvalidInput(
            f"{name} must not contain control characters (NUL, CR, LF, ...): "
            f"found U+{ord(found[0]):04X}",
            field=field,
        )
    try:
        value.encode()
    except UnicodeEncodeError:  # e.g. undecodable bytes from a command line
        raise InvalidInput(f"{name} is not valid text (UTF-8)", field=field) from None


def auth_from_token(api_access_token: str) -> httpx.Auth:
    """``user:secret`` means Basic auth; anything else is a Bearer token.

    Refused as :class:`InvalidInput` (``field="api_access_token"``), before any request: an
    empty token, white space, and what :func:`check_credential` refuses.
    """
    if not api_access_token or any(char.isspace() for char in api_access_token):
        # Checked here, not by httpx, whose header error would quote the token.
        raise InvalidInput(
            "the access token must not be empty or contain spaces or line breaks",
            field="api_access_token",
        )
    check_credential("api_access_token", api_access_token, "the access token")
    username, sep, password = api_access_token.partition(":")
    if sep and username:
        return httpx.BasicAuth(username, password)
    return BearerAuth(api_access_token)
