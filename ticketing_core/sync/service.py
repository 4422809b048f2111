"""The seed's flows as one provider-agnostic service a host application calls.

Creating and linking talk to the provider while the host waits (the host's response carries the ticket),
within one deadline, and each runs once per key (:mod:`ticketing_core.sync.once`): concurrent or retried
identical requests get the first one's ticket. Status changes, comments and the linkage note only write
outbox events, in the host's transaction when it passes one, and return; the dispatcher delivers them,
one attempt per claim. The manual pull reads each linked ticket's status.

What the integration itself writes on an anomaly (the pull's comments) has ``origin=INTEGRATION`` and is
never pushed back to a ticket, so no echo loop can start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

import attrs
import sqlalchemy as sa

from ticketing_core.errors import (
    Conflict,
    IntegrationUnusable,
    InvalidInput,
    NotFound,
    ProviderError,
    TicketingError,
)
from ticketing_core.hookspecs import InboundProvider, Provider
from ticketing_core.http.budget import DEFAULT_DEADLINE, call_budget
from ticketing_core.models import (
    MAX_PAGE_SIZE,
    Anomaly,
    Capabilities,
    Ticket,
    TicketChanges,
    TicketDraft,
    TicketLink,
)
from ticketing_core.policies import (
    Action,
    AddWorkNote,
    Messages,
    StatusChange,
    SyncPolicy,
)
from ticketing_core.sync.database import Database
from ticketing_core.sync.delivery import Delivery
from ticketing_core.sync.dispatch import Dispatcher
from ticketing_core.sync.keys import fingerprint, request_key
from ticketing_core.sync.links import LinkStore
from ticketing_core.sync.once import KeyedRequests
from ticketing_core.sync.outbox import NewEvent, Outbox
from ticketing_core.sync.providers import ProviderFor
from ticketing_core.sync.schema import utcnow
from ticketing_core.sync.settings import DEFAULT_DELIVERY_DEADLINE
from ticketing_core.sync.synclog import INBOUND, LogEntry

log = logging.getLogger(__name__)

USER = "user"
INTEGRATION = "integration"
TICKET = "ticket"  # copied from a ticket's work note or comment (inbound sync)

# Takes the caller's open transaction, if any, so a lookup never checks out a second connection.
PolicyFor = Callable[[int, sa.Connection | None], SyncPolicy]
CommentOnAnomaly = Callable[[int, str], None]
TicketRef = tuple[int, str]
"""A ticket as (integration id, ticket id)."""


class CreatedTicket(NamedTuple):
    """What :meth:`SyncService.create_ticket` returns; ``existing`` when an earlier identical
    request made the ticket (a retry, or a concurrent duplicate) and this one only found it."""

    ticket: Ticket
    link: TicketLink
    existing: bool


def _by_integration(links: Sequence[TicketLink]) -> dict[int, list[TicketLink]]:
    grouped: dict[int, list[TicketLink]] = {}
    for link in links:
        grouped.setdefault(link.integration_id, []).append(link)
    return grouped


def _woken_by(service: SyncService, _: object, dispatcher: Dispatcher | None) -> Dispatcher | None:
    """Attach ``dispatcher`` to the service's outbox: it hears of events once they commit."""
    service.outbox.on_stored = None if dispatcher is None else dispatcher.wake
    return dispatcher


@attrs.define
class SyncService:
    """The integration's flows over a link store, an outbox and the host's providers.

    ``provider_for`` and ``policy_for`` map an integration id (and the caller's transaction, if
    any) to its connected provider and its sync policy; ``comment_on_anomaly`` records a comment on
    the host's anomaly (used by the pull). ``interactive_deadline`` bounds each flow the host waits
    for; ``delivery_deadline`` each delivery attempt (the outbox's lease must exceed 4/3 of it).
    ``delivery`` sends events (:mod:`ticketing_core.sync.delivery`); the ``dispatcher`` runs it,
    woken once the transaction that stored events commits.
    """

    database: Database
    provider_for: ProviderFor
    policy_for: PolicyFor
    comment_on_anomaly: CommentOnAnomaly
    messages: Messages = attrs.field(factory=Messages)
    outbox: Outbox = attrs.field(
        default=attrs.Factory(lambda self: Outbox(self.database), takes_self=True)
    )
    dispatcher: Dispatcher | None = attrs.field(default=None, on_setattr=_woken_by)
    interactive_deadline: float = DEFAULT_DEADLINE
    delivery_deadline: float = DEFAULT_DELIVERY_DEADLINE
    links: LinkStore = attrs.field(init=False)
    requests: KeyedRequests = attrs.field(init=False)
    delivery: Delivery = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.links = LinkStore(self.database)
        self.delivery = Delivery(self.outbox, self.provider_for, deadline=self.delivery_deadline)
        if self.dispatcher is not None:
            _woken_by(self, None, self.dispatcher)
        self.requests = KeyedRequests(
            self.database,
            lease_seconds=max(60.0, 3 * self.interactive_deadline),
            doubt_seconds=self.outbox.doubt.total_seconds(),
            wait_seconds=self.interactive_deadline,
        )

    # -- flows the host waits for --------------------------------------------------------------

    def create_ticket(
        self,
        anomaly: Anomaly,
        integration_id: int,
        draft: TicketDraft,
        *,
        idempotency_key: str | None = None,
    ) -> CreatedTicket:
        """Create a ticket describing the anomaly and link it.

        The request runs once per key: ``idempotency_key``, or without one the request itself
        (anomaly, integration and draft, not the anomaly's changing state). Retried or concurrent
        identical requests return the first ticket, with ``existing`` set; a key reused for a
        different request raises :class:`~ticketing_core.errors.Conflict`.
        """
        request = fingerprint(
            {"anomaly": anomaly.id, "integration": integration_id, "draft": attrs.asdict(draft)}
        )
        scope = f"create:{idempotency_key or request}"
        provider = self.provider_for(integration_id, None)
        full_draft = attrs.evolve(
            draft,
            description=draft.description + self.messages.anomaly_block(anomaly),
            external_id=str(anomaly.id),
            external_source=self.messages.product,
        )
        key = (
            request_key(self.database.installation_id, scope)
            if provider.capabilities.idempotency_keys
            else None
        )

        def create(retrying: bool) -> Ticket:
            # Not retrying: no earlier attempt with this key reached the provider, whose lookup
            # would find nothing, so it is skipped. Retrying: the provider looks first.
            return provider.create(full_draft, idempotency_key=key, key_is_fresh=not retrying)

        def record(ticket: Ticket, conn: sa.Connection) -> Mapping[str, Any]:
            link = self._store_link(anomaly.id, integration_id, ticket, conn)
            return {"ticket_id": ticket.id, "link_id": link.id}

        with call_budget(deadline=self.interactive_deadline):
            outcome = self.requests.run(scope, request, create, record=record)
            made, result = outcome
            return CreatedTicket(
                made or provider.get(result["ticket_id"]), self._link(result), existing=made is None
            )

    def link_ticket(
        self,
        anomaly: Anomaly,
        integration_id: int,
        *,
        ticket_id: str | None = None,
        ticket_number: str | None = None,
    ) -> tuple[Ticket, TicketLink]:
        """Link an existing ticket: append the anomaly block, queue a linkage note, store the link.

        Once per ticket and anomaly, however many requests race: linking the same ticket again
        changes nothing and returns the existing link. A ticket is linked through one integration
        at a time (:class:`Conflict` otherwise): two would each count the other's notes as their
        own when looking for one in doubt.
        """
        provider = self.provider_for(integration_id, None)
        heading = self.messages.anomaly_heading(anomaly.id)

        def append_block(retrying: bool) -> Ticket:
            current = provider.get(ticket.id) if retrying else ticket
            if heading in current.description:
                return current
            block = self.messages.anomaly_block(anomaly)
            # Under an empty description the block stands alone, not after blank lines.
            description = (
                current.description + block if current.description.strip() else block.lstrip()
            )
            return provider.update(current.id, TicketChanges(description=description))

        def record(linked: Ticket, conn: sa.Connection) -> Mapping[str, Any]:
            link = self.links.find(anomaly.id, integration_id, linked.id, conn)
            if link is None:
                link = self._store_link(anomaly.id, integration_id, linked, conn)
                note = AddWorkNote(self.messages.link_note(anomaly))
                self.outbox.enqueue([NewEvent(integration_id, linked.id, note, anomaly.id)], conn)
            return {"ticket_id": linked.id, "link_id": link.id}

        with call_budget(deadline=self.interactive_deadline):
            ticket = self._existing_ticket(provider, ticket_id, ticket_number)
            other = self.links.integration_linking(ticket.id)
            if other not in (None, integration_id):
                raise Conflict(
                    f"{ticket.number} is linked through integration {other}: a ticket is synced "
                    "through one integration; link it there, or delete that integration first"
                )
            scope = f"link:{integration_id}:{anomaly.id}:{ticket.id}"
            outcome = self.requests.run(scope, fingerprint(scope), append_block, record=record)
            linked, result = outcome
            return linked or provider.get(ticket.id), self._link(result)

    def pull_status(self, anomaly_id: int) -> list[TicketLink]:
        """Read each linked ticket's status; record it, and comment on the anomaly when it changed.

        The anomaly's own status never changes. Tickets of a provider with inbound sync are read
        a hundred per request. A ticket that cannot be read keeps its last known status while the
        others are refreshed; only when none can be read is the error raised.
        """
        links = self.links.for_anomaly(anomaly_id)
        failures: list[ProviderError | IntegrationUnusable] = []
        for integration_id, linked in _by_integration(links).items():
            statuses = self._statuses(integration_id, [link.ticket_id for link in linked])
            for link in linked:
                status = statuses[link.ticket_id]
                if not isinstance(status, str):
                    log.warning(
                        "cannot pull %s for anomaly %s: %s", link.ticket_number, anomaly_id, status
                    )
                    failures.append(status)
                    continue
                if status != link.status:
                    # Comment before recording: a crash in between repeats the comment, never
                    # loses it.
                    self.comment_on_anomaly(
                        anomaly_id,
                        self.messages.status_pulled(link.ticket_number, link.status, status),
                    )
                with self.database.begin() as conn:
                    self.links.record_status(link.id, status, utcnow(), conn)
                    if status != link.status:
                        detail = f"status {link.status or 'unknown'} -> {status}, pulled"
                        self.outbox.log.write(
                            conn,
                            LogEntry(
                                INBOUND, "pulled", link.integration_id, link.ticket_id,
                                anomaly_id, detail,
                            ),
                        )  # fmt: skip
        if links and len(failures) == len(links):
            raise failures[0]
        return self.links.for_anomaly(anomaly_id)

    def _statuses(
        self, integration_id: int, ticket_ids: Sequence[str]
    ) -> dict[str, str | ProviderError | IntegrationUnusable]:
        """Each ticket's status label, or why it could not be read: a hundred tickets per read
        where the provider can, else one by one."""
        found: dict[str, str | ProviderError | IntegrationUnusable] = {}
        try:
            provider = self.provider_for(integration_id, None)
            if isinstance(provider, InboundProvider) and provider.capabilities.inbound_sync:
                for start in range(0, len(ticket_ids), MAX_PAGE_SIZE):
                    with call_budget(deadline=self.interactive_deadline):
                        tickets = provider.get_many(ticket_ids[start : start + MAX_PAGE_SIZE])
                    found.update((ticket.id, ticket.status) for ticket in tickets)
                gone = NotFound("no such ticket: it was deleted, or is hidden from us")
                return {ticket_id: found.get(ticket_id, gone) for ticket_id in ticket_ids}
            for ticket_id in ticket_ids:
                try:
                    with call_budget(deadline=self.interactive_deadline):
                        found[ticket_id] = provider.get_status(ticket_id).label
                except ProviderError as exc:
                    found[ticket_id] = exc
        except (ProviderError, IntegrationUnusable) as exc:
            return {ticket_id: found.get(ticket_id, exc) for ticket_id in ticket_ids}
        return found

    # -- flows that only queue ------------------------------------------------------------------

    def anomaly_status_changed(
        self,
        anomaly_id: int,
        status: str,
        *,
        changed_at: datetime | None = None,
        conn: sa.Connection | None = None,
        came_from: TicketRef | None = None,
    ) -> int:
        """Queue what each linked ticket's policy makes of the change; returns the events stored.

        ``came_from``: the ticket the change came from (inbound sync), which is not told of it."""
        change = StatusChange(anomaly_id, status, changed_at or utcnow())
        return self._queue(
            anomaly_id,
            lambda policy, can: policy.on_status_change(change, self.messages, can),
            conn,
            came_from,
        )

    def anomaly_commented(
        self,
        anomaly_id: int,
        text: str,
        *,
        origin: str = USER,
        conn: sa.Connection | None = None,
        came_from: TicketRef | None = None,
    ) -> int:
        """Queue a user's comment for every linked ticket; the integration's own are not pushed,
        nor is one copied from a ticket (``came_from``) pushed back to that ticket."""
        if origin == INTEGRATION:
            return 0
        if not text.strip():
            raise InvalidInput("comment text must not be empty")
        return self._queue(
            anomaly_id,
            lambda policy, can: policy.on_comment(text, self.messages, can),
            conn,
            came_from,
        )

    def prune(self) -> None:
        """Forget delivered events and finished request keys past their retention."""
        self.outbox.prune()
        self.requests.prune()

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
        came_from: TicketRef | None = None,
    ) -> int:
        with self.database.begin(conn) as c:
            new_events = [
                NewEvent(link.integration_id, link.ticket_id, action, anomaly_id)
                for link in self.links.for_anomaly(anomaly_id, conn=c)
                if (link.integration_id, link.ticket_id) != came_from
                for action in actions_of(
                    self.policy_for(link.integration_id, c),
                    self._capabilities(link.integration_id, c),
                )
            ]
            # The dispatcher hears of them once the transaction (the caller's, if given) commits.
            return self.outbox.enqueue(new_events, conn=c)

    def _capabilities(self, integration_id: int, conn: sa.Connection) -> Capabilities:
        # Queuing must not depend on the provider being usable now: if it cannot even be built,
        # assume the defaults and let delivery report the problem (the event ends up dead, listed).
        try:
            return self.provider_for(integration_id, conn).capabilities
        except TicketingError as exc:
            log.warning(
                "integration %s: %s; queuing with default capabilities", integration_id, exc
            )
            return Capabilities()

    def _store_link(
        self, anomaly_id: int, integration_id: int, ticket: Ticket, conn: sa.Connection
    ) -> TicketLink:
        return self.links.add(
            anomaly_id=anomaly_id,
            integration_id=integration_id,
            ticket_id=ticket.id,
            ticket_number=ticket.number,
            ticket_url=ticket.url,
            status=ticket.status,
            conn=conn,
        )

    def _link(self, result: Mapping[str, Any]) -> TicketLink:
        link = self.links.get(int(result["link_id"]))
        if link is None:  # its integration was deleted meanwhile
            raise InvalidInput("the ticket's integration was deleted while it was being linked")
        return link

    @staticmethod
    def _existing_ticket(
        provider: Provider, ticket_id: str | None, ticket_number: str | None
    ) -> Ticket:
        if ticket_id:
            return provider.get(ticket_id)
        if ticket_number:
            return provider.find(ticket_number)
        raise InvalidInput("give ticket_id or ticket_number of the ticket to link")
