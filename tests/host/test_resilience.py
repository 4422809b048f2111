"""The host under hostile or broken surroundings: an instance answering what no parser takes, a
database another process locked or made read-only, clients that never finish their requests."""

from __future__ import annotations

import asyncio
import http.server
import importlib.util
import inspect
import json
import os
import resource
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import uvicorn
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from servicenow_emulator import Emulator
from ticketing_host.app import create_app
from ticketing_host.connections import ConnectionLimits, connection_bound
from ticketing_host.server import serve_in_thread
from ticketing_host.settings import Settings
from ticketing_localserver import RunningServer
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from ticketing_core.sync.database import engine_url, sqlite_path

from ..conftest import ADMIN_TOKEN, SECRET_KEY, read_only, wait_until
from .conftest import (
    ANOMALY,
    API_TOKEN,
    TICKET_REQUEST,
    Host,
    StartHost,
    create_integration,
    ok,
    settled,
    tickets_path,
    work_notes,
)
from .test_commands import TICKETING, free_port, wait_for_port

NESTED = b"[" * 200_000  # past Python's recursion limit for the JSON parser


class Instance:
    """A server on 127.0.0.1 answering every request with ``status`` and ``body`` (JSON), which
    a test may change while it runs."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status, self.body = status, body
        served = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(served.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(served.body)))
                self.end_headers()
                self.wfile.write(served.body)

            do_POST = do_PATCH = do_GET

            def log_message(self, *_: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def instance() -> Iterator[Instance]:
    served = Instance(200, b'{"result": []}')
    yield served
    served.close()


@pytest.mark.parametrize(
    ("status", "detail"),
    [
        (200, "ServiceNow sent JSON nested too deeply to read (HTTP 200)"),
        (
            400,
            "ServiceNow rejected the request: HTTP 400 Bad Request "
            "(its error body is unreadable: JSON nested too deeply)",
        ),
    ],
)
def test_an_instance_answering_json_nested_too_deeply_is_a_502(
    start_host: StartHost, instance: Instance, status: int, detail: str
) -> None:
    host = start_host()
    instance.status, instance.body = status, NESTED
    body = {"type": "servicenow", "api_url": instance.url, "api_access_token": ADMIN_TOKEN}

    response = host.api.post("/api/integrations", json=body)

    assert response.status_code == 502
    assert response.json() == {"detail": detail}
    assert ok(host.api.get("/api/integrations")) == []


def test_a_search_answered_with_json_nested_too_deeply_is_a_502(
    start_host: StartHost, instance: Instance
) -> None:
    host = start_host()
    body = {"type": "servicenow", "api_url": instance.url, "api_access_token": ADMIN_TOKEN}
    ok(host.api.post("/api/integrations", json=body), 201)
    instance.body = NESTED

    response = host.api.get("/api/integrations/ticketing/tickets/search")

    assert response.status_code == 502
    assert response.json() == {
        "detail": "ServiceNow sent JSON nested too deeply to read (HTTP 200)"
    }


# -- a database the host cannot write to ----------------------------------------------------------

COMMENTS = "/api/anomalies/12345/comments"
# Holds SQLite's write lock, as any other program writing to the file would, until stdin closes.
HOLD_SQLITE_LOCK = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
connection.rollback()
"""


@contextmanager
def locked(database_url: str) -> Iterator[None]:
    """The database locked against the host's writes by another process: a program holding
    SQLite's write lock, or a PostgreSQL session holding a lock on the comments' table."""
    path = sqlite_path(database_url)
    if path is not None:
        with subprocess.Popen(
            [sys.executable, "-c", HOLD_SQLITE_LOCK, path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        ) as holder:
            assert holder.stdout is not None
            assert holder.stdin is not None
            assert holder.stdout.readline() == "locked\n"
            try:
                yield
            finally:
                holder.stdin.close()
                holder.wait(timeout=10)
        return
    engine = sa.create_engine(engine_url(database_url))
    try:
        with engine.connect() as conn, conn.begin():
            conn.exec_driver_sql("LOCK TABLE anomaly_comments IN EXCLUSIVE MODE")
            yield
    finally:
        engine.dispose()


def a_ticket_with_a_comment(host: Host, emulator_url: str) -> str:
    create_integration(host, emulator_url)
    ok(host.api.post("/api/anomalies", json=ANOMALY), 201)
    sys_id: str = ok(host.api.post(tickets_path(), json=TICKET_REQUEST))["ticket"]["ticket_id"]
    ok(host.api.post(COMMENTS, json={"message": "before"}), 201)
    settled(host)  # nothing in flight when the database fails
    return sys_id


def comments(host: Host) -> list[str]:
    return [comment["message"] for comment in ok(host.api.get("/api/anomalies/12345"))["comments"]]


def test_a_database_locked_by_another_process_is_a_quick_503_and_nothing_is_lost(
    database_url: str, start_host: StartHost, emulator: Emulator, emulator_url: str
) -> None:
    host = start_host(database=database_url)
    sys_id = a_ticket_with_a_comment(host, emulator_url)

    with locked(database_url):
        started = time.monotonic()
        refused = host.api.post(COMMENTS, json={"message": "while locked"})
        waited = time.monotonic() - started
        readable = host.api.get("/api/anomalies/12345")

    assert refused.status_code == 503
    holder = "process" if sqlite_path(database_url) else "transaction"
    assert refused.json() == {
        "detail": f"the database is locked by another {holder}; retry shortly"
    }
    assert refused.headers["Retry-After"] == "5"
    assert waited < 6  # the request's lock wait (3 s), not SQLite's 30 s busy timeout
    assert readable.status_code == 200
    ok(host.api.post(COMMENTS, json={"message": "after"}), 201)
    assert comments(host) == ["before", "after"]
    assert settled(host)["dead"] == 0
    notes = work_notes(emulator, sys_id)
    assert [note for note in notes if note.startswith("Comment")] == [
        "Comment from Qualytics: before",
        "Comment from Qualytics: after",
    ]


def test_a_read_only_database_is_a_503_at_once_and_takes_writes_again_once_writable(
    database_url: str, start_host: StartHost, emulator: Emulator, emulator_url: str
) -> None:
    host = start_host(database=database_url)
    sys_id = a_ticket_with_a_comment(host, emulator_url)

    with read_only(host.runtime.database, database_url):
        started = time.monotonic()
        refused = host.api.post(COMMENTS, json={"message": "while read-only"})
        waited = time.monotonic() - started
        readable = host.api.get("/api/anomalies/12345")
        status = host.api.put("/api/anomalies/12345", json={"status": "Acknowledged"})

    assert refused.status_code == 503
    assert refused.json() == {
        "detail": "the database is read-only: nothing can be stored until it is writable again"
    }
    assert status.status_code == 503
    assert waited < 2
    assert readable.status_code == 200
    # No restart: a connection opened while read-only refuses a write once more at most, and
    # the pool's connections are replaced.
    after = host.api.post(COMMENTS, json={"message": "after"})
    if after.status_code == 503:
        after = host.api.post(COMMENTS, json={"message": "after"})
    assert after.status_code == 201, after.text
    assert comments(host) == ["before", "after"]
    assert ok(host.api.get("/api/anomalies/12345"))["status"] == "Active"
    assert settled(host)["dead"] == 0
    notes = work_notes(emulator, sys_id)
    assert [note for note in notes if note.startswith("Comment")] == [
        "Comment from Qualytics: before",
        "Comment from Qualytics: after",
    ]


# -- clients that never finish their requests (slowloris) ---------------------------------------

REAL_REQUEST = {"Authorization": f"Bearer {API_TOKEN}"}


class Slowloris:
    """Connections that each send a request line and then one header line at a time, never
    finishing their headers; what the server answered each before closing it is kept."""

    def __init__(self, port: int, count: int) -> None:
        self.opened = time.monotonic()
        self.sockets = []
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"GET /api/integrations HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            sock.setblocking(False)
            self.sockets.append(sock)
        self.answers: dict[int, bytes] = {}  # socket index -> what arrived before it closed
        self.closed_after: dict[int, float] = {}  # socket index -> seconds since opened

    def dribble(self) -> None:
        """One more header line on each connection still open and not answered; note those the
        server closed, with what it answered them."""
        for index, sock in enumerate(self.sockets):
            if index in self.closed_after:
                continue
            try:
                while chunk := sock.recv(65536):
                    self.answers[index] = self.answers.get(index, b"") + chunk
                # recv returned b"": the server closed the connection
            except BlockingIOError:
                if index not in self.answers:
                    with suppress(OSError):
                        sock.sendall(b"X-Slow: 1\r\n")
                continue  # open, or answered and not closed yet
            except OSError:
                pass  # reset by the server
            self.answers.setdefault(index, b"")
            self.closed_after[index] = time.monotonic() - self.opened

    @property
    def open_count(self) -> int:
        return len(self.sockets) - len(self.closed_after)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


@contextmanager
def slowloris(port: int, count: int) -> Iterator[Slowloris]:
    clients = Slowloris(port, count)
    try:
        yield clients
    finally:
        clients.close()


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@pytest.fixture
def bounded_host(tmp_path: Path) -> Iterator[Callable[[ConnectionLimits], RunningServer]]:
    """A host served in a thread with the given connection limits."""
    with ExitStack() as stack:

        def start(limits: ConnectionLimits) -> RunningServer:
            settings = Settings(
                database=str(tmp_path / "host.db"),
                public_url="https://qualytics.example",
                api_token=API_TOKEN,
                secret_key=SECRET_KEY,
            )
            app = create_app(settings)
            return stack.enter_context(serve_in_thread(app, limits=limits))

        yield start


def registry_of(server: RunningServer) -> Any:
    return server.server.config.http_protocol_class.registry


def test_held_connections_are_capped_and_closed_after_the_request_timeout_while_real_requests_pass(
    bounded_host: Callable[[ConnectionLimits], RunningServer],
) -> None:
    server = bounded_host(ConnectionLimits(request_timeout=2, max_connections=10))
    registry = registry_of(server)
    most_open = 0

    with slowloris(port_of(server.url), count=40) as held, httpx.Client(timeout=5) as client:
        started = time.monotonic()
        real = client.get(f"{server.url}/api/integrations", headers=REAL_REQUEST)
        answered_in = time.monotonic() - started
        deadline = time.monotonic() + 2 + 4
        while held.open_count and time.monotonic() < deadline:
            most_open = max(most_open, len(registry.open))
            held.dribble()
            time.sleep(0.1)  # pacing: one header line a tenth of a second
        real_again = client.get(f"{server.url}/api/integrations", headers=REAL_REQUEST)

    assert real.status_code == 200
    assert answered_in < 1.5  # within the request timeout the held connections get
    assert most_open <= 10
    assert held.open_count == 0, "every held connection is closed"
    assert max(held.closed_after.values()) < 2 + 3
    timed_out = [answer for answer in held.answers.values() if answer]
    assert timed_out, "those closed at the timeout are told why"
    for answer in timed_out:
        head, body = answer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        assert json.loads(body) == {"detail": "the request did not arrive within 2 s"}
    assert real_again.status_code == 200


def test_headers_sent_slowly_but_within_the_timeout_are_served(
    bounded_host: Callable[[ConnectionLimits], RunningServer],
) -> None:
    server = bounded_host(ConnectionLimits(request_timeout=1.5, max_connections=10))
    request = (
        f"GET /api/integrations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {API_TOKEN}\r\nConnection: close\r\n\r\n"
    ).encode()

    with socket.create_connection(("127.0.0.1", port_of(server.url)), timeout=5) as sock:
        for start in range(0, len(request), 20):
            sock.sendall(request[start : start + 20])
            time.sleep(0.1)  # pacing: the whole request takes about 0.6 s
        answer = sock.makefile("rb").read()

    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")


def read_response(reader: Any) -> bytes:
    """One whole response with a Content-Length from a socket's file."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += reader.readline()
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head + reader.read(length)


AUTHORIZED_GET = (
    f"GET /api/integrations HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_TOKEN}"
    "\r\n\r\n"
).encode()


def given_up_on(sock: socket.socket, reader: Any, partial: bytes) -> tuple[bytes, float]:
    """Send part of a request and no more: what the host sends until it closes, and when."""
    sock.sendall(partial)
    started = time.monotonic()
    answer = reader.read()
    return answer, time.monotonic() - started


def test_a_kept_alive_connection_has_the_same_time_for_its_next_request(
    bounded_host: Callable[[ConnectionLimits], RunningServer],
) -> None:
    server = bounded_host(ConnectionLimits(request_timeout=1.0, max_connections=10))

    with socket.create_connection(("127.0.0.1", port_of(server.url)), timeout=5) as sock:
        reader = sock.makefile("rb")
        sock.sendall(AUTHORIZED_GET)
        first = read_response(reader)
        second, closed_after = given_up_on(
            sock, reader, b"GET /api/integrations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        )

    assert first.startswith(b"HTTP/1.1 200 OK\r\n")
    assert second.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert closed_after < 1.0 + 1.5


def test_pipelined_requests_are_each_answered_and_then_the_next_is_due_in_time(
    bounded_host: Callable[[ConnectionLimits], RunningServer],
) -> None:
    server = bounded_host(ConnectionLimits(request_timeout=1.0, max_connections=10))

    with socket.create_connection(("127.0.0.1", port_of(server.url)), timeout=5) as sock:
        reader = sock.makefile("rb")
        sock.sendall(AUTHORIZED_GET * 3)
        answers = [read_response(reader) for _ in range(3)]
        last, closed_after = given_up_on(sock, reader, AUTHORIZED_GET[:20])

    assert all(answer.startswith(b"HTTP/1.1 200 OK\r\n") for answer in answers)
    assert last.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert closed_after < 1.0 + 1.5


def test_an_answer_before_the_body_ends_leaves_the_rest_of_it_due_in_time(
    bounded_host: Callable[[ConnectionLimits], RunningServer],
) -> None:
    """A path the host does not have is answered at once, while the body still comes."""
    server = bounded_host(ConnectionLimits(request_timeout=1.0, max_connections=10))
    trickling = TRICKLING.replace(b"/api/anomalies", b"/nowhere")

    with socket.create_connection(("127.0.0.1", port_of(server.url)), timeout=5) as sock:
        reader = sock.makefile("rb")
        sock.sendall(trickling)
        early = read_response(reader)
        last, closed_after = given_up_on(sock, reader, b"x")

    assert early.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert last.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert closed_after < 1.0 + 1.5


def test_a_request_head_over_16_kib_is_answered_431_and_one_under_it_is_served(
    bounded_host: Callable[[ConnectionLimits], RunningServer],
) -> None:
    """httptools bounds neither the request line nor the headers: the protocol does."""
    server = bounded_host(ConnectionLimits(request_timeout=5, max_connections=10))
    start = (
        f"GET /api/integrations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {API_TOKEN}\r\n"
    )
    under = (start + f"X-Padding: {'a' * 12_000}\r\nConnection: close\r\n\r\n").encode()
    body = b"x" * 200_000  # a body far over the bound is no head
    posted = (
        b"POST /nowhere HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    port = port_of(server.url)

    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(start.encode())
        for _ in range(5):  # 20,000 bytes of headers, and no end to them
            sock.sendall(f"X-Padding: {'a' * 3_986}\r\n".encode())
            time.sleep(0.05)
        refused = sock.makefile("rb").read()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(start.encode() + f"X-Padding: {'a' * 60_000}\r\n\r\n".encode())
        refused_whole = sock.makefile("rb").read()  # a whole head in one write, read at once
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"POST /nowhere HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"1\r\nx\r\n0\r\n"
            + f"X-Trailer: {'a' * 20_000}\r\n\r\n".encode()
        )
        refused_trailers = sock.makefile("rb").read()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(under)
        served = sock.makefile("rb").read()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(posted)
        not_found = read_response(sock.makefile("rb"))

    head, detail = refused.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert json.loads(detail) == {"detail": "the request line and headers exceed 16384 bytes"}
    assert refused_whole == refused
    assert refused_trailers == refused  # the app's answer to the request is dropped
    assert served.startswith(b"HTTP/1.1 200 OK\r\n")
    assert not_found.startswith(b"HTTP/1.1 404 Not Found\r\n")


def stalling_app() -> FastAPI:
    """Answers the client waits for: one begun before the request's body is read and never
    finished, and one sent in parts far larger together than the sockets' buffers."""
    app = FastAPI()

    @app.post("/begun")
    def begun() -> StreamingResponse:
        async def parts() -> AsyncIterator[bytes]:
            yield b"hello"
            await asyncio.sleep(30)  # cancelled once the client is gone

        return StreamingResponse(parts())

    @app.get("/large")
    def large() -> StreamingResponse:
        return StreamingResponse(b"x" * 32_000 for _ in range(1_000))  # each part awaits room

    return app


def test_a_request_overdue_while_its_answer_is_under_way_is_cut_off_without_a_408() -> None:
    limits = ConnectionLimits(request_timeout=1.0, max_connections=10)
    trickling = TRICKLING.replace(b"/api/anomalies", b"/begun")
    with (
        serve_in_thread(stalling_app(), limits=limits) as server,
        socket.create_connection(("127.0.0.1", port_of(server.url)), timeout=5) as sock,
    ):
        sock.sendall(trickling)
        received = b""
        with suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk

    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"hello" in received
    assert b"408" not in received


def test_a_client_that_does_not_take_its_answer_is_cut_off_after_the_request_timeout() -> None:
    limits = ConnectionLimits(request_timeout=1.0, max_connections=10)
    with serve_in_thread(stalling_app(), limits=limits) as server, socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port_of(server.url)))
        sock.sendall(b"GET /large HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        registry = registry_of(server)
        wait_until(lambda: registry.open)
        wait_until(lambda: not registry.open, timeout=1.0 + 5)


class HeldTransport:
    """A transport whose client never takes what is written: closing, it stays open."""

    def __init__(self) -> None:
        self.closing = self.aborted = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1), "sockname": ("127.0.0.1", 2)}.get(name, default)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.aborted = True


def test_a_connection_closing_for_two_sweeps_is_cut_off() -> None:
    """However it was closed (by uvicorn after a Connection: close answer, say): a client that
    never takes its last answer does not hold a place under the cap."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        pass

    config = uvicorn.Config(app, http=ConnectionLimits().protocol(), lifespan="off")
    config.load()
    loop = asyncio.new_event_loop()
    try:
        protocol = config.http_protocol_class(  # type: ignore[call-arg]
            config=config, server_state=ServerState(), app_state={}, _loop=loop
        )
        transport = HeldTransport()
        protocol.connection_made(transport)
        registry = protocol.registry
        registry._sweep(loop)
        transport.close()
        registry._sweep(loop)
        cut_at_first = transport.aborted
        registry._sweep(loop)
    finally:
        loop.close()

    assert not cut_at_first
    assert transport.aborted


def test_a_connection_that_sends_nothing_is_closed_after_the_timeout_without_an_answer(
    bounded_host: Callable[[ConnectionLimits], RunningServer],
) -> None:
    server = bounded_host(ConnectionLimits(request_timeout=0.5, max_connections=10))

    with socket.create_connection(("127.0.0.1", port_of(server.url)), timeout=5) as sock:
        started = time.monotonic()
        received = sock.recv(65536)
        closed_after = time.monotonic() - started

    assert received == b""
    assert closed_after < 0.5 + 1.5


TRICKLING = b"POST /api/anomalies HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10\r\n\r\n{"


def test_a_body_that_trickles_is_closed_after_the_request_timeout_or_for_a_newcomer(
    bounded_host: Callable[[ConnectionLimits], RunningServer],
) -> None:
    """Headers complete, the body a byte now and then: still waiting for the request."""
    server = bounded_host(ConnectionLimits(request_timeout=1.5, max_connections=2))
    port = port_of(server.url)

    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as first,
        socket.create_connection(("127.0.0.1", port), timeout=5) as second,
        httpx.Client(timeout=5) as client,
    ):
        first.sendall(TRICKLING)
        second.sendall(TRICKLING)
        wait_until(lambda: len(registry_of(server).waiting) == 2)
        real = client.get(f"{server.url}/api/integrations", headers=REAL_REQUEST)
        made_room = first.makefile("rb").read()  # the longest waiting, closed for the newcomer
        started = time.monotonic()
        second.sendall(b"x")
        timed_out = second.makefile("rb").read()
        closed_after = time.monotonic() - started

    assert real.status_code == 200
    assert made_room == b""
    head, body = timed_out.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert json.loads(body) == {"detail": "the request did not arrive within 1.5 s"}
    assert closed_after < 1.5 + 1.5


def test_when_every_connection_is_busy_with_a_whole_request_a_new_one_is_answered_503(
    bounded_host: Callable[[ConnectionLimits], RunningServer], tmp_path: Path
) -> None:
    """Connections whose requests the host is carrying out are never closed to make room."""
    server = bounded_host(ConnectionLimits(request_timeout=5, max_connections=2))
    body = json.dumps({"type": "Record", "status": "Active"}).encode()
    whole = (
        b"POST /api/anomalies HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {API_TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    port = port_of(server.url)
    locker = sqlite3.connect(tmp_path / "host.db")
    locker.execute("BEGIN EXCLUSIVE")  # each request waits for the database meanwhile
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as first,
            socket.create_connection(("127.0.0.1", port), timeout=5) as second,
        ):
            first.sendall(whole)
            second.sendall(whole)
            registry = registry_of(server)
            wait_until(lambda: len(registry.open) == 2 and not registry.waiting)
            with socket.create_connection(("127.0.0.1", port), timeout=5) as third:
                refused = third.makefile("rb").read()
    finally:
        locker.rollback()
        locker.close()

    head, body = refused.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"Retry-After: 1" in head
    assert json.loads(body) == {
        "detail": "the server holds its limit of 2 connections, all busy with requests; "
        "retry shortly"
    }


def test_websocket_upgrades_are_plain_requests_and_hold_no_place(
    bounded_host: Callable[[ConnectionLimits], RunningServer],
) -> None:
    """uvicorn hands an upgraded connection to another protocol, past the cap's count; the host
    serves no WebSocket, so upgrades are answered as plain requests (websockets is installed)."""
    assert importlib.util.find_spec("websockets"), "the test group installs websockets"
    server = bounded_host(ConnectionLimits(request_timeout=5, max_connections=3))
    upgrade = (
        b"GET /api/integrations HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    for _ in range(6):
        with socket.create_connection(("127.0.0.1", port_of(server.url)), timeout=5) as sock:
            sock.sendall(upgrade)
            sock.recv(65536)
    wait_until(lambda: not registry_of(server).open)

    with httpx.Client(timeout=5) as client:
        assert client.get(f"{server.url}/api/integrations", headers=REAL_REQUEST).status_code == 200


@pytest.mark.parametrize(
    ("file_limit", "bound"), [(1024, 768), (256, 192), (100, 36), (65536, 1000)]
)
def test_the_cap_stays_below_the_open_file_limit(file_limit: int, bound: int) -> None:
    assert connection_bound(1000, file_limit) == bound


def test_the_uvicorn_internals_the_bounds_rely_on_are_there() -> None:
    """The bounds subclass uvicorn's httptools protocol: this fails first when uvicorn changes
    it."""
    hooks = ("connection_made", "data_received", "connection_lost", "on_message_begin",
             "on_headers_complete", "on_message_complete", "on_response_complete",
             "pause_writing", "resume_writing")  # fmt: skip
    for hook in hooks:
        assert hook in vars(HttpToolsProtocol), f"uvicorn's HttpToolsProtocol has no {hook}"
    for hook in hooks[3:]:
        method = getattr(HttpToolsProtocol, hook)
        assert list(inspect.signature(method).parameters) == ["self"], hook
    cycle = inspect.getsource(RequestResponseCycle.__init__)
    for name in ("disconnected", "message_event", "response_started", "response_complete",
                 "waiting_for_100_continue"):  # fmt: skip
        assert f"self.{name} =" in cycle, f"uvicorn's request cycle has no {name} any more"
    assert "self.read_paused =" in inspect.getsource(FlowControl.__init__)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        pass

    protocol_class = ConnectionLimits().protocol()
    config = uvicorn.Config(app, http=protocol_class, lifespan="off")
    config.load()
    loop = asyncio.new_event_loop()
    try:
        protocol = config.http_protocol_class(  # type: ignore[call-arg]
            config=config, server_state=ServerState(), app_state={}, _loop=loop
        )
    finally:
        loop.close()
    assert isinstance(protocol, HttpToolsProtocol)
    assert protocol.loop is loop
    assert hasattr(protocol, "transport")


# The reproduction: a server whose process may open 256 files, and more half-sent requests than
# that. Without the bounds every descriptor is taken and the real request times out.
SERVE_FILE_LIMIT = 256


def test_serve_stays_available_with_more_held_connections_than_it_may_open_files(
    tmp_path: Path,
) -> None:
    port = free_port()
    environment = os.environ | {
        "TICKETING_API_TOKEN": API_TOKEN,
        "TICKETING_SECRET_KEY": SECRET_KEY,
        "TICKETING_REQUEST_TIMEOUT": "2",
    }

    def limit_open_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (SERVE_FILE_LIMIT, SERVE_FILE_LIMIT))

    command = [TICKETING, "serve", "--port", str(port), "--database", str(tmp_path / "serve.db")]
    with (
        (tmp_path / "serve.log").open("w") as log,
        subprocess.Popen(
            command, env=environment, stdout=log, stderr=log, preexec_fn=limit_open_files
        ) as serving,
    ):
        try:
            wait_for_port(port, serving)  # type: ignore[arg-type]  # bytes, not text: no matter
            with slowloris(port, count=300) as held, httpx.Client(timeout=5) as client:
                held.dribble()
                started = time.monotonic()
                real = client.get(f"http://127.0.0.1:{port}/api/integrations", headers=REAL_REQUEST)
                answered_in = time.monotonic() - started
                deadline = time.monotonic() + 2 + 4
                while held.open_count and time.monotonic() < deadline:
                    held.dribble()
                    time.sleep(0.2)  # pacing: a header line every 0.2 s
        finally:
            serving.terminate()
            serving.wait(timeout=20)

    assert real.status_code == 200
    # About 1.5 s: asyncio stops accepting for 1 s when descriptors run out, before the cap
    # closes the connections over it; without the bounds no answer ever comes.
    assert answered_in < 4
    assert held.open_count == 0
    assert "note: at most 192 connections at once, not 1000" in (tmp_path / "serve.log").read_text()
