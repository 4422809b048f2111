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

There are two hooks, in the manner of simonw/llm's ``register_models``: a plugin never touches core
structures, it hands what it ships to ``register``. :func:`register_providers` adds provider types;
:func:`register_sync_policies` adds sync policies. Everything else a provider does goes through the
typed :class:`Provider` interface below, because the operations are called on one connected instance
(with its URL, credentials and HTTP client), not broadcast to every plugin as hooks are.

Why a factory and not an instance: a host connects to many instances of one provider type (one per
integration), each with its own credentials, so it needs to build providers on demand.

What else a provider author uses: :mod:`ticketing_core.models` (the records, and
:class:`~ticketing_core.models.Capabilities`, what a provider declares it supports),
:mod:`ticketing_core.errors` (the only exceptions a provider raises), :mod:`ticketing_core.http`
(a retrying HTTP transport with the error mapping done) and :mod:`ticketing_core.testing` (the
conformance kit every provider must pass). docs/writing-a-provider.md is the guided tour.

Stability: hooks change only by gaining arguments (implementations may accept fewer than the spec);
:class:`Provider` methods change only by gaining optional keyword arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ticketing_core._markers import hookspec
from ticketing_core.models import (
    Capabilities,
    Page,
    SearchQuery,
    Ticket,
    TicketChanges,
    TicketDraft,
    TicketStatus,
)

if TYPE_CHECKING:
    from ticketing_core.policies import SyncPolicy


@runtime_checkable
class Provider(Protocol):
    """One connection to one ticketing instance.

    Every method talks to the service; failures raise the matching
    :class:`ticketing_core.errors.ProviderError` subclass, never a transport exception. Transient
    failures (rate limits, 503) are retried inside the provider within a bounded time before raising.
    Implementations must be safe to call from several threads at once, and must keep credentials out of
    ``repr()``, logs and error messages.
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

    def create(self, draft: TicketDraft, *, idempotency_key: str | None = None) -> Ticket:
        """Create a ticket and return it as the service stored it.

        With ``idempotency_key``, calling ``create`` again with the same key (after a timeout, a crash,
        a 5xx) returns the ticket the first call made instead of making a second one.
        """

    def update(self, ticket_id: str, changes: TicketChanges) -> Ticket:
        """Apply ``changes`` and return the ticket as the service stored it.

        Services may adjust written values (ServiceNow recomputes priority); the result tells.
        """

    def add_work_note(self, ticket_id: str, text: str) -> None:
        """Add an internal note (visible to agents, not to the requester) to the ticket."""

    def has_work_note(self, ticket_id: str, text: str, *, since: datetime) -> bool:
        """Whether a note with exactly ``text`` (as :meth:`add_work_note` stores it) was added to the
        ticket at or after ``since``.

        The outbox asks before re-delivering a note whose earlier attempt may have landed (its worker
        died mid-call, or the call timed out), so that a note is never added twice.
        """

    def get_status(self, ticket_id: str) -> TicketStatus:
        """Return the ticket's current state, reading as little as the service allows."""

    def close(self) -> None:
        """Release network resources. The provider is unusable afterwards."""


class ProviderFactory(Protocol):
    """Builds a :class:`Provider` for one instance.

    ``api_url`` is the instance's base URL (``https://acme.service-now.com``). ``api_access_token`` is
    the credential as the user gave it; each provider documents its forms (ServiceNow:
    ``username:password`` for Basic auth, anything else a Bearer token). ``options`` are
    provider-specific keyword settings (timeouts, retry bounds, a project); unknown ones raise
    ``TypeError``, and those a user may set are listed in ``Capabilities.user_options``.
    Building must not do network I/O: hosts call :meth:`Provider.validate` when they want a check.
    """

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
