"""The sync engine: the database, the link store, keyed requests, the outbox and delivery.

Needs the ``sync`` extra (SQLAlchemy). The contract (:mod:`ticketing_core.hookspecs` and its
records) never imports it. Layers, bottom up: :mod:`~.schema` and :mod:`~.database`;
:mod:`~.lease` and :mod:`~.keys`; :mod:`~.links`, :mod:`~.once` and :mod:`~.outbox`;
:mod:`~.delivery` and :mod:`~.dispatch`; :mod:`~.service`, the flows a host calls; :mod:`~.inbound`,
changes flowing back (opt-in). :mod:`~.synclog` records every decision. Defaults live in
:mod:`~.settings`.
"""

from __future__ import annotations

from ticketing_core.sync.database import Database
from ticketing_core.sync.delivery import Delivery, Drain, Outcome, deliver_run
from ticketing_core.sync.dispatch import Dispatcher, ThreadedDispatcher
from ticketing_core.sync.inbound import Inbound, InboundWorker
from ticketing_core.sync.links import LinkStore
from ticketing_core.sync.once import KeyedRequests
from ticketing_core.sync.outbox import NewEvent, Outbox, OutboxEvent
from ticketing_core.sync.providers import ProviderPool
from ticketing_core.sync.service import CreatedTicket, SyncService
from ticketing_core.sync.settings import DeliverySettings
from ticketing_core.sync.synclog import SyncLog

__all__ = [
    "CreatedTicket",
    "Database",
    "Delivery",
    "DeliverySettings",
    "Dispatcher",
    "Drain",
    "Inbound",
    "InboundWorker",
    "KeyedRequests",
    "LinkStore",
    "NewEvent",
    "Outbox",
    "OutboxEvent",
    "Outcome",
    "ProviderPool",
    "SyncLog",
    "SyncService",
    "ThreadedDispatcher",
    "deliver_run",
]
