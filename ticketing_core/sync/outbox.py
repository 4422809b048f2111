"""The durable outbox: ticket actions stored before the host call returns, delivered by a worker.

An event is one :mod:`~ticketing_core.policies` action for one ticket. The table is the record; a
dispatcher's wake-up, a poll or a task-queue message only says "look for due events".

Delivery = claim (a lease with a fencing token) -> one attempt -> settle (only with that token):

- nothing is lost: events live in the database until delivered or parked as dead;
- at most one event per ticket is in flight, and a ticket's events are delivered in the order their
  transactions committed (on PostgreSQL, enqueuing takes a per-ticket lock, so ids follow commit order);
  a dead event holds back the later events of its ticket until it is retried or discarded;
- leases are renewed while delivering and measured on the database's clock; a worker whose lease
  expired can neither renew nor settle (its token no longer matches), so it cannot undo another
  worker's delivery;
- an event whose earlier attempt may have landed (its worker died, or the call failed after the
  request left: a timeout, a dropped connection, a 5xx) is *in doubt*. A note in doubt is looked for
  on its ticket at its next try: found, it is delivered. Not found, it is not sent again before its
  doubt window (``doubt_seconds``) is over, since the service may still be working on the earlier
  attempt (it finishes or cancels a request by then: ServiceNow's transaction quota is 60 s):
  :meth:`Outbox.hold` refuses with :class:`StillInDoubt`, and it is looked for again then. A change
  in doubt has nothing to look for and is not due before its window is over. The look is keyed and
  counts notes with the same text against how many this outbox delivered to that ticket before
  (kept in :data:`note_tally` once delivered events are pruned); no clocks are compared;
- retryable failures back off exponentially (or by the service's ``Retry-After``); after
  ``max_attempts`` failures, or at once for a failure retrying cannot fix, the event is parked as dead,
  listed and retryable;
- an outage (``ProviderError.outage``: the service unreachable, not answering in time, a 502/503/504,
  a 429, a page in place of its API, while nothing sent to it is delivered) is not counted against
  ``max_attempts``: events wait as long as it lasts. It pauses every claim of the integration
  instead, ``backoff_initial`` at first, doubled up to ``backoff_max`` each time the calls claimed
  after a pause fail too, until a delivery succeeds (or for the ``Retry-After`` asked, up to an
  hour), so a service that is down sees a few probes per pause rather than one call per waiting
  ticket. A 429 is always waited out; a call failing so while others are delivered is counted;
- delivered events are pruned after ``retention``; the tally they leave behind is kept.

At-least-once attempts plus keyed writes give an exactly-once effect, assuming a worker does not
stall for longer than ``lease_seconds + doubt_seconds`` between confirming its claim and sending,
and that a provider's look counts exactly the notes written with the text (ServiceNow's escapes what
it writes so that it can: :func:`ticketing_servicenow.mapping.journal_safe`).

The :class:`Dispatcher` protocol is the seam for other executors (a Dramatiq actor, say): the
in-process :class:`ThreadedDispatcher` is the embedded default.
"""

from __future__ import annotations

import hashlib
import logging
import random
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

import attrs
import cattrs
import sqlalchemy as sa
from cattrs.strategies import configure_tagged_union
from sqlalchemy.dialects import postgresql, sqlite

from ticketing_core.errors import (
    MAX_RETRY_AFTER,
    IntegrationUnusable,
    ProviderError,
    RateLimited,
    TicketingError,
    may_have_landed,
)
from ticketing_core.policies import Action, AddWorkNote, ChangeTicket
from ticketing_core.sync.database import Database, UtcDateTime, metadata

log = logging.getLogger(__name__)

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"
MAX_SHOWN_ERROR = 500  # characters of an event's last error a delivery state shows
_ORDER_LOCK = 0x6F726472  # "ordr": namespace of the per-ticket PostgreSQL advisory locks
_STORED_TICKETS = "ticketing.stored_tickets"  # key of Connection.info: see Outbox.stored_tickets
_LIMIT_LOCK = 0x6C696D74  # "limt": namespace of the per-integration locks of fleet claims

events = sa.Table(
    "sync_outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("integration_id", sa.Integer, nullable=False),
    sa.Column("ticket_id", sa.String(128), nullable=False),
    # Events sharing an ordering key are delivered one at a time, oldest first.
    sa.Column("ordering_key", sa.String(200), nullable=False),
    sa.Column("anomaly_id", sa.BigInteger),
    sa.Column("action", sa.JSON, nullable=False),
    sa.Column("note_digest", sa.String(64)),  # a note's text, hashed: finds identical ones
    sa.Column("status", sa.String(16), nullable=False, default=PENDING),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    # Of those, the failures during an outage: max_attempts does not count them.
    sa.Column("outage_attempts", sa.Integer, nullable=False, default=0),
    sa.Column("claims", sa.Integer, nullable=False, default=0),
    # In doubt: an attempt may have landed; cleared once a check of the ticket says it did not.
    sa.Column("ambiguous", sa.Boolean, nullable=False, default=False),
    # Until then the service may still be working on an attempt in doubt: it is not sent again
    # before (a note is looked for at once all the same).
    sa.Column("doubt_until", UtcDateTime),
    sa.Column("claim_token", sa.String(32)),  # the fencing token of the current claim
    sa.Column("claimed_at", UtcDateTime),
    sa.Column("next_attempt_at", UtcDateTime, nullable=False),
    # Kept after it expires until the claim is settled: an expired lease is an unsettled claim.
    sa.Column("lease_until", UtcDateTime),
    sa.Column("last_error", sa.Text),
    sa.Column("created", UtcDateTime, nullable=False),
    sa.Column("delivered_at", UtcDateTime),
    sa.Index("ix_sync_outbox_due", "status", "next_attempt_at"),
    sa.Index("ix_sync_outbox_ordering", "ordering_key", "status", "id"),
    sa.Index("ix_sync_outbox_notes", "ticket_id", "note_digest", "status"),
    sa.Index("ix_sync_outbox_claimed", "integration_id", "claim_token"),  # fleet claims count them
    sqlite_autoincrement=True,  # ids are never reused, so a listing's ids stay meaningful
)

note_tally = sa.Table(
    "sync_note_tally",
    metadata,
    # How many notes of each text this outbox delivered to each ticket and then pruned: with the
    # delivered events still kept, what tells an identical earlier note from this one on a ticket
    # whose journal holds text only. Per ticket, whichever integration delivered them (a ticket is
    # linked through one integration at a time, and another may take it over).
    sa.Column("ticket_id", sa.String(128), primary_key=True),
    sa.Column("digest", sa.String(64), primary_key=True),
    sa.Column("delivered", sa.Integer, nullable=False),
)

throttles = sa.Table(
    "sync_throttle",
    metadata,
    # An integration whose service is down or asked to slow down (429), or that this host cannot use:
    # claims leave it alone until then. ``seconds``: how long the pause was, which the next one doubles
    # if the calls claimed after it fail too (0 after a delivery).
    sa.Column("integration_id", sa.Integer, primary_key=True),
    sa.Column("until", UtcDateTime, nullable=False),
    sa.Column("seconds", sa.Float, nullable=False, default=0.0),
    # When a delivery to it last succeeded: a failure of a call claimed before then is the call's.
    sa.Column("delivered_at", UtcDateTime),
)

# A claim given back before anything was attempted: as if it had not been made.
_UNCLAIMED = {"lease_until": None, "claim_token": None, "claims": events.c.claims - 1}

_actions = cattrs.Converter()
configure_tagged_union(Action, _actions, tag_name="type")


@attrs.frozen
class OutboxEvent:
    """One stored action for one ticket, with its delivery state as of its claim."""

    id: int
    integration_id: int
    ticket_id: str
    anomaly_id: int | None
    action: Action
    status: str
    attempts: int
    claims: int
    in_doubt: bool
    """Whether an earlier attempt may have reached the service (see the module docstring)."""
    last_error: str | None
    created: datetime
    next_attempt_at: datetime
    delivered_at: datetime | None
    outage_attempts: int = 0
    """Of ``attempts``, those that failed during an outage (not counted against max_attempts)."""
    claimed_at: datetime | None = None
    """When this claim was made, on the database's clock."""
    claim_token: str | None = attrs.field(default=None, repr=False)
    identical_before: int = 0
    """For a note: how many notes with its text this outbox delivered to the ticket before it."""
    idempotency_key: str = ""
    """Unique to this event in this installation: what keyed writes of it carry."""
    claimed_monotonic: float = attrs.field(factory=time.monotonic, repr=False, eq=False)
    """When this process loaded the claim, on its own monotonic clock."""


@attrs.frozen
class NewEvent:
    """An action to store for a ticket of an integration."""

    integration_id: int
    ticket_id: str
    action: Action
    anomaly_id: int | None = None


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


class LeaseLost(TicketingError):
    """This worker's claim on an event expired and may be another's now: it must not act on it."""


class StillInDoubt(TicketingError):
    """An event in doubt was not found at its ticket, but the service may still be working on
    the earlier attempt: it is looked for again once its doubt window is over, not sent now."""

    def __init__(self, event_id: int, until: datetime) -> None:
        super().__init__(
            f"outbox event {event_id}: not at its ticket yet; looked for again at {until}"
        )
        self.until = until


class Outbox:
    """Stores, claims and settles events. Safe across threads and processes sharing the database."""

    def __init__(
        self,
        database: Database,
        *,
        max_attempts: int = 15,
        lease_seconds: float = 30.0,
        doubt_seconds: float = 60.0,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        retention: timedelta = timedelta(days=7),
    ) -> None:
        self.database = database
        self.max_attempts = max_attempts
        self.lease = timedelta(seconds=lease_seconds)
        self.doubt = timedelta(seconds=doubt_seconds)
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.retention = retention

    def enqueue(self, new_events: Iterable[NewEvent], conn: sa.Connection | None = None) -> int:
        """Store events (in the caller's transaction when ``conn`` is given); return how many."""
        new_events = list(new_events)
        if not new_events:
            return 0
        tickets = {_ordering_key(e.integration_id, e.ticket_id) for e in new_events}
        with self.database.begin(conn) as c:
            now = self.database.now(c)
            rows = [_row(event, now) for event in new_events]
            self._lock_tickets(c, tickets)
            c.execute(events.insert(), rows)
        if conn is not None:  # for the caller to wake a dispatcher with once it commits
            conn.info.setdefault(_STORED_TICKETS, set()).update(tickets)
        return len(rows)

    @staticmethod
    def stored_tickets(conn: sa.Connection) -> set[str]:
        """The tickets (ordering keys) ``enqueue`` stored events for in the caller's transaction
        on ``conn`` since the last call, forgotten by this call: what to wake a dispatcher for
        once the transaction commits. Call it on every connection passed to ``enqueue``."""
        return set(conn.info.pop(_STORED_TICKETS, set()))

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

    def claim(
        self,
        limit: int,
        fits: Callable[[int], bool] | None = None,
        *,
        skip_integrations: Collection[int] = (),
    ) -> list[OutboxEvent]:
        """Lease up to ``limit`` due events, each the oldest undelivered one of its ticket.

        Events of ``skip_integrations`` are not considered (they have enough in flight);
        ``fits(integration_id)`` may decline an event too, asked once per event about to be leased.
        """
        with self.database.begin() as conn:
            now = self.database.now(conn)
            settled = self._settled(now)
            candidates = conn.execute(
                self._due_events(now)
                .where(events.c.integration_id.not_in(list(skip_integrations)))
                .order_by(events.c.id)
                .limit(limit if fits is None else limit * 3)  # room for events ``fits`` declines
                # PostgreSQL: racing workers skip each other's rows; SQLite serialises writers.
                .with_for_update(skip_locked=True, of=events)
            ).all()
            claimed: list[sa.RowMapping] = []
            for event_id, integration_id, _ in candidates:
                if len(claimed) == limit:
                    break
                if fits is not None and not fits(integration_id):
                    continue
                claimed += self._lease(conn, [event_id], now, settled)
            return self._loaded(conn, claimed)

    def _settled(self, now: datetime) -> sa.ColumnElement[bool]:
        # An unsettled claim (its worker died) also waits out the doubt window.
        return sa.or_(events.c.lease_until.is_(None), events.c.lease_until <= now - self.doubt)

    def _in_flight(self, now: datetime) -> sa.ColumnElement[bool]:
        """Claimed and not yet free to be taken over (lease + doubt): what the instance limit and
        the operator's counts call in flight. A worker that stalled past its lease may still be
        sending."""
        return sa.and_(
            events.c.claim_token.is_not(None),
            events.c.status == PENDING,
            sa.not_(self._settled(now)),
        )

    def _due_events(self, now: datetime) -> sa.Select[Any]:
        """(id, integration_id, ordering_key) of the events that may be claimed now: pending, due,
        unclaimed, the oldest undelivered of their ticket, of an integration not paused."""
        earlier = events.alias("earlier")
        # Dead events count: a ticket's later events wait until its dead one is retried.
        oldest_of_ticket = (
            sa.select(sa.func.min(earlier.c.id))
            .where(
                earlier.c.ordering_key == events.c.ordering_key,
                earlier.c.status.in_((PENDING, DEAD)),
            )
            .scalar_subquery()
        )
        return sa.select(events.c.id, events.c.integration_id, events.c.ordering_key).where(
            events.c.status == PENDING,
            events.c.next_attempt_at <= now,
            self._settled(now),
            events.c.id == oldest_of_ticket,
            events.c.integration_id.not_in(_paused(now)),
        )

    def claim_next(
        self, *, prefer: str | None = None, instance_limit: int, batch: int = 1
    ) -> list[OutboxEvent]:
        """Lease the next due events of one ticket, oldest first: of the ticket ``prefer`` names
        (an ordering key) when it has one due, else of another ticket of its integration, else of
        any integration's. Up to ``batch`` of them, a run the caller delivers in order (see
        :func:`attempt_in_order`); empty when nothing may be claimed now.

        The fleet's claim: at most ``instance_limit`` tickets with live claims per integration
        across every process sharing the database (counted and leased under a per-integration
        lock), and none for a paused integration (its service is down or asked it to slow down)
        until its pause is over.
        """
        preferred = [int(prefer.split(":", 1)[0])] if prefer else []
        if preferred and (
            run := self._claim_within_limit(preferred[0], prefer, instance_limit, batch)
        ):
            return run
        with self.database.read() as conn:
            now = self.database.now(conn)
            # Integrations with something pending and due: a cheap superset (an index range),
            # which the claim itself narrows down.
            others = conn.execute(
                sa.select(events.c.integration_id)
                .where(
                    events.c.status == PENDING,
                    events.c.next_attempt_at <= now,
                    events.c.integration_id.not_in(preferred),
                    events.c.integration_id.not_in(_paused(now)),
                )
                .group_by(events.c.integration_id)
                .order_by(sa.func.min(events.c.next_attempt_at))
            ).scalars()
            candidates = list(others)
        for integration_id in candidates:
            if run := self._claim_within_limit(integration_id, None, instance_limit, batch):
                return run
        return []

    def _claim_within_limit(
        self, integration_id: int, prefer: str | None, instance_limit: int, batch: int
    ) -> list[OutboxEvent]:
        with self.database.begin() as conn:
            if self.database.is_postgresql:  # SQLite's writers go one at a time already
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_LIMIT_LOCK, integration_id)))
            now = self.database.now(conn)
            # A claim counts until it is settled or may be taken over (lease + doubt): a worker
            # that stalled past its lease may still be sending.
            busy_tickets = sa.select(sa.func.count(sa.distinct(events.c.ordering_key))).where(
                events.c.integration_id == integration_id, self._in_flight(now)
            )
            pause = sa.select(throttles.c.until).where(
                throttles.c.integration_id == integration_id, throttles.c.until > now
            )
            busy, paused = conn.execute(
                sa.select(busy_tickets.scalar_subquery(), pause.scalar_subquery())
            ).one()
            if paused is not None or busy >= instance_limit:
                return []
            run = self._run_if_due(conn, prefer, now, batch) if prefer else []
            if not run and (head := self._due_head(conn, integration_id, now)) is not None:
                run = [head.id, *self._due_after(conn, head.ordering_key, head, now, batch - 1)]
            if not run:
                return []
            leased = self._lease(conn, run, now, self._settled(now))
            leased_ids = [row["id"] for row in leased]
            if leased_ids != run[: len(leased)] or not leased:  # raced for (part of) it: none
                self._release(conn, leased_ids)
                return []
            return self._loaded(conn, leased)

    def _due_head(self, conn: sa.Connection, integration_id: int, now: datetime) -> Any:
        """The integration's ticket head (id, ordering key) due the longest, if any may be claimed.

        In two steps whose cost does not hang on the planner's statistics: each ticket's oldest
        undelivered event in one pass, then those that may be claimed now, by primary key.
        """
        heads = list(
            conn.execute(
                sa.select(sa.func.min(events.c.id))
                .where(
                    events.c.integration_id == integration_id,
                    events.c.status.in_((PENDING, DEAD)),
                )
                .group_by(events.c.ordering_key)
            ).scalars()
        )
        if not heads:
            return None
        return conn.execute(
            sa.select(events.c.id, events.c.ordering_key, events.c.lease_until, events.c.ambiguous)
            .where(
                events.c.id.in_(heads),
                events.c.status == PENDING,
                events.c.next_attempt_at <= now,
                self._settled(now),
            )
            .order_by(events.c.next_attempt_at, events.c.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        ).first()

    def _run_if_due(
        self, conn: sa.Connection, ordering_key: str, now: datetime, batch: int
    ) -> list[int]:
        """The ticket's oldest undelivered events, from the first while they may be claimed (the
        rule of :meth:`_due_after`), in one index range; the lease's conditional update checks
        again. Empty if its oldest may not be claimed now."""
        rows = conn.execute(
            sa.select(
                events.c.id, events.c.status, events.c.next_attempt_at, events.c.lease_until,
                events.c.ambiguous,
            )
            .where(events.c.ordering_key == ordering_key, events.c.status.in_((PENDING, DEAD)))
            .order_by(events.c.id)
            .limit(batch)
        ).all()  # fmt: skip
        if not rows or rows[0].status != PENDING or not self._may_claim(rows[0], now):
            return []
        run = [int(rows[0].id)]
        if self._maybe_attempted(rows[0]):
            return run  # in doubt: alone
        for row in rows[1:]:
            if row.status != PENDING or not self._may_claim(row, now) or self._maybe_attempted(row):
                break
            run.append(int(row.id))
        return run

    def _due_after(
        self, conn: sa.Connection, ordering_key: str, head: Any, now: datetime, count: int
    ) -> list[int]:
        """Up to ``count`` events of the ticket right after ``head``, while they may be claimed
        and are not in doubt. An event in doubt is checked against the notes delivered before it
        (``identical_before``), which only a claim of its own, after those settled, counts
        right: so it goes alone, and a run that meets one ends before it."""
        if count <= 0 or self._maybe_attempted(head):
            return []
        following = conn.execute(
            sa.select(
                events.c.id,
                events.c.status,
                events.c.next_attempt_at,
                events.c.lease_until,
                events.c.ambiguous,
            )
            .where(
                events.c.ordering_key == ordering_key,
                events.c.id > head.id,
                events.c.status != DELIVERED,
            )
            .order_by(events.c.id)
            .limit(count)
        ).all()
        run = []
        for row in following:
            if row.status != PENDING or not self._may_claim(row, now) or self._maybe_attempted(row):
                break
            run.append(int(row.id))
        return run

    @staticmethod
    def _maybe_attempted(row: Any) -> bool:
        """In doubt already, or about to be: a claim nobody settled may have sent it."""
        return bool(row.ambiguous or row.lease_until is not None)

    def _may_claim(self, row: Any, now: datetime) -> bool:
        settled = row.lease_until is None or row.lease_until <= now - self.doubt
        return bool(settled and row.next_attempt_at <= now)

    def due_tickets(self, *, waiting: float = 0.0, instance_limit: int = 8) -> list[str]:
        """What a relay wakes workers for when their wake-ups were lost: ordering keys of tickets
        whose next event has been due for ``waiting`` seconds, unclaimed. At most one per free
        slot of each integration (a woken worker drains on to the others), none for one whose
        slots are full (its workers are draining) or that is paused."""
        with self.database.read() as conn:
            now = self.database.now(conn)
            busy: dict[int, int] = dict(
                conn.execute(
                    sa.select(
                        events.c.integration_id, sa.func.count(sa.distinct(events.c.ordering_key))
                    )
                    .where(self._in_flight(now))
                    .group_by(events.c.integration_id)
                ).all()
            )
            due = conn.execute(
                self._due_events(now)
                .where(events.c.next_attempt_at <= now - timedelta(seconds=waiting))
                .order_by(events.c.next_attempt_at, events.c.id)
            ).all()
        woken: list[str] = []
        free: dict[int, int] = {}
        for _, integration_id, ordering_key in due:
            free.setdefault(integration_id, instance_limit - busy.get(integration_id, 0))
            if free[integration_id] > 0:
                free[integration_id] -= 1
                woken.append(ordering_key)
        return woken

    def stats(self) -> list[IntegrationStats]:
        """Per integration: events by status, tickets in flight (as the instance limit counts
        them), and the age of the oldest pending event."""
        with self.database.read() as conn:
            now = self.database.now(conn)
            in_flight = sa.case((self._in_flight(now), events.c.ordering_key))
            rows = conn.execute(
                sa.select(
                    events.c.integration_id,
                    events.c.status,
                    sa.func.count(),
                    sa.func.count(sa.distinct(in_flight)),
                    sa.func.min(events.c.created),
                ).group_by(events.c.integration_id, events.c.status)
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
            pauses = {
                row.integration_id: row
                for row in conn.execute(
                    sa.select(throttles).where(throttles.c.integration_id.in_(ids))
                )
            }
            states = {}
            for integration_id in ids:
                found, pause = counts[integration_id], pauses.get(integration_id)
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

    def _lease(
        self,
        conn: sa.Connection,
        event_ids: Sequence[int],
        now: datetime,
        settled: sa.ColumnElement[bool],
    ) -> list[sa.RowMapping]:
        """Lease those of the events still free, under one fencing token; their rows, in order.

        Conditional: of two workers racing for one event, exactly one wins. SET reads the row as
        it was: a lease still there belongs to a claim nobody settled (the event is in doubt).
        """
        leased = conn.execute(
            events.update()
            .where(events.c.id.in_(event_ids), events.c.status == PENDING, settled)
            .values(
                lease_until=now + self.lease,
                claims=events.c.claims + 1,
                claim_token=secrets.token_hex(16),
                claimed_at=now,
                ambiguous=sa.or_(events.c.ambiguous, events.c.lease_until.is_not(None)),
            )
            .returning(*events.c)
        ).mappings()
        return sorted(leased, key=lambda row: int(row["id"]))

    @staticmethod
    def _release(conn: sa.Connection, event_ids: Sequence[int]) -> None:
        """Undo leases taken in this transaction (nothing was attempted)."""
        if event_ids:
            conn.execute(events.update().where(events.c.id.in_(event_ids)).values(**_UNCLAIMED))

    def release(self, claimed: Sequence[OutboxEvent]) -> int:
        """Give back claims not attempted (a run cut short): free at once, not in doubt."""
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
                    .values(**_UNCLAIMED)
                ).rowcount
            )

    def renew(self, claimed: Sequence[OutboxEvent]) -> int:
        """Extend the leases still held by these claims; returns how many were."""
        tokens = [event.claim_token for event in claimed if event.claim_token]
        if not tokens:
            return 0
        with self.database.begin() as conn:
            return int(
                conn.execute(
                    events.update()
                    .where(events.c.claim_token.in_(tokens), events.c.status == PENDING)
                    .values(lease_until=self.database.now(conn) + self.lease)
                ).rowcount
            )

    def hold(self, event: OutboxEvent) -> None:
        """Confirm the claim just before sending; for an event in doubt (whose look, made after
        the claim, found it absent), also that its doubt window was over when it was claimed, so
        that the look saw all the service would ever do with the earlier attempt; and clear the
        doubt.

        Raises :class:`LeaseLost` when the claim is no longer this worker's, and
        :class:`StillInDoubt` when the look may have come too early. A claim made less than a
        third of a lease ago is certainly still held (clocks may disagree on the time, not on how
        fast it passes), so confirming it costs no write.
        """
        fresh = time.monotonic() - event.claimed_monotonic < self.lease.total_seconds() / 3
        if fresh and not event.in_doubt:
            return
        with self.database.begin() as conn:
            now = self.database.now(conn)
            window_over = sa.or_(
                events.c.doubt_until.is_(None), events.c.doubt_until <= event.claimed_at
            )
            held = conn.execute(
                self._fenced(event)
                .where(window_over)
                .values(lease_until=now + self.lease, ambiguous=False)
            ).rowcount
            if held:
                return
            until = conn.execute(sa.select(events.c.doubt_until).where(self._held(event))).scalar()
        if until is not None:
            raise StillInDoubt(event.id, until)
        raise LeaseLost(f"outbox event {event.id}: the lease expired; another worker may hold it")

    def delivered(self, event: OutboxEvent) -> datetime | None:
        """Settle a delivered event: when, on the database's clock; None when the claim was lost
        (the settle changes nothing)."""
        return self.delivered_all([event]).get(event.id)

    def delivered_all(self, claimed: Sequence[OutboxEvent]) -> dict[int, datetime]:
        """Settle delivered events in one transaction: when, per event id still claimed (those
        whose claim was lost are left out and change nothing)."""
        if not claimed:
            return {}
        with self.database.begin() as conn:
            now = self.database.now(conn)
            settled = conn.execute(
                events.update()
                .where(
                    events.c.id.in_([event.id for event in claimed]),
                    events.c.claim_token.in_({event.claim_token for event in claimed}),
                    events.c.status == PENDING,
                )
                .values(
                    status=DELIVERED,
                    delivered_at=now,
                    lease_until=None,
                    claim_token=None,
                    last_error=None,
                )
                .returning(events.c.id)
            ).all()
            settled_ids = {event_id for (event_id,) in settled}
            for integration_id in sorted(
                {event.integration_id for event in claimed if event.id in settled_ids}
            ):
                self._delivered_to(conn, integration_id, now)
            return dict.fromkeys(settled_ids, now)

    def failed(self, event: OutboxEvent, error: BaseException) -> str | None:
        """Record a failed attempt: back off and retry, or park as dead; in an outage, wait.

        Returns the new status, or None when the claim was lost (nothing is recorded).
        """
        if isinstance(error, IntegrationUnusable):
            return self._wait_until_usable(event, error)
        if isinstance(error, StillInDoubt):
            return self._look_again(event, error.until)
        retryable = isinstance(error, ProviderError) and error.retryable
        with self.database.begin() as conn:
            # The event's row, then the integration's: the order every writer takes them in.
            row = conn.execute(self._fenced_row(event)).first()
            if row is None:
                return None  # the claim was lost
            # Still in doubt: hold() never ran, so this claim sent nothing (its look failed).
            landed = may_have_landed(error) and not row.ambiguous
            last = conn.execute(
                sa.select(throttles)
                .where(throttles.c.integration_id == event.integration_id)
                .with_for_update()
            ).first()
            now = self.database.now(conn)
            waits = _waits_out(event, error, last)
            # Exact: nobody else settles while this claim holds.
            counted = event.attempts - event.outage_attempts + (not waits)
            status = PENDING if waits or (retryable and counted < self.max_attempts) else DEAD
            if waits:
                until, seconds = self._outage_pause(event, now, error, last)
                self._pause(conn, event.integration_id, until, seconds)
                next_attempt = until
            else:
                next_attempt = now + self._backoff(counted, error)
            if landed and not isinstance(event.action, AddWorkNote):
                # Nothing to look for: not before the service is done with the call.
                next_attempt = max(next_attempt, now + self.doubt)
            conn.execute(
                self._fenced(event).values(
                    status=status,
                    attempts=events.c.attempts + 1,
                    outage_attempts=events.c.outage_attempts + int(waits),
                    ambiguous=sa.true() if landed else events.c.ambiguous,
                    doubt_until=now + self.doubt if landed else events.c.doubt_until,
                    last_error=f"{type(error).__name__}: {error}"[:2000],
                    next_attempt_at=next_attempt,
                    lease_until=None,
                    claim_token=None,
                )
            )
        return status

    def _outage_pause(
        self, event: OutboxEvent, now: datetime, error: BaseException, last: Any
    ) -> tuple[datetime, float]:
        """Until when the integration's claims pause after ``event`` failed in an outage, and
        the pause's length in seconds, given its ``last`` pause (a ``throttles`` row, or None).

        The outage's first failure pauses for ``backoff_initial``. A call claimed after the last
        pause ended (within ``backoff_max`` of its end, with no delivery since) that fails too
        says the service is still down: the pause doubles, up to ``backoff_max``. A call claimed
        before the pause ended was on its way already and changes nothing. When the service
        said how long to wait (``Retry-After``), that is the pause.
        """
        claimed = event.claimed_at or now
        in_flight = last is not None and claimed < last.until
        if in_flight:
            until, seconds = last.until, last.seconds
        else:
            seconds = self.backoff_initial
            window = timedelta(seconds=self.backoff_max)
            if last is not None and last.seconds and claimed <= last.until + window:
                seconds = max(seconds, 2 * last.seconds)
            seconds = min(self.backoff_max, seconds)
            until = now + timedelta(seconds=seconds)
        if (asked := getattr(error, "retry_after", None)) is not None:
            wanted = now + timedelta(seconds=min(float(asked), MAX_RETRY_AFTER))
            until = max(until, wanted) if in_flight else wanted
        return until, seconds

    def _wait_until_usable(self, event: OutboxEvent, error: IntegrationUnusable) -> str | None:
        """Nothing was sent: give the event back unchanged but for its time, and pause the
        integration, until the host can use it again (its key, its network rule)."""
        with self.database.begin() as conn:
            until = self.database.now(conn) + timedelta(seconds=self.backoff_max)
            settled = conn.execute(
                self._fenced(event).values(
                    next_attempt_at=until,
                    last_error=f"{type(error).__name__}: {error}"[:2000],
                    lease_until=None,
                    claim_token=None,
                )
            ).rowcount
            if settled:
                self._pause(conn, event.integration_id, until, 0.0)  # no outage to double
        return PENDING if settled else None

    def _look_again(self, event: OutboxEvent, until: datetime) -> str | None:
        """A note in doubt not found yet: give it back unchanged but for its time, to be looked
        for again once the service is certainly done with the earlier attempt."""
        with self.database.begin() as conn:
            settled = conn.execute(
                self._fenced(event).values(
                    next_attempt_at=until, lease_until=None, claim_token=None
                )
            ).rowcount
        return PENDING if settled else None

    def _upsert_throttle(
        self, conn: sa.Connection, integration_id: int, row: dict[str, Any], **changes: Any
    ) -> None:
        insert = (postgresql.insert if self.database.is_postgresql else sqlite.insert)(throttles)
        conn.execute(
            insert.values(integration_id=integration_id, **row).on_conflict_do_update(
                index_elements=[throttles.c.integration_id], set_=changes
            )
        )

    def _pause(
        self, conn: sa.Connection, integration_id: int, until: datetime, seconds: float
    ) -> None:
        """Keep claims off an integration until ``until`` (or later, if an earlier pause asked
        for longer), remembering the pause's length."""
        later = sa.func.greatest if self.database.is_postgresql else sa.func.max  # two-argument
        self._upsert_throttle(
            conn,
            integration_id,
            {"until": until, "seconds": seconds},
            until=later(throttles.c.until, until),  # a shorter wait never shortens it
            seconds=seconds,
        )

    def _delivered_to(self, conn: sa.Connection, integration_id: int, now: datetime) -> None:
        """A delivery succeeded: the service is up. Later failures of calls claimed before now
        count against their events, and the next outage's pauses start from the shortest."""
        self._upsert_throttle(
            conn, integration_id, {"until": now, "seconds": 0.0, "delivered_at": now},
            delivered_at=now, seconds=0.0,
        )  # fmt: skip

    @staticmethod
    def _held(event: OutboxEvent) -> sa.ColumnElement[bool]:
        """The event's row while this claim holds it: the fence of every settle."""
        return sa.and_(
            events.c.id == event.id,
            events.c.claim_token == event.claim_token,
            events.c.status == PENDING,
        )

    @staticmethod
    def _fenced_row(event: OutboxEvent) -> sa.Select[Any]:
        """The event's row while this claim holds it, locked for the settle."""
        return sa.select(events.c.ambiguous).where(Outbox._held(event)).with_for_update()

    @staticmethod
    def _fenced(event: OutboxEvent) -> sa.Update:
        return events.update().where(Outbox._held(event))

    def _backoff(self, attempts: int, error: BaseException) -> timedelta:
        exponential = min(self.backoff_max, self.backoff_initial * 2 ** (attempts - 1))
        jittered = exponential * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not security
        asked = getattr(error, "retry_after", None) or 0.0
        return timedelta(seconds=max(jittered, min(float(asked), self.backoff_max)))

    def retry(self, event_ids: Sequence[int] | None = None) -> int:
        """Put dead events (all, or those given) back in line with fresh attempts; returns how many.

        Doubt is kept: an event that may have landed is looked for before it is sent again, and
        not sent before its doubt window is over (:meth:`hold`).
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

    def _load(self, conn: sa.Connection, event_ids: Sequence[int]) -> list[OutboxEvent]:
        if not event_ids:
            return []
        rows = conn.execute(
            sa.select(events).where(events.c.id.in_(event_ids)).order_by(events.c.id)
        ).mappings()
        return self._loaded(conn, list(rows))

    def _loaded(self, conn: sa.Connection, rows: Sequence[sa.RowMapping]) -> list[OutboxEvent]:
        loaded = [_event(row, self.database.installation_id) for row in rows]
        # Only a check asks how many identical notes went before, and only events in doubt check.
        return [self._counted(conn, event) if event.in_doubt else event for event in loaded]

    @staticmethod
    def _counted(conn: sa.Connection, event: OutboxEvent) -> OutboxEvent:
        if not isinstance(event.action, AddWorkNote):
            return event
        digest = _digest(event.action.text)
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


def _paused(now: datetime) -> sa.Select[Any]:
    return sa.select(throttles.c.integration_id).where(throttles.c.until > now)


def _waits_out(event: OutboxEvent, error: BaseException, last: Any) -> bool:
    """Whether ``error`` is waited out rather than counted against ``event``: a 429 (the
    service asks for room), or an outage while nothing sent to the integration has been
    delivered since this call was claimed (``last``: its ``throttles`` row). A service that
    delivered other calls meanwhile is up, so this call's 504 or timeout is its own."""
    if isinstance(error, RateLimited):
        return True
    if not (isinstance(error, ProviderError) and error.outage):
        return False
    delivered = None if last is None else last.delivered_at
    return delivered is None or event.claimed_at is None or delivered <= event.claimed_at


def _ordering_key(integration_id: int, ticket_id: str) -> str:
    return f"{integration_id}:{ticket_id}"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _row(event: NewEvent, now: datetime) -> dict[str, object]:
    return {
        "integration_id": event.integration_id,
        "ticket_id": event.ticket_id,
        "ordering_key": _ordering_key(event.integration_id, event.ticket_id),
        "anomaly_id": event.anomaly_id,
        "action": _actions.unstructure(event.action, Action),
        "note_digest": _digest(event.action.text)
        if isinstance(event.action, AddWorkNote)
        else None,
        "status": PENDING,
        "attempts": 0,
        "outage_attempts": 0,
        "claims": 0,
        "ambiguous": False,
        "next_attempt_at": now,
        "created": now,
    }


def _event(row: sa.RowMapping, installation_id: str) -> OutboxEvent:
    return OutboxEvent(
        id=row["id"],
        integration_id=row["integration_id"],
        ticket_id=row["ticket_id"],
        anomaly_id=row["anomaly_id"],
        action=_actions.structure(row["action"], Action),  # type: ignore[arg-type]
        status=row["status"],
        attempts=row["attempts"],
        claims=row["claims"],
        in_doubt=row["ambiguous"],
        last_error=row["last_error"],
        created=row["created"],
        next_attempt_at=row["next_attempt_at"],
        delivered_at=row["delivered_at"],
        outage_attempts=row["outage_attempts"],
        claimed_at=row["claimed_at"],
        claim_token=row["claim_token"],
        idempotency_key=f"{installation_id}-outbox-{row['id']}",
    )


Deliver = Callable[[OutboxEvent], None]


@attrs.frozen
class Outcome:
    """How one attempt at a claimed event ended."""

    status: str | None
    """The event's status now (delivered, pending, dead), or None: the claim was lost."""
    error: BaseException | None = None
    delivered_at: datetime | None = None


def _log_failure(event: OutboxEvent, status: str | None, error: BaseException) -> None:
    if isinstance(error, StillInDoubt):  # a look that found nothing yet: no failure
        log.info("%s", error)
    else:
        log.warning("outbox event %s failed (%s): %s", event.id, status or "lease lost", error)


def attempt(outbox: Outbox, deliver: Deliver, event: OutboxEvent) -> Outcome:
    """Deliver one claimed event and settle it, whichever way the delivery ends."""
    try:
        deliver(event)
    except Exception as exc:
        status = outbox.failed(event, exc)
        _log_failure(event, status, exc)
        return Outcome(status, exc)
    delivered_at = outbox.delivered(event)
    if delivered_at is None:
        log.warning("outbox event %s: delivered after its lease was lost", event.id)
        return Outcome(None)
    return Outcome(DELIVERED, delivered_at=delivered_at)


def attempt_in_order(
    outbox: Outbox,
    deliver: Deliver,
    run: Sequence[OutboxEvent],
    *,
    stopping: Callable[[], bool] = lambda: False,
) -> list[tuple[OutboxEvent, Outcome]]:
    """Deliver a claimed run of one ticket's events in order, settling the delivered ones
    together (one transaction, even when interrupted); the first failure is recorded and the rest
    of the run given back, as it is once ``stopping()`` says so. Returns each attempted event
    with how it ended."""
    delivered: list[OutboxEvent] = []
    failure: tuple[OutboxEvent, Outcome] | None = None
    renewed = run[0].claimed_monotonic if run else 0.0
    try:
        for position, event in enumerate(run):
            if position and stopping():
                outbox.release(run[position:])
                break
            # A slow run: keep every claim of it alive, delivered ones too. Renewed at least every
            # quarter lease plus one delivery, so a lease above 4/3 of the deadline never lapses.
            if time.monotonic() - renewed > outbox.lease.total_seconds() / 4:
                outbox.renew(run)
                renewed = time.monotonic()
            try:
                deliver(event)
            except Exception as exc:
                status = outbox.failed(event, exc)
                _log_failure(event, status, exc)
                failure = (event, Outcome(status, exc))
                outbox.release(run[position + 1 :])
                break
            delivered.append(event)
    finally:  # an interruption (a time limit) leaves the one in hand to be checked later
        settled = outbox.delivered_all(delivered)
    outcomes = [
        (event, Outcome(DELIVERED, delivered_at=settled[event.id]) if event.id in settled
         else Outcome(None))
        for event in delivered
    ]  # fmt: skip
    return outcomes + ([failure] if failure else [])


class Dispatcher(Protocol):
    """Runs deliveries of outbox events somewhere: threads here, a task queue elsewhere."""

    def start(self) -> None:
        """Begin delivering due events, including those left by an earlier process."""

    def wake(self, tickets: Collection[str] = ()) -> None:
        """New events were stored for these tickets (ordering keys, see :meth:`Outbox.claim_next`):
        look for work now rather than at the next poll."""

    def stop(self, timeout: float | None = None) -> None:
        """Stop claiming; wait up to ``timeout`` for deliveries in flight."""


class ThreadedDispatcher:
    """In-process delivery with at most ``concurrency`` deliveries at once.

    One integration gets at most ``per_integration`` of them (default all but one), so a slow or
    down instance cannot hold every slot while another integration's events wait. ``prune`` runs
    every ``prune_interval`` seconds (default: the outbox's own pruning); ``on_attempt`` hears of
    every attempt and how it ended (metrics).
    """

    def __init__(
        self,
        outbox: Outbox,
        deliver: Deliver,
        *,
        concurrency: int = 8,
        per_integration: int | None = None,
        poll_interval: float = 0.5,
        prune: Callable[[], object] | None = None,
        prune_interval: float = 600.0,
        on_attempt: Callable[[OutboxEvent, Outcome], object] | None = None,
    ) -> None:
        self.outbox = outbox
        self.deliver = deliver
        self.on_attempt = on_attempt
        self.concurrency = concurrency
        self.per_integration = per_integration or max(1, concurrency - 1)
        self.poll_interval = poll_interval
        self.prune = prune or outbox.prune
        self.prune_interval = prune_interval
        self._wakeup = threading.Event()
        self._stopping = threading.Event()  # claim nothing more
        self._halted = threading.Event()  # and stop renewing: the loop ends
        self._in_flight: dict[int, OutboxEvent] = {}
        self._idle = threading.Condition()
        self._pool: ThreadPoolExecutor | None = None
        self._loop: threading.Thread | None = None

    def start(self) -> None:
        self._stopping.clear()
        self._halted.clear()
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="ticketing-deliver")
        self._loop = threading.Thread(target=self._run, name="ticketing-outbox", daemon=True)
        self._loop.start()

    def wake(self, tickets: Collection[str] = ()) -> None:
        self._wakeup.set()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop claiming and wait up to ``timeout`` for deliveries in flight, renewing their leases
        meanwhile. Returns by then; a delivery still running settles when it ends (its call has
        its own deadline) or, if the process exits first, is taken over after its lease."""
        self._stopping.set()
        self._wakeup.set()
        with self._idle:
            self._idle.wait_for(lambda: not self._in_flight, timeout)
        self._halted.set()
        self._wakeup.set()
        if self._loop is not None:
            self._loop.join(self.poll_interval)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        last_renewal = last_prune = float("-inf")
        while not self._halted.is_set():
            try:
                if not self._stopping.is_set():
                    self._dispatch_due()
                if time.monotonic() - last_renewal > self.outbox.lease.total_seconds() / 3:
                    self.outbox.renew(self._snapshot())
                    last_renewal = time.monotonic()
                if time.monotonic() - last_prune > self.prune_interval:
                    last_prune = time.monotonic()
                    self.prune()
            except Exception:
                log.exception("outbox dispatch failed; retrying after the poll interval")
            self._wakeup.wait(self.poll_interval)
            self._wakeup.clear()

    def _dispatch_due(self) -> None:
        in_flight = self._snapshot()
        free = self.concurrency - len(in_flight)
        if free <= 0 or self._pool is None:
            return
        busy = Counter(event.integration_id for event in in_flight)
        full = {integration for integration, n in busy.items() if n >= self.per_integration}

        def fits(integration_id: int) -> bool:
            if busy[integration_id] >= self.per_integration:
                return False
            busy[integration_id] += 1
            return True

        for event in self.outbox.claim(free, fits, skip_integrations=full):
            with self._idle:
                self._in_flight[event.id] = event
            self._pool.submit(self._deliver_one, event)

    def _deliver_one(self, event: OutboxEvent) -> None:
        try:
            outcome = attempt(self.outbox, self.deliver, event)
            if self.on_attempt is not None:
                self.on_attempt(event, outcome)
        finally:
            with self._idle:
                self._in_flight.pop(event.id, None)
                self._idle.notify_all()
            self._wakeup.set()

    def _snapshot(self) -> list[OutboxEvent]:
        with self._idle:
            return list(self._in_flight.values())


def describe(action: Action) -> str:
    """A one-line summary of an action, for listings."""
    if isinstance(action, AddWorkNote):
        return f"work note: {action.text}"
    if isinstance(action, ChangeTicket):
        fields = {k: v for k, v in _actions.unstructure(action.changes).items() if v}
        return f"change: {fields}"
    raise TypeError(f"unknown action {action!r}")
