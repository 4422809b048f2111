"""What a provider does against servers that are not a well-behaved instance: a gzip bomb, an
endless body, a redirect elsewhere, a token endpoint that fails, an address that changes between
the check and the connection. Each is a real HTTP server on a socket."""

from __future__ import annotations

import gzip
import http.server
import ipaddress
import json
import resource
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from servicenow_emulator.app import DEFAULT_OAUTH_CLIENT_ID, DEFAULT_OAUTH_CLIENT_SECRET

from ticketing_core.errors import (
    AuthenticationFailed,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    UnexpectedResponse,
)
from ticketing_core.http.network import BlockedAddress, NetworkPolicy
from ticketing_servicenow import ServiceNowProvider

from ..conftest import ADMIN_TOKEN

Answer = Callable[[http.server.BaseHTTPRequestHandler], None]
# 64 MiB of zeros: about 64 KB once compressed, 64 MiB again when a client inflates it.
BOMB = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)


class Server:
    """A threaded HTTP server on 127.0.0.1 answering every request with ``answer``; it records
    each request's path."""

    def __init__(self, answer: Answer) -> None:
        self.paths: list[str] = []
        served = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                served.paths.append(self.path)
                answer(self)

            do_POST = do_PATCH = do_GET

            def log_message(self, *_: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[[Answer], Server]]:
    servers: list[Server] = []

    def start(answer: Answer) -> Server:
        servers.append(Server(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def reply(status: int, body: bytes, **headers: str) -> Answer:
    def answer(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            handler.send_header(name.replace("_", "-"), value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return answer


def connect(url: str, **options: Any) -> ServiceNowProvider:
    return ServiceNowProvider(api_url=url, api_access_token=ADMIN_TOKEN, **options)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_a_gzip_bomb_is_cut_off_at_the_size_cap(serve: Callable[[Answer], Server]) -> None:
    server = serve(reply(200, BOMB, Content_Encoding="gzip"))
    before = peak_rss_mib()

    with (
        connect(server.url, max_response_bytes=4 * 1024 * 1024) as provider,
        pytest.raises(UnexpectedResponse, match="larger than 4194304 bytes"),
    ):
        provider.validate()

    assert peak_rss_mib() - before < 32  # never near the bomb's 64 MiB


def test_an_answer_larger_than_the_cap_is_cut_off(serve: Callable[[Answer], Server]) -> None:
    server = serve(reply(200, b"[" + b"0," * 3_000_000 + b"0]"))

    with (
        connect(server.url, max_response_bytes=1024 * 1024) as provider,
        pytest.raises(UnexpectedResponse, match="max_response_bytes"),
    ):
        provider.validate()


def test_a_redirect_is_not_followed(serve: Callable[[Answer], Server]) -> None:
    elsewhere = serve(reply(200, b'{"result": []}'))
    server = serve(reply(302, b"", Location=f"{elsewhere.url}/stolen"))

    with connect(server.url) as provider, pytest.raises(ProviderError):
        provider.validate()

    assert elsewhere.paths == []


def test_a_json_answer_without_the_envelope_is_not_an_instance(
    serve: Callable[[Answer], Server],
) -> None:
    """An internal service answering JSON must not pass for an instance."""
    server = serve(reply(200, b'{"rows": [{"db_password": "hunter2"}]}'))

    with connect(server.url) as provider, pytest.raises(UnexpectedResponse) as caught:
        provider.validate()

    assert "hunter2" not in str(caught.value)


def test_an_error_reason_is_bounded(serve: Callable[[Answer], Server]) -> None:
    body = {"error": {"message": "x" * 5000 + "db_password=hunter2"}, "status": "failure"}
    server = serve(reply(400, json.dumps(body).encode()))

    with connect(server.url) as provider, pytest.raises(ProviderError) as caught:
        provider.validate()

    assert len(str(caught.value)) < 400
    assert "hunter2" not in str(caught.value)


# -- the address rule at connect time --------------------------------------------------------------


def test_a_name_that_resolves_elsewhere_at_connect_time_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DNS rebinding: public when the URL is checked, loopback when connecting. The connection
    goes to the address that was checked, so the second answer is the one refused."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        answers = iter(
            [[ipaddress.ip_address("93.184.215.14")], [ipaddress.ip_address("127.0.0.1")]]
        )
        monkeypatch.setattr("ticketing_core.http.network.resolve", lambda host, port: next(answers))
        policy = NetworkPolicy()
        url = f"http://rebinding.example:{port}"

        policy.check_url(url)  # the first answer: public
        with (
            connect(url, transport=policy.transport()) as provider,
            pytest.raises(BlockedAddress, match="a loopback address"),
        ):
            provider.validate()

        with pytest.raises(BlockingIOError):
            listener.accept()


# -- OAuth ----------------------------------------------------------------------------------------

OAUTH = {"client_id": DEFAULT_OAUTH_CLIENT_ID, "client_secret": DEFAULT_OAUTH_CLIENT_SECRET}


@pytest.fixture(autouse=True)
def no_cached_tokens() -> None:
    from httpx_auth import OAuth2

    OAuth2.token_cache.clear()


def test_a_failing_token_endpoint_is_unavailable_and_never_quoted(
    serve: Callable[[Answer], Server],
) -> None:
    server = serve(reply(503, b"<html>db_password=hunter2</html>", Content_Type="text/html"))

    with (
        connect(server.url, max_attempts=1, **OAUTH) as provider,
        pytest.raises(ProviderUnavailable) as caught,
    ):
        provider.validate()

    assert caught.value.may_have_landed is False  # no token: the call itself never left
    assert "hunter2" not in str(caught.value)
    assert server.paths == ["/oauth_token.do"] * len(server.paths)


def test_a_refused_client_is_an_authentication_error_naming_oauth(
    serve: Callable[[Answer], Server],
) -> None:
    refusal = {"error_description": "access_denied", "error": "server_error"}
    server = serve(reply(401, json.dumps(refusal).encode()))

    with connect(server.url, **OAUTH) as provider, pytest.raises(AuthenticationFailed) as caught:
        provider.validate()

    assert "OAuth token endpoint refused client 'emulator-client'" in str(caught.value)
    assert DEFAULT_OAUTH_CLIENT_SECRET not in str(caught.value)
    assert DEFAULT_OAUTH_CLIENT_SECRET not in repr(provider)


def by_path(token_answer: Answer, other: Answer) -> Answer:
    """``token_answer`` for the OAuth token endpoint, ``other`` for every other request."""

    def answer(handler: http.server.BaseHTTPRequestHandler) -> None:
        (token_answer if handler.path.startswith("/oauth_token.do") else other)(handler)

    return answer


TOKEN = json.dumps({"access_token": "t", "token_type": "Bearer", "expires_in": 1800}).encode()


def test_a_401_carrying_a_gzip_bomb_is_cut_off_before_the_oauth_retry(
    serve: Callable[[Answer], Server],
) -> None:
    """httpx reads a 401 before an auth flow sends the call again: that read is bounded too."""
    server = serve(by_path(reply(200, TOKEN), reply(401, BOMB, Content_Encoding="gzip")))
    before = peak_rss_mib()

    with (
        connect(server.url, max_response_bytes=1024 * 1024, **OAUTH) as provider,
        pytest.raises(UnexpectedResponse, match="larger than 1048576 bytes"),
    ):
        provider.validate()

    assert peak_rss_mib() - before < 32


def test_a_token_endpoint_that_dribbles_is_cut_off_at_the_deadline(
    serve: Callable[[Answer], Server],
) -> None:
    def dribble(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(TOKEN)))
        handler.end_headers()
        for byte in TOKEN:
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
            time.sleep(0.2)

    server = serve(dribble)
    started = time.monotonic()

    with connect(server.url, deadline=1.5, **OAUTH) as provider, pytest.raises(ProviderTimeout):
        provider.validate()

    assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    "body",
    [b"<html>Instance hibernating</html>", b"[1]", b'{"access_token": "t", "expires_in": "soon"}'],
)
def test_a_token_answer_without_a_usable_token_is_unavailable(
    serve: Callable[[Answer], Server], body: bytes
) -> None:
    """A hibernating instance answers 200 with a page: retryable, never a crash (or a 500)."""
    server = serve(reply(200, body))

    with (
        connect(server.url, max_attempts=1, **OAUTH) as provider,
        pytest.raises(ProviderUnavailable) as caught,
    ):
        provider.validate()

    assert caught.value.retryable
    assert caught.value.may_have_landed is False


def test_data_after_a_compressed_body_is_refused(serve: Callable[[Answer], Server]) -> None:
    body = gzip.compress(b'{"result": []}') + b"\0" * 2_000_000
    server = serve(reply(200, body, Content_Encoding="gzip"))

    with (
        connect(server.url, max_response_bytes=1024 * 1024) as provider,
        pytest.raises(UnexpectedResponse),
    ):
        provider.validate()


def test_an_encoding_not_asked_for_is_refused(serve: Callable[[Answer], Server]) -> None:
    server = serve(reply(200, b"\x28\xb5\x2f\xfd", Content_Encoding="zstd"))

    with connect(server.url) as provider, pytest.raises(UnexpectedResponse, match="did not ask"):
        provider.validate()


# -- bodies the JSON parser cannot take -----------------------------------------------------------

NESTED = b"[" * 200_000  # the parser recurses once per "[": far past Python's recursion limit


def test_json_nested_too_deeply_is_an_unexpected_response(
    serve: Callable[[Answer], Server],
) -> None:
    server = serve(reply(200, NESTED))

    with (
        connect(server.url, max_attempts=1) as provider,
        pytest.raises(UnexpectedResponse) as caught,
    ):
        provider.validate()

    assert str(caught.value) == "ServiceNow sent JSON nested too deeply to read (HTTP 200)"
    assert caught.value.status_code == 200


def test_an_error_answer_nested_too_deeply_is_reported_with_its_status(
    serve: Callable[[Answer], Server],
) -> None:
    """The status says what happened (a refusal); the body only fails to explain it."""
    server = serve(reply(400, NESTED))

    with connect(server.url) as provider, pytest.raises(ProviderError) as caught:
        provider.validate()

    assert str(caught.value) == (
        "ServiceNow rejected the request: HTTP 400 Bad Request "
        "(its error body is unreadable: JSON nested too deeply)"
    )
    assert caught.value.status_code == 400


@pytest.mark.parametrize(
    "body",
    [
        b'{"error": {"message": ' + b"[" * 5_000 + b"]" * 5_000 + b"}}",  # too deep, inside
        b'{"error": {"message": "\xff\xfe not UTF-8"}}',
        b'{"error": "just a string"}',
    ],
)
def test_an_error_body_of_any_shape_keeps_its_status(
    serve: Callable[[Answer], Server], body: bytes
) -> None:
    server = serve(reply(403, body))

    with connect(server.url) as provider, pytest.raises(ProviderError) as caught:
        provider.validate()

    assert caught.value.status_code == 403
    assert "HTTP 403 Forbidden" in str(caught.value)


def test_a_poll_whose_pages_acls_hide_whole_ends_instead_of_looping(
    serve: Callable[[Answer], Server],
) -> None:
    # 150 changes match, and the integration user may see none of them: every page is empty.
    server = serve(reply(200, b'{"result": []}', X_Total_Count="150"))

    with connect(server.url) as provider:
        page = provider.changed_since("sn1|2026-12-07 10:00:00|", overlap=120)

    assert (page.tickets, page.more) == ((), False)
    assert len(server.paths) <= 11  # the first page and at most ten more looked past
    assert "sysparm_offset=100" in server.paths[1]
