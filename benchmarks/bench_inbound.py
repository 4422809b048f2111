"""Two-way sync's figures, each beside a baseline measured in the same run (``nox -s bench``).

1. Notification to anomaly updated, on the embedded default (SQLite, the in-process worker), the
   emulator answering after 50 ms: an agent adds a work note to an incident or changes its
   state, the emulator's Business Rules notify the host, and the time until the anomaly's
   comment shows in the host's API is taken (polled every 5 ms, one change at a time). p50, p99
   and max of SAMPLES; target p99 <= 1 s. Baseline: one plain httpx GET of the incident.
2. The receiver's throughput while deliveries run, on this machine's two cores: with comments on
   linked anomalies kept queued (200 and more pending, delivered at 50 ms), client processes
   (raw HTTP/1.1 over keep-alive connections, requests built and signed before the clock
   starts, like wrk) post NOTIFICATIONS validly signed notifications as fast as answered;
   accepted/s, every one 202. Target >= 500/s for the shape made for load: ``serve --broker``
   (in this process) and one ``ticketing worker`` process of 8 threads on Redis, on the same
   machine, which deliver and read the notified tickets. Baseline: the same clients posting the
   same signed bodies, under as many deliveries, to a path no route serves (404): the HTTP
   stack's own ceiling here. Shown beside them, outside the target: the receiver with nothing
   to deliver, the embedded default (one process receiving, reading and delivering), and the
   serve process's CPU time per request in each run. Needs Redis (TICKETING_TEST_REDIS).
3. Request counts, not times: the reconciling poll over 10,000 changed incidents (target <= 101
   list requests) and the manual pull of 250 links (target ceil(250 / 100) reads; it took one
   read per link before).

The host (uvicorn) runs in a thread of this process, as do its inbound worker and dispatcher;
figures 1 and 3 drive an emulator in a thread too, figure 2 one in a process of its own (an
instance's work is not the host's), with its clients in two more. Exits non-zero when a target
is missed; ``--figures 2`` measures one.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import secrets
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import attrs
import httpx
from bench_scale import REDIS, emulator, forget_queue, workers  # the fleet's pieces
from servicenow_emulator import DEFAULT_PASSWORD, Emulator, RunningEmulator, run_in_thread
from ticketing_host.app import create_app, runtime_of
from ticketing_host.demo import ANOMALY, TICKET_REQUEST
from ticketing_host.keys import generate_key
from ticketing_host.runtime import HostRuntime
from ticketing_host.server import serve_in_thread
from ticketing_host.settings import Settings

from ticketing_core.notifications import TICKETING_V1, sign
from ticketing_core.sync.inbound.state import BATCH
from ticketing_core.sync.outbox import DELIVERED, PENDING
from ticketing_core.sync.settings import DEFAULT_CONCURRENCY

BIN = Path(sys.executable).parent
LATENCY_MS = 50
SAMPLES = 100  # figure 1, after WARMUP untimed changes
WARMUP = 2
POLL_EVERY = 0.005
TARGET_P99_S = 1.0
NOTIFICATIONS = 3000  # figure 2
CLIENT_PROCESSES, CLIENT_THREADS = 2, 4
LINKED = 50  # figure 2: anomalies, each with an incident of its own
FEED_LOW, FEED_BATCH = 200, 200  # figure 2: deliveries pending all the while the clients post
TARGET_RATE = 500.0
CHANGED = 10_000  # figure 3
POLL_LINKED = 5
PULLED = 250
TARGET_LISTS = 101
AGENT = "beth.anglin"
OWN_USER = "admin"  # the user of the integration's credentials
LOGIN = f"{OWN_USER}:{DEFAULT_PASSWORD}"  # the emulator's built-in development user
API_TOKEN = secrets.token_urlsafe(16)  # the host's API token, for this run only
SECRET_KEY = generate_key()  # encrypts the benchmark's stored credentials, for this run only
INCIDENTS = "/api/now/table/incident"
NOWHERE = "/bench/no-such-path"  # no route: answered 404 by the HTTP stack alone
STATES = {"1": "New", "2": "In Progress"}
UNSEEN_REVISION = 10**9  # figure 2's notifications: above any revision an incident reaches here


@attrs.frozen
class Host:
    url: str
    runtime: HostRuntime
    api: httpx.Client
    integration: int


@contextmanager
def hosted(tmp: Path, name: str, emulator_url: str, *, fleet: bool = False) -> Iterator[Host]:
    """A served host on a SQLite file of its own, with an integration for the emulator; with
    ``fleet``, ``serve --broker`` on Redis and one ``ticketing worker`` process beside it."""
    queue = f"bench-{uuid.uuid4().hex[:10]}"
    settings = Settings(
        database=str(tmp / f"{name}.db"),
        public_url="https://host.example",
        allow_http=True,
        allow_private_hosts=True,  # the emulator listens on 127.0.0.1
        api_token=API_TOKEN,
        secret_key=SECRET_KEY,
        broker=REDIS if fleet else None,
        queue=queue,
    )
    app = create_app(settings)
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    with (
        ExitStack() as stack,
        serve_in_thread(app) as running,
        httpx.Client(base_url=running.url, headers=headers, timeout=30) as api,
    ):
        body = {"type": "servicenow", "api_url": emulator_url, "api_access_token": LOGIN}
        integration = ok(api.post("/api/integrations", json=body), 201)["id"]
        if fleet:
            stack.callback(forget_queue, queue)
            stack.enter_context(workers(settings.database, queue, 1, SECRET_KEY))
        yield Host(running.url, runtime_of(app), api, integration)


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    return response.json()


def wait_until(done: Callable[[], object], timeout: float = 60.0, every: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not done after {timeout} s")
        time.sleep(every)


def enable(host: Host, **options: Any) -> str:
    """Turn inbound sync on; the notification secret."""
    path = f"/api/integrations/{host.integration}/inbound"
    secret: str = ok(host.api.put(path, json={"enabled": True, **options}))["secret"]
    return secret


def settled(host: Host) -> None:
    wait_until(lambda: host.runtime.service.outbox.counts()[PENDING] == 0)


def quiet(host: Host, emulator: Emulator) -> None:
    """Notifications sent and read, deliveries settled."""
    emulator.wait_for_notifications()
    wait_until(lambda: not host.runtime.inbound.pending_integrations(), every=0.005)
    settled(host)


def add_anomaly(host: Host, anomaly_id: int) -> None:
    ok(host.api.post("/api/anomalies", json=ANOMALY | {"id": anomaly_id}), 201)


def link(host: Host, anomaly_id: int, incident: dict[str, str]) -> None:
    """Link an incident as the link endpoint stores it, without its writes to the ticket."""
    host.runtime.service.links.add(
        anomaly_id=anomaly_id,
        integration_id=host.integration,
        ticket_id=incident["sys_id"],
        ticket_number=incident["number"],
        ticket_url=None,
        status="New",
    )


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


def verdict(met: bool) -> str:
    return "ok" if met else "MISSED"


# -- 1. notification to anomaly updated -----------------------------------------------------------


@attrs.frozen
class Latencies:
    seconds: list[float]
    kinds: list[str]
    baseline: float

    @property
    def p99(self) -> float:
        return percentile(self.seconds, 0.99)


def notification_to_comment(host: Host, emulator: Emulator, url: str, samples: int) -> Latencies:
    emulator.latency_ms = LATENCY_MS
    anomaly_path = f"/api/anomalies/{ANOMALY['id']}"
    ok(host.api.post("/api/anomalies", json=ANOMALY), 201)
    tickets = f"/api/integrations/ticketing/anomalies/{ANOMALY['id']}/tickets"
    created = ok(host.api.post(tickets, json=TICKET_REQUEST))["ticket"]
    sys_id, number = created["ticket_id"], created["ticket_number"]
    settled(host)
    secret = enable(host)
    emulator.notify_to(f"{host.url}/api/inbound/{host.integration}", secret, OWN_USER)
    quiet(host, emulator)

    def comments() -> list[str]:
        return [c["message"] for c in ok(host.api.get(anomaly_path))["comments"]]

    times: list[float] = []
    kinds: list[str] = []
    state = "1"
    for n in range(WARMUP + samples):
        before = len(comments())
        if n % 2:
            old, state = state, "2" if state == "1" else "1"
            kind, change = "state change", {"state": state}
            expected = f"{number} status changed from {STATES[old]} to {STATES[state]} by {AGENT}"
        else:
            text = f"Benchmark work note {n}"
            kind, change = "work note", {"work_notes": text}
            expected = f"Work note on {number} by {AGENT}: {text}"
        started = time.perf_counter()
        emulator.act_as(AGENT, sys_id, **change)
        while not any(expected in message for message in comments()[before:]):
            if time.perf_counter() - started > 30:
                raise TimeoutError(f"no comment {expected!r} after 30 s")
            time.sleep(POLL_EVERY)
        elapsed = time.perf_counter() - started
        if n >= WARMUP:
            times.append(elapsed)
            kinds.append(kind)
        quiet(host, emulator)
    with httpx.Client(base_url=url, auth=(OWN_USER, DEFAULT_PASSWORD)) as plain:
        reads = []
        for _ in range(10):
            started = time.perf_counter()
            plain.get(f"{INCIDENTS}/{sys_id}").raise_for_status()
            reads.append(time.perf_counter() - started)
    return Latencies(times, kinds, statistics.median(reads[1:]))


# -- 2. the receiver's throughput while deliveries run ----------------------------------------------


def post_many(
    url: str,
    path: str,
    secret: str,
    bodies: list[bytes],
    indices: list[int],
    threads: int,
    ready: Queue[int],
    go: Event,
    results: Queue[tuple[dict[int, int], float, float]],
) -> None:
    """A client process: ``threads`` keep-alive connections post the bodies at ``indices``, one
    request at a time each, once ``go`` is set; puts (statuses, started, finished).

    Like wrk, not httpx: each request is signed and written out before the clock starts, and an
    answer is read only as far as its status and length. These clients share the host's two
    cores, and what they spend is not the receiver's to give: with httpx clients, the 404 path
    measured 480 to 720 requests a second on this machine, with these 1,500 to 2,400 (the
    clients had measured themselves)."""
    address = httpx.URL(url)
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    plans = [
        [signed_request(address.netloc.decode(), path, secret, bodies[i % len(bodies)])
         for i in indices[k::threads]]
        for k in range(threads)
    ]  # fmt: skip
    times: list[float] = []

    def run(requests: list[bytes]) -> None:
        seen: Counter[int] = Counter()
        unread = bytearray()
        go.wait()
        started = time.monotonic()
        # Connected once the clock runs: the host closes a connection idle for 10 s.
        with socket.create_connection((address.host, address.port)) as connection:
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for request in requests:
                connection.sendall(request)
                seen[read_status(connection, unread)] += 1
        finished = time.monotonic()
        with lock:
            statuses.update(seen)
            times.extend((started, finished))

    workers = [threading.Thread(target=run, args=(plan,)) for plan in plans]
    for worker in workers:
        worker.start()
    ready.put(len(workers))
    for worker in workers:
        worker.join()
    results.put((dict(statuses), min(times), max(times)))


def signed_request(netloc: str, path: str, secret: str, body: bytes) -> bytes:
    """An HTTP/1.1 POST of ``body``, signed as the generated Business Rule signs it."""
    headers = {
        "Host": netloc,
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        **sign(TICKETING_V1, secret, body, time.time()),
    }
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"POST {path} HTTP/1.1\r\n{head}\r\n".encode() + body


def read_status(connection: socket.socket, unread: bytearray) -> int:
    """Read one answer from ``connection`` (``unread`` keeps what arrived beyond it); its status."""
    while True:
        if (end := unread.find(b"\r\n\r\n")) >= 0:
            head = bytes(unread[:end])
            whole = end + 4 + body_length(head)
            if len(unread) >= whole:
                del unread[:whole]
                return int(head.split(b" ", 2)[1])
        chunk = connection.recv(65536)
        if not chunk:
            raise ConnectionError("the host closed the connection")
        unread += chunk


def body_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


@attrs.frozen
class Burst:
    statuses: Counter[int]
    seconds: float
    cpu: float
    """CPU seconds serve's process (all its threads: this one) used while the clients posted."""
    delivered: int
    """Deliveries made while the clients posted."""
    caught_up: float
    """Seconds from the last answer until every notification stored had been read."""

    @property
    def count(self) -> int:
        return self.statuses.total()

    def rate(self, status: int | None = None) -> float:
        return (self.count if status is None else self.statuses[status]) / self.seconds

    def cpu_ms(self) -> float:
        return self.cpu / self.count * 1000


class Feeder(threading.Thread):
    """Keeps the outbox busy: whenever fewer than FEED_LOW deliveries are pending, queues
    FEED_BATCH comments on the linked anomalies (what the comment endpoint does, in one go)."""

    def __init__(self, runtime: HostRuntime) -> None:
        super().__init__(name="bench-feeder", daemon=True)
        self.runtime = runtime
        self.stopping = threading.Event()
        self.queued = 0

    def run(self) -> None:
        runtime = self.runtime
        while not self.stopping.is_set():
            if runtime.service.outbox.counts()[PENDING] < FEED_LOW:
                with runtime.database.begin() as conn:
                    for n in range(self.queued, self.queued + FEED_BATCH):
                        anomaly_id, message = n % LINKED + 1, f"Benchmark comment {n}"
                        runtime.store.add_comment(anomaly_id, message, conn=conn)
                        runtime.service.anomaly_commented(anomaly_id, message, conn=conn)
                self.queued += FEED_BATCH
            self.stopping.wait(0.1)


def burst(host: Host, path: str, posting: Posting, count: int, *, deliveries: bool) -> Burst:
    """Post ``count`` signed bodies to ``path`` from the client processes, all at once; with
    ``deliveries``, comments are delivered to the linked anomalies' tickets all the while."""
    runtime = host.runtime
    context = multiprocessing.get_context("spawn")
    ready: Queue[int] = context.Queue()
    results: Queue[tuple[dict[int, int], float, float]] = context.Queue()
    go = context.Event()
    processes = [
        context.Process(
            target=post_many,
            args=(
                host.url,
                path,
                posting.secret,
                posting.bodies,
                list(range(count))[p::CLIENT_PROCESSES],
                CLIENT_THREADS,
                ready,
                go,
                results,
            ),
        )
        for p in range(CLIENT_PROCESSES)
    ]
    for process in processes:
        process.start()
    for _ in processes:
        ready.get(timeout=60)
    feeder = Feeder(runtime)
    if deliveries:
        feeder.start()
        wait_until(lambda: feeder.queued)
        time.sleep(0.5)  # the dispatcher is under way
    delivered = runtime.service.outbox.counts()[DELIVERED]
    cpu = time.process_time()
    go.set()
    outcomes = [results.get(timeout=120) for _ in processes]
    cpu = time.process_time() - cpu
    delivered = runtime.service.outbox.counts()[DELIVERED] - delivered
    feeder.stopping.set()
    for process in processes:
        process.join()
    if deliveries:
        feeder.join()
    statuses: Counter[int] = Counter()
    for seen, _, _ in outcomes:
        statuses.update(seen)
    seconds = max(end for _, _, end in outcomes) - min(start for _, start, _ in outcomes)
    assert statuses.total() == count, (statuses, count)
    # Quiet before the next burst: notifications read, deliveries settled.
    wait_until(lambda: not runtime.inbound.pending_integrations(), every=0.01)
    # The clients' clock is this one (CLOCK_MONOTONIC is the machine's).
    caught_up = time.monotonic() - max(end for _, _, end in outcomes)
    settled(host)
    return Burst(statuses, seconds, cpu, delivered, caught_up)


@attrs.frozen
class Throughput:
    baseline: Burst
    """The same clients and bodies to a path no route serves, during as many deliveries."""
    received: Burst
    """The receiver, during the deliveries."""
    alone: Burst
    """The receiver with nothing to deliver (not under the target: where the time goes)."""


@attrs.frozen
class Posting:
    """What the clients post: notifications signed with the integration's secret."""

    secret: str
    bodies: list[bytes]


def linked_and_enabled(host: Host, emulator_url: str, count: int) -> Posting:
    """LINKED anomalies, each linked to an incident of its own, inbound sync on; ``count``
    notifications about those incidents."""
    with httpx.Client(base_url=emulator_url, auth=(OWN_USER, DEFAULT_PASSWORD)) as plain:
        params: dict[str, str | int] = {
            "sysparm_limit": LINKED,
            "sysparm_fields": "sys_id,number,sys_updated_on",
        }
        incidents = ok(plain.get(INCIDENTS, params=params))["result"]
    for anomaly_id, incident in enumerate(incidents, start=1):
        add_anomaly(host, anomaly_id)
        link(host, anomaly_id, incident)
    secret = enable(host)
    # What the generated rule sends for an agent's change, each with a revision newer than any
    # the host applied: every one is stored, and its ticket read again (a notification of a
    # revision applied already would be logged and dropped, which costs far less).
    bodies = [
        notification_body(incidents[i % len(incidents)], UNSEEN_REVISION + i) for i in range(count)
    ]
    return Posting(secret, bodies)


def receiver_throughput(host: Host, emulator_url: str, count: int) -> Throughput:
    posting = linked_and_enabled(host, emulator_url, count)
    receiver = f"/api/inbound/{host.integration}"
    return Throughput(
        baseline=burst(host, NOWHERE, posting, count, deliveries=True),
        received=burst(host, receiver, posting, count, deliveries=True),
        alone=burst(host, receiver, posting, count, deliveries=False),
    )


def one_process_throughput(host: Host, emulator_url: str, count: int) -> Burst:
    """The receiver of the embedded default while it delivers: one process does everything."""
    posting = linked_and_enabled(host, emulator_url, count)
    return burst(host, f"/api/inbound/{host.integration}", posting, count, deliveries=True)


def notification_body(incident: dict[str, str], revision: int) -> bytes:
    return json.dumps(
        {"table": "incident", "sys_id": incident["sys_id"], "sys_mod_count": str(revision),
         "sys_updated_on": incident["sys_updated_on"], "sys_updated_by": AGENT,
         "event": "update"},
        separators=(",", ":"),
    ).encode()  # fmt: skip


# -- 3. request counts ----------------------------------------------------------------------------


@attrs.frozen
class Counts:
    listed: int
    lists: int
    pulled: int
    reads: int


def incident_gets(emulator: Emulator, since: int) -> list[dict[str, Any]]:
    requests = emulator.requests
    assert len(requests) < 10_000, "the emulator's request log is full: counts would be wrong"
    return [r for r in requests[since:] if r["method"] == "GET" and r["path"] == INCIDENTS]


def request_counts(host: Host, emulator: Emulator) -> Counts:
    emulator.latency_ms = 0  # counted, not timed
    assert host.runtime.inbound_worker is not None
    host.runtime.inbound_worker.stop()  # only the poll run here reads
    add_anomaly(host, 1)
    add_anomaly(host, 2)
    enable(host)  # the poll's cursor: the newest change, before the incidents below
    incidents = emulator.seed_incidents(CHANGED)  # all at one instant of the instance's clock
    for incident in incidents[:: CHANGED // POLL_LINKED]:
        link(host, 1, incident)
    before = len(emulator.requests)
    listed = host.runtime.inbound.reconcile(host.integration)
    lists = len(incident_gets(emulator, before))
    for incident in incidents[-PULLED:]:
        link(host, 2, incident)
    before = len(emulator.requests)
    pulled = ok(host.api.post("/api/anomalies/2/ticket-links/sync"))
    reads = len(incident_gets(emulator, before))
    return Counts(listed, lists, len(pulled), reads)


# -- the run ------------------------------------------------------------------------------------


def figure_1(running: RunningEmulator, tmp: Path, samples: int) -> bool:
    with hosted(tmp, "latency", running.url) as host:
        latencies = notification_to_comment(host, running.emulator, running.url, samples)
    running.emulator.reset()
    seconds, p50, p99 = latencies.seconds, percentile(latencies.seconds, 0.5), latencies.p99
    by_kind = {
        kind: [t for t, k in zip(seconds, latencies.kinds, strict=True) if k == kind]
        for kind in sorted(set(latencies.kinds))
    }
    kinds = ", ".join(f"{len(times)} {kind}s" for kind, times in by_kind.items())
    print(f"1. notification to anomaly updated: {len(seconds)} agent changes ({kinds}), "
          f"{LATENCY_MS} ms latency, SQLite, in-process worker, polled every "
          f"{POLL_EVERY * 1000:.0f} ms")  # fmt: skip
    print(f"  p50 {p50:.3f} s, p99 {p99:.3f} s, max {max(seconds):.3f} s  "
          f"(target p99 <= {TARGET_P99_S:.0f} s)  {verdict(p99 <= TARGET_P99_S)}")  # fmt: skip
    print(f"  baseline: one plain httpx GET of the incident, {latencies.baseline:.3f} s; "
          f"p50 {p50 / latencies.baseline:.1f}x, p99 {p99 / latencies.baseline:.1f}x")  # fmt: skip
    for kind, times in by_kind.items():
        print(f"  {kind + 's:':15} p50 {percentile(times, 0.5):.3f} s, "
              f"max {max(times):.3f} s")  # fmt: skip
    return p99 <= TARGET_P99_S


def figure_2(tmp: Path, count: int) -> bool:
    with emulator(LATENCY_MS, LINKED) as instance, hosted(tmp, "one", instance) as host:
        one_process = one_process_throughput(host, instance, count)
    with (
        emulator(LATENCY_MS, LINKED) as instance,
        hosted(tmp, "fleet", instance, fleet=True) as host,
    ):
        runs = receiver_throughput(host, instance, count)
    rate, ceiling = runs.received.rate(202), runs.baseline.rate(404)
    met = runs.received.statuses[202] == count and rate >= TARGET_RATE
    clients = f"{CLIENT_PROCESSES} processes x {CLIENT_THREADS} threads"
    print(f"2. receiver throughput: {count} signed notifications, {clients}, raw keep-alive; "
          f"the outbox kept delivering comments ({FEED_LOW}+ pending) at {LATENCY_MS} ms, "
          f"concurrency {DEFAULT_CONCURRENCY}; emulator in its own process")  # fmt: skip
    print("  serve --broker (Redis) and one `ticketing worker` process of 8 threads, SQLite, "
          "on this machine:")  # fmt: skip
    for name, run in (
        ("receiver", runs.received),
        ("404 path", runs.baseline),
        ("receiver, nothing to deliver", runs.alone),
    ):
        print_burst(name, run)
    print("  the embedded default, SQLite, one process receiving, reading and delivering "
          "(not under the target):")  # fmt: skip
    print_burst("receiver", one_process)
    print(f"  accepted, serve --broker: {rate:.0f}/s (target >= {TARGET_RATE:.0f}/s, every one "
          f"202)  {verdict(met)}; ratio to the 404 path: {rate / ceiling:.2f}")  # fmt: skip
    return met


def print_burst(name: str, run: Burst) -> None:
    answers = ", ".join(f"{n} x {status}" for status, n in sorted(run.statuses.items()))
    print(f"    {name + ':':30}{run.rate():5.0f}/s over {run.seconds:5.2f} s ({answers}); "
          f"serve's CPU {run.cpu_ms():.2f} ms a request; {run.delivered} deliveries "
          f"meanwhile ({run.delivered / run.seconds:.0f}/s); all read "
          f"{run.caught_up:.1f} s after the last answer")  # fmt: skip


def figure_3(running: RunningEmulator, tmp: Path) -> bool:
    with hosted(tmp, "counts", running.url) as host:
        counts = request_counts(host, running.emulator)
    running.emulator.reset()
    pull_target = math.ceil(PULLED / BATCH)
    met_lists = counts.lists <= TARGET_LISTS
    met_reads = counts.reads <= pull_target and counts.pulled == PULLED
    print("3. request counts (the emulator's request log)")
    print(f"  reconciling poll: {counts.listed} incidents listed ({CHANGED} changed, "
          f"{POLL_LINKED} linked) in {counts.lists} list requests "
          f"(target <= {TARGET_LISTS})  {verdict(met_lists)}")  # fmt: skip
    print(f"  manual pull: N = {counts.pulled} links, {counts.reads} reads "
          f"(target ceil(N/{BATCH}) = {pull_target}; it took N = {counts.pulled})  "
          f"{verdict(met_reads)}")  # fmt: skip
    return met_lists and met_reads


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=SAMPLES, help="figure 1's changes")
    parser.add_argument("--notifications", type=int, default=NOTIFICATIONS, help="figure 2's")
    parser.add_argument(
        "--figures", default="123", help="which figures to measure (default: 123, all)"
    )
    args = parser.parse_args()
    met = []
    with run_in_thread(Emulator()) as running, tempfile.TemporaryDirectory() as tmp:
        if "1" in args.figures:
            met.append(figure_1(running, Path(tmp), args.samples))
        if "2" in args.figures:
            met.append(figure_2(Path(tmp), args.notifications))
        if "3" in args.figures:
            met.append(figure_3(running, Path(tmp)))
    return 0 if all(met) else 1


if __name__ == "__main__":
    sys.exit(main())
