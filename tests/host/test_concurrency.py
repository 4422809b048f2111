"""Concurrent and retried requests against a host over real HTTP, on SQLite and on PostgreSQL.

Each test asserts what the ServiceNow emulator holds afterwards: however many identical requests
race or are retried, and whatever the instance's answers do, the side effects happen once.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from servicenow_emulator import Emulator

from ticketing_core.policies import AddWorkNote

from ..conftest import postgres_schema
from .conftest import (
    ANOMALY,
    ANOMALY_ID,
    API_TOKEN,
    PUBLIC_URL,
    TICKET_REQUEST,
    Host,
    StartHost,
    create_integration,
    incident,
    links_path,
    ok,
    settled,
    tickets_path,
    wait_until,
    work_notes,
)

INCIDENTS = "/api/now/table/incident"
OTHER_ANOMALY_ID = ANOMALY_ID + 1
HEADING = "## Qualytics Anomaly Linked"
LINK_NOTE = f"Linked to Qualytics anomaly {ANOMALY_ID}: {PUBLIC_URL}/anomalies/{ANOMALY_ID}"
STATUS_NOTE = r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\] Qualytics Anomaly Status: Acknowledged"
PROVIDER_KEY = r"[0-9a-f]{16}-[0-9a-f]{32}"  # installation id - digest of the request's key
QUIET_SECONDS = 1.0  # two dispatcher polls: long enough for a duplicate delivery to show up
LATENCY_MS = 30  # each instance call takes this long, so racing requests overlap there


@pytest.fixture
def host(database_url: str, start_host: StartHost, emulator: Emulator) -> Host:
    """The host of every test here, on each database (overrides the conftest's SQLite host).

    The database is requested first so that it outlives the host: dropped before the host
    stopped, a PostgreSQL schema would make the dispatcher's last polls fail.
    """
    return start_host(database=database_url)


@pytest.fixture
def second_database_url(database_url: str, tmp_path: Path) -> Iterator[str]:
    """Another fresh database of the same kind as ``database_url``: a second installation."""
    if not database_url.startswith("postgresql"):
        yield str(tmp_path / "second.db")
        return
    with postgres_schema() as url:
        yield url


# -- helpers ---------------------------------------------------------------------------------------


def concurrently(
    host: Host, n: int, call: Callable[[httpx.Client, int], httpx.Response]
) -> list[httpx.Response]:
    """``call(client, i)`` for i in range(n), each on its own thread and client, released at once."""
    barrier = threading.Barrier(n)

    def run(i: int) -> httpx.Response:
        with httpx.Client(
            base_url=host.url, headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=30
        ) as client:
            client.get("/api/integrations")  # connect before the barrier: the calls start together
            barrier.wait(timeout=10)
            return call(client, i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def posts(emulator: Emulator) -> list[dict[str, Any]]:
    """The incident creates the emulator received (whatever it answered)."""
    return [r for r in emulator.requests if r["method"] == "POST" and r["path"] == INCIDENTS]


def field_writes(emulator: Emulator, sys_id: str) -> list[dict[str, Any]]:
    """The field updates of one incident (a work note is a PATCH asking back its sys_id only)."""
    return [
        r
        for r in emulator.requests
        if r["method"] == "PATCH"
        and r["path"] == f"{INCIDENTS}/{sys_id}"
        and "sysparm_display_value" in r["query"]
    ]


def links_of(host: Host, anomaly_id: int = ANOMALY_ID) -> list[dict[str, Any]]:
    links: list[dict[str, Any]] = ok(host.api.get(f"/api/anomalies/{anomaly_id}/ticket-links"))
    return links


def quiet() -> None:
    """Give a duplicate delivery the time to land, if there were one."""
    time.sleep(QUIET_SECONDS)


# -- 1. concurrent identical creates ---------------------------------------------------------------


@pytest.mark.parametrize("keyed", [True, False], ids=["idempotency-key", "no-key"])
def test_concurrent_identical_creates_make_one_incident(
    host: Host,
    emulator: Emulator,
    integration: dict[str, Any],
    anomaly: dict[str, Any],
    keyed: bool,
) -> None:
    headers = {"Idempotency-Key": "create-once-7f3a"} if keyed else {}
    emulator.latency_ms = LATENCY_MS

    responses = concurrently(
        host,
        20,
        lambda client, _: client.post(tickets_path(), json=TICKET_REQUEST, headers=headers),
    )

    assert [r.status_code for r in responses] == [200] * 20, [r.text for r in responses]
    ticket_ids = {r.json()["ticket"]["ticket_id"] for r in responses}
    assert len(ticket_ids) == 1
    [row] = emulator.incidents
    assert ticket_ids == {row["sys_id"]}
    assert re.fullmatch(PROVIDER_KEY, row["correlation_id"])
    assert len(posts(emulator)) == 1
    [link] = links_of(host)
    assert link["ticket_id"] == row["sys_id"]


# -- 2. a key reused for another request -----------------------------------------------------------


def test_a_key_reused_for_another_anomaly_is_409_and_creates_nothing(
    host: Host, emulator: Emulator, integration: dict[str, Any], anomaly: dict[str, Any]
) -> None:
    ok(host.api.post("/api/anomalies", json=ANOMALY | {"id": OTHER_ANOMALY_ID}), 201)
    headers = {"Idempotency-Key": "reused-key-1"}
    first = ok(host.api.post(tickets_path(), json=TICKET_REQUEST, headers=headers))

    reused = host.api.post(tickets_path(OTHER_ANOMALY_ID), json=TICKET_REQUEST, headers=headers)

    assert reused.status_code == 409
    assert reused.json() == {
        "detail": "this idempotency key was used for a different request: "
        "use a new key for a new request"
    }
    [row] = emulator.incidents
    assert row["sys_id"] == first["ticket"]["ticket_id"]
    assert len(posts(emulator)) == 1
    assert links_of(host, OTHER_ANOMALY_ID) == []
    assert len(links_of(host)) == 1


def test_a_key_reused_with_a_different_body_is_409_and_creates_nothing(
    host: Host, emulator: Emulator, integration: dict[str, Any], anomaly: dict[str, Any]
) -> None:
    headers = {"Idempotency-Key": "reused-key-2"}
    first = ok(host.api.post(tickets_path(), json=TICKET_REQUEST, headers=headers))

    reused = host.api.post(
        tickets_path(), json=TICKET_REQUEST | {"title": "Another request"}, headers=headers
    )

    assert reused.status_code == 409
    assert "used for a different request" in reused.json()["detail"]
    [row] = emulator.incidents
    assert row["sys_id"] == first["ticket"]["ticket_id"]
    assert row["short_description"] == TICKET_REQUEST["title"]
    assert len(posts(emulator)) == 1
    assert len(links_of(host)) == 1


# -- 3. keys with query characters -----------------------------------------------------------------

HOSTILE_KEYS = [
    "^ORnumber!=x",
    "x^ORnumber!=x",
    "k^NQsys_id!=0",
    "a^ORDERBYnumber",
    "key=1&sysparm_query=active=true",
    "LIKE%^ORcorrelation_idISNOTEMPTY",
    "k,v;*' OR 1=1 --",
]


def test_keys_with_query_characters_are_harmless(
    host: Host, emulator: Emulator, integration: dict[str, Any], anomaly: dict[str, Any]
) -> None:
    [unrelated] = emulator.seed_incidents(1, correlation_id="someone-elses-key")
    made: dict[str, str] = {}

    for key in HOSTILE_KEYS:
        response = host.api.post(
            tickets_path(), json=TICKET_REQUEST, headers={"Idempotency-Key": key}
        )
        made[key] = ok(response)["ticket"]["ticket_id"]
        assert made[key] != unrelated["sys_id"], key
        assert len(emulator.incidents) == 1 + len(made), key  # one new incident per new key
    again = {
        key: ok(
            host.api.post(tickets_path(), json=TICKET_REQUEST, headers={"Idempotency-Key": key})
        )["ticket"]["ticket_id"]
        for key in HOSTILE_KEYS
    }

    assert again == made
    assert len(set(made.values())) == len(HOSTILE_KEYS)
    assert len(emulator.incidents) == 1 + len(HOSTILE_KEYS)
    assert len(posts(emulator)) == len(HOSTILE_KEYS)
    for sys_id in made.values():
        assert re.fullmatch(PROVIDER_KEY, incident(emulator, sys_id)["correlation_id"])
    assert incident(emulator, unrelated["sys_id"])["correlation_id"] == "someone-elses-key"
    assert len(links_of(host)) == len(HOSTILE_KEYS)


# -- 4. a retry after the anomaly changed ----------------------------------------------------------


def test_a_create_retried_after_the_status_changed_returns_the_first_ticket(
    host: Host, emulator: Emulator, integration: dict[str, Any], anomaly: dict[str, Any]
) -> None:
    first = ok(host.api.post(tickets_path(), json=TICKET_REQUEST))
    ok(host.api.put(f"/api/anomalies/{ANOMALY_ID}", json={"status": "Acknowledged"}))

    again = ok(host.api.post(tickets_path(), json=TICKET_REQUEST))

    assert again["ticket"]["ticket_id"] == first["ticket"]["ticket_id"]
    [row] = emulator.incidents
    assert row["sys_id"] == first["ticket"]["ticket_id"]
    assert len(posts(emulator)) == 1
    assert len(links_of(host)) == 1


# -- 5. an answer lost after the commit ------------------------------------------------------------


@pytest.mark.parametrize("fault", ["503_after_commit", "close_after_commit"])
def test_a_create_whose_answer_is_lost_returns_the_ticket_it_made(
    host: Host,
    emulator: Emulator,
    integration: dict[str, Any],
    anomaly: dict[str, Any],
    fault: str,
) -> None:
    emulator.add_fault(fault, method="POST")

    created = ok(host.api.post(tickets_path(), json=TICKET_REQUEST))

    [row] = emulator.incidents
    assert created["ticket"]["ticket_id"] == row["sys_id"]
    assert created["ticket"]["ticket_number"] == row["number"]
    [post] = posts(emulator)
    assert post["status"] == (503 if fault == "503_after_commit" else None)
    assert emulator.stats()["pending_faults"] == 0
    [link] = links_of(host)
    assert link["ticket_id"] == row["sys_id"]


# -- 6. concurrent links of one ticket -------------------------------------------------------------


def test_concurrent_links_append_once_and_note_once(
    host: Host, emulator: Emulator, integration: dict[str, Any], anomaly: dict[str, Any]
) -> None:
    [row] = emulator.seed_incidents(1, description="Orders load stopped at 02:00.")
    sys_id = row["sys_id"]
    emulator.latency_ms = LATENCY_MS

    responses = concurrently(
        host, 20, lambda client, _: client.post(links_path(), json={"ticket_id": sys_id})
    )

    assert [r.status_code for r in responses] == [200] * 20, [r.text for r in responses]
    assert {r.json()["ticket"]["ticket_id"] for r in responses} == {sys_id}
    assert wait_until(lambda: work_notes(emulator, sys_id)) == [LINK_NOTE]
    settled(host)
    quiet()
    assert work_notes(emulator, sys_id) == [LINK_NOTE]
    description = incident(emulator, sys_id)["description"]
    assert description.startswith("Orders load stopped at 02:00.\n\n---\n\n")
    assert description.count(HEADING) == 1
    assert description.count(f"- Anomaly ID: {ANOMALY_ID}") == 1
    assert len(field_writes(emulator, sys_id)) == 1  # the block was written once, not rewritten
    assert len(emulator.incidents) == 1
    [link] = links_of(host)
    assert link["ticket_id"] == sys_id


# -- 7. concurrent comments ------------------------------------------------------------------------


def test_concurrent_comments_are_answered_at_once_and_noted_once_each_in_order(
    host: Host, emulator: Emulator, ticket: dict[str, Any], database_url: str
) -> None:
    sys_id = ticket["ticket"]["ticket_id"]
    messages = [f"Comment number {i:02d}" for i in range(24)]

    started = time.monotonic()
    responses = concurrently(
        host,
        24,
        lambda client, i: client.post(
            f"/api/anomalies/{ANOMALY_ID}/comments", json={"message": messages[i]}
        ),
    )
    elapsed = time.monotonic() - started

    assert [r.status_code for r in responses] == [201] * 24, [r.text for r in responses]
    assert elapsed < 10, f"24 comments took {elapsed:.1f} s"
    expected = {f"Comment from Qualytics: {m}" for m in messages}
    wait_until(lambda: len(work_notes(emulator, sys_id)) >= 24)
    settled(host)
    quiet()
    notes = work_notes(emulator, sys_id)
    assert len(notes) == 24
    assert set(notes) == expected
    # Delivered in the order their transactions committed, which is the outbox's id order.
    queued = sorted(host.runtime.service.outbox.entries(limit=100), key=lambda e: e.id)
    assert [e.action.text for e in queued if isinstance(e.action, AddWorkNote)] == notes
    if not database_url.startswith("postgresql"):
        # SQLite runs writers one at a time, so the comments' own ids follow commit order too.
        comments = ok(host.api.get(f"/api/anomalies/{ANOMALY_ID}"))["comments"]
        assert [f"Comment from Qualytics: {c['message']}" for c in comments] == notes
    assert host.runtime.service.outbox.counts() == {"pending": 0, "delivered": 24, "dead": 0}


# -- 8. concurrent identical status changes --------------------------------------------------------


def test_concurrent_identical_status_changes_note_once(
    host: Host, emulator: Emulator, ticket: dict[str, Any]
) -> None:
    sys_id = ticket["ticket"]["ticket_id"]

    responses = concurrently(
        host,
        20,
        lambda client, _: client.put(
            f"/api/anomalies/{ANOMALY_ID}", json={"status": "Acknowledged"}
        ),
    )

    assert [r.status_code for r in responses] == [200] * 20, [r.text for r in responses]
    assert {r.json()["status"] for r in responses} == {"Acknowledged"}
    wait_until(lambda: work_notes(emulator, sys_id))
    settled(host)
    quiet()
    [note] = work_notes(emulator, sys_id)
    assert re.fullmatch(STATUS_NOTE, note)
    assert host.runtime.service.outbox.counts() == {"pending": 0, "delivered": 1, "dead": 0}
    assert incident(emulator, sys_id)["state"] == "1"


# -- 9. two installations, one instance ------------------------------------------------------------


@pytest.mark.parametrize("keyed", [True, False], ids=["idempotency-key", "no-key"])
def test_two_installations_make_two_incidents_for_the_same_request(
    database_url: str,
    second_database_url: str,
    start_host: StartHost,
    emulator: Emulator,
    emulator_url: str,
    keyed: bool,
) -> None:
    headers = {"Idempotency-Key": "same-key-everywhere"} if keyed else {}
    made = []
    for url in (database_url, second_database_url):
        installation = start_host(database=url)
        assert create_integration(installation, emulator_url)["id"] == 1
        ok(installation.api.post("/api/anomalies", json=ANOMALY | {"id": 1}), 201)
        created = ok(installation.api.post(tickets_path(1), json=TICKET_REQUEST, headers=headers))
        again = ok(installation.api.post(tickets_path(1), json=TICKET_REQUEST, headers=headers))
        assert again["ticket"]["ticket_id"] == created["ticket"]["ticket_id"]
        [link] = links_of(installation, 1)
        assert link["ticket_id"] == created["ticket"]["ticket_id"]
        made.append((installation.runtime.database.installation_id, created["ticket"]))

    (first_installation, first), (second_installation, second) = made
    assert first_installation != second_installation
    assert first["ticket_id"] != second["ticket_id"]
    rows = emulator.incidents
    assert [row["sys_id"] for row in rows] == [first["ticket_id"], second["ticket_id"]]
    assert rows[0]["correlation_id"].startswith(f"{first_installation}-")
    assert rows[1]["correlation_id"].startswith(f"{second_installation}-")
    assert len(posts(emulator)) == 2
