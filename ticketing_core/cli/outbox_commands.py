"""``ticketing outbox``: inspect the durable outbox of background syncs, retry or discard dead
events. The outbox needs the ``sync`` extra, imported only when a command runs."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import click

from ticketing_core import errors
from ticketing_core.cli.exit_codes import reported_errors
from ticketing_core.cli.output import progress_bar, render_table


@click.group()
def outbox() -> None:
    """Inspect the durable outbox of background syncs and retry dead events."""


def database_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--database",
        envvar="TICKETING_DATABASE",
        default="ticketing.db",
        show_default=True,
        help="SQLite file or postgresql:// URL.",
    )(command)


def open_outbox(database: str, *, read_only: bool = False) -> Any:
    """The outbox of an existing, current database: a mistyped path must not create an empty one,
    and an operator's command must not migrate (nor, when ``read_only``, write) what the service
    runs on."""
    try:
        from ticketing_core.sync.database import OPEN_ERRORS, Database, open_error
        from ticketing_core.sync.outbox import Outbox
    except ImportError:
        raise errors.PluginError(
            "the outbox needs its extra: pip install 'ticketing-framework[sync]'"
        ) from None
    try:
        return Outbox(Database(database, migrate=False, read_only=read_only))
    except OPEN_ERRORS as exc:
        raise errors.InvalidInput(open_error(database, exc)) from None


def require_dead(events: Any, event_ids: Sequence[int]) -> None:
    """Refuse, changing nothing, when some of the ids name no dead event."""
    dead = {event.id for event in events.get(event_ids) if event.status == "dead"}
    if missing := [event_id for event_id in event_ids if event_id not in dead]:
        raise errors.NotFound(
            f"no dead event with id {', '.join(map(str, missing))}: "
            "see ticketing outbox list --status dead"
        )


@outbox.command("list")
@database_option
@click.option("--status", type=click.Choice(["pending", "delivered", "dead"]))
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def outbox_list(database: str, status: str | None, limit: int, as_json: bool) -> None:
    """List outbox events, oldest first."""
    from ticketing_core.sync.outbox import describe

    with reported_errors():
        entries = open_outbox(database, read_only=True).entries(status=status, limit=limit)
    if as_json:
        rows = [{"id": e.id, "integration_id": e.integration_id, "ticket_id": e.ticket_id,
                 "anomaly_id": e.anomaly_id, "status": e.status, "attempts": e.attempts,
                 "outage_attempts": e.outage_attempts, "last_error": e.last_error,
                 "action": describe(e.action)}
                for e in entries]  # fmt: skip
        click.echo(json.dumps(rows, indent=2))
        return
    table = [(str(e.id), e.status, str(e.attempts), e.ticket_id, describe(e.action)[:60],
              (e.last_error or "")[:60]) for e in entries]  # fmt: skip
    click.echo(render_table(("ID", "STATUS", "ATTEMPTS", "TICKET", "ACTION", "LAST ERROR"), table))


@outbox.command("stats")
@database_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def outbox_stats(database: str, as_json: bool) -> None:
    """Count events per integration: pending, in flight, dead, delivered, oldest pending."""
    with reported_errors():
        stats = open_outbox(database, read_only=True).stats()
    if as_json:
        click.echo(json.dumps([attrs.asdict(row) for row in stats], indent=2))
        return
    rows = [(str(r.integration_id), str(r.pending), str(r.in_flight), str(r.dead),
             str(r.delivered), _age(r.oldest_pending_seconds)) for r in stats]  # fmt: skip
    header = ("INTEGRATION", "PENDING", "IN FLIGHT", "DEAD", "DELIVERED", "OLDEST PENDING")
    click.echo(render_table(header, rows))


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


@outbox.command("retry")
@database_option
@click.argument("event_ids", nargs=-1, type=click.IntRange(1, 2**63 - 1))
@click.option("--all", "retry_all", is_flag=True, help="Retry every dead event.")
def outbox_retry(database: str, event_ids: tuple[int, ...], retry_all: bool) -> None:
    """Put dead events back in line for delivery."""
    if not event_ids and not retry_all:
        raise click.UsageError("give event ids or --all")
    if event_ids and retry_all:
        raise click.UsageError("give event ids or --all, not both")
    with reported_errors():
        events = open_outbox(database)
        if retry_all:
            count = retry_every_dead_event(events)
        else:
            require_dead(events, event_ids)
            count = events.retry(list(event_ids))
    click.echo(f"{count} dead event(s) queued for delivery again")


def retry_every_dead_event(events: Any, batch: int = 500) -> int:
    """Retry the dead events a batch at a time, showing progress; events that die meanwhile wait
    for the next run."""
    total, count = events.counts()["dead"], 0
    with progress_bar("Retrying dead events") as advance:
        while count < total and (dead := [e.id for e in events.entries("dead", limit=batch)]):
            retried = events.retry(dead)
            count += retried
            advance(retried, total)
    return count


@outbox.command("discard")
@database_option
@click.argument("event_ids", nargs=-1, required=True, type=click.IntRange(1, 2**63 - 1))
def outbox_discard(database: str, event_ids: tuple[int, ...]) -> None:
    """Drop dead events that can never be delivered, so their ticket's later events can go."""
    with reported_errors():
        events = open_outbox(database)
        require_dead(events, event_ids)
        count = events.discard(list(event_ids))
    click.echo(f"{count} dead event(s) discarded")
