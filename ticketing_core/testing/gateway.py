"""A reverse proxy the kit puts in front of a fake service, to answer with error pages in no
format of the service's own."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

BAD_GATEWAY_PAGE = """<!DOCTYPE html>
<html>
<head><title>502 Bad Gateway</title></head>
<body>
<center><h1>502 Bad Gateway</h1></center>
<hr><center>nginx</center>
</body>
</html>
"""


class Gateway:
    """A reverse proxy in front of a fake service, which can answer in the service's place.

    Requests to :attr:`url` are passed on to ``upstream`` and its answers passed back, until
    :meth:`fail_next` queues pages of the gateway's own (a 502 HTML page, a plain-text 404): the
    next requests get those instead, and never reach the service. Use it as a context manager.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self._lock = threading.Lock()
        self._pages: list[tuple[int, str, str]] = []
        self._client = httpx.Client(timeout=60.0)
        self._server = _GatewayServer(self)
        # Polled often, so that close() is quick.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Gateway:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
        self._client.close()

    def fail_next(self, status: int, body: str, *, content_type: str, count: int = 1) -> None:
        """Answer the next ``count`` requests with ``status`` and ``body`` of ``content_type``."""
        with self._lock:
            self._pages.extend([(status, content_type, body)] * count)

    def clear(self) -> None:
        """Forget the pages not sent yet: pass every request on again."""
        with self._lock:
            self._pages.clear()

    def _take_page(self) -> tuple[int, str, str] | None:
        with self._lock:
            return self._pages.pop(0) if self._pages else None

    def _pass_on(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> httpx.Response:
        return self._client.request(method, self.upstream + path, headers=headers, content=body)


# Headers that describe one connection or one encoding of a body, not the message: never relayed.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "content-encoding",
        "accept-encoding",
        "host",
        "date",
        "server",
    }
)


class _GatewayServer(ThreadingHTTPServer):
    daemon_threads = True  # a connection the client keeps open does not hold up close()

    def __init__(self, gateway: Gateway) -> None:
        super().__init__(("127.0.0.1", 0), _GatewayHandler)
        self.gateway = gateway


class _GatewayHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as clients and real gateways expect

    def do_GET(self) -> None:
        self._relay()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a test's output is no place for an access log

    def _relay(self) -> None:
        assert isinstance(self.server, _GatewayServer)
        gateway = self.server.gateway
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        page = gateway._take_page()
        if page is not None:
            status, content_type, text = page
            self._answer(
                status, [("Content-Type", f"{content_type}; charset=utf-8")], text.encode()
            )
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        try:
            upstream = gateway._pass_on(self.command, self.path, headers, body)
        except httpx.HTTPError:
            self.close_connection = True  # the service hung up: so does the gateway
            return
        relayed = [
            (k, v) for k, v in upstream.headers.multi_items() if k.lower() not in _HOP_BY_HOP
        ]
        self._answer(upstream.status_code, relayed, upstream.content)

    def _answer(self, status: int, headers: list[tuple[str, str]], content: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(content)
