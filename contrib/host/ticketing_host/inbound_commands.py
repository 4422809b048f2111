"""``ticketing inbound``, ``ticketing servicenow business-rule`` and ``ticketing sync-log``: two-way
sync from the command line, on the database ``ticketing serve`` uses (the same functions as the
API's)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from ticketing_core.cli import database_option
from ticketing_core.errors import TicketingError

from .commands import access_options, access_settings
from .db import MAX_INTEGRATION_ID

if TYPE_CHECKING:
    from .runtime import HostRuntime
    from .schemas import InboundOut

PUBLIC_URL_HELP = "The host's public URL, which the service notifies (TICKETING_PUBLIC_URL)."


def host_options(command: Callable[..., Any]) -> Callable[..., Any]:
    options: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
        database_option,
        click.option("--public-url", envvar="TICKETING_PUBLIC_URL",
                     default="http://127.0.0.1:8000", show_default=True, help=PUBLIC_URL_HELP),
        click.option("--integration", "integration_id",
                     type=click.IntRange(1, MAX_INTEGRATION_ID), required=True,
                     help="The integration's id."),
        access_options,
    ]  # fmt: skip
    for option in reversed(options):
        command = option(command)
    return command


@contextmanager
def host_runtime(database: str, public_url: str, **access: Any) -> Iterator[HostRuntime]:
    """A runtime on serve's database (never a new one), its errors made one-line exits."""
    from ticketing_core.sync.database import OPEN_ERRORS, open_error

    from .db import UnknownRecord
    from .runtime import HostRuntime
    from .settings import Settings

    try:
        settings = Settings(database=database, public_url=public_url, **access_settings(**access))
        runtime = HostRuntime(settings, worker=True)
    except OPEN_ERRORS as exc:
        raise click.ClickException(open_error(database, exc)) from None
    except TicketingError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        yield runtime
    except (TicketingError, UnknownRecord) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        runtime.stop()


def show(answer: InboundOut) -> None:
    click.echo(f"inbound sync: {'on' if answer.enabled else 'off'}")
    if answer.endpoint:
        click.echo(f"endpoint: {answer.endpoint}")
    if answer.secret:
        click.echo(f"secret (shown once): {answer.secret}")
    if answer.previous_secret_valid_until:
        click.echo(f"the previous secret stays valid until {answer.previous_secret_valid_until}")
    if answer.business_rule:
        click.echo("\nInstall on the service:\n")
        click.echo(answer.business_rule)


@click.group()
def inbound() -> None:
    """Two-way sync: changes on tickets flowing back to anomalies (see the README)."""


@inbound.command()
@host_options
@click.option(
    "--copy-entries/--no-copy-entries",
    default=True,
    show_default=True,
    help="Copy work notes and comments written by people to the anomaly.",
)
@click.option(
    "--map",
    "status_map",
    multiple=True,
    metavar="TICKET=ANOMALY",
    help="Set the anomaly's status when its ticket reaches a status, e.g. "
    "Resolved=Resolved; repeat for several. None by default.",
)
@click.option("--interval", "reconcile_interval_s", type=float, default=300.0,
              show_default=True, help="Seconds between reconciling polls.")  # fmt: skip
def enable(
    copy_entries: bool, status_map: tuple[str, ...], reconcile_interval_s: float, **host: Any
) -> None:
    """Turn inbound sync on (printing the secret and what to install), or change its options."""
    from .inbound import set_inbound
    from .schemas import InboundIn

    mapping = dict(_pair(item) for item in status_map)
    with host_runtime(**_runtime_args(host)) as runtime:
        body = _validated(
            InboundIn,
            enabled=True,
            copy_entries=copy_entries,
            status_map=mapping,
            reconcile_interval_s=reconcile_interval_s,
        )
        show(set_inbound(runtime, host["integration_id"], body))


@inbound.command()
@host_options
def disable(**host: Any) -> None:
    """Turn inbound sync off: notifications are refused, and its secrets forgotten."""
    from .inbound import set_inbound
    from .schemas import InboundIn

    with host_runtime(**_runtime_args(host)) as runtime:
        show(set_inbound(runtime, host["integration_id"], InboundIn(enabled=False)))


@inbound.command()
@host_options
def secret(**host: Any) -> None:
    """Make a new notification secret; the previous one stays valid for 24 hours."""
    from .inbound import rotate_secret

    with host_runtime(**_runtime_args(host)) as runtime:
        show(rotate_secret(runtime, host["integration_id"]))


@click.group()
def servicenow() -> None:
    """ServiceNow's side of two-way sync."""


@servicenow.command("business-rule")
@host_options
def business_rule(**host: Any) -> None:
    """Print the two Business Rules that notify this host, with a new secret (inbound sync is
    turned on first if it is off; a previous secret stays valid for 24 hours)."""
    from .inbound import rotate_secret, set_inbound
    from .schemas import InboundIn

    with host_runtime(**_runtime_args(host)) as runtime:
        integration_id = host["integration_id"]
        if runtime.store.integration(integration_id).inbound is None:
            show(set_inbound(runtime, integration_id, InboundIn(enabled=True)))
        else:
            show(rotate_secret(runtime, integration_id))


@click.command("sync-log")
@host_options
@click.option("--ticket", "ticket_id", help="Only this ticket's entries (its id).")
@click.option("--anomaly", "anomaly_id", type=click.IntRange(min=1), help="Only this anomaly's.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
def sync_log(ticket_id: str | None, anomaly_id: int | None, limit: int, **host: Any) -> None:
    """Every decision about an integration's changes, both ways, newest first."""
    with host_runtime(**_runtime_args(host)) as runtime:
        runtime.store.integration(host["integration_id"])
        entries = runtime.inbound.log.entries(
            host["integration_id"], ticket_id=ticket_id, anomaly_id=anomaly_id, limit=limit
        )
    for logged in entries:
        entry = logged.entry
        where = " ".join(
            part
            for part in (
                f"ticket {entry.ticket_id}" if entry.ticket_id else "",
                f"anomaly {entry.anomaly_id}" if entry.anomaly_id else "",
            )
            if part
        )
        click.echo(
            f"{logged.id}\t{logged.at:%Y-%m-%d %H:%M:%S}\t{entry.direction}\t{entry.decision}\t"
            f"{where}\t{entry.detail}"
        )


def _runtime_args(host: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in host.items() if name != "integration_id"}


def _pair(item: str) -> tuple[str, str]:
    ticket_status, sep, anomaly_status = item.partition("=")
    if not sep or not ticket_status.strip() or not anomaly_status.strip():
        raise click.BadParameter(f"{item!r}: give TICKET_STATUS=ANOMALY_STATUS", param_hint="--map")
    return ticket_status.strip(), anomaly_status.strip()


def _validated(model: Any, **values: Any) -> Any:
    from pydantic import ValidationError

    try:
        return model.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in exc.errors()
        )
        raise click.UsageError(problems) from None
