"""The plugin contract: everything a provider author needs is on this page.

A provider plugin is a module (or object) with :data:`ticketing_core.hookimpl`-marked functions, published
under the entry-point group ``ticketing``::

    # pyproject.toml
    [project.entry-points.ticketing]
    acme = "ticketing_acme.plugin"

    # ticketing_acme/plugin.py
    from ticketing_core import hookimpl

    @hookimpl
    def register_providers(register):
        register("acme", AcmeProvider)

There are three hooks, in the manner of simonw/llm's ``register_models`` and ``register_commands``:
a plugin never touches core structures, it hands what it ships to ``register`` (or to the command
group). :func:`register_providers` adds provider types; :func:`register_sync_policies` adds sync
policies; :func:`register_commands` adds ``ticketing`` subcommands. Everything else a provider does
goes through the typed :class:`Provider` interface below, because the operations are called on one
connected instance (with its URL, credentials and HTTP client), not broadcast to every plugin as
hooks are.

Why a factory and not an instance: a host connects to many instances of one provider type (one per
integration), each with its own credentials, so it needs to build providers on demand.

A provider through which changes flow back (two-way sync, opt-in per integration) also implements
:class:`InboundProvider`: list changed tickets from a cursor, read tickets in batches and their
journal, name its own user, its states and what a notification names.

What else a provider author uses: :mod:`ticketing_core.models` (the records, and
:class:`~ticketing_core.models.Capabilities`, what a provider declares it supports),
:mod:`ticketing_core.errors` (the only exceptions a provider raises), :mod:`ticketing_core.http`
(a retrying HTTP client with the error mapping done) and :mod:`ticketing_core.testing` (the
conformance kit every provider must pass). docs/writing-a-provider.md is the guided tour.

Stability: hooks change only by gaining arguments (implementations may accept fewer than the spec);
:class:`Provider` methods change only by gaining optional keyword arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, Self, runtime_checkable

from ticketing_core._markers import hookspec
from ticketing_core.models import (
    Capabilities,
    ChangePage,
    JournalEntry,
    Notice,
    Page,
    SearchQuery,
    Ticket,
    TicketChanges,
    TicketDraft,
    TicketStatus,
)

if TYPE_CHECKING:
    import click

    from ticketing_core.policies import SyncPolicy


@runtime_checkable
class Provider(Protocol):
    """One connection to one ticketing instance.

    Every method talks to the service; failures raise the matching
    :class:`ticketing_core.errors.ProviderError` subclass, never a transport exception.
    Implementations must be safe to call from several threads at once, and must keep credentials out of
    ``repr()``, logs and error messages. A provider class subclasses this protocol, which gives it
    ``with provider: ...`` (closing it at the end).

    **Repeat safety.** Any write can be committed by the service and then answered with a 503, a
    timeout or a dropped connection. Each write below says whether repeating it is safe and how; a
    failure that may have come after the service acted has ``may_have_landed`` set, and one that
    says the service as a whole is down or refusing (see ``ProviderError.outage``) has ``outage``
    set: a host's outbox waits those out instead of counting them against an event. Providers built
    on :class:`ticketing_core.http.ServiceClient` get the retry policy (reads and idempotent writes
    retried, other writes re-sent only after a refusal such as 429) and honour the caller's
    :func:`ticketing_core.http.call_budget` (attempts and one deadline); others must do the same.
    """

    capabilities: Capabilities
    """What this provider supports; see :class:`ticketing_core.models.Capabilities`."""

    def validate(self) -> None:
        """Check the URL and credentials with the cheapest authenticated read; raise if unusable."""

    def search(self, query: SearchQuery) -> Page:
        """Return one page of tickets matching ``query``, in a stable order so pages do not overlap.

        ``query.status`` and ``query.priority`` are the provider's codes or labels; ``Page.total`` counts
        every match.
        """

    def get(self, ticket_id: str) -> Ticket:
        """Return the ticket with this provider id (raise ``NotFound`` if there is none)."""

    def find(self, number: str) -> Ticket:
        """Return the ticket with this human-facing number (e.g. ``INC0010042``, ``DQ-12``)."""

    def create(
        self, draft: TicketDraft, *, idempotency_key: str | None = None, key_is_fresh: bool = False
    ) -> Ticket:
        """Create a ticket and return it as the service stored it.

        Repeat safety: keyed. ``idempotency_key`` is stored with the ticket (e.g. ServiceNow's
        ``correlation_id``), and a create with a key that already made a ticket returns that
        ticket instead of making another: the key is looked up first, and the ticket is made only
        if the key is absent. Inside the call, a failure that may have landed is followed by
        another lookup, and the create is sent again only if the key is still absent and the
        service itself answered (so it has finished with the request); after a timeout, a dropped
        connection or a gateway's page it raises instead, and a later call with the key finds the
        ticket if one was made. ``key_is_fresh=True`` is the caller's word that no earlier call
        sent this key (the host knows it from its request store; the command line for a key it
        made itself): the first lookup, one read, is skipped, and the key means the same for
        every later call. Calls with one key at the same moment are not serialised (both may find
        it absent); the host serialises them. A key the service cannot store or query safely
        raises ``InvalidInput``. Without a key the create is sent again only after a refusal
        (429). The former ``retrying`` argument is gone from the contract: the bundled providers
        accept it, ignore it and warn.
        """

    def update(self, ticket_id: str, changes: TicketChanges) -> Ticket:
        """Apply ``changes`` and return the ticket as the service stored it.

        Repeat safety: idempotent. Setting fields twice leaves the ticket as setting them once, so
        it may be retried after any failure. Services may adjust written values (ServiceNow
        recomputes priority); the result tells. ``changes.fields`` may name only the provider's
        declared ``Capabilities.extra_fields`` and custom fields: refuse others before sending,
        with ``capabilities.check_fields``.
        """

    def add_work_note(
        self, ticket_id: str, text: str, *, idempotency_key: str | None = None
    ) -> int | None:
        """Add an internal note (visible to agents, not to the requester) to the ticket; return
        the ticket's ``revision`` after it when the service's answer tells it and its revisions
        count changes one by one (ServiceNow's ``sys_mod_count``), else None. Two-way sync takes
        a revision so returned for its own write: when every revision since the one it applied
        last is such, nobody else changed the ticket.

        Repeat safety: keyed, checked by the caller. The note is never sent twice by one call: a
        failure that may have landed raises, and before trying again the caller asks
        :meth:`has_work_note`. ``text`` is stored as given (no marker is added), or escaped where
        the service's format demands it, one-to-one so that two texts are never stored alike; a
        provider that can keep ``idempotency_key`` beside the note (Jira: a comment property) does
        so.
        """

    def has_work_note(
        self, ticket_id: str, text: str, *, idempotency_key: str, identical_before: int
    ) -> bool:
        """Whether the note that ``add_work_note(ticket_id, text, idempotency_key=...)`` adds is
        on the ticket, without comparing clocks.

        ``identical_before`` is how many notes with exactly this ``text`` the caller added to the
        ticket before this one (the outbox counts them). A provider that stored the key looks for
        it; one that could not (ServiceNow, whose journal holds only text) counts the notes with
        this text and answers whether there are more than ``identical_before``: exactly, whatever
        the texts written through :meth:`add_work_note` hold (a line shaped like an entry's
        header, a forged entry inside another note). Needs only the rights :meth:`add_work_note`
        needs (ServiceNow: read on the incident, not on ``sys_journal_field``).

        The caller looks at once after a failure that may have landed: True settles the note,
        while False may mean "not yet" (the service still working on the call), so the caller
        sends again only once the service is certainly done with it.
        """

    def get_status(self, ticket_id: str) -> TicketStatus:
        """Return the ticket's current state, reading as little as the service allows."""

    def close(self) -> None:
        """Release network resources. The provider is unusable afterwards."""

    # A provider is a context manager that closes it; subclass Provider to inherit these two.
    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@runtime_checkable
class InboundProvider(Provider, Protocol):
    """A provider through which changes flow back: ``capabilities.inbound_sync`` is True.

    The host learns of a change from a notification (:meth:`read_notification`) or from its
    reconciling poll (:meth:`changed_since`), and in both cases reads the tickets itself
    (:meth:`get_many`, :meth:`journal_since`): a notification names a ticket, nothing more is
    believed. The host applies a change once per ``Ticket.revision`` and journal entry id, and
    drops the changes :meth:`own_user` made (echoes), telling them by author and by the
    revisions its own notes returned (:meth:`Provider.add_work_note`), so no loop can start.
    """

    def changed_since(
        self, cursor: str | None, *, overlap: float = 0.0, limit: int = 100
    ) -> ChangePage:
        """One page of tickets changed at or after ``cursor`` (minus ``overlap`` seconds), at
        most ``limit`` of them, in an order that paging never skips a change in, however many
        share one time (ServiceNow: its change time, then id; Jira: id, within one poll).

        Times are the service's, never the caller's clock. ``cursor`` is one this method
        returned; ``None`` starts at the newest change the service has now (an empty page).
        The host passes an ``overlap`` at the start of each poll, so that a change committed
        late with an earlier time, and changes sharing one time across a page boundary, are
        listed again rather than missed: repeats are expected. Every ticket the service knows,
        linked or not; ``Ticket.updated_by`` and ``Ticket.revision`` filled.
        """

    def get_many(self, ticket_ids: Sequence[str]) -> list[Ticket]:
        """The tickets with these ids, read in one request (at most 100 ids); those the
        service does not have are left out."""

    def journal_since(self, ticket_id: str, after: datetime | None) -> list[JournalEntry]:
        """The work notes and comments added to the ticket at or after ``after`` (all when
        ``None``), oldest first, with their authors. Raise ``PermissionDenied`` when the
        connection may not read them."""

    def own_user(self) -> str:
        """The user name the service records for this connection's own changes (in
        ``Ticket.updated_by`` and ``JournalEntry.author``); at most one read, then cached."""

    def states(self, *, refresh: bool = False) -> tuple[TicketStatus, ...]:
        """The states a ticket may be in, from the service's own choice list (ServiceNow:
        ``sys_choice``), active ones in their order; never a table written into the provider.
        May be cached; ``refresh`` reads the list again (an operator is setting a status map,
        or the sync engine's copy is 5 minutes old: a state retired meanwhile must show)."""

    def read_notification(self, body: Mapping[str, Any]) -> Notice:
        """What a notification's JSON body names (no I/O); the signature is checked before.
        Raise ``InvalidInput`` saying what is wrong when it names no ticket of this
        connection's table or project. Give ``Notice.revision`` only when it is the ticket's
        ``Ticket.revision`` as of the change: the host skips a notification whose revision it
        has applied already."""

    def notification_setup(self, endpoint: str, secret: str) -> str:
        """What an administrator installs on the service so that it notifies ``endpoint``,
        signing with ``secret`` (ServiceNow: two Business Rules; Jira: a webhook), as text to
        paste: it skips changes :meth:`own_user` makes."""


class ProviderFactory(Protocol):
    """Builds a :class:`Provider` for one instance.

    ``api_url`` is the instance's base URL (``https://acme.service-now.com``). ``api_access_token`` is
    the credential as the user gave it; each provider documents its forms (ServiceNow:
    ``username:password`` for Basic auth, anything else a Bearer token). ``options`` are
    provider-specific keyword settings (timeouts, retry bounds, a project); a factory lists every
    one it takes in an ``options`` attribute (a class attribute, for a provider class), so that
    :func:`ticketing_core.connect` refuses any other with ``InvalidInput`` naming them. Those a user
    may set are listed in ``Capabilities.user_options``; those that are credentials (an OAuth
    client secret) also in ``Capabilities.secret_options``, which hosts store encrypted and never
    show, and which the provider keeps out of ``repr()``, logs and errors as it does the token.
    Every factory takes a ``transport`` option (an ``httpx.BaseTransport``) and sends all of its
    requests through it, token requests included: hosts pass one that enforces their network
    rules at connect time (:class:`ticketing_core.http.NetworkPolicy`), tests a recorder.
    Building must not do network I/O: hosts call :meth:`Provider.validate` when they want a check.
    """

    options: tuple[str, ...]

    def __call__(self, *, api_url: str, api_access_token: str, **options: Any) -> Provider: ...


RegisterProvider = Callable[[str, ProviderFactory], None]


@hookspec
def register_providers(register: RegisterProvider) -> None:
    """Make provider types available under a name.

    Called once per plugin manager, after entry points are loaded. Call ``register(name, factory)``
    once per provider type the plugin ships; ``name`` is what users type (``"servicenow"``), lowercase.
    A name already taken by another plugin is reported as a plugin error and the first one is kept.
    The return value is ignored.
    """


@hookspec
def register_sync_policies(register: Callable[[SyncPolicy], None]) -> None:
    """Make sync policies available by their ``name``.

    A sync policy (see :class:`ticketing_core.policies.SyncPolicy`) decides what an anomaly's status
    change or comment does to each linked ticket. Core registers ``work-notes`` (the default) and
    ``state-mapping`` through this same hook. A name already taken is reported and the first kept.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add commands to the ``ticketing`` command line, as in ``cli.add_command(serve)``.

    Called once, when the command line first looks up or lists its commands (not when
    ``ticketing_core.cli`` is imported, so a plugin may import from it), for plugins that ship
    commands (the reference host adds ``serve``, ``worker`` and ``demo``). Keep the plugin
    module's imports light, since every start loads it, and import heavy libraries inside the
    commands. A plugin whose hook raises is reported and its commands are left out; the others
    still load.
    """
