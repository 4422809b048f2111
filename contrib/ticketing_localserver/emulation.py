"""What the service emulators share: injected faults, latency, an outage switch, a request log
and the ``/__emulator/*`` endpoints that drive them over HTTP, plus small request helpers
(Basic and bearer authentication, JSON answers, numeric query parameters).

Each emulator brings what is its own: its routes and state, and how it words every error
(:class:`FaultAnswers`, answered in its :class:`ServiceError` envelope).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol, TypeVar

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

__all__ = [
    "FAULT_KINDS",
    "ControlHandler",
    "EmulatedService",
    "Endpoint",
    "Fault",
    "FaultAnswers",
    "ServiceError",
    "authenticate",
    "int_param",
    "json_response",
]

FAULT_KINDS = ("429", "html", "timeout", "drop_after_commit")  # plus any "5xx" status

Endpoint = Callable[[Request], Awaitable[Response]]
# A control endpoint's work: the JSON body (an object) and the request in, JSON-able out.
ControlHandler = Callable[[dict[str, Any], Request], Any]
U = TypeVar("U")


@dataclass(frozen=True)
class Fault:
    """One queued fault, consumed by the next API request whose method matches."""

    kind: str  # "429", any "5xx", "html", "timeout" or "drop_after_commit"
    method: str | None = None  # None: any method
    retry_after: int | None = None  # seconds, sent as Retry-After
    seconds: float = 1.0  # how long "timeout" stalls before answering normally


class ServiceError(Exception, ABC):
    """An answer in the service's error envelope; raised anywhere below a request handler."""

    @abstractmethod
    def response(self) -> Response: ...


class FaultAnswers(Protocol):
    """How the service answers each injected failure."""

    html_page: str  # served with 200 for the "html" fault, as a proxy or a sleeping site would

    def down(self) -> ServiceError: ...

    def rate_limited(self, headers: dict[str, str]) -> ServiceError: ...  # headers: Retry-After

    def server_error(self, status: int, headers: dict[str, str]) -> ServiceError: ...

    def lost(self) -> ServiceError: ...  # "drop_after_commit": the write stands, its answer not

    def bad_control(self, error: Exception) -> ServiceError: ...


class EmulatedService:
    """Faults, latency, the ``down`` switch and the request log, around the service's answers.

    Safe to drive from another thread while uvicorn serves: subclasses keep their own state
    behind the same ``_lock``, so :meth:`stats` is one snapshot.
    """

    def __init__(self, answers: FaultAnswers, latency_ms: int) -> None:
        self._answers = answers
        self._initial_latency_ms = latency_ms
        self._lock = threading.RLock()
        self._faults: list[Fault] = []
        self._requests: deque[dict[str, Any]] = deque(maxlen=10000)
        self.latency_ms = latency_ms
        self.down = False

    def reset(self) -> None:
        """Forget faults and the request log; restore latency and ``down``."""
        with self._lock:
            self._faults.clear()
            self._requests.clear()
            self.latency_ms = self._initial_latency_ms
            self.down = False

    def add_fault(
        self,
        kind: str,
        *,
        count: int = 1,
        method: str | None = None,
        retry_after: int | None = None,
        seconds: float = 1.0,
    ) -> None:
        """Queue ``count`` faults of ``kind`` for the next API requests (of ``method`` only)."""
        if kind not in FAULT_KINDS and not _is_server_error(kind):
            raise ValueError(f"unknown fault kind {kind!r}")
        fault = Fault(kind, method.upper() if method else None, retry_after, seconds)
        with self._lock:
            self._faults.extend([fault] * count)

    @property
    def requests(self) -> list[dict[str, Any]]:
        """The API request log: method, path, query and status (never headers)."""
        with self._lock:
            return list(self._requests)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "pending_faults": len(self._faults),
                "requests": len(self._requests),
                "latency_ms": self.latency_ms,
                "down": self.down,
            }

    # ---- API requests ---------------------------------------------------------------------

    def api_endpoint(self, answer: Endpoint) -> Endpoint:
        """``answer`` behind latency, ``down`` and the faults; every request is logged."""

        async def endpoint(request: Request) -> Response:
            try:
                response = await self._faulted(request, answer)
            except ServiceError as error:
                response = error.response()
            with self._lock:
                self._requests.append(
                    {
                        "method": request.method,
                        "path": request.url.path,
                        "query": request.url.query,
                        "status": response.status_code,
                    }
                )
            return response

        return endpoint

    async def _faulted(self, request: Request, answer: Endpoint) -> Response:
        if self.latency_ms:
            # Awaited, not slept, so concurrent requests overlap as they do on a real service.
            await asyncio.sleep(self.latency_ms / 1000)
        if self.down:
            raise self._answers.down()
        fault = self._take_fault(request.method)
        if fault is not None and fault.kind not in ("timeout", "drop_after_commit"):
            return self._fault_response(fault)
        if fault is not None and fault.kind == "timeout":
            await asyncio.sleep(fault.seconds)
        response = await answer(request)
        if fault is not None and fault.kind == "drop_after_commit":
            # The write is committed; only the answer is lost, as behind a timing-out proxy.
            raise self._answers.lost()
        return response

    def _take_fault(self, method: str) -> Fault | None:
        with self._lock:
            for index, fault in enumerate(self._faults):
                if fault.method in (None, method):
                    return self._faults.pop(index)
        return None

    def _fault_response(self, fault: Fault) -> Response:
        if fault.kind == "html":
            return HTMLResponse(self._answers.html_page)
        status = int(fault.kind)
        headers = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
        if status == 429:
            headers.setdefault("Retry-After", "1")
            return self._answers.rate_limited(headers).response()
        return self._answers.server_error(status, headers).response()

    # ---- control endpoints ----------------------------------------------------------------

    def control_routes(self) -> list[Route]:
        """``/__emulator/``: state, faults, latency, down, reset and the request log (no auth)."""
        handlers: list[tuple[str, str, ControlHandler]] = [
            ("state", "GET", lambda _body, _request: self.stats()),
            ("faults", "POST", self._control_faults),
            ("latency", "POST", self._control_latency),
            ("down", "POST", self._control_down),
            ("reset", "POST", self._control_reset),
            ("requests", "GET", lambda _body, _request: self.requests),
        ]
        return [
            Route(f"/__emulator/{name}", self.control_endpoint(handler), methods=[method])
            for name, method, handler in handlers
        ]

    def control_endpoint(self, handler: ControlHandler) -> Endpoint:
        """Wrap a control handler: JSON in (empty body allowed), JSON out, bad input -> 400."""

        async def endpoint(request: Request) -> Response:
            try:
                raw = await request.body()
                body = json.loads(raw) if raw.strip() else {}
                if not isinstance(body, dict):
                    raise TypeError("the body must be a JSON object")
                return json_response(handler(body, request))
            except (ValueError, TypeError, KeyError) as error:
                return self._answers.bad_control(error).response()

        return endpoint

    def _control_faults(self, body: dict[str, Any], _request: Request) -> dict[str, Any]:
        retry_after, method = body.get("retry_after"), body.get("method")
        self.add_fault(
            str(body["kind"]),
            count=int(body.get("count", 1)),
            method=None if method is None else str(method),
            retry_after=None if retry_after is None else int(retry_after),
            seconds=float(body.get("seconds", 1.0)),
        )
        return self.stats()

    def _control_latency(self, body: dict[str, Any], _request: Request) -> dict[str, Any]:
        self.latency_ms = int(body["ms"])
        return self.stats()

    def _control_down(self, body: dict[str, Any], _request: Request) -> dict[str, Any]:
        if not isinstance(body["down"], bool):
            raise TypeError("down must be true or false")
        self.down = body["down"]
        return self.stats()

    def _control_reset(self, _body: dict[str, Any], _request: Request) -> dict[str, Any]:
        self.reset()
        return self.stats()


def authenticate(
    request: Request,
    *,
    basic: Callable[[str, str], U | None],
    bearer: Callable[[str], U | None],
    refused: Callable[[], ServiceError],
) -> U:
    """Who the Authorization header names, as ``basic(name, secret)`` or ``bearer(token)`` find
    them; raises ``refused()``, the service's 401, when neither does."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    who: U | None = None
    if scheme.lower() == "bearer":
        who = bearer(credentials.strip())
    elif scheme.lower() == "basic" and (pair := _basic_pair(credentials.strip())) is not None:
        who = basic(*pair)
    if who is None:
        raise refused()
    return who


def _basic_pair(credentials: str) -> tuple[str, str] | None:
    try:
        decoded = base64.b64decode(credentials, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    name, _, secret = decoded.partition(":")
    return name, secret


class _JsonResponse(JSONResponse):
    media_type = "application/json;charset=UTF-8"  # exactly what ServiceNow and Jira Cloud send


def json_response(
    content: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return _JsonResponse(content, status_code=status, headers=dict(headers or {}))


def int_param(value: str | None, default: int, *, minimum: int) -> int:
    """A query parameter as a number: ``default`` when absent, not a number or below ``minimum``."""
    try:
        number = int(value or "")
    except ValueError:
        return default
    return number if number >= minimum else default


def _is_server_error(kind: str) -> bool:
    try:
        return 500 <= HTTPStatus(int(kind)) < 600
    except ValueError:
        return False
