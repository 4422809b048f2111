"""Serve the host app with uvicorn in a background thread (the demo and the tests use it)."""

from __future__ import annotations

import threading
import time
from types import TracebackType

import attrs
import uvicorn
from fastapi import FastAPI


@attrs.define
class RunningHost:
    """A served app; a context manager that shuts the server down (running the lifespan's end)."""

    url: str  # e.g. "http://127.0.0.1:54321"
    _server: uvicorn.Server
    _thread: threading.Thread

    def stop(self, timeout: float = 30.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> RunningHost:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def serve_in_thread(
    app: FastAPI, host: str = "127.0.0.1", port: int = 0, *, startup_timeout: float = 10.0
) -> RunningHost:
    """Serve ``app`` on ``host:port`` (0: any free port) until stopped; returns once it accepts."""
    # uvicorn binds the socket itself: its sockets get TCP_NODELAY (a socket made with proto 0
    # does not, and every response then waits ~40 ms for a delayed ACK).
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, name="ticketing-host", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(startup_timeout)
            raise RuntimeError(f"the ticketing host did not start on {host}:{port}")
        time.sleep(0.01)
    bound_host, bound_port = server.servers[0].sockets[0].getsockname()[:2]
    return RunningHost(f"http://{bound_host}:{bound_port}", server, thread)
