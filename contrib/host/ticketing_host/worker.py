"""What ``ticketing worker`` runs in each of its Dramatiq processes: the broker, the two actors
(deliver a ticket; read notified tickets) and the two fork functions (the relay, and ``/metrics``
when a port is given).

Dramatiq imports this module in every process it starts; the settings come from the environment
``ticketing worker`` prepared (see :func:`ticketing_host.fleet.worker_settings_to_environment`).
"""

from __future__ import annotations

import logging
import time

import dramatiq
from prometheus_client import start_http_server

from . import fleet, metrics

log = logging.getLogger(__name__)
# Dramatiq logs at INFO; a line per HTTP request would cost more CPU than the request's own bookkeeping.
logging.getLogger("httpx").setLevel(logging.WARNING)
settings = fleet.worker_settings_from_environment()
deliveries = fleet.Deliveries(settings)
reads = fleet.NotifiedReads(deliveries)
assert settings.broker is not None
broker = fleet.broker_for(settings.broker, namespace=settings.queue)
broker.add_middleware(fleet.Draining(deliveries, reads))
dramatiq.set_broker(broker)
deliveries.actor = fleet.declare_actor(broker, settings, deliveries.drain)
fleet.declare_actor(broker, settings, reads.wake, fleet.INBOUND_ACTOR)


def relay() -> None:
    """Fork: wake-ups for events whose messages were lost; prunes delivered events. Keeps trying
    while the database cannot be reached, rather than leave this worker without a relay."""
    while True:
        try:
            runtime = deliveries.runtime()
            break
        except Exception:
            log.exception(
                "relay: cannot open the database; trying again in %s s", settings.relay_interval
            )
            time.sleep(settings.relay_interval)
    assert deliveries.actor is not None
    fleet.Relay(
        runtime.service.outbox, deliveries.actor, settings, prune=runtime.service.prune
    ).run()


def serve_metrics() -> None:
    """Fork: ``/metrics`` for every process of this ``ticketing worker`` and the outbox's gauges."""
    registry = metrics.registry_for(deliveries.runtime().service.outbox)
    _server, thread = start_http_server(settings.metrics_port or 0, registry=registry)
    thread.join()
