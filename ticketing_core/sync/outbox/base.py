"""What every part of the outbox shares: its settings, when a claim is settled, and loading events."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Self

import attrs
import sqlalchemy as sa

from ticketing_core.policies import AddWorkNote
from ticketing_core.sync.outbox.schema import (
    DELIVERED,
    PENDING,
    OutboxEvent,
    events,
    loaded_event,
    note_digest,
    note_tally,
)
from ticketing_core.sync.settings import (
    DEFAULT_BACKOFF_INITIAL,
    DEFAULT_BACKOFF_MAX,
    DEFAULT_DOUBT_SECONDS,
    DEFAULT_LEASE_SECONDS,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_RETENTION,
    DeliverySettings,
)
from ticketing_core.sync.synclog import SyncLog

if TYPE_CHECKING:
    from ticketing_core.sync.database import Database

Wake = Callable[[Collection[str]], object]
"""Told the tickets (ordering keys) new events were stored for, once they are visible."""


NOW = sa.bindparam("now", type_=events.c.next_attempt_at.type)
"""The database's time, bound when a statement built once is run (see ``_times``)."""
TAKEN_OVER_BEFORE = sa.bindparam("taken_over_before", type_=events.c.lease_until.type)
"""A lease that ended before this (now minus the doubt window) frees its event."""

SETTLED = sa.or_(events.c.lease_until.is_(None), events.c.lease_until <= TAKEN_OVER_BEFORE)
"""No claim holds the event: none was made, or it was settled, or its worker is gone (its lease
ran out, and the doubt window after it, in case it sent something)."""

IN_FLIGHT = sa.and_(events.c.claim_token.is_not(None), events.c.status == PENDING, sa.not_(SETTLED))
"""Claimed and not yet free to be taken over (lease + doubt): what the instance limit and the
operator's counts call in flight. A worker that stalled past its lease may still be sending."""


class OutboxBase:
    """Settings and shared reads; :class:`~ticketing_core.sync.outbox.Outbox` adds the rest."""

    def __init__(
        self,
        database: Database,
        *,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        doubt_seconds: float = DEFAULT_DOUBT_SECONDS,
        backoff_initial: float = DEFAULT_BACKOFF_INITIAL,
        backoff_max: float = DEFAULT_BACKOFF_MAX,
        retention: timedelta = DEFAULT_RETENTION,
    ) -> None:
        self.database = database
        self.max_attempts = max_attempts
        self.lease = timedelta(seconds=lease_seconds)
        self.doubt = timedelta(seconds=doubt_seconds)
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.retention = retention
        self.log = SyncLog(database)
        self.on_stored: Wake | None = None
        """Called after the transaction that stored events commits (a dispatcher's wake)."""

    @classmethod
    def from_settings(cls, database: Database, settings: DeliverySettings) -> Self:
        """An outbox with ``settings``' attempts, lease, doubt window, backoff and retention."""
        values = attrs.asdict(settings, recurse=False)
        del values["delivery_deadline"]  # the delivery's, not the outbox's
        return cls(database, **values)

    def _times(self, now: datetime) -> dict[str, datetime]:
        """The parameters of :data:`NOW` and :data:`TAKEN_OVER_BEFORE` at ``now``."""
        return {"now": now, "taken_over_before": now - self.doubt}

    def _load(self, conn: sa.Connection, event_ids: Sequence[int]) -> list[OutboxEvent]:
        if not event_ids:
            return []
        rows = conn.execute(
            sa.select(events).where(events.c.id.in_(event_ids)).order_by(events.c.id)
        ).mappings()
        return self._loaded(conn, list(rows))

    def _loaded(self, conn: sa.Connection, rows: Sequence[sa.RowMapping]) -> list[OutboxEvent]:
        loaded = [loaded_event(row, self.database.installation_id) for row in rows]
        # Only a look asks how many identical notes went before, and only events in doubt look.
        return [self._counted(conn, event) if event.in_doubt else event for event in loaded]

    @staticmethod
    def _counted(conn: sa.Connection, event: OutboxEvent) -> OutboxEvent:
        if not isinstance(event.action, AddWorkNote):
            return event
        digest = note_digest(event.action)
        kept = sa.select(sa.func.count()).where(
            events.c.ticket_id == event.ticket_id,
            events.c.note_digest == digest,
            events.c.status == DELIVERED,
            events.c.id < event.id,
        )
        pruned = sa.select(note_tally.c.delivered).where(
            note_tally.c.ticket_id == event.ticket_id, note_tally.c.digest == digest
        )
        # One statement, so a prune moving events into the tally is seen whole or not at all.
        both = sa.select(kept.scalar_subquery() + sa.func.coalesce(pruned.scalar_subquery(), 0))
        return attrs.evolve(event, identical_before=conn.execute(both).scalar_one())
