"""Delivery at scale on Dramatiq: ``ticketing worker`` processes share one database and one broker.

The outbox table stays the record; a broker message is only a wake-up naming one ticket (its
ordering key, ``<integration id>:<ticket id>``):

- after the host's transaction commits, ``serve --broker`` sends one message per ticket it queued
  events for (:class:`BrokerDispatcher`), and delivers nothing itself;
- a worker receiving one *drains*: it claims the ticket's next due event, delivers it, settles it,
  and goes on with that ticket, then with other due tickets, until nothing is due (or its drain
  budget is spent, when it sends a wake-up to carry on). Claims go through
  :meth:`~ticketing_core.sync.outbox.Outbox.claim_next`, which keeps at most ``instance_concurrency``
  live claims per integration across the whole fleet, and none while its pause (after a 429 or
  an outage) lasts;
- a failed event is retried at its backoff by a delayed message, and the relay (in ``serve`` and
  in every ``ticketing worker``) re-sends wake-ups for events left due by lost messages (a broker
  restart or flush, a crash between commit and send).

Two-way sync's reads go to the workers as well, so that ``serve`` only receives: once a
notification is stored, ``serve`` asks with a message naming its integration (at most one a
gather interval while they keep coming, and again every ASK_AGAIN_SECONDS while any waits
unread); a worker process hands it to a thread of its own (:class:`NotifiedReads`), which reads
the notified tickets and applies them, as ``serve`` does without a broker. The notifications
table is the record, so a lost message costs a delay, not a change. The reconciling polls stay in
``serve``.

Broker redelivery is at-least-once, and so are the relay's wake-ups; the outbox's fencing and keyed
writes are what make each note land exactly once. Dramatiq's own retries are off (the outbox owns
attempts, backoff and dead-parking), its time limit is above the drain budget plus one delivery's
deadline, and messages have no age limit.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import socket
import threading
from collections.abc import Callable, Collection
from urllib.parse import urlsplit

import attrs
import dramatiq
from dramatiq import cli as dramatiq_cli
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker

from ticketing_core.errors import InvalidInput
from ticketing_core.sync.delivery import Drain
from ticketing_core.sync.dispatch import Every
from ticketing_core.sync.inbound import InboundWorker
from ticketing_core.sync.outbox import Outbox
from ticketing_core.sync.settings import DEFAULT_PRUNE_INTERVAL, DEFAULT_RUN_LENGTH

from . import metrics
from .runtime import HostRuntime
from .settings import Settings, shown_url

log = logging.getLogger(__name__)

ACTOR = "deliver_ticket"
INBOUND_ACTOR = "read_notified"
# serve asks the workers to read an integration's notifications when new ones are stored, and
# again this often while any wait (its message may have been lost); an older ask is dropped
# unread, so asks do not pile up while no worker runs.
ASK_AGAIN_SECONDS = 30.0
ASK_MAX_AGE_SECONDS = 60.0
# A worker's reader looks for waiting notifications this often without being asked.
READER_TICK_SECONDS = 30.0
SETTINGS_VARIABLE = "TICKETING_WORKER_SETTINGS"
DRAIN_SECONDS = 30.0  # one message's work at most; then it hands on to a fresh message
# A run (DEFAULT_RUN_LENGTH events at most) stops between two events on SIGTERM or when the
# drain's budget is spent, so a message takes at most DRAIN_SECONDS plus one delivery.
# How long an idle worker's Redis consumers sleep between polls at most (Dramatiq's default is 1 s,
# which a wake-up would wait out). RabbitMQ pushes messages, so it does not poll.
IDLE_POLL_MS = 250


def broker_for(url: str, namespace: str = "ticketing") -> dramatiq.Broker:
    """A Dramatiq broker for ``redis://`` or ``amqp://`` URLs (messages confirmed on send)."""
    scheme = urlsplit(url).scheme
    if scheme in ("redis", "rediss"):
        return RedisBroker(url=url, namespace=namespace)  # type: ignore[no-untyped-call]
    if scheme in ("amqp", "amqps"):
        return RabbitmqBroker(url=url, confirm_delivery=True)
    raise InvalidInput(
        f"--broker must be a redis:// or amqp:// URL, not {scheme or 'one without a scheme'}"
    )


def declare_actor(
    broker: dramatiq.Broker, settings: Settings, run: Callable[[str], None], name: str = ACTOR
) -> dramatiq.Actor[[str], None]:
    """An actor: by default, deliver a ticket's due events (and then others'), with no age
    limit; with ``name=INBOUND_ACTOR``, wake the reader of an integration's notified tickets,
    dropped when older than ASK_MAX_AGE_SECONDS. Retries off, a time limit above a drain plus
    one delivery."""
    time_limit = (DRAIN_SECONDS + settings.delivery_deadline + 30) * 1000
    max_age = int(ASK_MAX_AGE_SECONDS * 1000) if name == INBOUND_ACTOR else None
    declare = dramatiq.actor(
        broker=broker,
        actor_name=name,
        queue_name=settings.queue,
        max_retries=0,
        time_limit=int(time_limit),
        max_age=max_age,
    )
    return declare(run)


def send_wakeup(
    actor: dramatiq.Actor[[str], None], ticket: str, delay: float = 0.0,
    *, again: str = "the relay will",
) -> None:  # fmt: skip
    """Ask a worker to deliver ``ticket``'s due events, ``delay`` seconds from now (or, to the
    inbound actor, to read an integration's notifications). A send that fails is logged: the
    work stays in the database, and ``again`` says who asks for it again."""
    try:
        actor.send_with_options(args=(ticket,), delay=int(delay * 1000) or None)
    except Exception as exc:
        log.warning("could not send the wake-up for %s (%s): %s", ticket, again, exc)


def dispatcher_for(
    outbox: Outbox, settings: Settings, *, prune: Callable[[], object]
) -> BrokerDispatcher:
    """What ``serve --broker`` dispatches with: a broker of its own and the actor to send to."""
    assert settings.broker is not None
    broker = broker_for(settings.broker, namespace=settings.queue)
    actor = declare_actor(broker, settings, _never_here)
    reads = declare_actor(broker, settings, _never_here, INBOUND_ACTOR)
    return BrokerDispatcher(outbox, actor, reads, settings, prune=prune)


def _never_here(ticket: str) -> None:  # pragma: no cover - serve sends, workers run
    raise RuntimeError("serve --broker delivers nothing itself")


class BrokerDispatcher:
    """``serve --broker``: sends wake-ups after commits and runs the relay; delivers nothing,
    and reads no notified ticket (it asks the workers to).

    Wake-ups and asks go out from a thread of their own, so neither a request nor the polls
    wait on the broker; when the broker is slow and the backlog full, they are dropped, and the
    relay (or the next ask) sends them later.
    """

    BACKLOG = 10_000

    def __init__(
        self,
        outbox: Outbox,
        actor: dramatiq.Actor[[str], None],
        reads: dramatiq.Actor[[str], None],
        settings: Settings,
        *,
        prune: Callable[[], object],
    ) -> None:
        self.relay = Relay(outbox, actor, settings, prune=prune)
        self.actor, self.reads = actor, reads
        self._outgoing: queue.Queue[tuple[dramatiq.Actor[[str], None], str] | None] = queue.Queue(
            self.BACKLOG
        )
        self._sender: threading.Thread | None = None

    def start(self) -> None:
        self.relay.start()
        self._sender = threading.Thread(target=self._send, name="ticketing-wakeups", daemon=True)
        self._sender.start()

    def wake(self, tickets: Collection[str] = ()) -> None:
        for ticket in sorted(tickets):
            self._put(self.actor, ticket)

    def read_notified(self, integration_id: int) -> None:
        """Ask a worker to read the integration's notified tickets."""
        self._put(self.reads, str(integration_id))

    def _put(self, actor: dramatiq.Actor[[str], None], argument: str) -> None:
        try:
            self._outgoing.put_nowait((actor, argument))
        except queue.Full:
            log.warning("wake-up backlog full; %s for %s is sent later", actor.actor_name, argument)

    def _send(self) -> None:
        while (outgoing := self._outgoing.get()) is not None:
            actor, argument = outgoing
            again = "the relay will" if actor is self.actor else "serve asks again"
            send_wakeup(actor, argument, again=again)

    def stop(self, timeout: float | None = None) -> None:
        with contextlib.suppress(queue.Full):
            self._outgoing.put(None, timeout=1)
        if self._sender is not None:
            self._sender.join(timeout or 10)
        self.relay.stop()
        self.actor.broker.close()


class Relay:
    """Every relay interval, wake-ups for tickets whose next event has been due that long
    unclaimed (their messages were lost), one per free slot of each integration, none while it is
    paused; prunes delivered events now and then."""

    def __init__(
        self,
        outbox: Outbox,
        actor: dramatiq.Actor[[str], None],
        settings: Settings,
        *,
        prune: Callable[[], object],
        prune_interval: float = DEFAULT_PRUNE_INTERVAL,
    ) -> None:
        self.outbox, self.actor = outbox, actor
        self.interval, self.instance_limit = settings.relay_interval, settings.instance_concurrency
        self.prune = Every(prune_interval, prune, at_start=False)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self.run, name="ticketing-relay", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(self.interval + 5)

    def run(self) -> None:
        while not self._stopping.wait(self.interval):
            try:
                due = self.outbox.due_tickets(
                    waiting=self.interval, instance_limit=self.instance_limit
                )
                for ticket in due:
                    send_wakeup(self.actor, ticket)
                self.prune()
            except Exception:
                log.exception("relay pass failed; trying again in %s s", self.interval)


class Deliveries:
    """A worker process's side: drains tickets through one runtime built on first use (after
    Dramatiq forked the process, so no connection is shared across processes)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stopping = threading.Event()  # set by Draining: finish the event in hand, then stop
        self.actor: dramatiq.Actor[[str], None] | None = None
        self._runtime: HostRuntime | None = None
        self._drain: Drain | None = None
        self._lock = threading.Lock()

    def runtime(self) -> HostRuntime:
        with self._lock:
            if self._runtime is None:
                self._runtime = HostRuntime(self.settings, worker=True)
                # Events this process queues (a note its reads copy to another ticket) are
                # woken once they commit, as serve's are, not at the relay's next pass.
                self._runtime.service.outbox.on_stored = self._wake_stored
            return self._runtime

    def _wake_stored(self, tickets: Collection[str]) -> None:
        for ticket in sorted(tickets):
            self._wake(ticket)

    def drain(self, ticket: str) -> None:
        """Deliver ``ticket``'s due events, then other tickets', within the drain budget; when
        it is spent, a fresh message carries on."""
        if self._drain is None:
            service = self.runtime().service
            self._drain = Drain(
                service.outbox,
                service.delivery,
                instance_limit=self.settings.instance_concurrency,
                batch=DEFAULT_RUN_LENGTH,
                on_attempt=metrics.observe,
                retry_later=self._wake,
            )
        drained = self._drain(ticket, stopping=self.stopping.is_set, budget=DRAIN_SECONDS)
        if drained.carry_on is not None:
            self._wake(drained.carry_on)

    def _wake(self, ticket: str, delay: float = 0.0) -> None:
        if self.actor is not None:
            send_wakeup(self.actor, ticket, delay)

    def close(self) -> None:
        with self._lock:
            if self._runtime is not None:
                self._runtime.stop()
                self._runtime, self._drain = None, None


class NotifiedReads:
    """A worker process's inbound side: a thread reading the tickets stored notifications
    name, woken by ``serve``'s messages (and looking every second without them), started by the
    first. A message only wakes it, so reads never hold the threads deliveries run in, and
    messages that arrive while it reads are one more round, not one more reader."""

    def __init__(self, deliveries: Deliveries) -> None:
        self.deliveries = deliveries
        self._reader: InboundWorker | None = None
        self._lock = threading.Lock()

    def wake(self, _integration: str) -> None:
        with self._lock:
            if self._reader is None:
                # No polls here (``integrations`` names none): serve runs them.
                self._reader = InboundWorker(
                    self.deliveries.runtime().inbound, tuple, tick=READER_TICK_SECONDS
                )
                self._reader.start()
            self._reader.wake()

    def close(self) -> None:
        with self._lock:
            if self._reader is not None:
                self._reader.stop()
                self._reader = None


class Draining(dramatiq.Middleware):
    """Prompt wake-ups, and on SIGTERM, tell the drains to stop after the event in hand;
    Dramatiq waits for them."""

    def __init__(self, deliveries: Deliveries, reads: NotifiedReads) -> None:
        self.deliveries, self.reads = deliveries, reads

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        worker.worker_timeout = IDLE_POLL_MS  # before its consumers exist: they take it over

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self.deliveries.stopping.set()
        self.reads.close()  # a read under way finishes its batch of tickets first

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self.deliveries.close()


@attrs.frozen
class WorkerCommand:
    """``ticketing worker``: Dramatiq's own command line, run with this package's worker module.

    ``warnings``: one per integration this worker cannot use (its credentials or its settings),
    for the command to print before it starts."""

    settings: Settings
    warnings: tuple[str, ...] = ()

    @classmethod
    def checked(cls, settings: Settings) -> WorkerCommand:
        """Check the database (an existing one; making its schema, should this worker come
        before any host) and the broker, so that a mistake is one line here rather than in every
        process; and find the integrations this worker cannot use."""
        runtime = HostRuntime(settings, worker=True)
        try:
            warnings = tuple(runtime.unusable_integrations())
        finally:
            runtime.stop()
        if settings.metrics_port is not None:
            check_port_free(settings.metrics_port)
        check_broker(settings)
        return cls(settings, warnings)

    def run(self, processes: int, threads: int) -> int:
        os.environ.update(worker_settings_to_environment(self.settings))
        forks = ["ticketing_host.worker:relay"]
        if self.settings.metrics_port is not None:
            forks.append("ticketing_host.worker:serve_metrics")
        shutdown_ms = int((self.settings.delivery_deadline + 5) * 1000)
        argv = [
            "ticketing_host.worker:broker",
            "--processes", str(processes),
            "--threads", str(threads),
            "--queues", self.settings.queue,
            "--worker-shutdown-timeout", str(shutdown_ms),
            *(part for fork in forks for part in ("--fork-function", fork)),
        ]  # fmt: skip
        parser = dramatiq_cli.make_argument_parser()  # type: ignore[no-untyped-call]
        code: int = dramatiq_cli.main(parser.parse_args(argv))  # type: ignore[no-untyped-call]
        return code


def check_port_free(port: int) -> None:
    """Refuse a metrics port something else listens on (its server would die unnoticed)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))  # noqa: S104 - where start_http_server listens
        except OSError as exc:
            raise InvalidInput(f"--metrics-port {port} is taken: {exc.strerror}") from None


def check_broker(settings: Settings) -> None:
    """Raise InvalidInput naming the broker (its password masked) unless it answers: what
    ``ticketing worker`` and ``serve --broker`` check before they start."""
    assert settings.broker is not None
    broker = broker_for(settings.broker, namespace=settings.queue)
    try:
        check_reachable(broker)
    except Exception as exc:
        raise InvalidInput(
            f"cannot reach the broker at {shown_url(settings.broker)}: {type(exc).__name__}"
        ) from None
    finally:
        broker.close()


def check_reachable(broker: dramatiq.Broker) -> None:
    """Raise unless the broker answers (a Redis PING, an AMQP connection)."""
    if isinstance(broker, RedisBroker):
        broker.client.ping()
    elif isinstance(broker, RabbitmqBroker):
        broker.connection  # noqa: B018 - opening it is the check


def worker_settings_to_environment(settings: Settings) -> dict[str, str]:
    """What ``ticketing worker`` hands its Dramatiq processes (never an API token)."""
    values = attrs.asdict(attrs.evolve(settings, api_token=None))
    return {SETTINGS_VARIABLE: json.dumps(values)}


def worker_settings_from_environment() -> Settings:
    raw = os.environ.get(SETTINGS_VARIABLE)
    if raw is None:
        raise RuntimeError(f"{SETTINGS_VARIABLE} is not set: start workers with ticketing worker")
    return Settings(**json.loads(raw))
