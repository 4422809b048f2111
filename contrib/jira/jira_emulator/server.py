"""Serve a :class:`JiraEmulator` with uvicorn, in a background thread or in the foreground."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from types import TracebackType

import uvicorn

from .app import JiraEmulator


@dataclass
class RunningEmulator:
    """A served emulator; a context manager that stops the server on exit."""

    emulator: JiraEmulator
    url: str  # e.g. "http://127.0.0.1:54321"
    _server: uvicorn.Server
    _thread: threading.Thread

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> RunningEmulator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket; binding it ourselves makes port 0 race-free and its port known."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP spelled out: asyncio only sets TCP_NODELAY on accepted sockets whose proto says
    # TCP, and without it every response waits out a delayed ACK (~40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    # Listening now queues connections made before uvicorn starts accepting (the printed URL
    # is usable at once).
    sock.listen()
    return sock


def socket_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def make_server(emulator: JiraEmulator) -> uvicorn.Server:
    config = uvicorn.Config(
        emulator.app,
        log_level="warning",
        lifespan="off",
        access_log=False,
        server_header=False,
        headers=[("Server", "AtlassianEdge")],  # as Jira Cloud answers
        # Stalled requests (the "timeout" fault) must not hold up shutdown for long.
        timeout_graceful_shutdown=1,
    )
    return uvicorn.Server(config)


def run_in_thread(
    emulator: JiraEmulator | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    startup_timeout: float = 10.0,
) -> RunningEmulator:
    """Serve ``emulator`` (a new one if None) on ``host:port`` (0: any free port) until stopped."""
    emulator = emulator or JiraEmulator()
    sock = bind_socket(host, port)
    server = make_server(emulator)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="jira-emulator", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(startup_timeout)
            sock.close()
            raise RuntimeError(f"the emulator did not start on {host}:{port}")
        time.sleep(0.01)
    return RunningEmulator(emulator, socket_url(sock), server, thread)
