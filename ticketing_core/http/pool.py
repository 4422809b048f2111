"""An httpx transport over an httpcore connection pool we build ourselves.

``httpx.HTTPTransport`` builds its pool from its own arguments and offers no way to give it a
network backend, which :meth:`~ticketing_core.http.network.NetworkPolicy.transport` needs to check
every address at connect time. httpcore's ``ConnectionPool`` takes one publicly, so this module
does the rest of what ``httpx.HTTPTransport`` does for a pool without a proxy: it turns httpx
requests into httpcore ones and back, and raises httpx's exceptions for httpcore's.
``tests/core/test_http_adapters.py`` compares both with ``httpx.HTTPTransport``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import httpcore
import httpx

# httpx's exception for each of httpcore's; a subclass is looked up before its base.
_HTTPX_ERRORS: dict[type[Exception], type[httpx.TransportError]] = {
    httpcore.TimeoutException: httpx.TimeoutException,
    httpcore.ConnectTimeout: httpx.ConnectTimeout,
    httpcore.ReadTimeout: httpx.ReadTimeout,
    httpcore.WriteTimeout: httpx.WriteTimeout,
    httpcore.PoolTimeout: httpx.PoolTimeout,
    httpcore.NetworkError: httpx.NetworkError,
    httpcore.ConnectError: httpx.ConnectError,
    httpcore.ReadError: httpx.ReadError,
    httpcore.WriteError: httpx.WriteError,
    httpcore.ProxyError: httpx.ProxyError,
    httpcore.UnsupportedProtocol: httpx.UnsupportedProtocol,
    httpcore.ProtocolError: httpx.ProtocolError,
    httpcore.LocalProtocolError: httpx.LocalProtocolError,
    httpcore.RemoteProtocolError: httpx.RemoteProtocolError,
}
# httpx.HTTPTransport's pool size when given no limits.
DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)


@contextmanager
def httpx_errors() -> Iterator[None]:
    """Raise httpcore's exceptions as httpx's of the same name (the message kept); others pass."""
    try:
        yield
    except Exception as exc:
        mapped = next((_HTTPX_ERRORS[c] for c in type(exc).__mro__ if c in _HTTPX_ERRORS), None)
        if mapped is None:
            raise
        raise mapped(str(exc)) from exc


class PoolTransport(httpx.BaseTransport):
    """Sends httpx requests through ``pool``, which it owns (closing the transport closes it)."""

    def __init__(self, pool: httpcore.ConnectionPool) -> None:
        self._pool = pool

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        url = request.url
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with httpx_errors():
            response = self._pool.handle_request(core_request)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._pool.close()


class _ResponseStream(httpx.SyncByteStream):
    """An httpcore response's body, read with httpx's exceptions."""

    def __init__(self, response: httpcore.Response) -> None:
        assert isinstance(response.stream, Iterable)  # a sync pool's
        self._response, self._body = response, response.stream

    def __iter__(self) -> Iterator[bytes]:
        with httpx_errors():
            yield from self._body

    def close(self) -> None:
        self._response.close()
