"""Sync policies: what an anomaly event turns into on each linked ticket.

A policy is a small object with two pure functions returning actions; the service stores those actions in
the outbox and the worker performs them. Policies are registered through the
:func:`~ticketing_core.hookspecs.register_sync_policies` hook, the built-in ones below included, so a
plugin can add its own. The default, ``work-notes``, is the seed's one-way push: it never changes a
ticket's state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Protocol

import attrs

from ticketing_core._markers import hookimpl
from ticketing_core.errors import InvalidInput
from ticketing_core.models import Anomaly, Capabilities, TicketChanges

DEFAULT_POLICY = "work-notes"


@attrs.frozen
class AddWorkNote:
    """Add an internal note to the ticket."""

    text: str


@attrs.frozen
class ChangeTicket:
    """Change fields of the ticket."""

    changes: TicketChanges


Action = AddWorkNote | ChangeTicket


@attrs.frozen
class StatusChange:
    """The host changed an anomaly's status at ``changed_at`` (UTC)."""

    anomaly_id: int
    status: str
    changed_at: datetime


@attrs.frozen
class Messages:
    """The texts the integration writes, in the host product's name (the seed's: Qualytics)."""

    product: str = "Qualytics"
    public_url: str = ""

    def anomaly_url(self, anomaly_id: int) -> str:
        return f"{self.public_url.rstrip('/')}/anomalies/{anomaly_id}"

    def anomaly_heading(self, anomaly_id: int) -> str:
        """How the block starts, whatever the anomaly's state: what tells it is already there."""
        return f"## {self.product} Anomaly Linked\n\n- Anomaly ID: {anomaly_id}\n"

    def anomaly_block(self, anomaly: Anomaly) -> str:
        """Appended to a ticket's description when it is created from or linked to an anomaly."""
        checks = "; ".join(
            check.rule
            + (f" ({check.field})" if check.field else "")
            + (f": {check.description}" if check.description else "")
            for check in anomaly.failed_checks
        )
        lines = [
            f"- Status: {anomaly.status}",
            f"- Type: {anomaly.type}",
            f"- Failed checks: {checks or 'none'}",
            f"- Link: {self.anomaly_url(anomaly.id)}",
        ]
        return "\n\n---\n\n" + self.anomaly_heading(anomaly.id) + "\n".join(lines)

    def status_note(self, change: StatusChange) -> str:
        at = as_utc(change.changed_at).strftime("%Y-%m-%d %H:%M:%S")
        return f"[{at} UTC] {self.product} Anomaly Status: {change.status}"

    def comment_note(self, text: str) -> str:
        return f"Comment from {self.product}: {text}"

    def link_note(self, anomaly: Anomaly) -> str:
        return f"Linked to {self.product} anomaly {anomaly.id}: {self.anomaly_url(anomaly.id)}"

    def resolution(self, change: StatusChange) -> str:
        return f"Anomaly {change.anomaly_id} was marked {change.status} in {self.product}."

    def status_pulled(
        self, ticket_number: str, old: str | None, new: str, by: str | None = None
    ) -> str:
        changed = f"Ticket {ticket_number} status changed from {old or 'unknown'} to {new}"
        return f"{changed} by {by}" if by else changed

    def ticket_entry(self, ticket_number: str, kind: str, author: str, text: str) -> str:
        """An anomaly comment copied from a ticket's work note or comment."""
        what = "Work note" if kind == "work_note" else "Comment"
        return f"{what} on {ticket_number} by {author}: {text}"


def as_utc(moment: datetime) -> datetime:
    """A naive datetime is taken as UTC (as the store does), never as the machine's local time."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


MIN_RECONCILE_INTERVAL, MAX_RECONCILE_INTERVAL = 10.0, 86400.0


@attrs.frozen
class InboundPolicy:
    """How changes flowing back from an integration's tickets reach anomalies (opt-in).

    The link's status always follows its ticket, with one comment on the anomaly saying who
    changed it. ``copy_entries``: the ticket's work notes and comments written by people (not by
    the integration) become anomaly comments. ``status_map`` (ticket status -> anomaly status)
    is the only way an anomaly's own status changes; empty by default. The reconciling poll
    runs every ``reconcile_interval_s`` seconds, and once when the host starts.
    """

    copy_entries: bool = True
    status_map: Mapping[str, str] = attrs.field(factory=dict, converter=dict)
    reconcile_interval_s: float = attrs.field(default=300.0)

    @reconcile_interval_s.validator
    def _check_interval(self, _: attrs.Attribute[float], value: float) -> None:
        if not MIN_RECONCILE_INTERVAL <= value <= MAX_RECONCILE_INTERVAL:
            raise InvalidInput(
                f"reconcile_interval_s must be between {MIN_RECONCILE_INTERVAL:.0f} and "
                f"{MAX_RECONCILE_INTERVAL:.0f} seconds, got {value}"
            )


class SyncPolicy(Protocol):
    """Decides what each anomaly event does to a linked ticket. Must be pure: no I/O.

    ``capabilities`` are the ticket's provider's: a policy asks for nothing the provider cannot do.
    """

    name: str

    def on_status_change(
        self, change: StatusChange, messages: Messages, capabilities: Capabilities
    ) -> Sequence[Action]: ...

    def on_comment(
        self, text: str, messages: Messages, capabilities: Capabilities
    ) -> Sequence[Action]: ...


class WorkNotesOnly:
    """The seed's policy: status changes and comments become work notes; ticket state is untouched.

    A provider with neither internal notes nor comments gets nothing.
    """

    name = DEFAULT_POLICY

    def on_status_change(
        self, change: StatusChange, messages: Messages, capabilities: Capabilities
    ) -> Sequence[Action]:
        return _notes(capabilities, messages.status_note(change))

    def on_comment(
        self, text: str, messages: Messages, capabilities: Capabilities
    ) -> Sequence[Action]:
        return _notes(capabilities, messages.comment_note(text))


def _notes(capabilities: Capabilities, text: str) -> list[Action]:
    return [AddWorkNote(text)] if capabilities.work_notes or capabilities.public_comments else []


@attrs.frozen
class StateMapping:
    """Opt-in: like ``work-notes``, and resolving the anomaly resolves the ticket too.

    ``resolving`` anomaly statuses map to the canonical ticket status ``ticket_status``, with a
    resolution text (ServiceNow's ``close_notes``; the provider adds its close code). With a provider
    that cannot change states it falls back to notes only.
    """

    name = "state-mapping"
    resolving: frozenset[str] = frozenset({"Resolved"})
    ticket_status: str = "Resolved"

    def on_status_change(
        self, change: StatusChange, messages: Messages, capabilities: Capabilities
    ) -> Sequence[Action]:
        actions = list(WorkNotesOnly().on_status_change(change, messages, capabilities))
        if capabilities.state_changes and change.status in self.resolving:
            changes = TicketChanges(
                status=self.ticket_status, resolution=messages.resolution(change)
            )
            actions.append(ChangeTicket(changes))
        return actions

    def on_comment(
        self, text: str, messages: Messages, capabilities: Capabilities
    ) -> Sequence[Action]:
        return WorkNotesOnly().on_comment(text, messages, capabilities)


@hookimpl
def register_sync_policies(register: Callable[[SyncPolicy], None]) -> None:
    register(WorkNotesOnly())
    register(StateMapping())
