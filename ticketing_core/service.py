"""The seed's flows as one provider-agnostic service a host application calls.

Creating and linking talk to the provider while the host waits (the host's response carries the ticket).
Status changes and comments only write outbox events, in the host's transaction when it passes one, and
return; the dispatcher delivers them. The manual pull reads each linked ticket's status.

What the integration itself writes on an anomaly (the pull's comments) has ``origin=INTEGRATION`` and is
never pushed back to a ticket, so no echo loop can start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable, Sequence
from datetime import datetime

import attrs
import sqlalchemy as sa

from ticketing_core.errors import InvalidInput, ProviderError, TicketingError
from ticketing_core.hookspecs import Provider
from ticketing_core.models import (
    Anomaly,
    Capabilities,
    Ticket,
    TicketChanges,
    TicketDraft,
    TicketLink,
)
from ticketing_core.outbox import Dispatcher, NewEvent, Outbox, OutboxEvent
from ticketing_core.policies import (
    Action,
    AddWorkNote,
    ChangeTicket,
    Messages,
    StatusChange,
    SyncPolicy,
)
from ticketing_core.store import Database, LinkStore, utcnow

log = logging.getLogger(__name__)

USER = "user"
INTEGRATION = "integration"

ProviderFor = Callable[[int], Provider]
PolicyFor = Callable[[int], SyncPolicy]
CommentOnAnomaly = Callable[[int, str], None]


class ProviderPool:
    """Connected providers by integration id, built on first use and reused (one HTTP client each)."""

    def __init__(self, connect: ProviderFor) -> None:
        self._connect = connect
        self._providers: dict[int, Provider] = {}
        self._lock = threading.Lock()

    def __call__(self, integration_id: int) -> Provider:
        with self._lock:
            provider = self._providers.get(integration_id)
        if provider is not None:
            return provider
        # Built outside the lock: connecting may read the host's database.
        built = self._connect(integration_id)
        with self._lock:
            provider = self._providers.setdefault(integration_id, built)
        if provider is not built:
            built.close()
        return provider

    def forget(self, integration_id: int) -> None:
        with self._lock:
            provider = self._providers.pop(integration_id, None)
        if provider is not None:
            provider.close()

    def close(self) -> None:
        for integration_id in list(self._providers):
            self.forget(integration_id)


@attrs.define
class SyncService:
    """The integration's flows over a link store, an outbox and the host's providers.

    ``provider_for`` and ``policy_for`` map an integration id to its connected provider and its sync
    policy; ``comment_on_anomaly`` records a comment on the host's anomaly (used by the pull).
    """

    database: Database
    provider_for: ProviderFor
    policy_for: PolicyFor
    comment_on_anomaly: CommentOnAnomaly
    messages: Messages = attrs.field(factory=Messages)
    outbox: Outbox = attrs.field(
        default=attrs.Factory(lambda self: Outbox(self.database), takes_self=True)
    )
    dispatcher: Dispatcher | None = None
    links: LinkStore = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.links = LinkStore(self.database)

    # -- flows the host waits for --------------------------------------------------------------

    def create_ticket(
        self,
        anomaly: Anomaly,
        integration_id: int,
        draft: TicketDraft,
        *,
        idempotency_key: str | None = None,
    ) -> tuple[Ticket, TicketLink]:
        """Create a ticket describing the anomaly and link it.

        Without ``idempotency_key`` one is derived from the anomaly, integration and draft, so the same
        request retried (after a timeout, say) returns the first ticket instead of making another.
        """
        draft = attrs.evolve(
            draft,
            description=draft.description + self.messages.anomaly_block(anomaly),
            external_id=str(anomaly.id),
            external_source=self.messages.product,
        )
        provider = self.provider_for(integration_id)
        key = None
        if provider.capabilities.idempotency_keys:
            key = idempotency_key or self._derived_key(anomaly, integration_id, draft)
        ticket = provider.create(draft, idempotency_key=key)
        return ticket, self._store_link(anomaly.id, integration_id, ticket)

    def link_ticket(
        self,
        anomaly: Anomaly,
        integration_id: int,
        *,
        ticket_id: str | None = None,
        ticket_number: str | None = None,
    ) -> tuple[Ticket, TicketLink]:
        """Link an existing ticket: append the anomaly block, add a work note, store the link.

        Linking the same ticket again changes nothing and returns the existing link.
        """
        provider = self.provider_for(integration_id)
        ticket = self._existing_ticket(provider, ticket_id, ticket_number)
        block = self.messages.anomaly_block(anomaly)
        already = {link.ticket_id for link in self.links.for_anomaly(anomaly.id)}
        if ticket.id not in already:
            if block not in ticket.description:
                ticket = provider.update(
                    ticket.id, TicketChanges(description=ticket.description + block)
                )
            provider.add_work_note(ticket.id, self.messages.link_note(anomaly))
        return ticket, self._store_link(anomaly.id, integration_id, ticket)

    def pull_status(self, anomaly_id: int) -> list[TicketLink]:
        """Read each linked ticket's status; record it, and comment on the anomaly when it changed.

        The anomaly's own status never changes. A ticket that cannot be read keeps its last known
        status while the others are refreshed; only when none can be read is the error raised.
        """
        links = self.links.for_anomaly(anomaly_id)
        failures: list[ProviderError] = []
        for link in links:
            try:
                status = self.provider_for(link.integration_id).get_status(link.ticket_id)
            except ProviderError as exc:
                log.warning(
                    "cannot pull %s for anomaly %s: %s", link.ticket_number, anomaly_id, exc
                )
                failures.append(exc)
                continue
            if status.label != link.status:
                # Comment before recording: a crash in between repeats the comment, never loses it.
                self.comment_on_anomaly(
                    anomaly_id,
                    self.messages.status_pulled(link.ticket_number, link.status, status.label),
                )
            self.links.record_status(link.id, status.label, utcnow())
        if links and len(failures) == len(links):
            raise failures[0]
        return self.links.for_anomaly(anomaly_id)

    # -- flows that only queue ------------------------------------------------------------------

    def anomaly_status_changed(
        self,
        anomaly_id: int,
        status: str,
        *,
        changed_at: datetime | None = None,
        conn: sa.Connection | None = None,
    ) -> int:
        """Queue what each linked ticket's policy makes of the change; returns the events stored."""
        change = StatusChange(anomaly_id, status, changed_at or utcnow())
        return self._queue(
            anomaly_id,
            lambda policy, can: policy.on_status_change(change, self.messages, can),
            conn,
        )

    def anomaly_commented(
        self, anomaly_id: int, text: str, *, origin: str = USER, conn: sa.Connection | None = None
    ) -> int:
        """Queue a user's comment for every linked ticket; the integration's own are not pushed."""
        if origin == INTEGRATION:
            return 0
        if not text.strip():
            raise InvalidInput("comment text must not be empty")
        return self._queue(
            anomaly_id, lambda policy, can: policy.on_comment(text, self.messages, can), conn
        )

    def deliver(self, event: OutboxEvent) -> None:
        """Perform one outbox event against its ticket (the dispatcher's delivery function)."""
        provider = self.provider_for(event.integration_id)
        action = event.action
        if isinstance(action, AddWorkNote):
            # An earlier attempt may have landed: look before adding the note again. Events of a
            # ticket go one at a time, so a match since its first claim can only be this note.
            since = event.first_claimed_at or event.created
            if event.in_doubt and provider.has_work_note(event.ticket_id, action.text, since=since):
                return
            provider.add_work_note(event.ticket_id, action.text)
        elif isinstance(action, ChangeTicket):
            provider.update(event.ticket_id, action.changes)

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        if self.dispatcher is not None:
            self.dispatcher.stop(timeout)

    # -- helpers ----------------------------------------------------------------------------------

    def _queue(
        self,
        anomaly_id: int,
        actions_of: Callable[[SyncPolicy, Capabilities], Sequence[Action]],
        conn: sa.Connection | None,
    ) -> int:
        with self.database.begin(conn) as c:
            new_events = [
                NewEvent(link.integration_id, link.ticket_id, action, anomaly_id)
                for link in self.links.for_anomaly(anomaly_id, conn=c)
                for action in actions_of(
                    self.policy_for(link.integration_id), self._capabilities(link.integration_id)
                )
            ]
            stored = self.outbox.enqueue(new_events, conn=c)
        # In the caller's transaction the events are visible only once it commits: the caller
        # wakes the dispatcher then (else it finds them at its next poll).
        if stored and conn is None and self.dispatcher is not None:
            self.dispatcher.wake()
        return stored

    def _capabilities(self, integration_id: int) -> Capabilities:
        # Queuing must not depend on the provider being usable now: if it cannot even be built,
        # assume the defaults and let delivery report the problem (the event ends up dead, listed).
        try:
            return self.provider_for(integration_id).capabilities
        except TicketingError as exc:
            log.warning(
                "integration %s: %s; queuing with default capabilities", integration_id, exc
            )
            return Capabilities()

    def _store_link(self, anomaly_id: int, integration_id: int, ticket: Ticket) -> TicketLink:
        return self.links.add(
            anomaly_id=anomaly_id,
            integration_id=integration_id,
            ticket_id=ticket.id,
            ticket_number=ticket.number,
            ticket_url=ticket.url,
            status=ticket.status,
        )

    @staticmethod
    def _existing_ticket(
        provider: Provider, ticket_id: str | None, ticket_number: str | None
    ) -> Ticket:
        if ticket_id:
            return provider.get(ticket_id)
        if ticket_number:
            return provider.find(ticket_number)
        raise InvalidInput("give ticket_id or ticket_number of the ticket to link")

    def _derived_key(self, anomaly: Anomaly, integration_id: int, draft: TicketDraft) -> str:
        fingerprint = json.dumps(attrs.asdict(draft), sort_keys=True, default=str)
        digest = hashlib.sha256(fingerprint.encode()).hexdigest()[:32]
        return f"{self.messages.product}-{integration_id}-{anomaly.id}-{digest}"[:100]
