"""``ticketing serve``, ``worker`` and ``demo``, added to the ``ticketing`` command line by .plugin.

The ``ticketing`` command loads these on every start, so the host's heavy imports (FastAPI,
SQLAlchemy, uvicorn) happen only when one of them runs.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import click

from ticketing_core.cli import EXIT_USAGE, database_option
from ticketing_core.errors import InvalidInput, TicketingError
from ticketing_core.sync.settings import (
    DEFAULT_CONCURRENCY,
    DEFAULT_DELIVERY_DEADLINE,
    DEFAULT_DOUBT_SECONDS,
    DEFAULT_LEASE_SECONDS,
    DEFAULT_MAX_ATTEMPTS,
    check_lease,
)

TOKEN_VARIABLE = "TICKETING_API_TOKEN"  # noqa: S105 - a variable's name, not a secret
SECRET_KEY_VARIABLE = "TICKETING_SECRET_KEY"  # noqa: S105 - a variable's name, not a secret


def access_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """What ``serve`` and ``worker`` share about reaching instances and reading credentials."""
    options = [
        click.option("--allow-http", is_flag=True, envvar="TICKETING_ALLOW_HTTP",
                     help="Allow plain http:// instance URLs (emulators, labs)."),
        click.option("--allow-private-hosts", is_flag=True, envvar="TICKETING_ALLOW_PRIVATE_HOSTS",
                     help="Let integrations reach loopback and private addresses (labs, local "
                          "emulators); refused by default."),
        click.option("--allowed-hosts", envvar="TICKETING_ALLOWED_HOSTS", metavar="PATTERNS",
                     help="Comma-separated host patterns integrations must match, e.g. "
                          "'*.service-now.com,*.atlassian.net'."),
    ]  # fmt: skip
    for option in reversed(options):
        command = option(command)
    return command


def access_settings(
    allow_http: bool, allow_private_hosts: bool, allowed_hosts: str | None
) -> dict[str, Any]:
    """Settings keywords for :func:`access_options`, with the key from TICKETING_SECRET_KEY."""
    from ticketing_core.http.network import NetworkPolicy

    policy = NetworkPolicy.from_patterns(allowed_hosts, allow_private=allow_private_hosts)
    return {
        "allow_http": allow_http,
        "allow_private_hosts": policy.allow_private,
        "allowed_hosts": policy.allowed_hosts,
        "secret_key": os.environ.get(SECRET_KEY_VARIABLE) or None,
    }


def fleet_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options ``serve --broker`` and ``worker`` share, read from TICKETING_* too."""
    options = [
        click.option("--queue", envvar="TICKETING_QUEUE", default="ticketing", show_default=True,
                     help="Queue name (and Redis key prefix): one per installation on a broker."),
        click.option("--relay-interval", type=click.FloatRange(min=0.1), default=5.0,
                     show_default=True,
                     help="Seconds between passes re-sending wake-ups whose messages were lost."),
    ]  # fmt: skip
    for option in reversed(options):
        command = option(command)
    return command


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@database_option
@click.option(
    "--public-url", help="Base URL of the anomaly pages tickets link to [http://HOST:PORT]."
)
@access_options
@click.option(
    "--product", default="Qualytics", show_default=True, help="Name used in ticket texts."
)
@click.option(
    "--broker",
    envvar="TICKETING_BROKER",
    help="redis:// or amqp:// URL: deliver through ticketing worker processes, not in here.",
)
@fleet_options
@click.option(
    "--request-timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    envvar="TICKETING_REQUEST_TIMEOUT",
    help="Seconds a client may take to send a request, headers and body; then 408 and closed.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    envvar="TICKETING_MAX_CONNECTIONS",
    help="Connections open at once (at most 3/4 of the open-file limit); beyond it, the one "
    "waiting longest for its request is closed.",
)
def serve(
    host: str, port: int, database: str, public_url: str | None, allow_http: bool,
    allow_private_hosts: bool, allowed_hosts: str | None, product: str, broker: str | None,
    queue: str, relay_interval: float, request_timeout: float, max_connections: int,
) -> None:  # fmt: skip
    """Run the host API and its background sync. The API token comes from TICKETING_API_TOKEN,
    the key encrypting stored credentials from TICKETING_SECRET_KEY (on SQLite, without it, from
    a key file made beside the database).

    Without --broker, deliveries and two-way sync's reads run in this process. With it, this
    process sends each ticket's wake-up to the broker once the request's transaction commits, and
    relays lost ones; ticketing worker processes deliver, and read the tickets notifications name.
    /metrics serves Prometheus metrics either way.
    """
    import uvicorn

    from ticketing_core.sync.database import OPEN_ERRORS, open_error

    from .app import create_app, runtime_of
    from .connections import ConnectionLimits, open_file_limit
    from .settings import Settings

    settings = Settings(
        database=database,
        public_url=public_url or f"http://{host}:{port}",
        product=product,
        api_token=os.environ.get(TOKEN_VARIABLE) or None,
        **access_settings(allow_http, allow_private_hosts, allowed_hosts),
        broker=broker,
        queue=queue,
        relay_interval=relay_interval,
    )
    if broker is not None:
        refuse_unreachable_broker(settings)
    try:
        app = create_app(settings)
        runtime = runtime_of(app)
        generated = runtime.ensure_api_token()
    except OPEN_ERRORS as exc:
        raise click.ClickException(open_error(database, exc)) from None
    except TicketingError as exc:
        raise click.ClickException(str(exc)) from None
    for notice in (*runtime.key_notices, *runtime.unusable_integrations()):
        click.echo(notice, err=True)
    click.echo(token_notice(settings.api_token is not None, generated), err=True)
    limits = ConnectionLimits(request_timeout=request_timeout, max_connections=max_connections)
    if limits.bound < max_connections:
        click.echo(
            f"note: at most {limits.bound} connections at once, not {max_connections}: the "
            f"open-file limit of {open_file_limit()} leaves no more (raise it with ulimit -n)",
            err=True,
        )
    uvicorn.run(app, host=host, port=port, http=limits.protocol(), ws="none")


@click.command()
@click.option(
    "--database",
    envvar="TICKETING_DATABASE",
    help="The database serve uses, which must exist: a SQLite file or a postgresql:// URL.",
)
@click.option(
    "--broker",
    envvar="TICKETING_BROKER",
    required=True,
    help="redis:// or amqp:// URL, the one serve --broker uses.",
)
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=DEFAULT_CONCURRENCY,
    show_default=True,
    help="Deliveries at once per process.",
)
@click.option(
    "--instance-concurrency",
    envvar="TICKETING_INSTANCE_CONCURRENCY",
    type=click.IntRange(min=1),
    default=DEFAULT_CONCURRENCY,
    show_default=True,
    help="Most deliveries in flight to one integration's instance, across the fleet.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    help="Serve Prometheus /metrics for this worker's processes on this port.",
)
@access_options
@fleet_options
@click.option(
    "--max-attempts",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_ATTEMPTS,
    show_default=True,
    help="Failed attempts before an event is parked as dead (outages are not counted).",
)
@click.option(
    "--delivery-deadline",
    type=click.FloatRange(min=0.1),
    default=DEFAULT_DELIVERY_DEADLINE,
    show_default=True,
    help="Seconds one delivery may take, all its requests included.",
)
@click.option(
    "--lease-seconds",
    type=click.FloatRange(min=0.5),
    default=DEFAULT_LEASE_SECONDS,
    show_default=True,
    help="How long a claim lasts (more than 4/3 of the delivery deadline).",
)
@click.option(
    "--doubt-seconds",
    type=click.FloatRange(min=0),
    default=DEFAULT_DOUBT_SECONDS,
    show_default=True,
    help="How long an instance may still act on a request it did not answer.",
)
def worker(
    database: str | None, broker: str, processes: int, threads: int, instance_concurrency: int,
    metrics_port: int | None, allow_http: bool, allow_private_hosts: bool,
    allowed_hosts: str | None, queue: str, relay_interval: float, max_attempts: int,
    delivery_deadline: float, lease_seconds: float, doubt_seconds: float,
) -> None:  # fmt: skip
    """Deliver outbox events and read the tickets notifications name, from a broker's wake-ups
    (Dramatiq), beside others on other machines.

    SIGTERM finishes the deliveries in hand (within the delivery deadline) and exits; SIGKILL
    loses nothing: a killed worker's claims pass to the others once their lease is over.
    """
    if database is None:  # never a ticketing.db of its own, made here to idle on
        refuse(
            "ticketing worker needs the database ticketing serve uses: give --database or "
            "TICKETING_DATABASE"
        )
    try:
        check_lease(lease_seconds, delivery_deadline)
    except InvalidInput:
        raise click.BadParameter(
            "must be more than 4/3 of --delivery-deadline", param_hint="--lease-seconds"
        ) from None
    from .metrics_folder import metrics_folder

    # Before anything imports prometheus_client: the processes add up their metrics in this folder,
    # removed on every exit this process sees (a SIGKILLed worker's goes at the next start).
    with termination_exits(), metrics_folder() as folder:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
        sys.exit(run_workers(
            database=database, broker=broker, public_url="http://localhost",
            **access_settings(allow_http, allow_private_hosts, allowed_hosts), queue=queue,
            relay_interval=relay_interval, instance_concurrency=instance_concurrency,
            metrics_port=metrics_port, max_attempts=max_attempts, delivery_deadline=delivery_deadline,
            lease_seconds=lease_seconds, doubt_seconds=doubt_seconds,
        ).run(processes, threads))  # fmt: skip


@contextmanager
def termination_exits() -> Iterator[None]:
    """SIGTERM and SIGHUP exit through ``SystemExit`` (128 + the signal), so that clean-ups run,
    until something else handles them (Dramatiq does once its processes are started)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def leave(signum: int, _frame: object) -> None:
        sys.exit(128 + signum)

    previous = {number: signal.signal(number, leave) for number in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)


def run_workers(**settings: Any) -> Any:
    from ticketing_core.sync.database import OPEN_ERRORS, open_error

    from .fleet import WorkerCommand
    from .settings import Settings

    try:
        command = WorkerCommand.checked(Settings(**settings))
    except OPEN_ERRORS as exc:  # as the outbox commands refuse a database
        refuse(open_error(settings["database"], exc))
    except TicketingError as exc:
        raise click.ClickException(str(exc)) from None
    for warning in command.warnings:
        click.echo(warning, err=True)
    return command


def refuse_unreachable_broker(settings: Any) -> None:
    """Refuse to start, in one line, unless the broker answers: the worker's own check."""
    try:
        from . import fleet
    except ImportError:
        raise click.ClickException(
            "--broker needs Dramatiq: pip install 'ticketing-host[fleet]'"
        ) from None
    try:
        fleet.check_broker(settings)
    except TicketingError as exc:
        raise click.ClickException(str(exc)) from None


def refuse(message: str) -> NoReturn:
    """One line on stderr and exit 2, as the core's commands refuse a usage error."""
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_USAGE)


def token_notice(from_environment: bool, generated: str | None) -> str:
    """Where the API token comes from; a generated one is shown here and never again."""
    if from_environment:
        return f"API token: taken from {TOKEN_VARIABLE}"
    if generated is not None:
        return f"Generated API token (shown once, only its hash is stored): {generated}"
    return (
        "API token: the one generated earlier is in use (only its hash is stored; "
        f"set {TOKEN_VARIABLE} to use another)"
    )


@click.command()
def demo() -> None:
    """Run the whole integration offline against a local ServiceNow emulator, step by step."""
    from . import demo as flows

    flows.main()


@click.group()
def keys() -> None:
    """The keys encrypting stored credentials (TICKETING_SECRET_KEY, or a SQLite key file)."""


@keys.command("generate")
def generate_key_command() -> None:
    """Print a new key. To rotate: put it first in TICKETING_SECRET_KEY, followed by the old
    ones (comma-separated), run `ticketing keys rotate`, then drop the old ones."""
    from .keys import generate_key

    click.echo(generate_key())


@keys.command()
@database_option
def rotate(database: str) -> None:
    """Re-encrypt every stored credential under the first key; the others only decrypt.

    Exit 1 when some credentials cannot be decrypted with any configured key (they are left
    as they are, and named).
    """
    from ticketing_core.sync.database import OPEN_ERRORS, Database, open_error

    from .db import HostStore
    from .keys import keyring_for

    try:
        keyring, _ = keyring_for(database, os.environ.get(SECRET_KEY_VARIABLE), create=False)
        rotated, unreadable = HostStore(Database(database, migrate=False), keyring).rotate_keys()
    except OPEN_ERRORS as exc:
        raise click.ClickException(open_error(database, exc)) from None
    except TicketingError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"re-encrypted {rotated} integration(s) under key {keyring.ids[0]}")
    for reason in unreadable:
        click.echo(f"error: {reason}", err=True)
    if unreadable:
        sys.exit(1)
