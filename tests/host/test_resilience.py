"""The host under hostile or broken surroundings: an instance answering what no parser takes, a
database another process locked or made read-only, clients that never finish their requests."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from ..conftest import ADMIN_TOKEN
from .conftest import StartHost, ok

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
