"""The fleet's figures, each beside its baseline measured in the same run (``nox -s bench-scale``).

1. 2,000 notes over 200 tickets at 50 ms emulator latency, instance limit 8, one ``ticketing
   worker``: elapsed against the floor 2,000 / 8 x 50 ms = 12.5 s (target <= 1.3x).
2. Four integrations (four emulators, in processes of their own), one worker process against
   four: throughput ratio (target >= 3x).
3. Per-note outbox overhead at 0 ms latency (claim + deliver + settle) against a direct
   ``add_work_note`` (target <= 1 ms per note).

Figures 1 and 2 time a burst of notes queued at once, after an untimed warm-up note per ticket.

Needs PostgreSQL and Redis (as the tests do: TICKETING_TEST_POSTGRES, TICKETING_TEST_REDIS). Exits
non-zero when a target is missed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import redis
import sqlalchemy as sa
from servicenow_emulator import DEFAULT_PASSWORD
from ticketing_host.compose import runtime_for
from ticketing_host.keys import generate_key
from ticketing_host.runtime import HostRuntime
from ticketing_host.settings import Settings

from ticketing_core.models import TicketDraft
from ticketing_core.policies import AddWorkNote
from ticketing_core.sync.database import engine_url
from ticketing_core.sync.delivery import deliver_run
from ticketing_core.sync.outbox import DELIVERED, NewEvent, Outbox
from ticketing_core.sync.settings import DEFAULT_RUN_LENGTH
from ticketing_servicenow import ServiceNowProvider

POSTGRES = os.environ.get("TICKETING_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("TICKETING_TEST_REDIS", "redis://127.0.0.1:6379/11")
BIN = Path(sys.executable).parent
LOGIN = f"admin:{DEFAULT_PASSWORD}"
LIMIT = 8
SECRET_KEY = generate_key()  # encrypts the benchmark's stored credentials, for this run only
LAST_BUSY: list[float] = []  # the CPU share of the last delivery, from machine_busy


@contextmanager
def fresh_schema() -> Iterator[str]:
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(engine_url(POSTGRES))
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{POSTGRES}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def emulator(latency_ms: int, seed: int = 0) -> Iterator[str]:
    """A ServiceNow emulator in a process of its own (so that four do not share one GIL, nor
    one the host's), with ``seed`` incidents."""
    port = free_port()
    process = subprocess.Popen(
        [str(BIN / "servicenow-emulator"), "--port", str(port), "--latency-ms", str(latency_ms),
         "--seed", str(seed)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"{url}/__emulator/state", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def seed(url: str, tickets: int) -> list[str]:
    """``tickets`` incidents made through the Table API; their sys_ids."""
    with ServiceNowProvider(api_url=url, api_access_token=LOGIN) as provider:
        draft = TicketDraft(title="bench", description="d")
        return [provider.create(draft).id for _ in range(tickets)]


@contextmanager
def workers(
    database: str, queue: str, processes: int, secret_key: str = SECRET_KEY
) -> Iterator[None]:
    """One ``ticketing worker`` with ``processes``, every one of them booted before timing."""
    command = [
        str(BIN / "ticketing"), "worker", "--database", database, "--broker", REDIS,
        "--queue", queue, "--processes", str(processes), "--threads", str(LIMIT),
        "--instance-concurrency", str(LIMIT), "--allow-http", "--allow-private-hosts",
        "--relay-interval", "2",
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        env=os.environ | {"TICKETING_SECRET_KEY": secret_key},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    ready = 0
    while ready < processes:
        line = process.stderr.readline()
        if not line:
            raise RuntimeError("ticketing worker exited before its processes were ready")
        ready += "Worker process is ready for action" in line
    # Keep reading its log, so that it never blocks on a full pipe.
    threading.Thread(target=process.stderr.read, daemon=True).start()
    try:
        yield
    finally:
        os.kill(process.pid, signal.SIGTERM)
        process.wait(30)


def deliver_through_fleet(
    database: str, queue: str, integrations: list[tuple[str, list[str]]], notes_per_ticket: int,
    processes: int,
) -> float:  # fmt: skip
    """Seconds from queueing every note to the last one delivered, once every worker process
    is warm: a first untimed note per ticket has opened its connections, prepared its
    statements and built its providers, one-time costs of a process rather than throughput."""
    settings = Settings(
        database=database, public_url="https://q.example", allow_http=True, broker=REDIS,
        allow_private_hosts=True, secret_key=SECRET_KEY,
        queue=queue, relay_interval=2.0,
    )  # fmt: skip
    runtime = runtime_for(settings)
    runtime.start()  # as serve's lifespan does: the wake-up sender and the relay
    try:
        ids = [
            runtime.store.add_integration(
                type="servicenow", api_url=url, api_access_token=LOGIN,
                sync_policy="work-notes", options={},
            ).id
            for url, _ in integrations
        ]  # fmt: skip
        tickets = [
            (integration_id, ticket)
            for integration_id, (_, made) in zip(ids, integrations, strict=True)
            for ticket in made
        ]
        warm_up = [NewEvent(i, ticket, AddWorkNote("warm-up")) for i, ticket in tickets]
        events = [
            NewEvent(i, ticket, AddWorkNote(f"note {n}"))
            for i, ticket in tickets
            for n in range(notes_per_ticket)
        ]
        with workers(database, queue, processes):
            delivered(runtime, warm_up)
            with machine_busy() as busy:
                started = time.perf_counter()
                delivered(runtime, events)
                elapsed = time.perf_counter() - started
        LAST_BUSY[:] = busy
        return elapsed
    finally:
        runtime.stop()
        forget_queue(queue)


def forget_queue(queue: str) -> None:
    """Delete the queue's keys on Redis: the benchmark is not alone there."""
    client = redis.Redis.from_url(REDIS)
    for key in client.scan_iter(f"{queue}:*"):
        client.delete(key)
    client.close()


def delivered(runtime: HostRuntime, events: list[NewEvent]) -> None:
    """Queue ``events`` in one host transaction and wait until the fleet has delivered them."""
    outbox = runtime.service.outbox
    total = outbox.counts()[DELIVERED] + len(events)
    with runtime.database.begin() as conn:
        outbox.enqueue(events, conn)
    while outbox.counts()[DELIVERED] < total:
        time.sleep(0.05)


def limit_floor() -> bool:
    notes, tickets, latency = 2_000, 200, 50
    floor = notes / LIMIT * latency / 1000
    with emulator(latency) as url, fresh_schema() as database:
        tickets_made = seed(url, tickets)
        elapsed = deliver_through_fleet(
            database, f"bench-{uuid.uuid4().hex[:8]}", [(url, tickets_made)], notes // tickets, 1
        )
        peak = httpx.get(f"{url}/__emulator/state").json().get("peak_in_flight")
    ratio = elapsed / floor
    print(f"1. {notes} notes over {tickets} tickets, {latency} ms latency, instance limit {LIMIT}, "
          f"one worker process ({LIMIT} threads), PostgreSQL + Redis, warm")  # fmt: skip
    print(f"   elapsed {elapsed:.2f} s; floor {floor:.2f} s ({notes} / {LIMIT} x {latency} ms); "
          f"ratio {ratio:.2f} (target <= 1.3); peak in flight at the instance {peak}")  # fmt: skip
    return ratio <= 1.3


@contextmanager
def machine_busy() -> Iterator[list[float]]:
    """The share of all CPUs busy during the block (from /proc/stat), in a one-item list."""

    def ticks() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            fields = [int(n) for n in stat.readline().split()[1:]]
        return sum(fields), fields[3] + fields[4]  # all, idle + iowait

    share: list[float] = []
    total, idle = ticks()
    try:
        yield share
    finally:
        total_after, idle_after = ticks()
        share.append(1 - (idle_after - idle) / max(1, total_after - total))


def one_against_four() -> bool:
    latency, tickets, per_ticket = 50, 40, 10
    with ExitStack() as stack:
        urls = [stack.enter_context(emulator(latency)) for _ in range(4)]
        made = [(url, seed(url, tickets)) for url in urls]
        times, busy = {}, {}
        for processes in (1, 4):
            database = stack.enter_context(fresh_schema())
            times[processes] = deliver_through_fleet(
                database, f"bench-{uuid.uuid4().hex[:8]}", made, per_ticket, processes
            )
            busy[processes] = list(LAST_BUSY)
    notes = 4 * tickets * per_ticket
    ratio = times[1] / times[4]
    print(f"2. four integrations (four emulators, {latency} ms), {notes} notes, limit {LIMIT} each, "
          "warm")  # fmt: skip
    print(
        f"   one worker process: {times[1]:.2f} s ({notes / times[1]:.0f} notes/s); four: "
        f"{times[4]:.2f} s ({notes / times[4]:.0f} notes/s); ratio {ratio:.2f} (target >= 3)"
    )
    print(
        f"   CPU busy while delivering, on this {os.cpu_count()}-core machine (workers, emulators, "
        f"PostgreSQL, Redis): {busy[1][0]:.0%} with one process, {busy[4][0]:.0%} with four"
    )

    return ratio >= 3


def overhead_per_note() -> bool:
    notes = 500
    with emulator(0) as url, fresh_schema() as database:
        [ticket] = seed(url, 1)
        with ServiceNowProvider(api_url=url, api_access_token=LOGIN) as provider:
            started = time.perf_counter()
            for n in range(notes):
                provider.add_work_note(ticket, f"direct {n}")
            direct = time.perf_counter() - started

            runtime = HostRuntime(Settings(database=database, public_url="https://q.example",
                                           allow_http=True, allow_private_hosts=True,
                                           secret_key=SECRET_KEY), worker=True)  # fmt: skip
            try:
                outbox: Outbox = runtime.service.outbox
                deliver = runtime.service.delivery
                record = runtime.store.add_integration(
                    type="servicenow", api_url=url, api_access_token=LOGIN,
                    sync_policy="work-notes", options={},
                )  # fmt: skip
                outbox.enqueue(
                    [NewEvent(record.id, ticket, AddWorkNote(f"o {n}")) for n in range(notes)]
                )
                deliver_run(outbox, deliver, outbox.claim_next(instance_limit=LIMIT))  # warm
                started = time.perf_counter()
                prefer = f"{record.id}:{ticket}"
                while run := outbox.claim_next(
                    prefer=prefer, instance_limit=LIMIT, batch=DEFAULT_RUN_LENGTH
                ):
                    deliver_run(outbox, deliver, run)
                through_outbox = time.perf_counter() - started
                delivered = notes - 1
            finally:
                runtime.stop()
    per_note = (through_outbox / delivered - direct / notes) * 1000
    print(f"3. outbox overhead at 0 ms latency, sequential, PostgreSQL, runs of {DEFAULT_RUN_LENGTH}: direct "
          f"add_work_note {direct / notes * 1000:.2f} ms/note; claim + deliver + settle "
          f"{through_outbox / delivered * 1000:.2f} ms/note")  # fmt: skip
    print(f"   overhead {per_note:.2f} ms per note (target <= 1 ms)")
    return per_note <= 1.0


def main() -> int:
    results = [limit_floor(), one_against_four(), overhead_per_note()]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
