"""What ``ticketing worker`` sets up in each Dramatiq process before it takes messages."""

from __future__ import annotations

from pathlib import Path

import dramatiq
from dramatiq.brokers.stub import StubBroker
from ticketing_host.fleet import IDLE_POLL_MS, Deliveries, Draining, NotifiedReads
from ticketing_host.settings import Settings


def test_idle_consumers_poll_for_wakeups_well_within_a_second(tmp_path: Path) -> None:
    broker = StubBroker()
    deliveries = Deliveries(Settings(str(tmp_path / "db"), public_url="https://q"))
    broker.add_middleware(Draining(deliveries, NotifiedReads(deliveries)))
    dramatiq.actor(broker=broker, queue_name="ticketing")(lambda ticket: None)
    worker = dramatiq.Worker(broker, worker_threads=1)
    worker.start()
    try:
        polls = {name: consumer.worker_timeout for name, consumer in worker.consumers.items()}
    finally:
        worker.stop()
    # Dramatiq's Redis consumers sleep up to this long when idle: 1 s by default.
    assert polls == {"ticketing": IDLE_POLL_MS, "ticketing.DQ": IDLE_POLL_MS}
    assert IDLE_POLL_MS <= 250
