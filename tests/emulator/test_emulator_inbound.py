"""What inbound sync needs of the emulator: sys_choice, the provider's queries, the generated
Business Rules played (signed notifications), and agents acting on incidents."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from servicenow_emulator import DEFAULT_PASSWORD, Emulator, RunningEmulator, run_in_thread
from servicenow_emulator.query import parse

from ticketing_core.notifications import TICKETING_V1, verify

INCIDENTS = "/api/now/table/incident"
CHOICES = "/api/now/table/sys_choice"
JOURNAL = "/api/now/table/sys_journal_field"
STATE_QUERY = "name=incident^element=state^inactive=false^ORDERBYsequence"
SECRET = "notification-secret"
AGENT = "beth.anglin"


class Clock:
    """The instance's clock, held still or moved by a test."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


CLOCK = Clock()


class Receiver:
    """A stand-in for the host's receiver: records every POST, answers ``status``."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.status = 202
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers), body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/inbound/7"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bodies(self) -> list[dict[str, str]]:
        return [json.loads(body) for _, body in self.received]


@pytest.fixture(scope="module")
def server() -> Iterator[RunningEmulator]:
    emulator = Emulator(tokens={"beth-token": AGENT}, clock=CLOCK)
    with run_in_thread(emulator) as running:
        yield running


@pytest.fixture
def emulator(server: RunningEmulator) -> Iterator[Emulator]:
    CLOCK.now = datetime.now(UTC)
    server.emulator.reset()
    yield server.emulator
    server.emulator.wait_for_notifications()
    server.emulator.reset()


@pytest.fixture
def client(server: RunningEmulator, emulator: Emulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, auth=("admin", DEFAULT_PASSWORD), timeout=5) as http:
        yield http


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.server.shutdown()


def results(client: httpx.Client, path: str, **params: Any) -> list[dict[str, Any]]:
    response = client.get(path, params=params)
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()["result"]
    return rows


# ---- sys_choice -------------------------------------------------------------------------------


def test_state_choices_are_read_through_the_table_api(client: httpx.Client) -> None:
    rows = results(client, CHOICES, sysparm_query=STATE_QUERY)

    assert [(r["value"], r["label"]) for r in rows] == [
        ("1", "New"),
        ("2", "In Progress"),
        ("3", "On Hold"),
        ("6", "Resolved"),
        ("7", "Closed"),
        ("8", "Canceled"),
    ]
    assert set(rows[0]) == {
        "sys_id", "name", "element", "value", "label", "sequence", "inactive", "language",
    }  # fmt: skip
    assert {(r["name"], r["element"], r["inactive"], r["language"]) for r in rows} == {
        ("incident", "state", "false", "en")
    }


def test_an_added_state_is_listed_last_and_displayed(
    client: httpx.Client, emulator: Emulator
) -> None:
    added = emulator.set_choice("incident", "state", "9", "Awaiting Agent")
    created = client.post(INCIDENTS, json={"short_description": "custom", "state": "9"}).json()

    states = results(client, CHOICES, sysparm_query=STATE_QUERY)
    shown = results(
        client,
        INCIDENTS,
        sysparm_query=f"sys_id={created['result']['sys_id']}",
        sysparm_display_value="all",
        sysparm_fields="state",
    )

    assert (added["value"], added["sequence"]) == ("9", "7")
    assert (states[-1]["value"], states[-1]["label"]) == ("9", "Awaiting Agent")
    assert shown == [{"state": {"display_value": "Awaiting Agent", "value": "9"}}]


def test_a_retired_state_is_not_listed_but_still_displayed(
    client: httpx.Client, emulator: Emulator
) -> None:
    on_hold = emulator.seed_incidents(1, state="3")[0]

    retired = emulator.set_choice("incident", "state", "3", "Pending", inactive=True)

    values = [r["value"] for r in results(client, CHOICES, sysparm_query=STATE_QUERY)]
    row = client.get(f"{INCIDENTS}/{on_hold['sys_id']}", params={"sysparm_display_value": "true"})
    assert (retired["inactive"], retired["sequence"]) == ("true", "3")
    assert "3" not in values
    assert row.json()["result"]["state"] == "Pending"


def test_choices_are_reset_with_the_instance(client: httpx.Client, emulator: Emulator) -> None:
    emulator.set_choice("incident", "state", "9", "Awaiting Agent")
    emulator.set_choice("incident", "state", "1", "Fresh")

    emulator.reset()

    states = results(client, CHOICES, sysparm_query=STATE_QUERY)
    assert [(r["value"], r["label"]) for r in states][:1] == [("1", "New")]
    assert len(states) == 6


# ---- the provider's queries ---------------------------------------------------------------


def test_sys_id_in_reads_a_batch(client: httpx.Client, emulator: Emulator) -> None:
    rows = emulator.seed_incidents(5)
    wanted = [rows[3]["sys_id"], rows[0]["sys_id"], "f" * 32]

    found = results(client, INCIDENTS, sysparm_query=f"sys_idIN{','.join(wanted)}")

    assert sorted(r["sys_id"] for r in found) == sorted(wanted[:2])


def test_keyset_listing_continues_inside_one_second(
    client: httpx.Client, emulator: Emulator
) -> None:
    CLOCK.now = datetime.now(UTC)  # the real clock's second would do as well: one seeding, one time
    rows = emulator.seed_incidents(7)
    order = sorted(r["sys_id"] for r in rows)
    on = rows[0]["sys_updated_on"]
    keyset = f"sys_updated_on>{on}^NQsys_updated_on={on}^sys_id>{order[2]}"

    page = results(
        client,
        INCIDENTS,
        sysparm_query=f"{keyset}^ORDERBYsys_updated_on^ORDERBYsys_id",
        sysparm_fields="sys_id,sys_updated_on",
    )

    assert {r["sys_updated_on"] for r in rows} == {on}
    assert [r["sys_id"] for r in page] == order[3:]


def test_keyset_listing_orders_by_time_then_id(client: httpx.Client, emulator: Emulator) -> None:
    CLOCK.now = datetime(2026, 12, 7, 10, 0, 0, tzinfo=UTC)
    first = emulator.seed_incidents(2)
    CLOCK.now += timedelta(seconds=1)
    later = emulator.seed_incidents(2)
    start = "2026-12-07 10:00:00"

    page = results(
        client,
        INCIDENTS,
        sysparm_query=f"sys_updated_on>={start}^ORDERBYsys_updated_on^ORDERBYsys_id",
    )

    expected = sorted(r["sys_id"] for r in first) + sorted(r["sys_id"] for r in later)
    assert [r["sys_id"] for r in page] == expected


def test_journal_rows_of_one_incident_oldest_first(
    client: httpx.Client, emulator: Emulator
) -> None:
    CLOCK.now = datetime(2026, 12, 7, 10, 0, 0, tzinfo=UTC)
    incident, other = emulator.seed_incidents(2)
    emulator.act_as(AGENT, incident["sys_id"], work_notes="too early")
    CLOCK.now += timedelta(seconds=5)
    emulator.act_as(AGENT, incident["sys_id"], work_notes="note", comments="comment")
    emulator.act_as(AGENT, other["sys_id"], work_notes="another incident's")
    query = (
        f"element_id={incident['sys_id']}^elementINwork_notes,comments"
        "^sys_created_on>=2026-12-07 10:00:05^ORDERBYsys_created_on"
    )

    rows = results(client, JOURNAL, sysparm_query=query)

    assert [(r["element"], r["value"], r["sys_created_by"]) for r in rows] == [
        ("work_notes", "note", AGENT),  # one second: in the order they were written
        ("comments", "comment", AGENT),
    ]


@pytest.mark.parametrize("auth", ["admin", "bearer"])
def test_the_session_user_is_found_by_script(server: RunningEmulator, auth: str) -> None:
    credentials: dict[str, Any] = (
        {"auth": ("admin", DEFAULT_PASSWORD)}
        if auth == "admin"
        else {"headers": {"Authorization": "Bearer beth-token"}}
    )
    response = httpx.get(
        f"{server.url}/api/now/table/sys_user",
        params={"sysparm_query": "user_name=javascript:gs.getUserName()", "sysparm_limit": 1},
        **credentials,
    )

    assert [r["user_name"] for r in response.json()["result"]] == [
        "admin" if auth == "admin" else AGENT
    ]


@pytest.mark.parametrize("text", ["1e5", "inf", "nan", "12e3"])
def test_only_plain_decimals_compare_as_numbers(text: str) -> None:
    rows = [{"v": text}]

    # As text, "1e5" sorts after "100"; as a number it would not.
    assert [r["v"] for r in parse("v>100").apply(rows, lambda r, f: r.get(f))] == [text]


# ---- agents -----------------------------------------------------------------------------------


def test_act_as_writes_like_the_table_api(emulator: Emulator) -> None:
    created = emulator.seed_incidents(1)[0]

    after = emulator.act_as(AGENT, created["sys_id"], state="2", work_notes="on it")

    assert (after["state"], after["sys_updated_by"], after["sys_mod_count"]) == ("2", AGENT, "1")
    assert [(e["element"], e["sys_created_by"]) for e in emulator.journal(created["sys_id"])] == [
        ("work_notes", AGENT)
    ]


def test_act_over_http(server: RunningEmulator, emulator: Emulator) -> None:
    created = emulator.seed_incidents(1)[0]

    answer = httpx.post(
        f"{server.url}/__emulator/act",
        json={"user": AGENT, "sys_id": created["sys_id"], "fields": {"comments": "hello"}},
    )
    unknown = httpx.post(
        f"{server.url}/__emulator/act", json={"user": "nobody", "sys_id": created["sys_id"]}
    )

    assert answer.status_code == 200
    assert answer.json()["sys_updated_by"] == AGENT
    assert emulator.journal(created["sys_id"])[-1]["value"] == "hello"
    assert unknown.status_code == 400


# ---- notifications (the generated Business Rules) --------------------------------------------


def test_an_agents_change_is_notified_signed(emulator: Emulator, receiver: Receiver) -> None:
    emulator.notify_to(receiver.url, SECRET, integration_user="admin")
    created = emulator.seed_incidents(1)[0]  # by admin, the integration user: skipped

    emulator.act_as(AGENT, created["sys_id"], state="2")
    stats = emulator.wait_for_notifications()

    assert (stats["sent"], stats["failed"], stats["pending"]) == (1, 0, 0)
    [(headers, body)] = receiver.received
    verify(TICKETING_V1, [SECRET], headers, body, float(headers["X-Ticketing-Timestamp"]))
    assert json.loads(body) == {
        "table": "incident",
        "sys_id": created["sys_id"],
        "sys_mod_count": "1",
        "sys_updated_on": emulator.incidents[0]["sys_updated_on"],
        "sys_updated_by": AGENT,
        "event": "update",
    }
    assert headers["Content-Type"] == "application/json"


def test_a_note_is_notified_as_update_and_journal(emulator: Emulator, receiver: Receiver) -> None:
    emulator.notify_to(receiver.url, SECRET, integration_user="admin")
    created = emulator.seed_incidents(1)[0]

    emulator.act_as(AGENT, created["sys_id"], work_notes="a note")
    emulator.wait_for_notifications()

    assert sorted(b["event"] for b in receiver.bodies()) == ["journal", "update"]
    assert {(b["sys_mod_count"], b["sys_updated_by"]) for b in receiver.bodies()} == {("1", AGENT)}
    assert emulator.notification_for(created["sys_id"], "journal") in receiver.bodies()


def test_inserts_by_others_are_notified(
    client: httpx.Client, emulator: Emulator, receiver: Receiver
) -> None:
    emulator.notify_to(receiver.url, SECRET, integration_user=AGENT)

    created = client.post(INCIDENTS, json={"short_description": "by admin"}).json()["result"]
    emulator.wait_for_notifications()

    assert receiver.bodies() == [emulator.notification_for(created["sys_id"])]
    assert receiver.bodies()[0]["sys_mod_count"] == "0"


def test_the_timestamp_is_the_instances_clock(emulator: Emulator, receiver: Receiver) -> None:
    emulator.notify_to(receiver.url, SECRET)
    emulator.clock_skew = timedelta(minutes=10)

    emulator.seed_incidents(1)
    emulator.wait_for_notifications()

    [(headers, _)] = receiver.received
    expected = (CLOCK.now + timedelta(minutes=10)).timestamp()
    assert abs(int(headers["X-Ticketing-Timestamp"]) - expected) <= 1


def test_a_failed_post_is_dropped_and_counted(emulator: Emulator, receiver: Receiver) -> None:
    receiver.status = 500
    emulator.notify_to(receiver.url, SECRET)
    emulator.seed_incidents(2)
    emulator.wait_for_notifications()
    receiver.server.shutdown()
    receiver.server.server_close()

    emulator.seed_incidents(1)  # nobody listens any more
    stats = emulator.wait_for_notifications()

    assert (stats["sent"], stats["failed"], stats["pending"]) == (0, 3, 0)
    assert len(receiver.received) == 2  # never sent again


def test_no_target_no_notifications(emulator: Emulator, receiver: Receiver) -> None:
    emulator.notify_to(receiver.url, SECRET)
    emulator.notify_to(None)

    emulator.seed_incidents(1)

    assert emulator.wait_for_notifications()["sent"] == 0
    assert receiver.received == []


def test_notifications_over_http(server: RunningEmulator, receiver: Receiver) -> None:
    control = f"{server.url}/__emulator/notify"
    body = {"url": receiver.url, "secret": SECRET, "integration_user": "admin"}

    configured = httpx.post(control, json=body).json()
    server.emulator.seed_incidents(1)  # by admin: skipped
    created = server.emulator.seed_incidents(1, user=AGENT)[0]
    server.emulator.wait_for_notifications()
    counted = httpx.get(control).json()

    assert configured == {
        "url": receiver.url,
        "integration_user": "admin",
        "pending": 0,
        "sent": 0,
        "failed": 0,
    }
    assert (counted["sent"], counted["failed"]) == (1, 0)
    assert receiver.bodies()[0]["sys_id"] == created["sys_id"]
    assert SECRET not in json.dumps(server.emulator.stats())
    assert httpx.post(control, json={"url": receiver.url}).status_code == 400  # no secret
    assert httpx.post(control, json={"url": 7, "secret": "s"}).status_code == 400


def test_notify_at_start(receiver: Receiver) -> None:
    emulator = Emulator(notify_url=receiver.url, notify_secret=SECRET, integration_user="admin")
    emulator.seed_incidents(1, user=AGENT)
    emulator.wait_for_notifications()
    emulator.reset()  # the target given at start stays; the counts start again

    emulator.seed_incidents(1, user=AGENT)

    assert emulator.wait_for_notifications()["sent"] == 1
    assert len(receiver.received) == 2
