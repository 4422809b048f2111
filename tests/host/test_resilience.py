"""The host under hostile or broken surroundings: an instance answering what no parser takes, a
database another process locked or made read-only, clients that never finish their requests."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from servicenow_emulator import Emulator

from ticketing_core.store import Database, engine_url, sqlite_path

from ..conftest import ADMIN_TOKEN
from .conftest import (
    ANOMALY,
    TICKET_REQUEST,
    Host,
    StartHost,
    create_integration,
    ok,
    settled,
    tickets_path,
    work_notes,
)

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


@contextmanager
def read_only(database: Database, database_url: str) -> Iterator[None]:
    """The database read-only for every connection the host opens from now on.

    The tests run as root, whom file permissions do not stop, and a file made immutable
    (``chattr +i``) still takes writes through a descriptor SQLite opened before and reuses. So
    SQLite connections are opened in ``query_only`` mode, and PostgreSQL sessions read-only (as on
    a hot standby): writes then fail as for a file without write permission (SQLITE_READONLY,
    "attempt to write a readonly database") or a read-only server (read_only_sql_transaction).
    The host's open connections are dropped first, as if opened after the change; those opened
    meanwhile stay read-only after it, as they would.
    """
    sqlite = sqlite_path(database_url) is not None

    def read_only_session(dbapi_connection: Any, _: Any) -> None:
        if sqlite:
            dbapi_connection.execute("PRAGMA query_only=ON")
            return
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        dbapi_connection.commit()

    sa.event.listen(database.engine, "connect", read_only_session)
    database.engine.dispose()
    try:
        yield
    finally:
        sa.event.remove(database.engine, "connect", read_only_session)


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
