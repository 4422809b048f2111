"""Storing events and claiming them: which events may go now, and leasing them to one worker.

A ticket's events go one at a time, oldest first: an event may be claimed when it is pending, due,
no claim holds it, and it is the oldest undelivered event of its ticket (a dead one holds back the
later ones until it is retried or discarded). A claim takes a *run*: the ticket's oldest events
while they may be claimed, up to a batch, ended before an event that may have been attempted
(one in doubt goes alone: its look counts the notes settled before it) and after a change of
fields (settled as soon as sent, for inbound sync's echo check). At most
``instance_limit`` tickets of one integration have live claims, across every process sharing the
database, and none while the integration is paused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from ticketing_core.sync import lease
from ticketing_core.sync.outbox.base import IN_FLIGHT, NOW, SETTLED
from ticketing_core.sync.outbox.schema import (
    DEAD,
    PENDING,
    NewEvent,
    OutboxEvent,
    events,
    integration_of,
    new_row,
    ordering_key,
    pauses,
)
from ticketing_core.sync.outbox.settle import Settling

_ORDER_LOCK = 0x6F726472  # "ordr": namespace of the per-ticket PostgreSQL advisory locks
_LIMIT_LOCK = 0x6C696D74  # "limt": namespace of the per-integration locks of claims
# A claim given back before anything was attempted: as if it had not been made.
_UNCLAIMED = {"lease_until": None, "claim_token": None, "claims": events.c.claims - 1}
NO_LIMIT = 2**31 - 1


class Claims(Settling):
    """Storing and claiming; a claim may settle the previous run in its transaction."""

    def enqueue(self, new_events: Iterable[NewEvent], conn: sa.Connection | None = None) -> int:
        """Store events (in the caller's transaction when ``conn`` is given); return how many.
        Once the transaction commits, :attr:`on_stored` hears which tickets got events."""
        new_events = list(new_events)
        if not new_events:
            return 0
        tickets = {ordering_key(e.integration_id, e.ticket_id) for e in new_events}
        with self.database.begin(conn) as c:
            now = self.database.now(c)
            rows = [new_row(event, now) for event in new_events]
            self._lock_tickets(c, tickets)
            c.execute(events.insert(), rows)
            if self.on_stored is not None:
                wake = self.on_stored
                self.database.after_commit(c, lambda: wake(tickets))
        return len(rows)

    def _lock_tickets(self, conn: sa.Connection, ordering_keys: set[str]) -> None:
        """Hold each ticket's lock until the caller commits, so its ids follow commit order.

        Without it two transactions can take ids 5 and 6 and commit 6 first; a worker would then
        deliver 6 before 5 exists for it. Sorted, so two transactions never wait on each other.
        SQLite needs nothing: its writers go one at a time.
        """
        if not self.database.is_postgresql:
            return
        for key in sorted(ordering_keys):
            conn.execute(
                sa.select(sa.func.pg_advisory_xact_lock(_ORDER_LOCK, sa.func.hashtext(key)))
            )

    def claim(self, limit: int, *, instance_limit: int = NO_LIMIT) -> list[OutboxEvent]:
        """Lease the oldest due event of up to ``limit`` tickets, one claim each."""
        claimed: list[OutboxEvent] = []
        while len(claimed) < limit and (
            run := self.claim_next(instance_limit=instance_limit, batch=1)
        ):
            claimed += run
        return claimed

    def claim_next(
        self, *, prefer: str | None = None, instance_limit: int, batch: int = 1
    ) -> list[OutboxEvent]:
        """Lease a run of one ticket's due events (see the module docstring): of the ticket
        ``prefer`` names (an ordering key) when it has one due, else of another ticket of its
        integration, else of any integration's, the one due the longest first. Empty when nothing
        may be claimed now."""
        return self._claim_next(prefer, instance_limit, batch, before=None)

    def settle_and_claim_next(
        self,
        delivered: Sequence[OutboxEvent],
        *,
        prefer: str,
        instance_limit: int,
        batch: int = 1,
    ) -> tuple[dict[int, datetime], list[OutboxEvent]]:
        """Settle a run's delivered events (as :meth:`settle_delivered`) and claim the next run
        (as :meth:`claim_next`) in one transaction: a worker going on from ``prefer`` waits for
        the database's write lock once, not twice."""
        settled: dict[int, datetime] = {}

        def settle(conn: sa.Connection) -> None:
            settled.update(self._settle_delivered(conn, delivered))

        run = self._claim_next(prefer, instance_limit, batch, before=settle)
        return settled, run

    def _claim_next(
        self,
        prefer: str | None,
        instance_limit: int,
        batch: int,
        before: Callable[[sa.Connection], None] | None,
    ) -> list[OutboxEvent]:
        """``before`` runs first in the first claim's transaction (which ``prefer`` names)."""
        preferred = [integration_of(prefer)] if prefer else []
        if preferred and (
            run := self._claim_within_limit(preferred[0], prefer, instance_limit, batch, before)
        ):
            return run
        with self.database.read() as conn:
            params = {**self._times(self.database.now(conn)), "preferred": preferred}
            candidates = list(conn.execute(_CANDIDATES, params).scalars())
        for integration_id in candidates:
            if run := self._claim_within_limit(integration_id, None, instance_limit, batch, None):
                return run
        return []

    def _claim_within_limit(
        self,
        integration_id: int,
        prefer: str | None,
        instance_limit: int,
        batch: int,
        before: Callable[[sa.Connection], None] | None,
    ) -> list[OutboxEvent]:
        with self.database.begin() as conn:
            if self.database.is_postgresql:  # SQLite's writers go one at a time already
                conn.execute(_LIMIT_LOCK_OF, {"integration_id": integration_id})
            if before is not None:
                before(conn)
            now = self.database.now(conn)
            params = {**self._times(now), "integration_id": integration_id}
            busy, paused = conn.execute(_BUSY_AND_PAUSED, params).one()
            if paused is not None or busy >= instance_limit:
                return []
            run = self._run(conn, prefer, params, batch) if prefer else []
            if not run and (head := self._due_head(conn, params)) is not None:
                head_id, ticket = head  # may be claimed: a run of one needs no second look
                run = [head_id] if batch == 1 else self._run(conn, ticket, params, batch)
            if not run:
                return []
            leased = self._lease(conn, run, now)
            leased_ids = [row["id"] for row in leased]
            if leased_ids != run[: len(leased)] or not leased:  # raced for (part of) it: none
                self._release(conn, leased_ids)
                return []
            return self._loaded(conn, leased)

    def _due_head(self, conn: sa.Connection, params: dict[str, Any]) -> tuple[int, str] | None:
        """The oldest event (id, ordering key) of the integration's ticket that has been due
        longest and may be claimed, if any.

        PostgreSQL: in two steps whose cost does not hang on the planner's statistics, each
        ticket's oldest undelivered event in one pass, then those that may be claimed now, by
        primary key. SQLite walks its index of due events and stops at the first that is its
        ticket's oldest: short, since the transaction holds the whole file's write lock.
        """
        if self.database.is_postgresql:
            heads = list(conn.execute(_HEADS, params).scalars())
            found = (
                conn.execute(_DUE_AMONG_HEADS, {**params, "heads": heads}).first()
                if heads
                else None
            )
        else:
            found = conn.execute(_DUE_HEAD, params).first()
        return None if found is None else (int(found.id), str(found.ordering_key))

    @staticmethod
    def _run(conn: sa.Connection, ticket: str, params: dict[str, Any], batch: int) -> list[int]:
        """The ticket's run (see the module docstring): ids of its oldest undelivered events,
        from the first, while they may be claimed. Empty if its oldest may not be claimed now.
        The lease's conditional update checks again."""
        rows = conn.execute(_RUN, {**params, "ticket": ticket, "batch": batch}).all()
        run: list[int] = []
        for row in rows:
            if not row.claimable or (run and row.maybe_attempted):
                break
            run.append(int(row.id))
            if row.maybe_attempted:
                break  # in doubt, or about to be: alone
            if row.changes_fields:
                # Settled as soon as sent: until then, reading the ticket back would take the
                # status we set for someone else's change (inbound sync's echo check).
                break
        return run

    def due_tickets(self, *, waiting: float = 0.0, instance_limit: int = 8) -> list[str]:
        """What a relay wakes workers for when their wake-ups were lost: ordering keys of tickets
        whose next event has been due for ``waiting`` seconds, unclaimed. At most one per free
        slot of each integration (a woken worker drains on to the others), none for one whose
        slots are full (its workers are draining) or that is paused."""
        with self.database.read() as conn:
            now = self.database.now(conn)
            params = {**self._times(now), "due_before": now - timedelta(seconds=waiting)}
            busy: dict[int, int] = dict(conn.execute(_BUSY_BY_INTEGRATION, params).all())
            due = conn.execute(_DUE_TICKETS, params).all()
        woken: list[str] = []
        free: dict[int, int] = {}
        for integration_id, key in due:
            free.setdefault(integration_id, instance_limit - busy.get(integration_id, 0))
            if free[integration_id] > 0:
                free[integration_id] -= 1
                woken.append(key)
        return woken

    def _lease(
        self, conn: sa.Connection, event_ids: Sequence[int], now: datetime
    ) -> list[sa.RowMapping]:
        """Lease those of the events still free, under one fencing token; their rows, in order.

        Conditional: of two workers racing for one event, exactly one wins. SET reads the row as
        it was: a lease still there belongs to a claim nobody settled (the event is in doubt).
        """
        leased = conn.execute(
            _LEASE,
            {
                **self._times(now),
                "ids": list(event_ids),
                "leased_until": now + self.lease,
                "token": lease.new_token(),
            },
        ).mappings()
        return sorted(leased, key=lambda row: int(row["id"]))

    @staticmethod
    def _release(conn: sa.Connection, event_ids: Sequence[int]) -> None:
        """Undo leases taken in this transaction (nothing was attempted)."""
        if event_ids:
            conn.execute(events.update().where(events.c.id.in_(event_ids)).values(**_UNCLAIMED))

    def release(self, claimed: Sequence[OutboxEvent]) -> int:
        """Give back claims not attempted (a run cut short): free at once, not in doubt."""
        return self._update_held(claimed, lambda _conn: _UNCLAIMED)

    def renew(self, claimed: Sequence[OutboxEvent]) -> int:
        """Extend the leases of claims still held (a long delivery); returns how many."""
        return self._update_held(
            claimed, lambda conn: {"lease_until": self.database.now(conn) + self.lease}
        )

    def _update_held(
        self,
        claimed: Sequence[OutboxEvent],
        values: Callable[[sa.Connection], Mapping[str, Any]],
    ) -> int:
        """Update the events of ``claimed`` whose claims still hold them; returns how many."""
        tokens = {event.claim_token for event in claimed if event.claim_token}
        if not tokens:
            return 0
        with self.database.begin() as conn:
            return int(
                conn.execute(
                    events.update()
                    .where(
                        events.c.id.in_([event.id for event in claimed]),
                        events.c.claim_token.in_(tokens),
                        events.c.status == PENDING,
                    )
                    .values(**values(conn))
                ).rowcount
            )


# The claim's statements, built once (building them anew took most of a claim's time); the
# times they compare with are bound when they run (``OutboxBase._times``).

_INTEGRATION = sa.bindparam("integration_id", type_=events.c.integration_id.type)
_CLAIMABLE = sa.and_(events.c.status == PENDING, events.c.next_attempt_at <= NOW, SETTLED)
_PAUSED = sa.select(pauses.c.integration_id).where(pauses.c.until > NOW)


def _oldest_of_ticket() -> sa.ScalarSelect[Any]:
    """The id of the oldest undelivered event of the outer row's ticket (a dead one counts: it
    holds back its ticket's later events until it is retried or discarded)."""
    earlier = events.alias("earlier")
    return (
        sa.select(sa.func.min(earlier.c.id))
        .where(
            earlier.c.ordering_key == events.c.ordering_key,
            earlier.c.status.in_((PENDING, DEAD)),
        )
        .scalar_subquery()
    )


_LIMIT_LOCK_OF = sa.select(sa.func.pg_advisory_xact_lock(_LIMIT_LOCK, _INTEGRATION))

# Integrations with something pending and due, but those ``preferred`` (tried already) and the
# paused: a cheap superset (an index range), which the claim itself narrows down.
_CANDIDATES = (
    sa.select(events.c.integration_id)
    .where(
        events.c.status == PENDING,
        events.c.next_attempt_at <= NOW,
        events.c.integration_id.not_in(sa.bindparam("preferred", expanding=True)),
        events.c.integration_id.not_in(_PAUSED),
    )
    .group_by(events.c.integration_id)
    .order_by(sa.func.min(events.c.next_attempt_at), sa.func.min(events.c.id))
)

# Tickets of the integration in flight, and the end of its pause (NULL when not paused).
_BUSY_AND_PAUSED = sa.select(
    sa.select(sa.func.count(sa.distinct(events.c.ordering_key)))
    .where(events.c.integration_id == _INTEGRATION, IN_FLIGHT)
    .scalar_subquery(),
    sa.select(pauses.c.until)
    .where(pauses.c.integration_id == _INTEGRATION, pauses.c.until > NOW)
    .scalar_subquery(),
)

_BUSY_BY_INTEGRATION = (
    sa.select(events.c.integration_id, sa.func.count(sa.distinct(events.c.ordering_key)))
    .where(IN_FLIGHT)
    .group_by(events.c.integration_id)
)

_RUN = (
    sa.select(
        events.c.id,
        _CLAIMABLE.label("claimable"),
        sa.or_(events.c.in_doubt, events.c.lease_until.is_not(None)).label("maybe_attempted"),
        events.c.note_digest.is_(None).label("changes_fields"),
    )
    .where(
        events.c.ordering_key == sa.bindparam("ticket", type_=events.c.ordering_key.type),
        events.c.status.in_((PENDING, DEAD)),
    )
    .order_by(events.c.id)
    .limit(sa.bindparam("batch", type_=sa.Integer))
)

_DUE_FIRST = (events.c.next_attempt_at, events.c.id)
_DUE_HEAD = (
    sa.select(events.c.id, events.c.ordering_key)
    .where(events.c.integration_id == _INTEGRATION, _CLAIMABLE, events.c.id == _oldest_of_ticket())
    .order_by(*_DUE_FIRST)
    .limit(1)
)
_HEADS = (
    sa.select(sa.func.min(events.c.id))
    .where(events.c.integration_id == _INTEGRATION, events.c.status.in_((PENDING, DEAD)))
    .group_by(events.c.ordering_key)
)
_DUE_AMONG_HEADS = (
    sa.select(events.c.id, events.c.ordering_key)
    .where(
        events.c.integration_id == _INTEGRATION,
        _CLAIMABLE,
        events.c.id.in_(sa.bindparam("heads", expanding=True)),
    )
    .order_by(*_DUE_FIRST)
    .limit(1)
    .with_for_update(skip_locked=True)
)

# (integration_id, ordering_key) of the tickets whose oldest undelivered event may be claimed
# and has been due since ``due_before``, of integrations not paused.
_DUE_TICKETS = (
    sa.select(events.c.integration_id, events.c.ordering_key)
    .where(
        _CLAIMABLE,
        events.c.next_attempt_at <= sa.bindparam("due_before", type_=events.c.next_attempt_at.type),
        events.c.id == _oldest_of_ticket(),
        events.c.integration_id.not_in(_PAUSED),
    )
    .order_by(*_DUE_FIRST)
)

_LEASE = (
    events.update()
    .where(
        events.c.id.in_(sa.bindparam("ids", expanding=True)), events.c.status == PENDING, SETTLED
    )
    .values(
        lease_until=sa.bindparam("leased_until", type_=events.c.lease_until.type),
        claims=events.c.claims + 1,
        claim_token=sa.bindparam("token", type_=events.c.claim_token.type),
        claimed_at=NOW,
        in_doubt=sa.or_(events.c.in_doubt, events.c.lease_until.is_not(None)),
    )
    .returning(*events.c)
)
