"""What an operator and a dashboard do with the outbox: list, count, retry, discard, prune."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any, Literal

import attrs
import sqlalchemy as sa

from ticketing_core.policies import Action, AddWorkNote, ChangeTicket
from ticketing_core.sync.outbox.base import IN_FLIGHT, OutboxBase
from ticketing_core.sync.outbox.schema import (
    DEAD,
    DELIVERED,
    PENDING,
    OutboxEvent,
    actions,
    events,
    note_tally,
    ordering_key,
    pauses,
)

MAX_SHOWN_ERROR = 500  # characters of an event's last error a delivery state shows


@attrs.frozen
class IntegrationStats:
    """One integration's events by status, as an operator or a metrics scrape sees them."""

    integration_id: int
    pending: int = 0
    dead: int = 0
    delivered: int = 0
    in_flight: int = 0
    """Tickets with unsettled claims not yet free to be taken over, across every worker:
    deliveries in flight (a worker sends a ticket's claimed events one after the other)."""
    oldest_pending_seconds: float | None = None


DeliveryStatus = Literal["idle", "delivering", "paused", "failing"]


@attrs.frozen
class DeliveryState:
    """How one integration's deliveries stand: events pending and dead, the pause in force, the
    last failure of an event still undelivered (one line), and the last delivery. Times are the
    database's."""

    pending: int = 0
    dead: int = 0
    retrying: int = 0
    """Of the pending events, those that failed before and wait to be tried again."""
    paused_until: datetime | None = None
    last_error: str | None = None
    last_delivered_at: datetime | None = None

    @property
    def status(self) -> DeliveryStatus:
        """``paused`` while its claims wait (until ``paused_until``); else ``failing`` when events
        failed (pending a retry, or dead); else ``delivering`` with events pending; else ``idle``."""
        if self.paused_until is not None:
            return "paused"
        if self.retrying or self.dead:
            return "failing"
        return "delivering" if self.pending else "idle"


class Operations(OutboxBase):
    def retry(self, event_ids: Sequence[int] | None = None) -> int:
        """Put dead events (all, or those given) back in line with fresh attempts; returns how many.

        Doubt is kept: an event that may have landed is looked for before it is sent again, and
        not sent before its doubt window is over (:meth:`~ticketing_core.sync.outbox.Outbox.confirm`).
        """
        query = events.update().where(events.c.status == DEAD)
        if event_ids is not None:
            query = query.where(events.c.id.in_(event_ids))
        with self.database.begin() as conn:
            return int(
                conn.execute(
                    query.values(
                        status=PENDING,
                        attempts=0,
                        outage_attempts=0,
                        next_attempt_at=self.database.now(conn),
                        lease_until=None,
                    )
                ).rowcount
            )

    def discard(self, event_ids: Sequence[int]) -> int:
        """Drop dead events that can never succeed (their ticket is gone), unblocking later ones."""
        with self.database.begin() as conn:
            return int(
                conn.execute(
                    events.delete().where(events.c.id.in_(event_ids), events.c.status == DEAD)
                ).rowcount
            )

    def discard_for_integration(self, integration_id: int, conn: sa.Connection) -> None:
        """Drop an integration's undelivered events (it is being deleted); delivered ones stay,
        and so does the tally: their notes stay on the tickets, which another integration may
        link again."""
        conn.execute(
            events.delete().where(
                events.c.integration_id == integration_id, events.c.status != DELIVERED
            )
        )

    def prune(self) -> int:
        """Delete events delivered longer than ``retention`` ago, counting their notes into the
        tally first; returns how many."""
        with self.database.begin() as conn:
            cutoff = self.database.now(conn) - self.retention
            old = sa.and_(events.c.status == DELIVERED, events.c.delivered_at < cutoff)
            notes = conn.execute(
                sa.select(events.c.ticket_id, events.c.note_digest, sa.func.count())
                .where(old, events.c.note_digest.is_not(None))
                .group_by(events.c.ticket_id, events.c.note_digest)
            ).all()
            for ticket_id, digest, count in notes:
                self._add_to_tally(conn, ticket_id, digest, count)
            self.log.prune(cutoff, conn)
            return int(conn.execute(events.delete().where(old)).rowcount)

    @staticmethod
    def _add_to_tally(conn: sa.Connection, ticket_id: str, digest: str, count: int) -> None:
        match = sa.and_(note_tally.c.ticket_id == ticket_id, note_tally.c.digest == digest)
        added = conn.execute(
            note_tally.update().where(match).values(delivered=note_tally.c.delivered + count)
        ).rowcount
        if not added:
            conn.execute(
                note_tally.insert().values(ticket_id=ticket_id, digest=digest, delivered=count)
            )

    def status_sent(self, integration_id: int, ticket_id: str, conn: sa.Connection) -> str | None:
        """The status the newest status change delivered to the ticket set, if any: what an
        echo of our own write looks like when the ticket is read back."""
        changes = conn.execute(
            sa.select(events.c.action)
            .where(
                events.c.integration_id == integration_id,
                events.c.ticket_id == ticket_id,
                events.c.status == DELIVERED,
                events.c.note_digest.is_(None),  # not a note: a change of fields
            )
            .order_by(events.c.delivered_at.desc(), events.c.id.desc())
            .limit(20)
        ).scalars()
        for action in changes:
            if status := action.get("changes", {}).get("status"):
                return str(status)
        return None

    def ours_between(
        self, integration_id: int, ticket_id: str, after: int, through: int, conn: sa.Connection
    ) -> bool:
        """Whether every revision of the ticket after ``after`` up to ``through`` was made by
        a delivery of ours (its answer told that revision): the ticket then holds nothing new
        but our own writes."""
        if through <= after:
            return False
        told = conn.execute(
            sa.select(sa.func.count(sa.distinct(events.c.revision))).where(
                events.c.ordering_key == ordering_key(integration_id, ticket_id),
                events.c.status == DELIVERED,
                events.c.revision > after,
                events.c.revision <= through,
            )
        ).scalar_one()
        return int(told) == through - after

    def entries(self, status: str | None = None, limit: int = 100) -> list[OutboxEvent]:
        """Events newest first, all or those with ``status``."""
        query = sa.select(events.c.id).order_by(events.c.id.desc()).limit(limit)
        if status is not None:
            query = query.where(events.c.status == status)
        with self.database.read() as conn:
            return self._load(conn, list(conn.execute(query).scalars()))[::-1]

    def get(self, event_ids: Sequence[int]) -> list[OutboxEvent]:
        """The events with these ids (those that exist), oldest first."""
        with self.database.read() as conn:
            return self._load(conn, list(event_ids))

    def counts(self) -> dict[str, int]:
        with self.database.read() as conn:
            rows = conn.execute(
                sa.select(events.c.status, sa.func.count()).group_by(events.c.status)
            )
            return {PENDING: 0, DELIVERED: 0, DEAD: 0} | {status: n for status, n in rows}

    def next_attempt_in(self, event: OutboxEvent) -> float | None:
        """Seconds until a pending event may be attempted again (0 if now), None if not pending."""
        with self.database.read() as conn:
            due: datetime | None = conn.execute(
                sa.select(events.c.next_attempt_at).where(
                    events.c.id == event.id, events.c.status == PENDING
                )
            ).scalar()
            if due is None:
                return None
            return max(0.0, (due - self.database.now(conn)).total_seconds())

    def stats(self) -> list[IntegrationStats]:
        """Per integration: events by status, tickets in flight (as the instance limit counts
        them), and the age of the oldest pending event."""
        with self.database.read() as conn:
            now = self.database.now(conn)
            in_flight = sa.case((IN_FLIGHT, events.c.ordering_key))
            rows = conn.execute(
                sa.select(
                    events.c.integration_id,
                    events.c.status,
                    sa.func.count(),
                    sa.func.count(sa.distinct(in_flight)),
                    sa.func.min(events.c.created),
                ).group_by(events.c.integration_id, events.c.status),
                self._times(now),
            ).all()
        found: dict[int, dict[str, Any]] = {}
        for integration_id, status, count, in_flight, oldest in rows:
            entry = found.setdefault(integration_id, {"integration_id": integration_id})
            entry[status] = count
            if status == PENDING:
                entry["in_flight"] = int(in_flight or 0)
                entry["oldest_pending_seconds"] = (now - oldest).total_seconds()
        return [IntegrationStats(**found[key]) for key in sorted(found)]

    def delivery_states(self, integration_ids: Collection[int]) -> dict[int, DeliveryState]:
        """The delivery state of each of these integrations (those without events are idle)."""
        ids = sorted(set(integration_ids))
        if not ids:
            return {}
        with self.database.read() as conn:
            now = self.database.now(conn)
            counts: dict[int, dict[str, int]] = {i: {} for i in ids}
            for integration_id, status, count, failed in conn.execute(
                sa.select(
                    events.c.integration_id,
                    events.c.status,
                    sa.func.count(),
                    sa.func.count(events.c.last_error),
                )
                .where(events.c.integration_id.in_(ids), events.c.status.in_((PENDING, DEAD)))
                .group_by(events.c.integration_id, events.c.status)
            ):
                counts[integration_id][status] = count
                if status == PENDING:
                    counts[integration_id]["retrying"] = failed
            paused = {
                row.integration_id: row
                for row in conn.execute(sa.select(pauses).where(pauses.c.integration_id.in_(ids)))
            }
            states = {}
            for integration_id in ids:
                found, pause = counts[integration_id], paused.get(integration_id)
                undelivered = found.get(PENDING, 0) + found.get(DEAD, 0)
                states[integration_id] = DeliveryState(
                    pending=found.get(PENDING, 0),
                    dead=found.get(DEAD, 0),
                    retrying=found.get("retrying", 0),
                    paused_until=pause.until if pause is not None and pause.until > now else None,
                    last_error=_last_error(conn, integration_id) if undelivered else None,
                    last_delivered_at=(pause.delivered_at if pause is not None else None)
                    or _last_delivered(conn, integration_id),
                )
            return states


def _last_error(conn: sa.Connection, integration_id: int) -> str | None:
    """The error of the undelivered event that failed last (its next try is the latest: a
    failure puts it off), on one line."""
    error = conn.execute(
        sa.select(events.c.last_error)
        .where(
            events.c.integration_id == integration_id,
            events.c.status.in_((PENDING, DEAD)),
            events.c.last_error.is_not(None),
        )
        .order_by(events.c.next_attempt_at.desc(), events.c.id.desc())
        .limit(1)
    ).scalar()
    if error is None:
        return None
    line = " ".join(str(error).split())
    return line if len(line) <= MAX_SHOWN_ERROR else line[: MAX_SHOWN_ERROR - 1] + "…"


def _last_delivered(conn: sa.Connection, integration_id: int) -> datetime | None:
    """For an outbox that has not recorded a delivery in its pause row yet: its latest delivered
    event still kept."""
    latest: datetime | None = conn.execute(
        sa.select(sa.func.max(events.c.delivered_at)).where(
            events.c.integration_id == integration_id, events.c.status == DELIVERED
        )
    ).scalar()
    return latest


def describe(action: Action) -> str:
    """A one-line summary of an action, for listings."""
    if isinstance(action, AddWorkNote):
        return f"work note: {action.text}"
    if isinstance(action, ChangeTicket):
        fields = {k: v for k, v in actions.unstructure(action.changes).items() if v}
        return f"change: {fields}"
    raise TypeError(f"unknown action {action!r}")
