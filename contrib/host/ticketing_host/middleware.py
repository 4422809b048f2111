"""The host's ASGI middleware: a cap on request bodies, and a short lock wait for requests."""

from __future__ import annotations

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ticketing_core.sync.database import lock_wait


class BodyLimit:
    """Refuses a request body over ``limit`` bytes with 413, before it is read and before the
    token is checked: by its Content-Length, or, for a chunked body, once that much arrived."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            await self.too_large()(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                # FastAPI re-raises an HTTPException met while reading the body, as is.
                raise HTTPException(413, self.message())
            return message

        await self.app(scope, counted, send)

    def too_large(self) -> JSONResponse:
        return JSONResponse({"detail": self.message()}, status_code=413)

    def message(self) -> str:
        return f"the request body is larger than {self.limit} bytes"


class LockWait:
    """A request's transactions wait at most ``seconds`` for a lock another process holds on the
    database, then fail with a 503 (:func:`~ticketing_host.app.database_error_response`); the
    background worker's transactions keep their long wait."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app, self.seconds = app, seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The request's threads copy this context, and with it the limit.
        with lock_wait(self.seconds):
            await self.app(scope, receive, send)
