"""The host's one composition point: a runtime with the dispatcher its settings ask for.

Without a broker, deliveries run in this process (:class:`ThreadedDispatcher`); with one, this
process sends wake-ups to ``ticketing worker`` processes (:mod:`ticketing_host.fleet`), which
build their own runtimes and run the same delivery loop.
"""

from __future__ import annotations

from ticketing_core.sync.dispatch import Dispatcher, ThreadedDispatcher
from ticketing_core.sync.inbound import InboundWorker

from . import metrics
from .runtime import HostRuntime
from .settings import Settings


def runtime_for(settings: Settings) -> HostRuntime:
    """What ``serve`` runs: the API's runtime, its dispatcher and its inbound worker attached
    (started by ``start``). Inbound work runs here, beside the receiver, with or without a
    fleet: it is reads and short transactions, not deliveries."""
    runtime = HostRuntime(settings)
    runtime.service.dispatcher = dispatcher_for(runtime)
    runtime.inbound_worker = InboundWorker(runtime.inbound, runtime.store.inbound_integrations)
    return runtime


def dispatcher_for(runtime: HostRuntime) -> Dispatcher:
    settings, service = runtime.settings, runtime.service
    if settings.broker is None:
        return ThreadedDispatcher(
            service.outbox,
            service.delivery,
            concurrency=settings.concurrency,
            poll_interval=settings.poll_interval,
            prune=runtime.prune,
            on_attempt=metrics.observe,
        )
    from . import fleet  # Dramatiq, only for those who run a fleet

    return fleet.dispatcher_for(service.outbox, settings, prune=runtime.prune)
