"""Reading a service's answers: every status mapped to :mod:`ticketing_core.errors` by
:func:`raise_for_status`, every undecodable body to :class:`UndecodableBody`, and the small
readers providers share (:func:`status_line`, :func:`is_json`, ``Retry-After``).

A provider supplies only how its service words things, as a :class:`ServiceDialect`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs
import httpx

from ticketing_core.errors import (
    MAX_RETRY_AFTER,
    AuthenticationFailed,
    NotFound,
    PermissionDenied,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
    UnexpectedResponse,
)

MAX_REASON = 300  # characters of a service's own error message kept in ours


@attrs.frozen
class ServiceDialect:
    """How one service words things: its name in messages and how to read its error bodies."""

    name: str
    error_reason: Callable[[httpx.Response], str]
    """The service's own explanation from an error response (may fall back to the status line)."""
    non_json_hint: str = ""
    """Appended when a success answer is not JSON (e.g. a hibernating instance's HTML page)."""


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
                outage=True,
            )
        return
    try:
        reason = dialect.error_reason(response)
    except (UndecodableBody, RecursionError) as exc:  # the status still says what happened
        reason = f"{status_line(response)} (its error body is unreadable: {_unreadable(exc)})"
    if len(reason) > MAX_REASON:  # parsed, yet possibly a long text from an unknown server
        reason = reason[: MAX_REASON - 1] + "…"
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
            f"{name} is unavailable: {reason}",
            retry_after=retry_after,
            status_code=status,
            answered=is_json(response),
        )
    raise ProviderError(f"{name} rejected the request: {reason}", status_code=status)


class UndecodableBody(UnexpectedResponse):
    """A body that is not JSON, not text, or JSON nested deeper than the parser recurses (a
    hostile server's ``[[[[...``); ``why`` says which, in a few words."""

    def __init__(self, message: str, *, why: str, status_code: int) -> None:
        super().__init__(message, status_code=status_code)
        self.why = why


def json_body(response: httpx.Response, service: str) -> Any:
    """The answer's JSON, or :class:`UndecodableBody` (an :class:`UnexpectedResponse`): every
    decoding failure of every provider's answers becomes that one error here."""
    status = response.status_code
    try:
        return response.json()
    except RecursionError:
        raise UndecodableBody(
            f"{service} sent JSON nested too deeply to read (HTTP {status})",
            why="JSON nested too deeply",
            status_code=status,
        ) from None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        raise UndecodableBody(
            f"{service} sent a body that is not JSON (HTTP {status})",
            why="not JSON",
            status_code=status,
        ) from None


def _unreadable(error: Exception) -> str:
    """Why an error body could not be read, in a few words (never its text)."""
    return error.why if isinstance(error, UndecodableBody) else "nested too deeply"


def status_line(response: httpx.Response) -> str:
    return f"HTTP {response.status_code} {response.reason_phrase}".strip()


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The service's ``Retry-After`` in seconds, at most an hour (ServiceNow's rate limits are
    hourly); None when absent or not a number."""
    try:
        seconds = float(response.headers["Retry-After"])
    except (KeyError, ValueError):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER) if math.isfinite(seconds) else None


def content_type(response: httpx.Response) -> str:
    value: str = response.headers.get("Content-Type", "")
    return value.split(";")[0].strip()


def is_json(response: httpx.Response) -> bool:
    return content_type(response).endswith("json")
