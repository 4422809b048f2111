"""Bounds on what a service's answer may cost us, enforced where the bytes arrive.

:class:`BoundedTransport` wraps a provider's httpx transport, so every answer read through it is
bounded, whoever reads it: the provider's own calls, httpx reading a 401 before an OAuth retry,
httpx-auth reading a token answer. An answer may be at most ``max_bytes`` as sent and as
decompressed (decompression happens here, in steps that never exceed what is left of the cap,
so a 64 KB gzip chunk cannot become 64 MB at once), only in the encodings we ask for, and must
arrive before the call's deadline.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator

import httpx

from ticketing_core.errors import ProviderTimeout, UnexpectedResponse

# The encodings we ask for (Accept-Encoding), and how zlib reads each.
INFLATE_WBITS = {"identity": 0, "gzip": 16 + zlib.MAX_WBITS, "deflate": 32 + zlib.MAX_WBITS}
ACCEPT_ENCODING = "gzip, deflate"
_DROPPED = (b"content-encoding", b"content-length")  # they describe the bytes as sent


def within(timeout: httpx.Timeout, remaining: float) -> httpx.Timeout:
    """``timeout`` with no phase (connect, read, write, pool) outlasting the ``remaining``
    seconds of a call's deadline."""

    def bound(limit: float | None) -> float:
        return remaining if limit is None else min(limit, remaining)

    t = timeout
    return httpx.Timeout(
        connect=bound(t.connect), read=bound(t.read), write=bound(t.write), pool=bound(t.pool)
    )


class BoundedTransport(httpx.BaseTransport):
    """``inner``, with every answer capped at ``max_bytes`` and read before ``remaining()``
    (seconds left of the call's deadline, None without one) runs out."""

    def __init__(
        self,
        inner: httpx.BaseTransport,
        *,
        max_bytes: int,
        service: str,
        remaining: Callable[[], float | None],
    ) -> None:
        self._inner, self._max_bytes = inner, max_bytes
        self._service, self._remaining = service, remaining

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._inner.handle_request(request)
        what = f"{request.method} {request.url.path}"
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in INFLATE_WBITS:
            response.close()
            raise UnexpectedResponse(
                f"{self._service} answered {what} in an encoding we did not ask for: "
                f"{encoding[:40]!r}",
                status_code=response.status_code,
            )
        assert isinstance(response.stream, httpx.SyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=[(k, v) for k, v in response.headers.raw if k.lower() not in _DROPPED],
            stream=_BoundedStream(self, response.stream, encoding, what, response.status_code),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._inner.close()


class _BoundedStream(httpx.SyncByteStream):
    def __init__(
        self,
        bounds: BoundedTransport,
        inner: httpx.SyncByteStream,
        encoding: str,
        what: str,
        status: int,
    ) -> None:
        self._bounds, self._inner, self._encoding = bounds, inner, encoding
        self._what, self._status = what, status

    def __iter__(self) -> Iterator[bytes]:
        limit, name = self._bounds._max_bytes, self._bounds._service
        inflater = None if self._encoding == "identity" else zlib.decompressobj(
            INFLATE_WBITS[self._encoding]
        )  # fmt: skip
        received = produced = 0
        for raw in self._inner:
            received += len(raw)
            self._check(received <= limit, self._too_large())
            pieces = [raw] if inflater is None else self._inflate(inflater, raw, limit - produced)
            for piece in pieces:
                produced += len(piece)
                self._check(produced <= limit, self._too_large())
                yield piece
            remaining = self._bounds._remaining()
            if remaining is not None and remaining <= 0:
                raise ProviderTimeout(
                    f"{name} was still sending its answer to {self._what} at the deadline"
                )
        self._check(
            inflater is None or inflater.eof,
            UnexpectedResponse(f"{name} sent a truncated compressed body ({self._what})"),
        )

    def _inflate(self, inflater: zlib._Decompress, data: bytes, left: int) -> Iterator[bytes]:
        """``data`` inflated in pieces of at most ``left + 1`` bytes (one past the cap is enough
        to know it is over)."""
        name = self._bounds._service
        try:
            while data:
                self._check(
                    not inflater.eof,
                    UnexpectedResponse(
                        f"{name} sent data after its compressed body ({self._what})"
                    ),
                )
                piece = inflater.decompress(data, left + 1)
                data = inflater.unconsumed_tail or inflater.unused_data
                left -= len(piece)
                yield piece
        except zlib.error:
            raise UnexpectedResponse(
                f"{name} sent a body that does not decompress ({self._what})"
            ) from None

    def _too_large(self) -> UnexpectedResponse:
        return UnexpectedResponse(
            f"{self._bounds._service}'s answer to {self._what} is larger than "
            f"{self._bounds._max_bytes} bytes; cut off (raise the max_response_bytes option if "
            "it is expected)",
            status_code=self._status,
        )

    def _check(self, condition: bool, error: Exception) -> None:
        if not condition:
            self.close()
            raise error

    def close(self) -> None:
        self._inner.close()
