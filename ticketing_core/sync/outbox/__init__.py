"""The durable outbox: ticket actions stored before the host call returns, delivered by a worker.

An event is one :mod:`~ticketing_core.policies` action for one ticket. The table is the record; a
dispatcher's wake-up, a poll or a task-queue message only says "look for due events". The outbox
guarantees, whoever delivers:

- nothing is lost: events live in the database until delivered or parked as dead;
- at most one event per ticket is in flight, and a ticket's events are delivered in the order their
  transactions committed (on PostgreSQL, enqueuing takes a per-ticket lock, so ids follow commit
  order); a dead event holds back the later events of its ticket until it is retried or discarded;
- a claim is a lease with a fencing token (:mod:`ticketing_core.sync.lease`), renewed while
  delivering and measured on the database's clock: a worker whose lease expired can neither renew
  nor settle, so it cannot undo another worker's delivery;
- an event whose earlier attempt may have landed is *in doubt*, and is not sent again before its
  doubt window is over (:meth:`Outbox.confirm`);
- failures back off, and outages pause the integration (:mod:`~.policy`);
- delivered events are pruned after ``retention``; the tally of their notes is kept.

How one event is delivered, and why that is exactly once in effect, is
:mod:`ticketing_core.sync.delivery`. The parts, one job each: :mod:`~.schema` (tables, records,
fences), :mod:`~.claims` (storing and claiming), :mod:`~.settle` (confirming and settling),
:mod:`~.policy` (retries and pauses), :mod:`~.operations` (what operators do), :mod:`~.migrations`.
"""

from __future__ import annotations

from ticketing_core.sync.outbox.claims import Claims
from ticketing_core.sync.outbox.operations import (
    DeliveryState,
    DeliveryStatus,
    IntegrationStats,
    Operations,
    describe,
)
from ticketing_core.sync.outbox.schema import (
    DEAD,
    DELIVERED,
    PENDING,
    LeaseLost,
    NewEvent,
    OutboxEvent,
    StillInDoubt,
    events,
    note_tally,
    pauses,
)


class Outbox(Claims, Operations):
    """Stores, claims and settles events. Safe across threads and processes sharing the database."""


__all__ = [
    "DEAD",
    "DELIVERED",
    "PENDING",
    "DeliveryState",
    "DeliveryStatus",
    "IntegrationStats",
    "LeaseLost",
    "NewEvent",
    "Outbox",
    "OutboxEvent",
    "StillInDoubt",
    "describe",
    "events",
    "note_tally",
    "pauses",
]
