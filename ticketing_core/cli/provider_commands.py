"""``ticketing``: the operator's command line, against any installed provider.

Exit codes: 0 success, 2 usage or invalid input, 3 authentication failed, 4 not found,
5 provider unavailable (down, timed out, rate limited), 6 permission denied, 1 any other provider error.
Errors are one line on stderr; secrets are never printed.
"""

from __future__ import annotations

import json
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import attrs
import click
import httpx
from stamina.instrumentation import set_on_retry_hooks

import ticketing_core
from ticketing_core import errors
from ticketing_core.converters import unstructure
from ticketing_core.hookspecs import Provider
from ticketing_core.http.client import current_budget, retry_notice
from ticketing_core.http.network import tls_context
from ticketing_core.models import (
    MAX_PAGE_SIZE,
    Capabilities,
    SearchQuery,
    Ticket,
    TicketChanges,
    TicketDraft,
)
from ticketing_core.plugins import DISTRIBUTION, default_registry

T = TypeVar("T")

EXIT_USAGE = 2
WAIT_NOTICE_AFTER = 3.0  # seconds without an answer before saying what we wait for
EXIT_CODES: tuple[tuple[type[errors.TicketingError], int], ...] = (
    (errors.InvalidInput, EXIT_USAGE),
    (errors.PluginError, EXIT_USAGE),
    (errors.AuthenticationFailed, 3),
    (errors.NotFound, 4),
    (errors.ProviderUnavailable, 5),
    (errors.RateLimited, 5),
    (errors.UnexpectedResponse, 5),
    (errors.PermissionDenied, 6),
    (errors.TicketingError, 1),
)
# The options giving the credentials a provider refuses by name (InvalidInput.field).
CREDENTIAL_OPTIONS = {
    "api_access_token": "--token",
    "client_id": "--oauth-client-id",
    "client_secret": "--oauth-client-secret",
}
CANONICAL_FIELDS = frozenset(
    ("title", "description", "status", "priority", "urgency", "impact", "category", "subcategory",
     "assigned_to", "assignment_group")
)  # fmt: skip


def exit_code_for(error: errors.TicketingError) -> int:
    return next(code for kind, code in EXIT_CODES if isinstance(error, kind))


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn framework errors into one stderr line and the matching exit code."""
    try:
        yield
    except errors.TicketingError as exc:
        one_line = " ".join(str(exc).split())  # services' messages may span lines
        click.echo(f"error: {one_line}", err=True)
        sys.exit(exit_code_for(exc))


def _remember(context: click.Context, parameter: click.Parameter, value: object) -> None:
    """Keep an option every command shares but none takes as an argument, for ``connected``."""
    if value is not None:
        context.meta[f"ticketing.{parameter.name}"] = value


def connection_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--provider/--url/--token/--allow-http/--json, read from TICKETING_* too."""
    options = [
        click.option("--provider", envvar="TICKETING_PROVIDER",
                     help="Provider name (default: the only installed one)."),
        click.option("--url", envvar="TICKETING_URL", required=True,
                     help="Instance base URL, e.g. https://acme.service-now.com."),
        click.option("--token", envvar="TICKETING_TOKEN",
                     help="Access token; for ServiceNow 'username:password' or a bearer token "
                          "(with --oauth-client-id: the user for the password grant, or none "
                          "for the client-credentials grant)."),
        click.option("--allow-http", is_flag=True, envvar="TICKETING_ALLOW_HTTP",
                     help="Allow a plain http:// URL (emulators, labs)."),
        click.option("--json", "as_json", is_flag=True, help="Print the canonical JSON shape."),
        click.option("--timeout", "deadline", type=click.FloatRange(min=0.1),
                     envvar="TICKETING_TIMEOUT", expose_value=False, callback=_remember,
                     help="Seconds one call may take, retries included [default: 20]."),
        click.option("--oauth-client-id", "client_id", envvar="TICKETING_OAUTH_CLIENT_ID",
                     expose_value=False, callback=_remember,
                     help="OAuth client (an application registered on the instance)."),
        click.option("--oauth-client-secret", "client_secret",
                     envvar="TICKETING_OAUTH_CLIENT_SECRET", expose_value=False,
                     callback=_remember, help="The OAuth client's secret."),
    ]  # fmt: skip
    for option in reversed(options):
        command = option(command)
    return command


class WaitNotice(httpx.BaseTransport):
    """Says on stderr what a request waits for once it has waited ``after`` seconds, so a port
    that never answers is not a silent pause."""

    def __init__(self, inner: httpx.BaseTransport, after: float = WAIT_NOTICE_AFTER) -> None:
        self.inner, self.after = inner, after

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        budget = current_budget()
        where = f"{request.url.host}:{request.url.port or request.url.scheme}"

        def tell() -> None:  # on the timer's thread, when it fires: the time left then
            limit = f" (giving up {budget.remaining():.0f} s from now)" if budget else ""
            click.echo(
                f"note: still waiting for {where} to answer {request.method}{limit}", err=True
            )

        notice = threading.Timer(self.after, tell)
        notice.daemon = True
        notice.start()
        try:
            return self.inner.handle_request(request)
        finally:
            notice.cancel()

    def close(self) -> None:
        self.inner.close()


@contextmanager
def connected(
    provider: str | None, url: str, token: str | None, allow_http: bool, **options: Any
) -> Iterator[Provider]:
    with reported_errors():
        if url.strip().lower().startswith("http://") and not allow_http:
            raise errors.InvalidInput(
                f"refusing plain-HTTP URL {url!r}: credentials would travel unencrypted; pass "
                "--allow-http (or set TICKETING_ALLOW_HTTP=1) for local emulators and labs"
            )
        name = provider or _only_provider()
        accepted = getattr(default_registry().factory(name), "options", ())
        if "transport" in accepted:
            options["transport"] = WaitNotice(httpx.HTTPTransport(verify=tls_context()))
        shared = click.get_current_context().meta
        if (deadline := shared.get("ticketing.deadline")) is not None and "deadline" in accepted:
            options["deadline"] = deadline
        options |= _oauth_options(name, accepted, shared)
        if token is None and "client_id" not in options:
            raise errors.InvalidInput("--token is required (or TICKETING_TOKEN)")
        try:
            client = ticketing_core.connect(
                name, api_url=url, api_access_token=token or "", allow_http=allow_http, **options
            )
        except errors.InvalidInput as refused:
            if (option := CREDENTIAL_OPTIONS.get(refused.field or "")) is None:
                raise
            raise errors.InvalidInput(f"{option}: {refused}", field=refused.field) from None
        try:
            yield client
        finally:
            client.close()


def _oauth_options(name: str, accepted: Sequence[str], shared: Mapping[str, Any]) -> dict[str, str]:
    given = {key: shared[f"ticketing.{key}"] for key in ("client_id", "client_secret")
             if f"ticketing.{key}" in shared}  # fmt: skip
    if not given:
        return {}
    if len(given) == 1:
        raise errors.InvalidInput("OAuth needs both --oauth-client-id and --oauth-client-secret")
    if "client_id" not in accepted:
        raise errors.InvalidInput(f"provider {name} takes no OAuth client: drop --oauth-client-id")
    return given


def _only_provider() -> str:
    names = [info.name for info in default_registry().providers()]
    if len(names) == 1:
        return names[0]
    if not names:
        raise errors.PluginError("no ticketing provider is installed")
    raise errors.PluginError(
        f"several providers are installed ({', '.join(names)}): pass --provider"
    )


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


def emit(data: Any, as_json: bool, render: Callable[[Any], str]) -> None:
    click.echo(json.dumps(unstructure(data), indent=2) if as_json else render(data))


def render_ticket(ticket: Ticket) -> str:
    rows = {
        "Number": ticket.number,
        "Id": ticket.id,
        "Title": ticket.title,
        "Status": ticket.status,
        "Priority": ticket.priority,
        "Urgency": ticket.urgency,
        "Impact": ticket.impact,
        "Category": ticket.category,
        "Subcategory": ticket.subcategory,
        "Assigned to": ticket.assigned_to,
        "Group": ticket.assignment_group,
        "Created": ticket.created_at and ticket.created_at.strftime("%Y-%m-%d %H:%M UTC"),
        "Updated": ticket.updated_at and ticket.updated_at.strftime("%Y-%m-%d %H:%M UTC"),
        "URL": ticket.url,
    }
    lines = [f"{label + ':':<13}{value}" for label, value in rows.items() if value]
    if ticket.description:
        lines += ["", ticket.description]
    return "\n".join(lines)


def render_table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    )


class PluginCommands(click.Group):
    """A group that adds the commands other distributions register (the ``register_commands``
    hook) when first asked for its commands, not at import: importing this module loads no
    plugin, so a plugin may import from it. A plugin whose hook fails is logged and listed by
    ``ticketing providers``."""

    _plugins_added = False

    def _add_plugin_commands(self) -> None:
        if not self._plugins_added:
            self._plugins_added = True
            default_registry().add_commands(self)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._add_plugin_commands()
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._add_plugin_commands()
        return super().list_commands(ctx)


@click.group(cls=PluginCommands)
@click.version_option(package_name=DISTRIBUTION)
@click.pass_context
def cli(context: click.Context) -> None:
    """Operate ticketing providers (ServiceNow, ...) from the command line."""
    # Retries are told as one line each, instead of stamina's log events.
    set_on_retry_hooks([lambda retry: click.echo(f"note: {retry_notice(retry)}", err=True)])
    context.call_on_close(lambda: set_on_retry_hooks(None))


@cli.command()
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


@cli.command()
@connection_options
def check(
    provider: str | None, url: str, token: str | None, allow_http: bool, as_json: bool
) -> None:
    """Check the URL and credentials."""
    with connected(provider, url, token, allow_http) as client:
        client.validate()
    click.echo(json.dumps({"connected": True}) if as_json else f"Connected to {url}")


@cli.command()
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


@contextmanager
def progress_bar(what: str) -> Iterator[Callable[[int, int], None]]:
    """``advance(done, total)``, drawn on stderr when it is a terminal, and silent otherwise."""
    from rich.console import Console
    from rich.progress import Progress

    terminal = Console(stderr=True)
    with Progress(console=terminal, transient=True, disable=not terminal.is_terminal) as bar:
        task = bar.add_task(what, total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, advance=done, total=total)

        yield advance


@cli.command()
@connection_options
@click.argument("ticket")
def get(provider: str | None, url: str, token: str | None, allow_http: bool, as_json: bool,
        ticket: str) -> None:  # fmt: skip
    """Show a ticket, by id or number."""
    with connected(provider, url, token, allow_http) as client:
        emit(on_ticket(client, ticket, client.get), as_json, render_ticket)


@cli.command()
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


@cli.command()
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


@cli.command()
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


@cli.command()
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


@cli.group()
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


def main() -> None:
    for position, argument in enumerate(sys.argv[1:], start=1):
        try:
            argument.encode()
        except UnicodeEncodeError:  # bytes the terminal's encoding could not decode
            click.echo(f"error: argument {position} is not valid UTF-8 text", err=True)
            sys.exit(EXIT_USAGE)
    cli(prog_name="ticketing")
