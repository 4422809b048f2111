"""Serve an ASGI app with uvicorn on a local port, in a background thread or in the foreground.

Shared by the emulators (as test fixtures and commands), the host's demo and its tests.
"""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Self

import attrs
import uvicorn

__all__ = ["RunningServer", "bind_socket", "serve_forever", "serve_in_thread", "socket_url"]


@attrs.define
class RunningServer:
    """A server running in a thread; a context manager that stops it (lifespan end included)."""

    url: str  # e.g. "http://127.0.0.1:54321"
    server: uvicorn.Server = attrs.field(repr=False)
    thread: threading.Thread = attrs.field(repr=False)

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket; binding it ourselves makes port 0 race-free and its URL known at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio only sets TCP_NODELAY on sockets that say they are TCP, and
    # without it every answer waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen()  # connections made before uvicorn starts accepting wait in the queue
    return sock


def socket_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve_in_thread(
    config: uvicorn.Config,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    name: str = "asgi-server",
    startup_timeout: float = 10.0,
) -> RunningServer:
    """Serve ``config``'s app on ``host:port`` (0: any free port); return once it has started."""
    sock = bind_socket(host, port)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(startup_timeout)
            sock.close()
            raise RuntimeError(f"{name} did not start on {host}:{port}")
        time.sleep(0.01)
    return RunningServer(socket_url(sock), server, thread)


def serve_forever(config: uvicorn.Config, host: str, port: int, announce: str) -> None:
    """Serve in the foreground after printing ``announce`` with ``{url}`` filled in."""
    sock = bind_socket(host, port)
    print(announce.format(url=socket_url(sock)), flush=True)
    uvicorn.Server(config).run(sockets=[sock])
