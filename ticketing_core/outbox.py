"""The durable outbox: ticket actions stored before the host call returns, delivered by a worker.

An event is one :mod:`~ticketing_core.policies` action for one ticket. Delivery guarantees:

- nothing is lost: events live in the database until delivered or parked as dead;
- at most one event per ticket is in flight, and a ticket's events are delivered in insertion order
  (a dead event holds back the later events of its ticket until it is retried);
- a worker claims an event with a lease that it renews while delivering, so events held by a killed
  process become claimable again shortly after it dies;
- an event whose earlier attempt may have landed (its worker died mid-call, or the call timed out or
  lost its answer) is marked ``in_doubt`` until delivered, with the time of its first claim, so the
  deliverer can check the ticket before acting again; an attempt the service refused (429, 503)
  adds no doubt;
- retryable failures back off exponentially (or by the service's ``Retry-After``); after
  ``max_attempts`` failures, or at once for a failure retrying cannot fix, the event is parked as dead,
  listed and retryable.

The :class:`Dispatcher` protocol is the seam for other executors (a Dramatiq actor, say): the
in-process :class:`ThreadedDispatcher` is the embedded default.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Protocol

import attrs
import cattrs
import sqlalchemy as sa
from cattrs.strategies import configure_tagged_union

from ticketing_core.errors import ProviderError, ProviderTimeout, ProviderUnavailable
from ticketing_core.http import RETRIED_STATUSES
from ticketing_core.policies import Action, AddWorkNote, ChangeTicket
from ticketing_core.store import Database, UtcDateTime, metadata, utcnow

log = logging.getLogger(__name__)

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"

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
    sa.Column("status", sa.String(16), nullable=False, default=PENDING),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("claims", sa.Integer, nullable=False, default=0),
    # Set, and kept, once a failure may have come after the service acted (timeout, lost answer).
    sa.Column("ambiguous", sa.Boolean, nullable=False, default=False),
    # The ticket's earlier events were all settled by then: anything of ours it has since is this one.
    sa.Column("first_claimed_at", UtcDateTime),
    sa.Column("next_attempt_at", UtcDateTime, nullable=False),
    sa.Column("lease_until", UtcDateTime),
    sa.Column("last_error", sa.Text),
    sa.Column("created", UtcDateTime, nullable=False),
    sa.Column("delivered_at", UtcDateTime),
    sa.Index("ix_sync_outbox_due", "status", "next_attempt_at"),
    sa.Index("ix_sync_outbox_ordering", "ordering_key", "status", "id"),
    sqlite_autoincrement=True,  # ids are never reused, so a listing's ids stay meaningful
)

_actions = cattrs.Converter()
configure_tagged_union(Action, _actions, tag_name="type")


@attrs.frozen
class OutboxEvent:
    """One stored action for one ticket, with its delivery state."""

    id: int
    integration_id: int
    ticket_id: str
    anomaly_id: int | None
    action: Action
    status: str
    attempts: int
    claims: int
    ambiguous: bool
    first_claimed_at: datetime | None
    last_error: str | None
    created: datetime
    next_attempt_at: datetime
    delivered_at: datetime | None

    @property
    def in_doubt(self) -> bool:
        """Whether an earlier attempt may have reached the service (see the module docstring).

        Every claim but this one should have ended in a recorded failure; one that did not was
        cut short by a dying worker.
        """
        unsettled_claims = self.claims - 1 - self.attempts
        return unsettled_claims > 0 or self.ambiguous


@attrs.frozen
class NewEvent:
    """An action to store for a ticket of an integration."""

    integration_id: int
    ticket_id: str
    action: Action
    anomaly_id: int | None = None


class Outbox:
    """Stores, claims and settles events. Safe across threads and processes sharing the database."""

    def __init__(
        self,
        database: Database,
        *,
        max_attempts: int = 15,
        lease_seconds: float = 30.0,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
    ) -> None:
        self.database = database
        self.max_attempts = max_attempts
        self.lease = timedelta(seconds=lease_seconds)
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max

    def enqueue(self, new_events: Iterable[NewEvent], conn: sa.Connection | None = None) -> int:
        """Store events (in the caller's transaction when ``conn`` is given); return how many."""
        now = utcnow()
        rows = [
            {
                "integration_id": event.integration_id,
                "ticket_id": event.ticket_id,
                "ordering_key": f"{event.integration_id}:{event.ticket_id}",
                "anomaly_id": event.anomaly_id,
                "action": _actions.unstructure(event.action, Action),
                "status": PENDING,
                "attempts": 0,
                "claims": 0,
                "ambiguous": False,
                "next_attempt_at": now,
                "created": now,
            }
            for event in new_events
        ]
        if rows:
            with self.database.begin(conn) as c:
                c.execute(events.insert(), rows)
        return len(rows)

    def claim(self, limit: int) -> list[OutboxEvent]:
        """Lease up to ``limit`` due events, each the oldest undelivered one of its ticket."""
        now = utcnow()
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
        free = sa.or_(events.c.lease_until.is_(None), events.c.lease_until < now)
        with self.database.begin() as conn:
            candidates = conn.execute(
                sa.select(events.c.id)
                .where(
                    events.c.status == PENDING,
                    events.c.next_attempt_at <= now,
                    free,
                    events.c.id == oldest_of_ticket,
                )
                .order_by(events.c.id)
                .limit(limit)
                # PostgreSQL: racing workers skip each other's rows; SQLite serialises writers.
                .with_for_update(skip_locked=True, of=events)
            ).scalars()
            claimed: list[int] = []
            for event_id in list(candidates):
                # Conditional update: of two workers racing for one event, exactly one wins.
                won = conn.execute(
                    events.update()
                    .where(events.c.id == event_id, events.c.status == PENDING, free)
                    .values(
                        lease_until=now + self.lease,
                        claims=events.c.claims + 1,
                        first_claimed_at=sa.func.coalesce(events.c.first_claimed_at, now),
                    )
                ).rowcount
                if won:
                    claimed.append(event_id)
            return self._load(conn, claimed)

    def renew(self, event_ids: Sequence[int]) -> None:
        """Extend the leases of events still being delivered."""
        if event_ids:
            with self.database.begin() as conn:
                conn.execute(
                    events.update()
                    .where(events.c.id.in_(event_ids), events.c.status == PENDING)
                    .values(lease_until=utcnow() + self.lease)
                )

    def delivered(self, event_id: int) -> None:
        with self.database.begin() as conn:
            conn.execute(
                events.update()
                .where(events.c.id == event_id)
                .values(status=DELIVERED, delivered_at=utcnow(), lease_until=None, last_error=None)
            )

    def failed(self, event: OutboxEvent, error: BaseException) -> str:
        """Record a failed delivery: back off and retry, or park as dead. Returns the new status."""
        attempts = event.attempts + 1
        retryable = isinstance(error, ProviderError) and error.retryable
        status = PENDING if retryable and attempts < self.max_attempts else DEAD
        with self.database.begin() as conn:
            conn.execute(
                events.update()
                .where(events.c.id == event.id)
                .values(
                    status=status,
                    attempts=attempts,
                    ambiguous=sa.true() if is_ambiguous(error) else events.c.ambiguous,
                    last_error=f"{type(error).__name__}: {error}"[:2000],
                    next_attempt_at=utcnow() + self._backoff(attempts, error),
                    lease_until=None,
                )
            )
        return status

    def _backoff(self, attempts: int, error: BaseException) -> timedelta:
        exponential = min(self.backoff_max, self.backoff_initial * 2 ** (attempts - 1))
        jittered = exponential * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not security
        asked = getattr(error, "retry_after", None) or 0.0
        return timedelta(seconds=max(jittered, min(float(asked), self.backoff_max)))

    def retry(self, event_ids: Sequence[int] | None = None) -> int:
        """Put dead events (all, or those given) back in line; returns how many."""
        query = events.update().where(events.c.status == DEAD)
        if event_ids is not None:
            query = query.where(events.c.id.in_(event_ids))
        with self.database.begin() as conn:
            return conn.execute(
                query.values(status=PENDING, attempts=0, next_attempt_at=utcnow())
            ).rowcount

    def discard(self, event_ids: Sequence[int]) -> int:
        """Drop dead events that can never succeed (their ticket is gone), unblocking later ones."""
        with self.database.begin() as conn:
            return conn.execute(
                events.delete().where(events.c.id.in_(event_ids), events.c.status == DEAD)
            ).rowcount

    def discard_for_integration(self, integration_id: int, conn: sa.Connection) -> None:
        """Drop an integration's undelivered events (it is being deleted); delivered ones stay."""
        conn.execute(
            events.delete().where(
                events.c.integration_id == integration_id, events.c.status != DELIVERED
            )
        )

    def entries(self, status: str | None = None, limit: int = 100) -> list[OutboxEvent]:
        query = sa.select(events.c.id).order_by(events.c.id).limit(limit)
        if status is not None:
            query = query.where(events.c.status == status)
        with self.database.read() as conn:
            return self._load(conn, list(conn.execute(query).scalars()))

    def counts(self) -> dict[str, int]:
        with self.database.read() as conn:
            rows = conn.execute(
                sa.select(events.c.status, sa.func.count()).group_by(events.c.status)
            )
            return {PENDING: 0, DELIVERED: 0, DEAD: 0} | {status: n for status, n in rows}

    @staticmethod
    def _load(conn: sa.Connection, event_ids: Sequence[int]) -> list[OutboxEvent]:
        if not event_ids:
            return []
        rows = conn.execute(
            sa.select(events).where(events.c.id.in_(event_ids)).order_by(events.c.id)
        ).mappings()
        return [_event(row) for row in rows]


def is_ambiguous(error: BaseException) -> bool:
    """Whether the service may have acted although the call failed.

    A timeout or a dropped connection may come after the write; 429 and 503 are refusals, and
    a non-JSON page comes from something in front of the service.
    """
    if isinstance(error, ProviderTimeout):
        return True
    if isinstance(error, ProviderUnavailable):
        return error.status_code not in RETRIED_STATUSES
    return False


def _event(row: sa.RowMapping) -> OutboxEvent:
    return OutboxEvent(
        id=row["id"],
        integration_id=row["integration_id"],
        ticket_id=row["ticket_id"],
        anomaly_id=row["anomaly_id"],
        action=_actions.structure(row["action"], Action),  # type: ignore[arg-type]
        status=row["status"],
        attempts=row["attempts"],
        claims=row["claims"],
        ambiguous=row["ambiguous"],
        first_claimed_at=row["first_claimed_at"],
        last_error=row["last_error"],
        created=row["created"],
        next_attempt_at=row["next_attempt_at"],
        delivered_at=row["delivered_at"],
    )


Deliver = Callable[[OutboxEvent], None]


class Dispatcher(Protocol):
    """Runs deliveries of outbox events somewhere: threads here, a task queue elsewhere."""

    def start(self) -> None:
        """Begin delivering due events, including those left by an earlier process."""

    def wake(self) -> None:
        """New events were stored: look for work now rather than at the next poll."""

    def stop(self, timeout: float | None = None) -> None:
        """Stop claiming; wait up to ``timeout`` for deliveries in flight."""


class ThreadedDispatcher:
    """In-process delivery with at most ``concurrency`` deliveries at once."""

    def __init__(
        self,
        outbox: Outbox,
        deliver: Deliver,
        *,
        concurrency: int = 8,
        poll_interval: float = 0.5,
    ) -> None:
        self.outbox = outbox
        self.deliver = deliver
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        self._in_flight: set[int] = set()
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._loop: threading.Thread | None = None

    def start(self) -> None:
        self._stopping.clear()
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="ticketing-deliver")
        self._loop = threading.Thread(target=self._run, name="ticketing-outbox", daemon=True)
        self._loop.start()

    def wake(self) -> None:
        self._wakeup.set()

    def stop(self, timeout: float | None = 10.0) -> None:
        self._stopping.set()
        self._wakeup.set()
        if self._loop is not None:
            self._loop.join(timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _run(self) -> None:
        last_renewal = utcnow()
        while not self._stopping.is_set():
            try:
                self._dispatch_due()
                if utcnow() - last_renewal > self.outbox.lease / 3:
                    self.outbox.renew(self._snapshot())
                    last_renewal = utcnow()
            except Exception:
                log.exception("outbox dispatch failed; retrying after the poll interval")
            self._wakeup.wait(self.poll_interval)
            self._wakeup.clear()

    def _dispatch_due(self) -> None:
        free = self.concurrency - len(self._snapshot())
        if free <= 0 or self._pool is None:
            return
        for event in self.outbox.claim(free):
            with self._lock:
                self._in_flight.add(event.id)
            self._pool.submit(self._deliver_one, event)

    def _deliver_one(self, event: OutboxEvent) -> None:
        try:
            self.deliver(event)
        except Exception as exc:
            status = self.outbox.failed(event, exc)
            log.warning("outbox event %s failed (%s): %s", event.id, status, exc)
        else:
            self.outbox.delivered(event.id)
        finally:
            with self._lock:
                self._in_flight.discard(event.id)
            self._wakeup.set()

    def _snapshot(self) -> list[int]:
        with self._lock:
            return list(self._in_flight)


def describe(action: Action) -> str:
    """A one-line summary of an action, for listings."""
    if isinstance(action, AddWorkNote):
        return f"work note: {action.text}"
    if isinstance(action, ChangeTicket):
        fields = {k: v for k, v in _actions.unstructure(action.changes).items() if v}
        return f"change: {fields}"
    raise TypeError(f"unknown action {action!r}")
