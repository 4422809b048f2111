"""Canonical records shared by every provider.

They describe tickets as any tracker has them (ServiceNow incidents, Jira issues, ...): what a provider
cannot fill stays ``None``, and what only one provider knows goes into ``extras``. Records are frozen;
conversion to and from JSON lives in :mod:`ticketing_core.converters`, not here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import attrs

from ticketing_core.errors import InvalidInput

MAX_PAGE_SIZE = 100
_CUSTOM_FIELD = re.compile(r"[A-Za-z0-9_]+")


def _frozen_mapping(value: Mapping[str, str] | None) -> Mapping[str, str]:
    return dict(value or {})


@attrs.frozen
class Ticket:
    """A ticket as the provider's service reports it now.

    ``status`` is a human label ("In Progress"); ``priority``, ``urgency`` and ``impact`` are the
    provider's own codes as strings. Times are UTC. ``updated_by`` is the user name the service
    recorded for the last change, and ``revision`` a number the service raises with every change
    (ServiceNow's ``sys_mod_count``), when the provider can tell them: inbound sync uses them to
    drop its own changes and to apply each change once, in order.
    """

    id: str
    number: str
    title: str
    description: str = ""
    status: str = ""
    priority: str | None = None
    urgency: str | None = None
    impact: str | None = None
    category: str | None = None
    subcategory: str | None = None
    assigned_to: str | None = None
    assignment_group: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    url: str | None = None
    extras: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_mapping)
    updated_by: str | None = None
    revision: int | None = None


def _not_blank(name: str, value: str) -> None:
    if not value.strip():
        raise InvalidInput(f"{name} must not be empty")


@attrs.frozen
class TicketDraft:
    """What a caller asks to create.

    ``external_id``/``external_source`` name the record in the caller's system this ticket is about
    (e.g. an anomaly); providers that can store such a reference do. ``fields`` carries
    provider-specific fields verbatim.
    """

    title: str = attrs.field(validator=lambda _, __, value: _not_blank("title", value))
    description: str
    priority: str | None = None
    urgency: str | None = None
    impact: str | None = None
    category: str | None = None
    subcategory: str | None = None
    assigned_to: str | None = None
    assignment_group: str | None = None
    external_id: str | None = None
    external_source: str | None = None
    fields: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_mapping)


@attrs.frozen
class TicketChanges:
    """Fields to change on an existing ticket; ``None`` leaves a field as it is.

    ``status`` is a label or a provider code. ``resolution`` says why a ticket is being resolved or
    closed; each provider puts it where its service wants it (ServiceNow: ``close_notes``).
    ``fields`` carries provider-specific fields verbatim (e.g. ServiceNow's ``close_code``).
    """

    title: str | None = None
    description: str | None = None
    status: str | None = None
    priority: str | None = None
    urgency: str | None = None
    impact: str | None = None
    category: str | None = None
    subcategory: str | None = None
    assigned_to: str | None = None
    assignment_group: str | None = None
    resolution: str | None = None
    fields: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_mapping)

    def is_empty(self) -> bool:
        return not self.fields and all(
            getattr(self, a.name) is None for a in attrs.fields(TicketChanges) if a.name != "fields"
        )


def _page_number(_: Any, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise InvalidInput(f"{attribute.name} must be 1 or more, got {value}")


def _page_size(_: Any, attribute: attrs.Attribute[int], value: int) -> None:
    if not 1 <= value <= MAX_PAGE_SIZE:
        raise InvalidInput(f"{attribute.name} must be between 1 and {MAX_PAGE_SIZE}, got {value}")


@attrs.frozen
class SearchQuery:
    """A ticket search: free text plus optional status and priority filters, paged from 1."""

    text: str | None = None
    status: str | None = None
    priority: str | None = None
    page: int = attrs.field(default=1, validator=_page_number)
    size: int = attrs.field(default=20, validator=_page_size)

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.size


@attrs.frozen
class Page:
    """One page of search results; ``total`` counts every match, not just this page."""

    items: tuple[Ticket, ...]
    total: int
    page: int
    size: int

    @property
    def pages(self) -> int:
        return math.ceil(self.total / self.size) if self.size else 0


@attrs.frozen
class TicketStatus:
    """A ticket's state: the provider's ``code`` and its human ``label``."""

    code: str
    label: str


@attrs.frozen
class Capabilities:
    """What a provider supports, so hosts and policies adapt instead of assuming one service.

    ``field_choices`` lists the accepted codes of enumerated fields (e.g. ``priority``) so hosts can
    reject bad input before calling the service; a field not listed is free text. ``user_options``
    names the factory options a user may set per connection (e.g. Jira's ``project``); hosts refuse
    any other, since the rest (timeouts, transports) are the host's own business.
    ``secret_options`` are the user options that are credentials (ServiceNow's OAuth
    ``client_secret``): hosts store them encrypted, as they store access tokens, and never show
    them; providers keep them out of ``repr()``, logs and error messages.

    ``extra_fields`` names the provider's own fields :attr:`TicketChanges.fields` may set besides the
    canonical ones (ServiceNow: ``close_code``, ``caller_id``, ...). A name starting with
    ``custom_field_prefix`` (ServiceNow: ``u_``) is an instance's custom field: hosts pass one only
    when the user asked for a custom field explicitly. Providers refuse any other name.

    ``inbound_sync``: the provider is an :class:`~ticketing_core.hookspecs.InboundProvider`
    (changes flow back from the service), and ``notification_signature`` names the
    :mod:`ticketing_core.notifications` scheme its service signs notifications with.
    """

    work_notes: bool = True
    public_comments: bool = False
    state_changes: bool = True
    idempotency_keys: bool = True
    inbound_sync: bool = False
    field_choices: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)
    user_options: tuple[str, ...] = ()
    secret_options: tuple[str, ...] = ()
    extra_fields: tuple[str, ...] = ()
    custom_field_prefix: str | None = None
    notification_signature: str | None = None

    def unknown_fields(self, names: Iterable[str]) -> list[str]:
        """The names among ``names`` that are neither declared nor custom fields, sorted."""
        return sorted(
            name for name in names if name not in self.extra_fields and not self.is_custom(name)
        )

    def is_custom(self, name: str) -> bool:
        """Whether ``name`` is a well-formed custom field name (the prefix, then a word)."""
        prefix = self.custom_field_prefix
        if not prefix or not name.startswith(prefix):
            return False
        return _CUSTOM_FIELD.fullmatch(name[len(prefix) :]) is not None

    def check_fields(self, names: Iterable[str]) -> None:
        """Raise ``InvalidInput`` naming the allowed fields if a name is not one of them."""
        if unknown := self.unknown_fields(names):
            custom = f", or a custom {self.custom_field_prefix}... field" * bool(
                self.custom_field_prefix
            )
            allowed = ", ".join(self.extra_fields) or "none"
            raise InvalidInput(
                f"no settable field {', '.join(unknown)}: besides the canonical fields, "
                f"use one of {allowed}{custom}"
            )

    def choice_problems(self, values: Mapping[str, str | None]) -> dict[str, str]:
        """What is wrong with each value of an enumerated field, by field name: a value outside
        the field's ``field_choices``, or none (``None``) for a field that has choices. A caller
        drops the fields it lets go unset; fields without choices are free text."""
        return {
            name: (
                f"{value!r} is not one of: {', '.join(choices)}"
                if value is not None
                else f"required by this provider: one of {', '.join(choices)}"
            )
            for name, value in values.items()
            if (choices := self.field_choices.get(name)) is not None and value not in choices
        }


@attrs.frozen
class ChangePage:
    """One page of tickets changed on the service, oldest change first; ``cursor`` resumes
    after the last of them, and ``more`` says whether another page follows now."""

    tickets: tuple[Ticket, ...]
    cursor: str
    more: bool


@attrs.frozen
class JournalEntry:
    """A work note or comment on a ticket, as the service stored it.

    ``id`` is the service's own and never reused; ``kind`` is ``"work_note"`` (agents only) or
    ``"comment"`` (the requester sees it); ``author`` is a user name as in ``Ticket.updated_by``.
    """

    id: str
    ticket_id: str
    kind: str
    text: str
    author: str
    created_at: datetime


@attrs.frozen
class Notice:
    """What a change notification from the service names. Never trusted beyond the ticket it
    names: the host re-reads that ticket with the integration's own credentials. ``revision``
    (the :attr:`Ticket.revision` the change made, when the service tells it) only spares that
    read when a revision as new has been applied already (a replay, a duplicate, a change the
    poll overtook); a change whose notification understated it waits for the poll."""

    ticket_id: str
    event: str  # "update" (fields changed) or "journal" (a note or comment added)
    updated_by: str | None = None
    revision: int | None = None


@attrs.frozen
class ProviderInfo:
    """An installed provider and the distribution that ships it."""

    name: str
    distribution: str
    version: str


@attrs.frozen
class FailedCheck:
    """A data-quality check an anomaly failed."""

    rule: str
    field: str | None = None
    description: str | None = None


@attrs.frozen
class Anomaly:
    """The host's record a ticket is about (the seed's data-quality anomaly)."""

    id: int
    type: str
    status: str
    description: str = ""
    failed_checks: tuple[FailedCheck, ...] = ()
    datastore: str | None = None
    container: str | None = None
    field: str | None = None


@attrs.frozen
class TicketLink:
    """A row of ``anomaly_ticket_link``: which ticket of which integration tracks an anomaly.

    ``status`` is the ticket's status label as last seen; ``last_synced`` when it was read.
    """

    id: int
    anomaly_id: int
    integration_id: int
    ticket_id: str
    ticket_number: str
    ticket_url: str | None
    status: str | None
    last_synced: datetime | None
    ticket_metadata: Mapping[str, Any] | None
    created: datetime
