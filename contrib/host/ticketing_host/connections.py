"""Bounds on the connections the host's server holds, against clients that never finish a request.

uvicorn answers a request beyond ``limit_concurrency`` with 503, but a client that sends its
headers one line at a time never makes a request, and nothing closes its connection: 1,100 such
clients (a line every 10 s) held every descriptor of a process limited to 1,024 open files, and
every real request timed out for as long as they stayed. A client that sends its headers and then
its body a byte at a time holds a connection the same way, and so does one that never reads its
answer. These bounds close that:

- **a request timeout**: a connection waiting for a request (a new one, or a kept-alive one after
  its last response) has ``request_timeout`` seconds to send all of it, headers and body; then it
  is answered 408 (if it had sent part of a request, and no answer of ours is under way) and
  closed. A client that takes no part of its answer for as long is cut off too, and so is one
  that has not taken its last answer 1 to 2 s after its connection was closed (by us, or by
  uvicorn: a ``Connection: close`` answer, a 400, the keep-alive timeout).
- **a bounded head**: a request line and headers (and a chunked body's trailers) over 16 KiB are
  answered 431 and closed (h11 refused them too; httptools has no bound, and gathers a header's
  parts at a cost growing as their square).
- **a connection cap**: at most ``max_connections`` are open at once, and never more than the
  open-file limit leaves free for the rest of the process (a quarter of it, at least 64: database
  files, calls to instances, logs). A connection counts until its socket is closed. A connection
  beyond the cap cuts off the one that has waited longest for its request, so a client that
  sends its request at once is served while the cap is full of stalled ones; when every
  connection is busy with a request it sent whole, the newcomer is answered 503 and closed.

uvicorn has none of them, so :class:`BoundedHttpToolsProtocol` adds them to its httptools
protocol class (httptools parses requests in C: ``serve`` spends about a third less CPU on a
notification than with h11), which uvicorn takes through its public ``http`` setting
(``uvicorn.Config(app, http=...)``). The server is run with ``ws="none"``: an upgrade to a
WebSocket would hand the connection to another protocol without ``connection_lost`` here, so it
would hold a place under the cap for good. It relies on that class's hooks (``connection_made``,
``data_received``, ``connection_lost``, ``on_message_begin``, ``on_headers_complete``,
``on_message_complete``, ``on_response_complete``, ``pause_writing``, ``resume_writing``) and
attributes (``transport``, ``loop``, ``flow``, ``cycle``); ``tests/host/test_resilience.py``
checks the hooks are still there, so an uvicorn that changes them fails the tests rather than
these bounds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from typing import Any, ClassVar

import attrs
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

DEFAULT_REQUEST_TIMEOUT = 10.0
DEFAULT_MAX_CONNECTIONS = 1000
MIN_FREE_FILES = 64
"""Descriptors always left to the rest of the process, whatever the open-file limit."""
WARN_EVERY = 60.0  # seconds between warnings that the cap is reached
MAX_HEAD_BYTES = 16 * 1024
"""A request line and headers longer are answered 431 (h11's bound; httptools has none)."""
CLOSE_GRACE = 1.0
"""Seconds a closed connection has to take its last answer before it is cut off (1 to 2 s)."""


class _HeadTooLong(Exception):
    """Raised in httptools' callbacks to stop parsing a head over :data:`MAX_HEAD_BYTES`."""


def open_file_limit() -> int:
    """The process's soft limit on open files (RLIMIT_NOFILE)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


def connection_bound(max_connections: int, file_limit: int | None = None) -> int:
    """How many connections may be open at once: ``max_connections``, and at most what the
    open-file limit leaves once a quarter of it (at least :data:`MIN_FREE_FILES`) is kept for
    the rest of the process. E.g. 768 under the common limit of 1,024."""
    limit = open_file_limit() if file_limit is None else file_limit
    return max(1, min(max_connections, limit - max(MIN_FREE_FILES, limit // 4)))


@attrs.frozen
class ConnectionLimits:
    """How long a client may take to send a request, and how many connections may be open at
    once (see the module's docstring)."""

    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    @property
    def bound(self) -> int:
        """The connections allowed at once under this process's open-file limit."""
        return connection_bound(self.max_connections)

    def protocol(self) -> type[asyncio.Protocol]:
        """A protocol class for uvicorn's ``http`` setting enforcing these limits. One per
        server: the class counts the connections of the server it is given to."""
        namespace = {"limits": self, "bound": self.bound, "registry": _Registry()}
        return type(BoundedHttpToolsProtocol.__name__, (BoundedHttpToolsProtocol,), namespace)


class _Registry:
    """One server's connections: all those open, and those waiting for (the rest of) a request,
    longest waiting first (dicts keep insertion order)."""

    def __init__(self) -> None:
        self.open: set[BoundedHttpToolsProtocol] = set()
        self.waiting: dict[BoundedHttpToolsProtocol, None] = {}
        self.warned_at = -WARN_EVERY
        self.sweeping = False

    def sweep_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self.sweeping:
            self.sweeping = True
            loop.call_later(CLOSE_GRACE, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Cut off the connections found closing at the last sweep and still open: whoever
        closed them (we, or uvicorn after a ``Connection: close`` answer, a 400, the keep-alive
        timeout), their client has not taken its last answer."""
        for connection in list(self.open):
            connection.sweep()
        self.sweeping = False
        if self.open:
            self.sweep_soon(loop)


def _answer(status: int, reason: str, detail: str, *headers: str) -> bytes:
    body = json.dumps({"detail": detail}).encode()
    head = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *headers,
    ]
    return "\r\n".join(head).encode() + b"\r\n\r\n" + body


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a request timeout and a connection cap; made per server
    by :meth:`ConnectionLimits.protocol`, which sets the class attributes.

    A request is due from the client while every request that arrived whole has been answered:
    requests arrive in order and are answered in order, so that is ``_whole <= _answered``.
    (An answer may come before the end of its request's body, which is still due then.)"""

    limits: ClassVar[ConnectionLimits]
    bound: ClassVar[int]
    registry: ClassVar[_Registry]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._request_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._begun = False  # part of a request has arrived, not all of it
        self._whole = 0  # requests that arrived whole
        self._answered = 0  # responses sent
        self._in_head = True  # a request line and headers are due (or under way)
        self._head_bytes = 0  # bytes received while they were
        self._head_length = 0  # the request's URL, header and trailer names and values
        self._boundary = False  # a request ended in the bytes being parsed
        self._draining = False  # our last answer sent: what the client still sends is dropped
        self._closing_seen = False  # found closing by a sweep

    # -- uvicorn's hooks ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.registry.open.add(self)
        self.registry.sweep_soon(self.loop)
        if len(self.registry.open) > self.bound and not self._make_room():
            self._close(
                _answer(
                    503,
                    "Service Unavailable",
                    f"the server holds its limit of {self.bound} connections, all busy with "
                    "requests; retry shortly",
                    "Retry-After: 1",
                )
            )
            return
        self._await_request()

    def data_received(self, data: bytes) -> None:
        if self._draining:
            return
        self._boundary = False
        super().data_received(data)
        # A head still incomplete is bounded here (httptools gathers a header's parts before its
        # callback sees them); bytes that held the end of a request are not counted, the next
        # head's share being unknown. Whole heads are measured exactly by the callbacks.
        if self._in_head and not self._boundary and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse_head()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._begun = True
        self._head_length = 0

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))  # trailers of a chunked body too
        super().on_header(name, value)

    def send_400_response(self, msg: str) -> None:
        if not self.transport.is_closing() and not self._draining:  # else answered already
            super().send_400_response(msg)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._begun = False
        self._whole += 1
        self._in_head, self._head_bytes, self._boundary = True, 0, True
        self._next_due()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._answered += 1
        if not self.transport.is_closing():
            self._next_due()  # kept alive: the next request is due in time too

    def pause_writing(self) -> None:
        """The client is not taking its answer: it has the request timeout to start again."""
        super().pause_writing()
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(
                self.limits.request_timeout, self.transport.abort
            )

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget_waiting()
        self.registry.open.discard(self)
        if self._send_timer is not None:
            self._send_timer.cancel()
        super().connection_lost(exc)

    # -- the bounds --------------------------------------------------------------------------------

    def sweep(self) -> None:
        """Cut off this connection if a sweep before found it closing (see ``_Registry``)."""
        closing = self._draining or self.transport.is_closing()
        if closing and self._closing_seen:
            self.transport.abort()
        self._closing_seen = closing

    def _count_head(self, length: int) -> None:
        self._head_length += length
        if self._head_length > MAX_HEAD_BYTES:
            self._refuse_head()
            raise _HeadTooLong  # httptools stops; uvicorn's 400 is not sent (answered already)

    def _refuse_head(self) -> None:
        detail = f"the request line and headers exceed {MAX_HEAD_BYTES} bytes"
        self._close(_answer(431, "Request Header Fields Too Large", detail))

    def _next_due(self) -> None:
        if self._whole <= self._answered:
            self._await_request()
        else:
            self._forget_waiting()  # a request in hand: the client waits for us, not we for it

    def _await_request(self) -> None:
        self._forget_waiting()
        self.registry.waiting[self] = None
        self._request_timer = self.loop.call_later(self.limits.request_timeout, self._overdue)

    def _overdue(self) -> None:
        self._request_timer = None
        if self.transport.is_closing() or self._whole > self._answered:
            return
        cycle = self.cycle
        if self.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue):
            self._await_request()  # the client waits for us to read, or for our 100: not late
            return
        detail = f"the request did not arrive within {self.limits.request_timeout:g} s"
        self._close(_answer(408, "Request Timeout", detail) if self._begun else None)

    def _make_room(self) -> bool:
        """Close the connection that has waited longest for a request, if any other is
        waiting; the newcomer takes its place."""
        victim = next((waiting for waiting in self.registry.waiting if waiting is not self), None)
        now = time.monotonic()
        if now - self.registry.warned_at >= WARN_EVERY:
            self.registry.warned_at = now
            log.warning(
                "%d connections open, the limit: %s (logged once a minute)",
                len(self.registry.open) - 1,
                "closing those that have waited longest for a request"
                if victim is not None
                else "refusing new ones, every connection is busy with a request",
            )
        if victim is None:
            return False
        victim._close(None)
        return True

    def _close(self, answer: bytes | None) -> None:
        """Close with ``answer`` if any (or cut off at once, without one). The answer is
        followed by the end of our side; what the client still sends is read and dropped, so
        its unread bytes do not make the kernel reset the connection before the answer is
        read. A sweep cuts it off 1 to 2 s later. Counted until the socket is closed."""
        self._forget_waiting()
        if answer is None or not self._answerable() or self._draining:
            self.transport.abort()
            return
        self._draining = True
        if (cycle := self.cycle) is not None and not cycle.response_complete:
            cycle.disconnected = True  # as uvicorn tells the app when the client goes
            cycle.message_event.set()
        self.transport.write(answer)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        else:
            self.transport.close()

    def _answerable(self) -> bool:
        """Whether an answer of ours would start a response: none is due or under way."""
        cycle = self.cycle
        responding = cycle is not None and cycle.response_started and not cycle.response_complete
        return self._whole <= self._answered and not responding

    def _forget_waiting(self) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None
        self.registry.waiting.pop(self, None)
