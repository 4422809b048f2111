"""A sequential workload through the Python API against plain httpx, at 20 ms latency.

K creates (each with its own idempotency key), one work note on each new incident, then every page of
a 20-per-page search: once through :class:`ServiceNowProvider`, once as the fewest equivalent requests
sent with one plain ``httpx.Client``. Both run against the bundled emulator, reset before each run so
they see the same data, alternating for a few rounds; medians are compared.

A keyed create looks its key up before creating (a key that made an incident returns it), one GET
more per create than plain httpx sends. This workload's keys were never sent before (the emulator is
reset), so it passes ``key_is_fresh=True``, as the host does for keys its request store has not
seen; the same workload with the lookup (the default) is timed too and shown beside it, outside the
target.

Sequentially, at 20 ms a request, time is mostly round trips: the ratio shows what the framework adds
(extra requests, parsing, mapping) over the HTTP work itself, and the emulator's request log counts
the requests each side made. Run with ``nox -s bench``; prints one table and exits 0, marking a missed
target with MISSED.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
from servicenow_emulator import DEFAULT_PASSWORD, Emulator, run_in_thread

from ticketing_core.models import SearchQuery, TicketDraft
from ticketing_servicenow import ServiceNowProvider

COUNT = 50
PAGE_SIZE = 20
LATENCY_MS = 20
ROUNDS = 3
TARGET_RATIO = 1.15
TARGET_EXTRA_REQUESTS = 2
LOOKUPS = "ticketing, keys looked up"
USER, PASSWORD = "admin", DEFAULT_PASSWORD  # the emulator's built-in development user
INCIDENTS = "/api/now/table/incident"
ORDER = "ORDERBYDESCsys_created_on^ORDERBYsys_id"

Workload = Callable[[str, int], None]


def fields(i: int) -> dict[str, str]:
    """The incident both sides create as number ``i`` (its correlation_id is the idempotency key)."""
    return {
        "short_description": f"Sequential benchmark incident {i}",
        "description": f"Benchmark incident {i}, created by bench_sequential.py",
        "priority": "3",
        "urgency": "2",
        "impact": "2",
        "correlation_id": f"bench-sequential-{i}",
    }


def note(i: int) -> str:
    return f"Benchmark work note on incident {i}"


def with_ticketing(url: str, count: int, *, key_is_fresh: bool = True) -> None:
    """The workload through ``ServiceNowProvider``."""
    provider = ServiceNowProvider(api_url=url, api_access_token=f"{USER}:{PASSWORD}")
    try:
        tickets = []
        for i in range(1, count + 1):
            body = fields(i)
            draft = TicketDraft(
                title=body["short_description"],
                description=body["description"],
                priority=body["priority"],
                urgency=body["urgency"],
                impact=body["impact"],
            )
            key = body["correlation_id"]
            tickets.append(provider.create(draft, idempotency_key=key, key_is_fresh=key_is_fresh))
        for i, ticket in enumerate(tickets, start=1):
            provider.add_work_note(ticket.id, note(i))
        page, seen = 1, 0
        while True:
            found = provider.search(SearchQuery(page=page, size=PAGE_SIZE))
            seen += len(found.items)
            if page * PAGE_SIZE >= found.total:
                break
            page += 1
    finally:
        provider.close()
    assert seen == count, f"ticketing paged through {seen} incidents, expected {count}"


def with_ticketing_lookups(url: str, count: int) -> None:
    """The workload through ``ServiceNowProvider``, each keyed create looking its key up first."""
    with_ticketing(url, count, key_is_fresh=False)


def with_httpx(url: str, count: int) -> None:
    """The same HTTP work as the fewest plain requests: POST, PATCH, GET pages."""
    with httpx.Client(base_url=url, auth=(USER, PASSWORD)) as client:
        sys_ids = []
        for i in range(1, count + 1):
            response = client.post(INCIDENTS, json=fields(i)).raise_for_status()
            sys_ids.append(response.json()["result"]["sys_id"])
        for i, sys_id in enumerate(sys_ids, start=1):
            client.patch(f"{INCIDENTS}/{sys_id}", json={"work_notes": note(i)}).raise_for_status()
        offset, seen = 0, 0
        while True:
            params: dict[str, Any] = {
                "sysparm_query": ORDER,
                "sysparm_limit": PAGE_SIZE,
                "sysparm_offset": offset,
            }
            response = client.get(INCIDENTS, params=params).raise_for_status()
            seen += len(response.json()["result"])
            offset += PAGE_SIZE
            if offset >= int(response.headers["X-Total-Count"]):
                break
    assert seen == count, f"httpx paged through {seen} incidents, expected {count}"


def one_run(
    workload: Workload, url: str, emulator: Emulator, count: int
) -> tuple[float, Counter[str]]:
    """Elapsed seconds and requests by method for one run on a freshly reset emulator."""
    emulator.reset()  # keeps the 20 ms latency the emulator was built with
    started = time.perf_counter()
    workload(url, count)
    elapsed = time.perf_counter() - started
    stats = emulator.stats()
    assert stats["incidents"] == count, stats
    assert stats["journal_entries"] == count, stats
    return elapsed, Counter(request["method"] for request in emulator.requests)


def verdict(met: bool) -> str:
    return "ok" if met else "MISSED"


def by_method(requests: Counter[str]) -> str:
    return ", ".join(f"{method} {n}" for method, n in sorted(requests.items()))


def report(count: int, times: dict[str, list[float]], requests: dict[str, Counter[str]]) -> None:
    ours, theirs = (statistics.median(times[side]) for side in ("ticketing", "httpx"))
    ratio = ours / theirs
    n_ours, n_theirs = (requests[side].total() for side in ("ticketing", "httpx"))
    extra = n_ours - n_theirs
    pages = max(1, math.ceil(count / PAGE_SIZE))
    searches = f"{pages} search page{'s' * (pages > 1)} of {PAGE_SIZE}"
    print(f"sequential workload: {count} creates, {count} work notes, {searches}; "
          f"{LATENCY_MS} ms latency; median of {ROUNDS} rounds")  # fmt: skip
    print(f"  {'':<22}{'ticketing':>12}{'httpx':>12}{'ticketing/httpx':>18}")
    print(f"  {'elapsed (median, s)':<22}{ours:>12.3f}{theirs:>12.3f}{ratio:>18.3f}  "
          f"{verdict(ratio <= TARGET_RATIO)}")  # fmt: skip
    print(f"  {'requests':<22}{n_ours:>12}{n_theirs:>12}{extra:>+18}  "
          f"{verdict(extra <= TARGET_EXTRA_REQUESTS)}")  # fmt: skip
    for side in ("ticketing", "httpx"):
        rounds = ", ".join(f"{t:.3f}" for t in times[side])
        print(f"  {side + ' rounds (s)':<22}{rounds}   requests: {by_method(requests[side])}")
    print(f"  target: ratio ≤ {TARGET_RATIO} and at most {TARGET_EXTRA_REQUESTS} more requests")
    looked_up = statistics.median(times[LOOKUPS])
    print(f"  without key_is_fresh (each key looked up first): {looked_up:.3f} s, "
          f"{looked_up / theirs:.3f} times httpx, {requests[LOOKUPS].total()} requests "
          f"({by_method(requests[LOOKUPS])}); not under the target")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=COUNT, help=f"incidents (default {COUNT})")
    count = parser.parse_args().count
    workloads: dict[str, Workload] = {
        "ticketing": with_ticketing,
        "httpx": with_httpx,
        LOOKUPS: with_ticketing_lookups,
    }
    times: dict[str, list[float]] = {side: [] for side in workloads}
    requests: dict[str, Counter[str]] = {}
    with run_in_thread(Emulator(latency_ms=LATENCY_MS)) as running:
        for _ in range(ROUNDS):
            for side, workload in workloads.items():
                elapsed, requests[side] = one_run(workload, running.url, running.emulator, count)
                times[side].append(elapsed)
    report(count, times, requests)
    return 0  # a benchmark reports; MISSED marks a target not met


if __name__ == "__main__":
    raise SystemExit(main())
