"""The commands on one provider's tickets (check, search, get, create, update, note, status),
and ``providers``, which lists what is installed."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs
import click

from ticketing_core import errors
from ticketing_core.cli.connection import connected, connection_options
from ticketing_core.cli.exit_codes import reported_errors
from ticketing_core.cli.output import emit, progress_bar, render_table, render_ticket
from ticketing_core.converters import unstructure
from ticketing_core.hookspecs import Provider
from ticketing_core.models import (
    MAX_PAGE_SIZE,
    Capabilities,
    SearchQuery,
    Ticket,
    TicketChanges,
    TicketDraft,
)
from ticketing_core.plugins import default_registry

T = TypeVar("T")

CANONICAL_FIELDS = frozenset(
    ("title", "description", "status", "priority", "urgency", "impact", "category", "subcategory",
     "assigned_to", "assignment_group")
)  # fmt: skip


def check_choices(client: Provider, values: Mapping[str, str | None], option: str = "--{}") -> None:
    """Refuse, before anything is sent, a value outside the provider's choices for its field
    (the first one: an error is one line)."""
    given = {name: value for name, value in values.items() if value is not None}
    if problems := client.capabilities.choice_problems(given):
        name, problem = next(iter(problems.items()))
        raise errors.InvalidInput(f"{option.format(name)} {problem}")


def check_field_names(
    capabilities: Capabilities, extra: Mapping[str, str], custom: Mapping[str, str]
) -> None:
    """Refuse a --field the provider does not declare, and a --custom-field that is not custom."""
    if unknown := sorted(set(extra) - set(capabilities.extra_fields)):
        allowed = ", ".join(sorted(CANONICAL_FIELDS) + list(capabilities.extra_fields))
        hint = (
            f"; an instance's own {capabilities.custom_field_prefix}... fields go in --custom-field"
            if capabilities.custom_field_prefix
            else ""
        )
        raise errors.InvalidInput(
            f"--field {', '.join(unknown)}: not a field of this provider (fields: {allowed}){hint}"
        )
    prefix = capabilities.custom_field_prefix
    if not_custom := sorted(name for name in custom if not capabilities.is_custom(name)):
        raise errors.InvalidInput(
            f"--custom-field {', '.join(map(repr, not_custom))}: custom fields are {prefix!r} "
            "and a name of letters, digits and underscores"
            if prefix
            else "this provider has no custom fields: drop --custom-field"
        )


def on_ticket(client: Provider, reference: str, operation: Callable[[str], T]) -> T:
    """Run ``operation`` on a ticket given by id or, failing that, by its number.

    When the id was refused as invalid and no ticket has that number either, the refusal is the
    error worth reporting (it may be about the operation, not the id).
    """
    try:
        return operation(reference)
    except errors.NotFound:
        return operation(client.find(reference).id)
    except errors.InvalidInput as refused:
        try:
            ticket = client.find(reference)
        except errors.NotFound:
            raise refused from None
        return operation(ticket.id)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def providers(as_json: bool) -> None:
    """List installed providers with their distribution and version."""
    registry = default_registry()
    installed = registry.providers()
    for failure in registry.failures:
        click.echo(f"warning: plugin {failure.name!r} failed to load: {failure.error}", err=True)
    if as_json:
        click.echo(json.dumps([{"name": p.name, "distribution": p.distribution,
                                "version": p.version} for p in installed], indent=2))  # fmt: skip
    else:
        rows = [(p.name, p.distribution, p.version) for p in installed]
        click.echo(render_table(("NAME", "DISTRIBUTION", "VERSION"), rows))


@click.command()
@connection_options
def check(
    provider: str | None, url: str, token: str | None, allow_http: bool, as_json: bool
) -> None:
    """Check the URL and credentials."""
    with connected(provider, url, token, allow_http) as client:
        client.validate()
    click.echo(json.dumps({"connected": True}) if as_json else f"Connected to {url}")


@click.command()
@connection_options
@click.option("--query", "-q", help="Free text.")
@click.option("--status", help="Status code or label.")
@click.option("--priority", help="Priority code.")
@click.option("--page", type=int, default=1, show_default=True)
@click.option("--size", type=int, default=20, show_default=True)
@click.option(
    "--all",
    "every_page",
    is_flag=True,
    help="Every match, page after page (--json: one JSON object per line).",
)
def search(
    provider: str | None, url: str, token: str | None, allow_http: bool, as_json: bool,
    query: str | None, status: str | None, priority: str | None, page: int, size: int,
    every_page: bool,
) -> None:  # fmt: skip
    """Search tickets."""
    with connected(provider, url, token, allow_http) as client:
        check_choices(client, {"status": status, "priority": priority})
        wanted = SearchQuery(text=query, status=status, priority=priority, page=page, size=size)
        if every_page:
            if (page, size) != (1, 20):
                raise click.UsageError("--all goes through every page: drop --page and --size")
            stream_matches(client, attrs.evolve(wanted, page=1, size=MAX_PAGE_SIZE), as_json)
            return
        found = client.search(wanted)

    def render(result: Any) -> str:
        table = render_table(SEARCH_HEADER, [search_row(t) for t in result.items])
        return f"{table}\npage {result.page} of {result.pages}, {result.total} tickets in all"

    emit(found, as_json, render)


SEARCH_HEADER = ("NUMBER", "STATUS", "PRIORITY", "ASSIGNED TO", "TITLE")


def search_row(ticket: Ticket) -> tuple[str, ...]:
    return (ticket.number, ticket.status, ticket.priority or "", ticket.assigned_to or "",
            ticket.title)  # fmt: skip


def stream_matches(client: Provider, query: SearchQuery, as_json: bool) -> None:
    """Print every match as its page arrives (tab-separated, or JSON lines), with a progress bar
    on a terminal's stderr."""
    if not as_json:
        click.echo("\t".join(SEARCH_HEADER))
    with progress_bar("Searching") as advance:
        while True:
            found = client.search(query)
            advance(len(found.items), found.total)
            for ticket in found.items:
                if as_json:
                    click.echo(json.dumps(unstructure(ticket)))
                else:
                    click.echo("\t".join(search_row(ticket)))
            if query.page >= found.pages or not found.items:
                return
            query = attrs.evolve(query, page=query.page + 1)


@click.command()
@connection_options
@click.argument("ticket")
def get(provider: str | None, url: str, token: str | None, allow_http: bool, as_json: bool,
        ticket: str) -> None:  # fmt: skip
    """Show a ticket, by id or number."""
    with connected(provider, url, token, allow_http) as client:
        emit(on_ticket(client, ticket, client.get), as_json, render_ticket)


@click.command()
@connection_options
@click.option("--title", required=True)
@click.option("--description", required=True)
@click.option("--priority", required=True)
@click.option("--urgency", help="Where the provider has it (ServiceNow: 1-3).")
@click.option("--impact", help="Where the provider has it (ServiceNow: 1-3).")
@click.option("--category")
@click.option("--subcategory")
@click.option("--assigned-to")
@click.option("--assignment-group")
@click.option(
    "--idempotency-key",
    help="A key that already made a ticket shows that ticket instead (default: a fresh key).",
)
def create(
    provider: str | None, url: str, token: str | None, allow_http: bool, as_json: bool,
    idempotency_key: str | None, **fields: str | None,
) -> None:  # fmt: skip
    """Create a ticket; run again with the same --idempotency-key, it shows the same ticket."""
    key = idempotency_key or str(uuid.uuid4())
    with connected(provider, url, token, allow_http) as client:
        check_choices(
            client, {name: fields.get(name) for name in ("priority", "urgency", "impact")}
        )
        draft = TicketDraft(**fields)  # type: ignore[arg-type]
        try:
            # A key the user gives is looked up first; one made here was never sent before.
            created = client.create(draft, idempotency_key=key, key_is_fresh=not idempotency_key)
        except errors.ProviderUnavailable:
            click.echo(f"note: retry with --idempotency-key {key} to avoid a duplicate", err=True)
            raise
    emit(created, as_json, render_ticket)


def parse_field(value: str) -> tuple[str, str]:
    name, sep, field_value = value.partition("=")
    if not sep or not name.strip():
        raise click.BadParameter(f"{value!r} is not name=value")
    return name.strip(), field_value


@click.command()
@connection_options
@click.argument("ticket")
@click.option(
    "--field",
    "-f",
    "field_values",
    multiple=True,
    help="name=value; title, status, priority, ... or a provider field.",
)
@click.option(
    "--custom-field",
    "custom_values",
    multiple=True,
    help="name=value for an instance's custom field (ServiceNow: u_...), passed as given.",
)
@click.option("--resolution", help="Resolution notes, needed to resolve or close (ServiceNow).")
@click.option("--close-code", help="ServiceNow's resolution code (default: Solved (Permanently)).")
def update(
    provider: str | None, url: str, token: str | None, allow_http: bool, as_json: bool,
    ticket: str, field_values: tuple[str, ...], custom_values: tuple[str, ...],
    resolution: str | None, close_code: str | None,
) -> None:  # fmt: skip
    """Change fields of a ticket."""
    pairs = dict(parse_field(value) for value in field_values)
    custom = dict(parse_field(value) for value in custom_values)
    if not pairs and not custom and resolution is None:
        raise click.UsageError("give --field name=value, --custom-field name=value or --resolution")
    if "title" in pairs and not pairs["title"].strip():
        with reported_errors():
            raise errors.InvalidInput("--field title= would blank the title: give a title")
    canonical = {name: value for name, value in pairs.items() if name in CANONICAL_FIELDS}
    extra = {name: value for name, value in pairs.items() if name not in CANONICAL_FIELDS}
    changes = TicketChanges(**canonical, resolution=resolution, fields=extra | custom)
    options = {"close_code": close_code} if close_code else {}
    with connected(provider, url, token, allow_http, **options) as client:
        check_field_names(client.capabilities, extra, custom)
        check_choices(client, canonical | extra, option="--field {}")
        try:
            updated = on_ticket(client, ticket, lambda ticket_id: client.update(ticket_id, changes))
        except errors.PermissionDenied as refused:
            if "mandatory" not in str(refused).lower() or resolution is not None:
                raise
            raise errors.PermissionDenied(
                f"{refused}; to resolve or close, pass --resolution TEXT (and --close-code CODE)"
            ) from None
    emit(updated, as_json, render_ticket)


@click.command()
@connection_options
@click.argument("ticket")
@click.argument("text")
def note(provider: str | None, url: str, token: str | None, allow_http: bool, as_json: bool,
         ticket: str, text: str) -> None:  # fmt: skip
    """Add an internal work note to a ticket."""
    if not text.strip():
        raise click.BadParameter("a work note must not be empty", param_hint="TEXT")
    with connected(provider, url, token, allow_http) as client:
        on_ticket(client, ticket, lambda ticket_id: client.add_work_note(ticket_id, text))
    click.echo(json.dumps({"noted": True}) if as_json else f"Work note added to {ticket}")


@click.command()
@connection_options
@click.argument("ticket")
def status(provider: str | None, url: str, token: str | None, allow_http: bool, as_json: bool,
           ticket: str) -> None:  # fmt: skip
    """Show a ticket's status."""
    with connected(provider, url, token, allow_http) as client:
        current = on_ticket(client, ticket, client.get_status)
    if as_json:
        click.echo(json.dumps({"status": current.label, "code": current.code}))
    else:
        click.echo(f"{current.label} ({current.code})")
