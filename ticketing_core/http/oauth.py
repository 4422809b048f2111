"""OAuth 2.0 for :class:`~ticketing_core.http.client.ServiceClient`, on httpx-auth's grants and token cache.

With a user and password the password grant is used, without them the client-credentials grant.
Every token request carries the client's id and secret as the form fields ``client_id`` and
``client_secret``, as ServiceNow documents for ``/oauth_token.do``, never in an ``Authorization``
header.
httpx-auth caches tokens process-wide, keyed by the token URL and the credentials, so every
thread and every provider of one integration in a process shares one token. It renews a token
30 s before it expires, through the refresh-token grant when the service issued a refresh token.
:class:`OAuth` adds what httpx-auth leaves out: a 401 answer to a call renews the token once and
sends the call once more (a 401 means the service did nothing), and token endpoint failures map
to the error tree, parsed and bounded, never quoting the endpoint's body.
"""

from __future__ import annotations

import hmac
import secrets
import threading
from collections import defaultdict
from collections.abc import Callable, Generator
from typing import Any

import attrs
import httpx
from httpx_auth import (
    HttpxAuthException,
    InvalidGrantRequest,
    OAuth2,
    OAuth2ClientCredentials,
    OAuth2ResourceOwnerPasswordCredentials,
)

from ticketing_core.errors import (
    AuthenticationFailed,
    InvalidInput,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    TicketingError,
)
from ticketing_core.http import _httpx_auth_adapter as httpx_auth_adapter
from ticketing_core.http.limits import within

RENEW_BEFORE_EXPIRY = 30.0  # seconds: a token must not expire on its way to the service
REASON_LENGTH = 200
# One per credentials (httpx-auth's cache key): threads that find no token wait for the one that
# asks for it, instead of each asking (httpx-auth serialises the asking, but asks again).
_fetching: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
_CACHE_KEY = secrets.token_bytes(32)


@attrs.frozen
class OAuthClient:
    """An OAuth client registered with the service; the secret stays out of ``repr``."""

    token_url: str
    client_id: str
    client_secret: str = attrs.field(repr=False)


class TokenRefused(InvalidGrantRequest):
    """The token endpoint refused (4xx); httpx-auth falls back from a refused refresh to a new
    grant on this type. Carries only the parsed OAuth error, never the body."""

    def __init__(self, status: int, reason: str) -> None:
        HttpxAuthException.__init__(self, f"HTTP {status}: {reason}")
        self.status, self.reason = status, reason


class OAuth(httpx.Auth):
    """Bearer tokens from ``client``'s token endpoint, for ``login`` (``user:password``) or,
    when ``login`` is empty, for the client itself. Token requests go through ``transport``."""

    def __init__(
        self,
        client: OAuthClient,
        login: str,
        transport: httpx.BaseTransport,
        timeout: float,
        remaining: Callable[[], float | None],
    ) -> None:
        self._client_id, self._remaining = client.client_id, remaining
        self._token_client = httpx.Client(
            transport=_Shared(transport),
            timeout=timeout,
            headers={"Accept": "application/json"},
            event_hooks={
                "request": [self._within_deadline, _without_authorization],
                "response": [_check_token_response],
            },
        )
        # Form fields, as ServiceNow documents for every grant (refresh included): httpx-auth
        # adds a grant's extra keyword arguments to its form.
        credentials = {"client_id": client.client_id, "client_secret": client.client_secret}
        username, colon, password = login.partition(":")
        if colon and not username:
            raise InvalidInput("the access token's user is empty: give user:password, or none")
        common: dict[str, Any] = {
            "client": self._token_client,
            "early_expiry": RENEW_BEFORE_EXPIRY,
            "timeout": max(1, int(timeout)),
        }
        self._grant: OAuth2ResourceOwnerPasswordCredentials | OAuth2ClientCredentials
        if username:
            self._grant = OAuth2ResourceOwnerPasswordCredentials(
                client.token_url, username, password, **common, **credentials
            )
        else:
            self._grant = OAuth2ClientCredentials(
                client.token_url, client.client_id, client.client_secret, **common
            )
            # Its own parameters take these names, so they join its form afterwards.
            httpx_auth_adapter.add_form(self._grant, **credentials)
        # httpx-auth's cache key is a digest of the credentials, and its debug log shows it:
        # keyed under an HMAC with a key of this process, a logged key confirms no guess.
        key = hmac.new(_CACHE_KEY, self._grant.state.encode(), "sha256").hexdigest()
        httpx_auth_adapter.rekey(self._grant, key)

    def __repr__(self) -> str:
        return "OAuth(<redacted>)"

    def close(self) -> None:
        self._token_client.close()

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        sent = self._authorize(request)
        response = yield request
        if response.status_code == 401:
            self._authorize(request, refused=sent)
            yield request

    def _authorize(self, request: httpx.Request, *, refused: str | None = None) -> str:
        """Put a token on ``request``: the cached one, else a new one. A ``refused`` token
        still cached is expired first (its refresh token, if any, is kept for the renewal)."""
        remaining = self._remaining()
        lock = _fetching[self._grant.state]
        if not lock.acquire(timeout=-1 if remaining is None else max(0.0, remaining)):
            raise ProviderTimeout(
                "waited past the deadline for the OAuth token another call asks for"
            )
        try:
            if refused is not None:
                httpx_auth_adapter.expire(self._grant.state, refused)
            token = OAuth2.token_cache.get_token(
                self._grant.state,
                early_expiry=RENEW_BEFORE_EXPIRY,
                on_missing_token=self._grant.request_new_token,
                on_expired_token=getattr(self._grant, "refresh_token", None),
            )
        except (TicketingError, httpx.TransportError):
            raise  # ours (from the response hook, the bounds), or the network's: mapped by callers
        except TokenRefused as exc:
            raise AuthenticationFailed(
                f"the OAuth token endpoint refused client {self._client_id!r} ({exc}): check "
                "the client id and secret, and the user's password for the password grant",
                status_code=exc.status,
            ) from None
        except Exception as exc:  # a 2xx answer without a usable token: JSON, fields, expiry
            raise ProviderUnavailable(
                f"the OAuth token endpoint's answer holds no usable token ({type(exc).__name__})",
                sent=False,
            ) from None
        finally:
            lock.release()
        request.headers["Authorization"] = f"Bearer {token}"
        return str(token)

    def _within_deadline(self, request: httpx.Request) -> None:
        """A token request's connect and reads end with the call's deadline, like the call's."""
        remaining = self._remaining()
        if remaining is not None:
            given = httpx.Timeout(**request.extensions["timeout"])  # build_request sets it
            request.extensions["timeout"] = within(given, remaining).as_dict()


class _Shared(httpx.BaseTransport):
    """The provider's transport, lent to the token client: closing that client leaves it open."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self._inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._inner.handle_request(request)


def _without_authorization(request: httpx.Request) -> None:
    """The client's id and secret travel in the form only: httpx-auth's client-credentials grant
    also sends them as Basic auth, which the token client drops here. Tests against the emulator,
    which refuses a token request with an ``Authorization`` header, fail if a new httpx-auth sends
    them some other way."""
    request.headers.pop("Authorization", None)


def _check_token_response(response: httpx.Response) -> None:
    """Errors before httpx-auth reads the answer, which would quote a body that is not JSON."""
    if response.status_code < 300:
        return
    response.read()  # bounded: the provider's BoundedTransport is underneath
    reason = _oauth_error(response)
    if response.status_code >= 500:
        raise ProviderUnavailable(
            f"the OAuth token endpoint is unavailable (HTTP {response.status_code}: {reason})",
            status_code=response.status_code,
            sent=False,  # no token, so the call itself was never sent
        )
    if response.status_code == 429:
        raise RateLimited(f"the OAuth token endpoint rate limit (HTTP 429: {reason})")
    raise TokenRefused(response.status_code, reason)


def _oauth_error(response: httpx.Response) -> str:
    """``error: error_description`` from an RFC 6749 error body, else the status line."""
    try:
        body = response.json()
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's recursion
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        parts = [body["error"], str(body.get("error_description") or "")]
        return ": ".join(p for p in parts if p)[:REASON_LENGTH]
    return f"HTTP {response.status_code} {response.reason_phrase}".strip()
