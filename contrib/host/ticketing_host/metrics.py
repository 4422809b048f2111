"""Prometheus metrics of delivery, in the text format, for ``/metrics`` on ``serve`` and workers.

Counters and the latency histogram come from the processes that deliver (with
``PROMETHEUS_MULTIPROC_DIR`` set, as ``ticketing worker`` does, summed over its processes). The
gauges come from the outbox table at scrape time, so they are the fleet's truth: events pending,
dead and delivered, deliveries in flight to each instance, the age of the oldest pending event.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ticketing_core.errors import RateLimited, may_have_landed
from ticketing_core.sync.delivery import Outcome
from ticketing_core.sync.outbox import DEAD, DELIVERED, PENDING, Outbox, OutboxEvent

MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

ATTEMPTS = Counter(
    "ticketing_delivery_attempts",
    "Delivery attempts, by integration and how they ended",
    ["integration", "outcome"],
    registry=None,
)
RATE_LIMITED = Counter(
    "ticketing_rate_limited", "Deliveries the instance answered 429", ["integration"], registry=None
)
AMBIGUOUS = Counter(
    "ticketing_ambiguous_failures",
    "Deliveries that failed after the request may have reached the instance",
    ["integration"],
    registry=None,
)
LATENCY = Histogram(
    "ticketing_delivery_latency_seconds",
    "From an event's enqueueing to its delivery, on the database's clock",
    ["integration"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600),
    registry=None,
)
DELIVERY_METRICS = (ATTEMPTS, RATE_LIMITED, AMBIGUOUS, LATENCY)


def observe(event: OutboxEvent, outcome: Outcome) -> None:
    """Count one attempt at ``event``."""
    integration = str(event.integration_id)
    ATTEMPTS.labels(integration, outcome.status or "lease_lost").inc()
    if isinstance(outcome.error, RateLimited):
        RATE_LIMITED.labels(integration).inc()
    if outcome.error is not None and may_have_landed(outcome.error):
        AMBIGUOUS.labels(integration).inc()
    if outcome.delivered_at is not None:
        LATENCY.labels(integration).observe((outcome.delivered_at - event.created).total_seconds())


class OutboxCollector(Collector):
    """Gauges read from the outbox table when scraped."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    def collect(self) -> Iterator[Metric]:
        events = GaugeMetricFamily(
            "ticketing_outbox_events", "Outbox events by status", labels=["integration", "status"]
        )
        in_flight = GaugeMetricFamily(
            "ticketing_in_flight",
            "Deliveries in flight to each integration's instance, across every worker",
            labels=["integration"],
        )
        oldest = GaugeMetricFamily(
            "ticketing_oldest_pending_seconds",
            "Age of the oldest pending event",
            labels=["integration"],
        )
        for row in self.outbox.stats():
            integration = str(row.integration_id)
            for status, count in (
                (PENDING, row.pending),
                (DEAD, row.dead),
                (DELIVERED, row.delivered),
            ):
                events.add_metric([integration, status], count)
            in_flight.add_metric([integration], row.in_flight)
            if row.oldest_pending_seconds is not None:
                oldest.add_metric([integration], row.oldest_pending_seconds)
        yield from (events, in_flight, oldest)


def registry_for(outbox: Outbox) -> CollectorRegistry:
    """This process's delivery metrics (or every worker process's) and the outbox's gauges."""
    registry = CollectorRegistry()
    if os.environ.get(MULTIPROCESS_VARIABLE):
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        for metric in DELIVERY_METRICS:
            registry.register(metric)
    registry.register(OutboxCollector(outbox))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
