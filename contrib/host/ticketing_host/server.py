"""Serve the host app with uvicorn in a background thread (the demo and the tests use it)."""

from __future__ import annotations

import uvicorn
from fastapi import FastAPI
from ticketing_localserver import RunningServer
from ticketing_localserver import serve_in_thread as serve_config_in_thread

from .connections import ConnectionLimits


def serve_in_thread(
    app: FastAPI,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    limits: ConnectionLimits | None = None,
) -> RunningServer:
    """Serve ``app`` (its lifespan runs the outbox worker) until the result is stopped, with the
    request timeout and connection cap ``ticketing serve`` has (``limits``: the defaults)."""
    limits = ConnectionLimits() if limits is None else limits
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, http=limits.protocol(), ws="none"
    )
    return serve_config_in_thread(config, host, port, name="ticketing-host")
