"""The host's one composition point: a runtime with the dispatcher its settings ask for.

Without a broker, deliveries and the reads notifications ask for run in this process
(:class:`ThreadedDispatcher`, :class:`InboundWorker`); with one, this process sends wake-ups for
both to ``ticketing worker`` processes (:mod:`ticketing_host.fleet`), which build their own
runtimes and run the same loops.
"""

from __future__ import annotations

from ticketing_core.sync.dispatch import ThreadedDispatcher
from ticketing_core.sync.inbound import InboundWorker

from . import metrics
from .runtime import HostRuntime
from .settings import Settings


def runtime_for(settings: Settings) -> HostRuntime:
    """What ``serve`` runs: the API's runtime, its dispatcher and its inbound worker attached
    (started by ``start``). The inbound worker runs the reconciling polls here; notified
    tickets are read here too without a broker, and by the workers with one (``serve`` then
    only receives)."""
    runtime = HostRuntime(settings)
    service = runtime.service
    integrations = runtime.store.inbound_integrations
    if settings.broker is None:
        service.dispatcher = ThreadedDispatcher(
            service.outbox,
            service.delivery,
            concurrency=settings.concurrency,
            poll_interval=settings.poll_interval,
            prune=runtime.prune,
            on_attempt=metrics.observe,
        )
        runtime.inbound_worker = InboundWorker(runtime.inbound, integrations)
        return runtime
    from . import fleet  # Dramatiq, only for those who run a fleet

    dispatcher = fleet.dispatcher_for(service.outbox, settings, prune=runtime.prune)
    service.dispatcher = dispatcher
    runtime.inbound_worker = InboundWorker(
        runtime.inbound,
        integrations,
        read=dispatcher.read_notified,
        reread_after=fleet.ASK_AGAIN_SECONDS,
    )
    return runtime
