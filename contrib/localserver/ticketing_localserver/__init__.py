"""Serve an ASGI app with uvicorn on a local port, in a background thread or in the foreground.

Shared by the emulators (as test fixtures and commands), the host's demo and its tests; what the
emulators share inside their apps is in :mod:`ticketing_localserver.emulation`.
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Generic, Protocol, Self, TypeVar

import attrs
import uvicorn

if TYPE_CHECKING:
    from starlette.types import ASGIApp

__all__ = [
    "EmulatorServer",
    "RunningEmulator",
    "RunningServer",
    "bind_socket",
    "serve_forever",
    "serve_in_thread",
    "socket_url",
]


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


# ---- emulators ------------------------------------------------------------------------------


class _Emulator(Protocol):
    """What the helpers below need of an emulator: its ASGI app."""

    @property
    def app(self) -> ASGIApp: ...


E = TypeVar("E", bound=_Emulator)


@attrs.define
class RunningEmulator(RunningServer, Generic[E]):
    """A served emulator; a context manager that stops the server on exit."""

    emulator: E = attrs.field(kw_only=True)


@attrs.frozen
class EmulatorServer(Generic[E]):
    """How one service's emulator is served: in a thread (tests, demos) or by its command."""

    service: str  # e.g. "Jira": names the command, the thread and the announcement
    new: Callable[[], E]  # the emulator served when none is given
    server_header: str  # as the real service answers

    @property
    def name(self) -> str:
        """The command's and the server thread's name, e.g. "jira-emulator"."""
        return f"{self.service.lower()}-emulator"

    def config(self, emulator: E) -> uvicorn.Config:
        return uvicorn.Config(
            emulator.app,
            log_level="warning",
            lifespan="off",
            access_log=False,
            server_header=False,
            headers=[("Server", self.server_header)],
            # Stalled requests (the "timeout" fault) must not hold up shutdown for long.
            timeout_graceful_shutdown=1,
        )

    def run_in_thread(
        self,
        emulator: E | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        startup_timeout: float = 10.0,
    ) -> RunningEmulator[E]:
        """Serve ``emulator`` (a new one if None) on ``host:port`` (0: any free port) until stopped."""
        emulator = self.new() if emulator is None else emulator
        running = serve_in_thread(
            self.config(emulator), host, port, name=self.name, startup_timeout=startup_timeout
        )
        return RunningEmulator(running.url, running.server, running.thread, emulator=emulator)

    def parser(self, description: str, *, port: int, api_path: str) -> argparse.ArgumentParser:
        """The command's parser, with --host, --port and --latency-ms (for ``api_path`` requests)."""
        parser = argparse.ArgumentParser(prog=self.name, description=description)
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=port, help="0 picks a free port")
        parser.add_argument(
            "--latency-ms", type=int, default=0, help=f"added to every {api_path} request"
        )
        return parser

    def serve_forever(self, emulator: E, args: argparse.Namespace, credentials: str) -> None:
        """Serve on ``args.host:args.port`` in the foreground, announcing the URL and ``credentials``."""
        announce = f"{self.service} emulator at {{url}} - {credentials}"
        serve_forever(self.config(emulator), args.host, args.port, announce)
