"""The one HTTP transport to a ServiceNow instance: auth, timeouts, retries, envelopes, errors.

Everything that crosses the wire goes through :meth:`ServiceNowClient.request`, so retries and error
mapping live here and nowhere else.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Mapping
from typing import Any

import httpx
import stamina

from ticketing_core.errors import (
    AuthenticationFailed,
    NotFound,
    PermissionDenied,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    UnexpectedResponse,
)

log = logging.getLogger(__name__)

# ServiceNow cancels transactions after 60 s; give up well before so we see our own timeout.
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
    """``username:password`` means Basic auth; anything else is a Bearer token (the seed's rule)."""
    username, sep, password = api_access_token.partition(":")
    if sep and username:
        return httpx.BasicAuth(username, password)
    return BearerAuth(api_access_token)


class ServiceNowClient:
    """An ``httpx.Client`` bound to one instance, reused across calls and thread-safe.

    429 and 503 are retried with exponential backoff, honouring ``Retry-After`` up to
    ``max_retry_wait`` seconds, at most ``max_attempts`` times in all; nothing else is retried.
    """

    def __init__(
        self,
        api_url: str,
        api_access_token: str,
        *,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        max_attempts: int = 4,
        max_retry_wait: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.max_attempts = max_attempts
        self.max_retry_wait = max_retry_wait
        self._http = httpx.Client(
            base_url=self.api_url,
            auth=auth_from_token(api_access_token),
            timeout=timeout,
            headers={"Accept": "application/json", "User-Agent": "ticketing-servicenow"},
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"ServiceNowClient(api_url={self.api_url!r})"

    def close(self) -> None:
        self._http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json: Mapping[str, Any] | None = None,
    ) -> httpx.Response:
        """Send one request, retrying 429/503; return a 2xx JSON response or raise a ProviderError."""
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
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None,
        json: Mapping[str, Any] | None,
    ) -> httpx.Response:
        try:
            response = self._http.request(method, path, params=params, json=json)
        except httpx.TimeoutException as exc:
            raise ProviderTimeout(
                f"ServiceNow did not answer {method} {path} in time ({type(exc).__name__})"
            ) from None
        except httpx.TransportError as exc:
            raise ProviderUnavailable(
                f"cannot reach ServiceNow at {self.api_url}: {type(exc).__name__}: {exc}"
            ) from None
        log.debug("%s %s -> %s", method, path, response.status_code)
        raise_for_response(response)
        return response


def raise_for_response(response: httpx.Response) -> None:
    """Map a ServiceNow response to the error tree; return quietly for a readable 2xx."""
    status = response.status_code
    if status < 300:
        if status != 204 and not _is_json(response):
            raise UnexpectedResponse(
                f"ServiceNow answered HTTP {status} with {_content_type(response)!r} instead of JSON; "
                "a hibernating developer instance does this: wake it up and try again",
                status_code=status,
            )
        return
    reason = _error_reason(response)
    retry_after = _retry_after(response)
    if status == 401:
        raise AuthenticationFailed(
            f"ServiceNow rejected the credentials: {reason}", status_code=401
        )
    if status == 403:
        raise PermissionDenied(f"ServiceNow refused the operation: {reason}", status_code=403)
    if status == 404:
        raise NotFound(f"ServiceNow found no such record: {reason}", status_code=404)
    if status == 429:
        raise RateLimited(f"ServiceNow rate limit: {reason}", retry_after=retry_after)
    if status >= 500:
        raise ProviderUnavailable(
            f"ServiceNow is unavailable: {reason}", retry_after=retry_after, status_code=status
        )
    raise ProviderError(f"ServiceNow rejected the request: {reason}", status_code=status)


def result_of(response: httpx.Response) -> Any:
    """The ``result`` of ServiceNow's success envelope."""
    try:
        body = response.json()
    except ValueError:
        raise UnexpectedResponse(
            f"ServiceNow sent a body that is not JSON (HTTP {response.status_code})"
        ) from None
    if not isinstance(body, dict) or "result" not in body:
        raise UnexpectedResponse("ServiceNow's response has no 'result' envelope")
    return body["result"]


def _error_reason(response: httpx.Response) -> str:
    """``message: detail`` from ServiceNow's error envelope, or the HTTP reason phrase."""
    reason = f"HTTP {response.status_code} {response.reason_phrase}".strip()
    if not _is_json(response):
        return reason
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        return reason
    message = str(error.get("message") or "").strip()
    detail = str(error.get("detail") or "").strip()
    text = ": ".join(part for part in (message, detail) if part)
    return f"{text} ({reason})" if text else reason


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers["Retry-After"]))
    except (KeyError, ValueError):
        return None


def _content_type(response: httpx.Response) -> str:
    content_type: str = response.headers.get("Content-Type", "")
    return content_type.split(";")[0].strip()


def _is_json(response: httpx.Response) -> bool:
    return _content_type(response).endswith("json")
