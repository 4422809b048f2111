"""Building blocks for providers that speak HTTP: auth from a token, and one retrying transport.

:class:`HttpTransport` is the single place a provider's requests go through: a reused ``httpx.Client``
with explicit timeouts, 429/503 retried with backoff honouring ``Retry-After`` (bounded), nothing else
retried, and every failure mapped to :mod:`ticketing_core.errors` by :func:`raise_for_status`. A provider
supplies only how to read its service's error body.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Mapping
from typing import Any, TypeVar

import attrs
import httpx
import stamina

from ticketing_core.errors import (
    AuthenticationFailed,
    InvalidInput,
    NotFound,
    PermissionDenied,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    UnexpectedResponse,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

# Hosted services cancel long transactions (ServiceNow at 60 s): give up well before.
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
RETRIED_STATUSES = frozenset({429, 503})


class BearerAuth(httpx.Auth):
    """OAuth or API bearer token; the token stays out of ``repr``."""

    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request

    def __repr__(self) -> str:
        return "BearerAuth(<redacted>)"


def auth_from_token(api_access_token: str) -> httpx.Auth:
    """``user:secret`` means Basic auth; anything else is a Bearer token."""
    if not api_access_token or any(char.isspace() for char in api_access_token):
        # Checked here, not by httpx, whose header error would quote the token.
        raise InvalidInput("the access token must not be empty or contain spaces or line breaks")
    try:
        api_access_token.encode()
    except UnicodeEncodeError:  # e.g. undecodable bytes from a command line
        raise InvalidInput("the access token is not valid text (UTF-8)") from None
    username, sep, password = api_access_token.partition(":")
    if sep and username:
        return httpx.BasicAuth(username, password)
    return BearerAuth(api_access_token)


@attrs.frozen
class ServiceDialect:
    """How one service words things: its name in messages and how to read its error bodies."""

    name: str
    error_reason: Callable[[httpx.Response], str]
    """The service's own explanation from an error response (may fall back to the status line)."""
    non_json_hint: str = ""
    """Appended when a success answer is not JSON (e.g. a hibernating instance's HTML page)."""


class HttpTransport:
    """An ``httpx.Client`` bound to one service, reused across calls and thread-safe.

    429 and 503 are retried with exponential backoff, honouring ``Retry-After`` up to
    ``max_retry_wait`` seconds, at most ``max_attempts`` times in all; nothing else is retried.
    """

    def __init__(
        self,
        base_url: str,
        api_access_token: str,
        dialect: ServiceDialect,
        *,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        max_attempts: int = 4,
        max_retry_wait: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.dialect = dialect
        self.max_attempts = max_attempts
        self.max_retry_wait = max_retry_wait
        self._http = httpx.Client(
            base_url=self.base_url,
            auth=auth_from_token(api_access_token),
            timeout=timeout,
            headers={"Accept": "application/json", "User-Agent": "ticketing"},
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"HttpTransport({self.dialect.name}, base_url={self.base_url!r})"

    def close(self) -> None:
        self._http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json: Any = None,
    ) -> httpx.Response:
        """Send one request, retrying 429/503; return a readable 2xx or raise a ProviderError."""
        for attempt in stamina.retry_context(
            on=self._retry_backoff,
            attempts=self.max_attempts,
            timeout=None,
            wait_initial=0.5,
            wait_max=self.max_retry_wait,
        ):
            with attempt:
                return self._send(method, path, params=params, json=json)
        raise AssertionError("unreachable: stamina re-raises the last error")  # pragma: no cover

    def _retry_backoff(self, exc: Exception) -> bool | float:
        if not isinstance(exc, RateLimited | ProviderUnavailable):
            return False
        if exc.status_code not in RETRIED_STATUSES:
            return False
        if exc.retry_after is not None:
            return min(exc.retry_after, self.max_retry_wait)
        return True

    def _send(
        self, method: str, path: str, *, params: Mapping[str, str | int] | None, json: Any
    ) -> httpx.Response:
        name = self.dialect.name
        try:
            response = self._http.request(method, path, params=params, json=json)
        except httpx.TimeoutException as exc:
            raise ProviderTimeout(
                f"{name} did not answer {method} {path} in time ({type(exc).__name__})"
            ) from None
        except httpx.TransportError as exc:
            # Only the exception's type: a protocol error's text can quote request headers.
            raise ProviderUnavailable(
                f"cannot reach {name} at {self.base_url}: {type(exc).__name__}"
            ) from None
        log.debug("%s %s -> %s", method, path, response.status_code)
        raise_for_status(response, self.dialect)
        return response


def create_once(
    find_existing: Callable[[], T | None], post: Callable[[], T], *, attempts: int = 3
) -> T:
    """Create through ``post`` at most once, as identified by a key ``find_existing`` looks up.

    Every attempt looks first: any failure after a POST left (timeout, lost answer, 5xx) may have
    created the record, so a retry must find it rather than post again.
    """
    for attempt in stamina.retry_context(
        on=ProviderUnavailable, attempts=attempts, timeout=None, wait_max=5.0
    ):
        with attempt:
            existing = find_existing()
            return existing if existing is not None else post()
    raise AssertionError("unreachable: stamina re-raises the last error")  # pragma: no cover


def raise_for_status(response: httpx.Response, dialect: ServiceDialect) -> None:
    """Map a response to the error tree; return quietly for a readable 2xx."""
    status, name = response.status_code, dialect.name
    if status < 300:
        if status != 204 and response.content and not is_json(response):
            hint = f"; {dialect.non_json_hint}" if dialect.non_json_hint else ""
            raise UnexpectedResponse(
                f"{name} answered HTTP {status} with {content_type(response)!r} instead of JSON"
                + hint,
                status_code=status,
            )
        return
    reason = dialect.error_reason(response)
    retry_after = retry_after_seconds(response)
    if status == 401:
        raise AuthenticationFailed(f"{name} rejected the credentials: {reason}", status_code=401)
    if status == 403:
        raise PermissionDenied(f"{name} refused the operation: {reason}", status_code=403)
    if status == 404:
        raise NotFound(f"{name} found no such record: {reason}", status_code=404)
    if status == 429:
        raise RateLimited(f"{name} rate limit: {reason}", retry_after=retry_after)
    if status >= 500:
        raise ProviderUnavailable(
            f"{name} is unavailable: {reason}", retry_after=retry_after, status_code=status
        )
    raise ProviderError(f"{name} rejected the request: {reason}", status_code=status)


def json_body(response: httpx.Response, service: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise UnexpectedResponse(
            f"{service} sent a body that is not JSON (HTTP {response.status_code})"
        ) from None


def status_line(response: httpx.Response) -> str:
    return f"HTTP {response.status_code} {response.reason_phrase}".strip()


def retry_after_seconds(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers["Retry-After"]))
    except (KeyError, ValueError):
        return None


def content_type(response: httpx.Response) -> str:
    value: str = response.headers.get("Content-Type", "")
    return value.split(";")[0].strip()


def is_json(response: httpx.Response) -> bool:
    return content_type(response).endswith("json")
