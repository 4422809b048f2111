"""What the service emulators share: injected faults, latency, an outage switch, a cap on
requests in flight, a request log and the ``/__emulator/*`` endpoints that drive them over HTTP,
plus small request helpers (Basic and bearer authentication, JSON answers, numeric query
parameters).

The fault kinds (:data:`FAULT_KINDS`), each consumed by the next API request whose method
matches:

- ``"429"``, any ``"5xx"``: answered at once in the service's envelope; nothing is written.
- ``"html"``: a 200 HTML page, as a proxy or a sleeping site answers.
- ``"timeout"``: stalls ``seconds`` before the request is even read, then answers normally; a
  client that gives up first leaves nothing written (its request is logged as 499).
- ``"late_commit"``: reads the request, stalls ``seconds``, then commits and answers; a client
  that gave up still finds the write there afterwards.
- ``"drop_after_commit"``: commits, then answers 504 (the answer was lost behind a proxy).
- any ``"5xx_after_commit"``: commits, then answers that status in the service's envelope.
- ``"close_after_commit"``: commits, then closes the connection without a byte of answer.
- ``"dribble"``: the real answer's status line and headers at once, then its body one byte
  at a time, ``seconds`` apart (a slow instance).

Faults that fire "after commit" only do so when the request succeeded: an error the service
raises (401, 403, 404, ...) is answered as it is ("dribble" slows errors too).

API requests are counted while they are answered (``in_flight`` and ``peak_in_flight`` in
:meth:`EmulatedService.stats`; a dribbled body still streaming no longer counts), and
``max_in_flight`` (``POST /__emulator/limits {"max_in_flight": N}``, null lifts it) caps them:
one more arriving answers 429 with ``Retry-After: 1``, as an instance's semaphore refuses.

Each emulator brings what is its own: its routes and state, and how it words every error
(:class:`FaultAnswers`, answered in its :class:`ServiceError` envelope).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol, TypeVar

from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

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

# Plus any "5xx" status and any "5xx_after_commit".
FAULT_KINDS = (
    "429",
    "html",
    "timeout",
    "late_commit",
    "drop_after_commit",
    "close_after_commit",
    "dribble",
)
_AFTER_COMMIT = "_after_commit"
_CLIENT_GONE = 499  # logged for a request whose client hung up before it could be read

Endpoint = Callable[[Request], Awaitable[Response]]
# A control endpoint's work: the JSON body (an object) and the request in, JSON-able out.
ControlHandler = Callable[[dict[str, Any], Request], Any]
U = TypeVar("U")


@dataclass(frozen=True)
class Fault:
    """One queued fault, consumed by the next API request whose method matches."""

    kind: str  # one of FAULT_KINDS, any "5xx" or any "5xx_after_commit"
    method: str | None = None  # None: any method
    retry_after: int | None = None  # seconds, sent as Retry-After ("429", "5xx"[_after_commit])
    # "timeout", "late_commit": how long the request stalls; "dribble": the pause between bytes.
    seconds: float = 1.0


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
    """Faults, latency, the ``down`` switch, the in-flight cap and the request log, around the
    service's answers.

    Safe to drive from another thread while uvicorn serves: subclasses keep their own state
    behind the same ``_lock``, so :meth:`stats` is one snapshot.
    """

    def __init__(self, answers: FaultAnswers, latency_ms: int) -> None:
        self._answers = answers
        self._initial_latency_ms = latency_ms
        self._lock = threading.RLock()
        self._faults: list[Fault] = []
        self._requests: deque[dict[str, Any]] = deque(maxlen=10000)
        self._in_flight = 0
        self._peak_in_flight = 0
        self.latency_ms = latency_ms
        self.down = False
        self.max_in_flight: int | None = None  # more API requests at once answer 429
        # uvicorn logs every exception leaving the app; the hang-ups we cause are not news.
        logging.getLogger("uvicorn.error").addFilter(_not_a_hangup)

    def reset(self) -> None:
        """Forget faults, the request log and the peak in flight; restore latency, ``down`` and
        ``max_in_flight``."""
        with self._lock:
            self._faults.clear()
            self._requests.clear()
            self._peak_in_flight = self._in_flight  # requests still running keep counting
            self.latency_ms = self._initial_latency_ms
            self.down = False
            self.max_in_flight = None

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
        if kind not in FAULT_KINDS and not _is_server_error(kind.removesuffix(_AFTER_COMMIT)):
            raise ValueError(f"unknown fault kind {kind!r}")
        fault = Fault(kind, method.upper() if method else None, retry_after, seconds)
        with self._lock:
            self._faults.extend([fault] * count)

    @property
    def requests(self) -> list[dict[str, Any]]:
        """The API request log: method, path, query and status (never headers).

        The status is None for a request answered by closing the connection.
        """
        with self._lock:
            return list(self._requests)

    @property
    def in_flight(self) -> int:
        """API requests being answered right now."""
        with self._lock:
            return self._in_flight

    @property
    def peak_in_flight(self) -> int:
        """The most API requests answered at once since the last :meth:`reset`."""
        with self._lock:
            return self._peak_in_flight

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "pending_faults": len(self._faults),
                "requests": len(self._requests),
                "latency_ms": self.latency_ms,
                "down": self.down,
                "in_flight": self._in_flight,
                "peak_in_flight": self._peak_in_flight,
                "max_in_flight": self.max_in_flight,
            }

    # ---- API requests ---------------------------------------------------------------------

    def api_endpoint(self, answer: Endpoint) -> Endpoint:
        """``answer`` behind the in-flight cap, latency, ``down`` and the faults; every request
        is logged."""

        async def endpoint(request: Request) -> Response:
            admitted = self._admit()
            try:
                response = await self._guarded(request, answer, admitted=admitted)
            finally:
                if admitted:
                    with self._lock:
                        self._in_flight -= 1
            with self._lock:
                self._requests.append(
                    {
                        "method": request.method,
                        "path": request.url.path,
                        "query": request.url.query,
                        "status": None if isinstance(response, _Hangup) else response.status_code,
                    }
                )
            return response

        return endpoint

    def _admit(self) -> bool:
        """Count a request in, unless ``max_in_flight`` are already being answered."""
        with self._lock:
            if self.max_in_flight is not None and self._in_flight >= self.max_in_flight:
                return False
            self._in_flight += 1
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)
            return True

    async def _guarded(self, request: Request, answer: Endpoint, *, admitted: bool) -> Response:
        try:
            if not admitted:
                # As an instance's semaphore refuses: at once, before any latency or fault.
                raise self._answers.rate_limited({"Retry-After": "1"})
            return await self._faulted(request, answer)
        except ServiceError as error:
            return error.response()
        except ClientDisconnect:
            # The client hung up before its request was read (e.g. during "timeout"): nothing
            # was written and nobody is left to answer.
            return Response(status_code=_CLIENT_GONE)

    async def _faulted(self, request: Request, answer: Endpoint) -> Response:
        if self.latency_ms:
            # Awaited, not slept, so concurrent requests overlap as they do on a real service.
            await asyncio.sleep(self.latency_ms / 1000)
        if self.down:
            raise self._answers.down()
        fault = self._take_fault(request.method)
        if fault is None:
            return await answer(request)
        if fault.kind in ("timeout", "late_commit"):
            if fault.kind == "late_commit":
                # Read before stalling: once read, a client hanging up cannot stop the write.
                await request.body()
            await asyncio.sleep(fault.seconds)
            return await answer(request)
        if fault.kind == "dribble":
            try:
                response = await answer(request)
            except ServiceError as error:
                response = error.response()
            return _dribbled(response, fault.seconds)
        if fault.kind.endswith(_AFTER_COMMIT):
            await answer(request)  # committed; the answer is what the fault replaces
            return self._after_commit(fault)
        return self._fault_response(fault)

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
        headers = self._retry_after(fault)
        if status == 429:
            headers.setdefault("Retry-After", "1")
            return self._answers.rate_limited(headers).response()
        return self._answers.server_error(status, headers).response()

    def _after_commit(self, fault: Fault) -> Response:
        if fault.kind == "drop_after_commit":
            # Only the answer is lost, as behind a timing-out proxy.
            raise self._answers.lost()
        if fault.kind == "close_after_commit":
            return _Hangup()
        status = int(fault.kind.removesuffix(_AFTER_COMMIT))
        raise self._answers.server_error(status, self._retry_after(fault))

    @staticmethod
    def _retry_after(fault: Fault) -> dict[str, str]:
        return {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}

    # ---- control endpoints ----------------------------------------------------------------

    def control_routes(self) -> list[Route]:
        """``/__emulator/``: state, faults, latency, down, limits, reset and the request log
        (no auth)."""
        handlers: list[tuple[str, str, ControlHandler]] = [
            ("state", "GET", lambda _body, _request: self.stats()),
            ("faults", "POST", self._control_faults),
            ("latency", "POST", self._control_latency),
            ("down", "POST", self._control_down),
            ("limits", "POST", self._control_limits),
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

    def _control_limits(self, body: dict[str, Any], _request: Request) -> dict[str, Any]:
        cap = body["max_in_flight"]
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise ValueError("max_in_flight must be a positive whole number or null")
        self.max_in_flight = cap
        return self.stats()

    def _control_reset(self, _body: dict[str, Any], _request: Request) -> dict[str, Any]:
        self.reset()
        return self.stats()


# ---- answers the faults send ----------------------------------------------------------------


class _ConnectionDropped(Exception):
    """Raised out of the app on purpose, so that the server closes the connection unanswered."""


class _Hangup(Response):
    """No answer at all: the connection closes before a byte of the response is written.

    ASGI gives an app no way to close its connection, but a server closes it when the app fails
    after starting its response (it can no longer send a 500). So the start sent here carries a
    header no server may write (CR LF in a value would split the response): uvicorn's h11 and
    httptools protocols mark the response started, refuse the header before writing anything,
    and on the exception that follows close the transport with nothing sent.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        unwritable = [(b"x-emulator-hangup", b"close\r\nnow")]
        try:
            await send({"type": "http.response.start", "status": 200, "headers": unwritable})
        except Exception as refused:  # what refusing the header raises differs by protocol
            raise _ConnectionDropped("close_after_commit") from refused
        raise _ConnectionDropped("close_after_commit")  # a lenient server: close it anyway


def _not_a_hangup(record: logging.LogRecord) -> bool:
    """Log filter: drop the server's "Exception in ASGI application" for our own hang-ups."""
    return not (record.exc_info and isinstance(record.exc_info[1], _ConnectionDropped))


def _dribbled(response: Response, seconds: float) -> Response:
    """``response`` with its status line and headers at once, then its body a byte at a time."""
    body = bytes(response.body)

    async def chunks() -> AsyncIterator[bytes]:
        for index in range(len(body)):
            if index:
                await asyncio.sleep(seconds)
            yield body[index : index + 1]

    dribbled = StreamingResponse(chunks(), status_code=response.status_code)
    dribbled.raw_headers = list(response.raw_headers)  # Content-Length included
    return dribbled


# ---- request helpers ------------------------------------------------------------------------


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
