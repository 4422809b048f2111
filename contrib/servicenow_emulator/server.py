"""Serve an :class:`Emulator` with uvicorn, in a background thread or in the foreground."""

from __future__ import annotations

import attrs
import uvicorn
from ticketing_localserver import RunningServer, serve_in_thread

from .app import Emulator


@attrs.define
class RunningEmulator(RunningServer):
    """A served emulator; a context manager that stops the server on exit."""

    emulator: Emulator = attrs.field(kw_only=True)


def make_config(emulator: Emulator) -> uvicorn.Config:
    return uvicorn.Config(
        emulator.app,
        log_level="warning",
        lifespan="off",
        access_log=False,
        server_header=False,
        headers=[("Server", "ServiceNow")],  # as real instances answer
        # Stalled requests (the "timeout" fault) must not hold up shutdown for long.
        timeout_graceful_shutdown=1,
    )


def run_in_thread(
    emulator: Emulator | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    startup_timeout: float = 10.0,
) -> RunningEmulator:
    """Serve ``emulator`` (a new one if None) on ``host:port`` (0: any free port) until stopped."""
    emulator = emulator or Emulator()
    running = serve_in_thread(
        make_config(emulator),
        host,
        port,
        name="servicenow-emulator",
        startup_timeout=startup_timeout,
    )
    return RunningEmulator(running.url, running.server, running.thread, emulator=emulator)
