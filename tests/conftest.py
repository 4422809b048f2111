"""Shared fixtures: a ServiceNow emulator on a free port, providers connected to it, vcr settings."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from servicenow_emulator import Emulator
from servicenow_emulator.server import RunningEmulator, run_in_thread

from ticketing_core.sync.database import Database, engine_url, sqlite_path
from ticketing_servicenow import ServiceNowProvider

T = TypeVar("T")

ADMIN_TOKEN = "admin:admin-password"
# The key encrypting stored credentials in tests' hosts and workers (made per run, never a constant).
SECRET_KEY = Fernet.generate_key().decode()
BEARER_TOKEN = "bearer-token-value"


@pytest.fixture(scope="session")
def emulator_server() -> Iterator[RunningEmulator]:
    with run_in_thread(
        Emulator(tokens={BEARER_TOKEN: "admin"}, custom_fields=["u_data_team"])
    ) as running:
        yield running


@pytest.fixture
def emulator(emulator_server: RunningEmulator) -> Iterator[Emulator]:
    """The running emulator, emptied before each test."""
    emulator_server.emulator.reset()
    yield emulator_server.emulator
    emulator_server.emulator.reset()


@pytest.fixture
def emulator_url(emulator: Emulator, emulator_server: RunningEmulator) -> str:
    return emulator_server.url


@pytest.fixture
def provider(emulator_url: str) -> Iterator[ServiceNowProvider]:
    client = ServiceNowProvider(api_url=emulator_url, api_access_token=ADMIN_TOKEN)
    yield client
    client.close()


# --- recorded HTTP (vcrpy through pytest-recording) --------------------------------------------
# Replay (record mode "none", the default in nox) needs no server: requests match on method, path,
# query and body, never on host, so cassettes recorded anywhere replay here. To re-record:
#   nox -s record                      against a fresh emulator
#   TICKETING_RECORD_URL=https://dev12345.service-now.com TICKETING_RECORD_TOKEN=user:pass \
#     nox -s record                    against a real instance
RECORD_URL_VARIABLE = "TICKETING_RECORD_URL"
RECORD_TOKEN_VARIABLE = "TICKETING_RECORD_TOKEN"
REPLAY_URL = "https://recorded.service-now.test"
SECRET_HEADERS = ("authorization", "cookie", "set-cookie")


@pytest.fixture(scope="module")
def vcr_config() -> dict[str, object]:
    return {
        "filter_headers": list(SECRET_HEADERS),  # request headers only
        # OAuth token requests (form bodies) and answers: neither may reach a cassette.
        "filter_post_data_parameters": ["password", "client_secret", "refresh_token"],
        "before_record_response": without_secrets,
        "match_on": ["method", "path", "query", "body"],
        "decode_compressed_response": True,
    }


def without_secrets(response: dict[str, Any]) -> dict[str, Any]:
    """A response without its session cookies (vcrpy filters only request headers) and with any
    OAuth tokens it issued replaced."""
    headers = response["headers"]
    for name in [name for name in headers if name.lower() == "set-cookie"]:
        del headers[name]
    body = response["body"]["string"]
    if b"access_token" in body:
        issued = json.loads(body)
        for field in ("access_token", "refresh_token"):
            if field in issued:
                issued[field] = "recorded-token"
        response["body"]["string"] = json.dumps(issued).encode()
    return response


@pytest.fixture
def recorded_target(record_mode: str, request: pytest.FixtureRequest) -> tuple[str, str]:
    """(url, token) for a recorded test: a placeholder in replay, else a real instance or emulator."""
    if record_mode == "none":
        return REPLAY_URL, "replay:placeholder"
    if url := os.environ.get(RECORD_URL_VARIABLE):
        return url, os.environ[RECORD_TOKEN_VARIABLE]
    server: RunningEmulator = request.getfixturevalue("emulator_server")
    server.emulator.reset()
    return server.url, ADMIN_TOKEN


# --- databases: every store and outbox test runs on SQLite and on PostgreSQL -------------------
POSTGRES_URL = os.environ.get(
    "TICKETING_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        yield str(tmp_path / "ticketing.db")
        return
    with postgres_schema() as url:
        yield url


@contextmanager
def postgres_schema() -> Iterator[str]:
    """The URL of a fresh PostgreSQL schema of the test database, dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(engine_url(POSTGRES_URL))
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    yield db
    db.dispose()


def wait_until(produce: Callable[[], T], timeout: float = 10.0) -> T:
    """Poll ``produce`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := produce()):
        if time.monotonic() > deadline:
            raise AssertionError(f"still {value!r} after {timeout} s")
        time.sleep(0.02)
    return value


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
