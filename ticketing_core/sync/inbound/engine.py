"""Changes flowing back: what a ticket's change does to the anomalies linked to it.

A change is learnt of from a notification (:meth:`Inbound.notify`, stored and answered at once)
or from the reconciling poll (:meth:`Inbound.reconcile`), and in both cases the tickets are read
with the integration's own credentials: a notification names a ticket and is believed no further.

Exactly once, in the ticket's order, on the host's side: a ticket's change is applied in the
transaction that raises the ticket's applied ``revision`` (a conditional update, so two workers
reading the same change cannot both apply it, and an older read never undoes a newer one), and a
journal entry in the one that stores its id. What the integration's own user did (an echo of
our own delivery) only moves the link's status; and what came from a ticket is never sent back
to it (``came_from``), while other tickets of the anomaly still get it. Every decision is a row
of the sync log, in the transaction that acts on it.

Assumptions: the service raises ``Ticket.revision`` with every change (when it has none, every
read that differs is applied); it records who made a change in ``updated_by``/``author``; a
commit becomes visible to the poll within :data:`POLL_OVERLAP` seconds of the time it carries.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING

import attrs
import sqlalchemy as sa

from ticketing_core.errors import InvalidInput, PermissionDenied
from ticketing_core.hookspecs import InboundProvider
from ticketing_core.models import JournalEntry, Notice, Ticket, TicketLink
from ticketing_core.policies import InboundPolicy
from ticketing_core.sync.inbound.host import Anomalies, Heard, InboundPolicyFor
from ticketing_core.sync.inbound.intake import BatchedIntake
from ticketing_core.sync.inbound.schema import applied_entries
from ticketing_core.sync.inbound.state import (
    BATCH,
    NEW,
    STALE,
    InboundState,
    seen_before,
)
from ticketing_core.sync.service import INTEGRATION, TICKET, SyncService
from ticketing_core.sync.synclog import INBOUND, LogEntry, SyncLog

if TYPE_CHECKING:
    from ticketing_core.sync.database import Database

log = logging.getLogger(__name__)

POLL_OVERLAP = 120.0  # seconds each poll re-reads before its cursor: late commits, equal times
ENTRY_OVERLAP = timedelta(seconds=120)  # the same for journal entries
FIRST_READ_SLACK = timedelta(hours=1)  # how far the host's clock may run ahead of the instance
HEARD_RESOLUTION = 1.0  # seconds: how fresh "last heard from the instance" is kept
# Seconds a provider's list of states is trusted: a state retired meanwhile is noticed (and
# logged) once a ticket in it is applied after this long.
STATES_MAX_AGE = 300.0
MAX_POLL_PAGES = 1000  # per poll: 100,000 changed tickets; the next poll goes on from there
MAX_DRAIN = 20 * BATCH  # notified tickets per drain; the next drain goes on from there
ENTRIES_PER_INSERT = 500  # rows of one INSERT: well within both databases' bound parameters


@attrs.define
class Inbound:
    """Applies changes read from tickets to their anomalies (see the module's docstring)."""

    service: SyncService
    policy_for: InboundPolicyFor
    anomalies: Anomalies
    on_notice: Callable[[int], object] | None = None
    """Told an integration's id once a notification for it is stored (a worker's wake)."""
    log: SyncLog = attrs.field(init=False)
    _heard_written: dict[int, float] = attrs.field(init=False, factory=dict)
    _heard_lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    _states_read: dict[int, float] = attrs.field(init=False, factory=dict)
    _intake: BatchedIntake = attrs.field(init=False)
    state: InboundState = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.log = SyncLog(self.service.database)
        self.state = InboundState(self.service.database)
        self._intake = BatchedIntake(self._store_notices)

    @property
    def database(self) -> Database:
        return self.service.database

    # -- intake ----------------------------------------------------------------------------------

    def notify(self, integration_id: int, notice: Notice) -> None:
        """Store a verified notification for its ticket to be read after the caller answers;
        returns once it is committed (with the others that arrived meanwhile), raises
        :class:`TimeoutError` when that takes longer than :attr:`notify_timeout`."""
        self._intake.put(integration_id, notice)

    def submit(self, integration_id: int, notice: Notice) -> asyncio.Future[None]:
        """:meth:`notify` for a coroutine, which must not block its event loop: a future of that
        loop, done once the notification is committed."""
        return self._intake.submit_async(integration_id, notice)

    @property
    def notify_timeout(self) -> float:
        return self._intake.timeout

    def _store_notices(self, received: Sequence[tuple[int, Notice]]) -> None:
        """Store the notifications to be read, but not one whose revision was applied already
        (a replay, a duplicate, one the poll overtook): its change has been read, and a newer
        change brings a notification of its own (or the poll finds it). Each is logged."""
        with self.database.begin() as conn:
            now = self.database.now(conn)
            fresh, seen = self.state.unapplied(conn, received)
            self.state.store(conn, fresh, now)
            self.log.write(
                conn,
                *(_received(iid, notice) for iid, notice in fresh),
                *(_seen(iid, notice, applied) for iid, notice, applied in seen),
            )
            for integration_id in sorted({iid for iid, _ in received}):
                if self._heard_long_ago(integration_id):
                    self.state.touch(conn, integration_id, heard_at=now)
            for integration_id in sorted({iid for iid, _ in fresh}):
                if self.on_notice is not None:
                    self.database.after_commit(conn, partial(self.on_notice, integration_id))

    def _heard_long_ago(self, integration_id: int) -> bool:
        """Whether "last heard" was written more than a second ago by this process: it is
        written at most once a second, not once per notification."""
        now = time.monotonic()
        with self._heard_lock:
            if now - self._heard_written.get(integration_id, -HEARD_RESOLUTION) < HEARD_RESOLUTION:
                return False
            self._heard_written[integration_id] = now
            return True

    def refused(self, integration_id: int, reason: str) -> None:
        """Record a notification refused unread (a bad signature, say)."""
        self._note(integration_id, "refused", None, reason)

    def failed(self, integration_id: int, reason: str) -> None:
        """Record a read or poll that failed (it is tried again)."""
        self._note(integration_id, "read failed", None, reason)

    def heard(self, integration_id: int) -> Heard:
        return self.state.heard(integration_id)

    def pending_integrations(self) -> list[int]:
        """Integrations with notifications waiting to be read."""
        return self.state.pending_integrations()

    def prune(self, older_than: datetime) -> int:
        """Forget journal entry ids seen before ``older_than``: reads never reach back so far."""
        return self.state.prune(older_than)

    # -- work ------------------------------------------------------------------------------------

    def drain(self, integration_id: int) -> int:
        """Read the tickets stored notifications name, a batch at a time, and apply them, each
        ticket once: one notified again meanwhile waits for the next drain (a ticket notified
        without pause is read once a drain, not once a notification). Returns how many tickets
        were read."""
        read: set[str] = set()
        while len(read) < MAX_DRAIN and (batch := self.state.waiting(integration_id, read)):
            inbound = self._connected(integration_id)
            if inbound is None:  # inbound sync was turned off meanwhile
                self.state.forget(integration_id, batch)
                return len(read)
            provider, policy = inbound
            tickets = provider.get_many(list(batch))
            for missing in sorted(set(batch) - {ticket.id for ticket in tickets}):
                self._note(integration_id, "not found", missing, detail="the ticket is gone")
            self.apply(integration_id, tickets, provider, policy)
            self.state.forget(integration_id, batch)
            read.update(batch)
        return len(read)

    def reconcile(self, integration_id: int) -> int:
        """List the tickets changed since the cursor and apply those linked here, as
        notifications would; returns how many tickets were listed."""
        inbound = self._connected(integration_id)
        if inbound is None:
            return 0
        provider, policy = inbound
        cursor = self.state.cursor(integration_id)
        overlap = POLL_OVERLAP
        listed = 0
        for _ in range(MAX_POLL_PAGES):  # bounded: a service that always says "more" cannot hold us
            page = provider.changed_since(cursor, overlap=overlap, limit=BATCH)
            overlap = 0.0  # only the poll's first page reaches back
            listed += len(page.tickets)
            linked = self.service.links.linked_tickets(
                integration_id, [ticket.id for ticket in page.tickets]
            )
            self.apply(
                integration_id, [t for t in page.tickets if t.id in linked], provider, policy
            )
            cursor = page.cursor
            self.state.save_cursor(integration_id, cursor, finished=not page.more)
            if not page.more:
                break
        return listed

    def apply(
        self,
        integration_id: int,
        tickets: Sequence[Ticket],
        provider: InboundProvider,
        policy: InboundPolicy,
    ) -> None:
        """Apply each ticket's change to the anomalies linked to it, once. A ticket whose
        journal is read is applied in a transaction of its own; those with nothing to apply (a
        duplicate, our own writes alone) are noted together, in one."""
        own = provider.own_user()
        known = self.state.revisions(integration_id, [ticket.id for ticket in tickets])
        repeated = []
        ours_only = []
        applied_now = []
        for ticket in tickets:
            applied, entries_after = known.get(ticket.id, (None, None))
            if (decision := seen_before(ticket.revision, applied)) is not None:
                repeated.append(
                    LogEntry(
                        INBOUND, decision, integration_id, ticket.id, None,
                        f"revision {ticket.revision}",
                    )
                )  # fmt: skip
                continue
            with self.database.read() as conn:
                links = self.service.links.for_ticket(integration_id, ticket.id, conn)
                ours = bool(links) and self._ours_only(conn, integration_id, ticket, applied, own)
            if not links:
                continue
            if ours:
                ours_only.append(ticket)
                continue
            entries = (
                self._entries(integration_id, provider, ticket, links, entries_after)
                if policy.copy_entries
                else []
            )
            with self.database.begin() as conn:
                if self._apply_ticket(conn, integration_id, ticket, entries, own, policy):
                    applied_now.append(ticket)
        if repeated or ours_only:
            with self.database.begin() as conn:
                self.log.write(conn, *repeated)
                # In one order, so that two appliers of one batch never wait on each other.
                for ticket in sorted(ours_only, key=lambda t: t.id):
                    if self._apply_ticket(conn, integration_id, ticket, (), own, policy, ours=True):
                        applied_now.append(ticket)
        in_states = [ticket for ticket in applied_now if ticket.status]
        listed = self._known_states(integration_id, provider) if in_states else set()
        for ticket in in_states:
            if ticket.status not in listed:
                self._note(
                    integration_id,
                    "unknown state",
                    ticket.id,
                    f"{ticket.status!r} is not in the instance's state choices (read again)",
                )

    def _known_states(self, integration_id: int, provider: InboundProvider) -> set[str]:
        """The labels of the instance's states, read again once the list is
        :data:`STATES_MAX_AGE` old (a provider reads it again itself on a state it lacks)."""
        now = time.monotonic()
        stale = now - self._states_read.get(integration_id, -STATES_MAX_AGE) >= STATES_MAX_AGE
        if stale:
            self._states_read[integration_id] = now
        return {state.label for state in provider.states(refresh=stale)}

    # -- one ticket ------------------------------------------------------------------------------

    def _ours_only(
        self, conn: sa.Connection, integration_id: int, ticket: Ticket, applied: int | None,
        own: str,
    ) -> bool:  # fmt: skip
        """Whether every revision since the one applied last is one our own deliveries' answers
        told (the third guard against echoes, after the rule's condition and the author): then
        the ticket holds nothing to apply, and its journal need not be read."""
        if applied is None or ticket.revision is None or ticket.updated_by != own:
            return False
        return self.service.outbox.ours_between(
            integration_id, ticket.id, applied, ticket.revision, conn
        )

    def _apply_ticket(
        self,
        conn: sa.Connection,
        integration_id: int,
        ticket: Ticket,
        entries: Sequence[JournalEntry],
        own: str,
        policy: InboundPolicy,
        *,
        ours: bool = False,
    ) -> bool:
        """Apply one ticket's change in the caller's transaction if its revision is new;
        whether it was. ``ours``: every revision since the last applied was our own write."""
        decision = self.state.claim_revision(conn, integration_id, ticket)
        if decision != NEW:
            self._note(integration_id, decision, ticket.id, f"revision {ticket.revision}", conn)
            return False
        # Read again under the claim: an applier that went before may have moved them.
        links = self.service.links.for_ticket(integration_id, ticket.id, conn)
        # Who changed the status is not who changed the ticket last (a note of ours may have
        # followed a person's change): the status is ours when it is the one we set.
        moved = [link for link in links if link.status != ticket.status]
        echo = ours or (
            bool(moved)
            and ticket.status == self.service.outbox.status_sent(integration_id, ticket.id, conn)
        )
        for link in moved:
            self._follow_status(conn, link, ticket, echo, own, policy)
        if ticket.updated_by == own and not moved:
            detail = (
                f"revision {ticket.revision}: written by this integration" if ours else f"by {own}"
            )
            self._note(integration_id, "echo dropped", ticket.id, detail, conn)
        if entries:
            self._copy_entries(conn, integration_id, entries, links, own)
            self.state.read_entries_until(conn, integration_id, ticket.id, entries[-1].created_at)
        elif ours and ticket.updated_at is not None:
            # Every entry up to our last write is ours: the next read starts there, not weeks back.
            self.state.read_entries_until(conn, integration_id, ticket.id, ticket.updated_at)
        return True

    def _follow_status(
        self,
        conn: sa.Connection,
        link: TicketLink,
        ticket: Ticket,
        echo: bool,
        own: str,
        policy: InboundPolicy,
    ) -> None:
        """The link takes the ticket's status; unless it was our own change, the anomaly hears
        of it, and its own status follows when the policy maps the new one."""
        self.service.links.record_status(link.id, ticket.status, self.database.now(conn), conn)
        if echo:
            detail = f"status {ticket.status}: the one this integration set"
            self._note(link.integration_id, "echo dropped", ticket.id, detail, conn)
            return
        messages = self.service.messages
        # The last writer is named unless it was us (then someone changed the status before).
        by = ticket.updated_by if ticket.updated_by not in (None, own) else "someone"
        text = messages.status_pulled(link.ticket_number, link.status, ticket.status, by)
        self.anomalies.comment(link.anomaly_id, text, INTEGRATION, conn)
        detail = f"status {link.status or 'unknown'} -> {ticket.status} by {by}"
        mapped = policy.status_map.get(ticket.status)
        if mapped is not None and self.anomalies.set_status(link.anomaly_id, mapped, conn):
            detail += f"; anomaly status -> {mapped}"
            self.service.anomaly_status_changed(
                link.anomaly_id, mapped, conn=conn, came_from=(link.integration_id, ticket.id)
            )
        self._note(link.integration_id, "applied", ticket.id, detail, conn, link.anomaly_id)

    def _copy_entries(
        self,
        conn: sa.Connection,
        integration_id: int,
        entries: Sequence[JournalEntry],
        links: Sequence[TicketLink],
        own: str,
    ) -> None:
        """Copy the entries not applied before to the linked anomalies, but our own (echoes).
        Storing an entry's id is what makes it applied once: one statement for them all."""
        now = self.database.now(conn)
        rows = [
            {"integration_id": integration_id, "entry_id": entry.id,
             "ticket_id": entry.ticket_id, "seen": now}
            for entry in entries
        ]  # fmt: skip
        stored: set[str] = set()
        for start in range(0, len(rows), ENTRIES_PER_INSERT):
            # RETURNING tells which rows went in (rowcount does not, on every driver).
            insert = self.database.insert(applied_entries)
            stored.update(
                conn.execute(
                    insert.values(rows[start : start + ENTRIES_PER_INSERT])
                    .on_conflict_do_nothing()
                    .returning(applied_entries.c.entry_id)
                ).scalars()
            )
        notes = []
        for entry in entries:
            if entry.id not in stored:
                continue  # read again through an overlap: applied already
            if entry.author == own:
                notes.append(
                    LogEntry(INBOUND, "echo dropped", integration_id, entry.ticket_id, None,
                             f"entry {entry.id}")
                )  # fmt: skip
                continue
            for link in links:
                text = self.service.messages.ticket_entry(
                    link.ticket_number, entry.kind, entry.author, entry.text
                )
                self.anomalies.comment(link.anomaly_id, text, TICKET, conn)
                self.service.anomaly_commented(
                    link.anomaly_id, text, conn=conn, came_from=(integration_id, entry.ticket_id)
                )
                notes.append(
                    LogEntry(INBOUND, "applied", integration_id, entry.ticket_id, link.anomaly_id,
                             f"{entry.kind} {entry.id} by {entry.author} copied")
                )  # fmt: skip
        self.log.write(conn, *notes)

    def _entries(
        self,
        integration_id: int,
        provider: InboundProvider,
        ticket: Ticket,
        links: Sequence[TicketLink],
        entries_after: datetime | None,
    ) -> list[JournalEntry]:
        """The ticket's entries since those read last (since it was linked, at first); none,
        noted, when the connection may not read them: the status still follows."""
        since = entries_after or self._first_read_from(ticket, links)
        try:
            return provider.journal_since(ticket.id, since - ENTRY_OVERLAP)
        except PermissionDenied as exc:  # for good: the status still follows, the log says why
            self._note(integration_id, "entries unreadable", ticket.id, str(exc))
            return []
        # Any other failure passes up before the change is claimed: it is read again later.

    @staticmethod
    def _first_read_from(ticket: Ticket, links: Sequence[TicketLink]) -> datetime:
        """Where a ticket's first journal read starts: when it was linked, on the host's clock,
        an hour early so that an instance clock behind ours loses nothing; never before the
        ticket was made (the instance's own time)."""
        start = min(link.created for link in links) - FIRST_READ_SLACK
        return max(start, ticket.created_at) if ticket.created_at else start

    def _connected(self, integration_id: int) -> tuple[InboundProvider, InboundPolicy] | None:
        policy = self.policy_for(integration_id, None)
        if policy is None:
            return None
        provider = self.service.provider_for(integration_id, None)
        if not isinstance(provider, InboundProvider) or not provider.capabilities.inbound_sync:
            raise InvalidInput(f"integration {integration_id}'s provider has no inbound sync")
        return provider, policy

    def _note(
        self,
        integration_id: int,
        decision: str,
        ticket_id: str | None,
        detail: str,
        conn: sa.Connection | None = None,
        anomaly_id: int | None = None,
    ) -> None:
        entry = LogEntry(INBOUND, decision, integration_id, ticket_id, anomaly_id, detail)
        with self.database.begin(conn) as c:
            self.log.write(c, entry)


def _received(integration_id: int, notice: Notice) -> LogEntry:
    return LogEntry(INBOUND, "received", integration_id, notice.ticket_id, None, _told(notice))


def _seen(integration_id: int, notice: Notice, applied: int) -> LogEntry:
    decision = seen_before(notice.revision, applied) or STALE
    detail = f"{_told(notice)}: revision {applied} applied already, not read again"
    return LogEntry(INBOUND, decision, integration_id, notice.ticket_id, None, detail)


def _told(notice: Notice) -> str:
    told = f"{notice.event} by {notice.updated_by or 'someone'}"
    return told if notice.revision is None else f"{told}, revision {notice.revision}"
