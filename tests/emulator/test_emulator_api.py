"""The emulator's Table API over real HTTP, checked against the captures in shared/."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from servicenow_emulator import (
    ADMIN_SYS_ID,
    DEFAULT_PASSWORD,
    DEFAULT_USERS,
    Emulator,
    RunningEmulator,
    User,
    run_in_thread,
)

CAPTURES = Path(__file__).resolve().parents[1] / "servicenow" / "captures"
INCIDENTS = "/api/now/table/incident"
START = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
NOT_FOUND = {
    "error": {
        "message": "No Record found",
        "detail": "Record doesn't exist or ACL restricts the record retrieval",
    },
    "status": "failure",
}
DATA_POLICY = {
    "error": {
        "message": "Operation Failed",
        "detail": "Data Policy Exception: \n The following fields are mandatory: "
        "Resolution code, Resolution notes\n",
    },
    "status": "failure",
}


class Clock:
    """A settable clock so journal and timestamp texts are exact."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


CLOCK = Clock()


def capture(name: str) -> str:
    return (CAPTURES / name).read_text()


@pytest.fixture(scope="module")
def server() -> Iterator[RunningEmulator]:
    users = [*DEFAULT_USERS, User("viewer", "Read Only", "viewer-pw", can_write=False)]
    emulator = Emulator(users=users, tokens={"john-token": "john.doe"}, clock=CLOCK)
    with run_in_thread(emulator) as running:
        yield running


@pytest.fixture
def emulator(server: RunningEmulator) -> Emulator:
    CLOCK.now = START
    server.emulator.reset()
    return server.emulator


@pytest.fixture
def client(server: RunningEmulator, emulator: Emulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, auth=("admin", DEFAULT_PASSWORD), timeout=5) as http:
        yield http


def create(client: httpx.Client, **fields: Any) -> dict[str, Any]:
    response = client.post(INCIDENTS, json=fields)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()["result"]
    return result


# ---- auth ---------------------------------------------------------------------------------


def test_missing_auth_answers_the_captured_401(server: RunningEmulator) -> None:
    expected_body = capture("get-incident-401.txt").strip().splitlines()[-1]
    response = httpx.get(server.url + INCIDENTS)
    assert response.status_code == 401
    assert response.text == expected_body
    assert response.headers["WWW-Authenticate"] == 'BASIC realm="Service-now"'
    assert response.headers["Content-Type"] == "application/json;charset=UTF-8"


@pytest.mark.parametrize(
    "auth",
    [
        httpx.BasicAuth("admin", "wrong"),
        httpx.BasicAuth("john.doe", ""),  # no password configured: cannot log in
        httpx.BasicAuth("nobody", "x"),
    ],
)
def test_wrong_credentials_answer_401(server: RunningEmulator, auth: httpx.Auth) -> None:
    response = httpx.get(server.url + INCIDENTS, auth=auth)
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "User Not Authenticated"


def test_bearer_token_acts_as_its_user(server: RunningEmulator, emulator: Emulator) -> None:
    headers = {"Authorization": "Bearer john-token"}
    response = httpx.post(server.url + INCIDENTS, json={"short_description": "x"}, headers=headers)
    assert response.status_code == 201
    assert response.json()["result"]["sys_created_by"] == "john.doe"
    bad = httpx.get(server.url + INCIDENTS, headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401


@pytest.mark.parametrize(
    ("method", "path", "verb"),
    [("POST", "", "Insert"), ("PATCH", "/{id}", "Update"), ("DELETE", "/{id}", "Delete")],
)
def test_user_without_write_rights_gets_403(
    server: RunningEmulator, emulator: Emulator, method: str, path: str, verb: str
) -> None:
    sys_id = emulator.seed_incidents(1)[0]["sys_id"]
    url = server.url + INCIDENTS + path.format(id=sys_id)
    response = httpx.request(method, url, json={"state": "2"}, auth=("viewer", "viewer-pw"))
    assert response.status_code == 403
    assert response.json() == {
        "error": {
            "message": "Operation Failed",
            "detail": f"ACL Exception {verb} Failed due to security constraints",
        },
        "status": "failure",
    }
    assert httpx.get(url, auth=("viewer", "viewer-pw")).status_code == 200


# ---- create -------------------------------------------------------------------------------


def test_create_has_the_captured_shape(client: httpx.Client, server: RunningEmulator) -> None:
    captured = json.loads(capture("post-incident-201.json"))["response"]["result"]
    # The same write as the captured one, plus the fields today's data policy demands.
    result = create(
        client,
        short_description="Puppet Corrective Change",
        impact="1",
        urgency="1",
        state="7",
        close_code="Solved (Permanently)",
        close_notes="done",
    )
    assert list(result) == list(captured)
    assert {k for k, v in result.items() if isinstance(v, dict)} == {
        k for k, v in captured.items() if isinstance(v, dict)
    }
    assert all(isinstance(v, str | dict) for v in result.values())
    assert result["sys_domain"] == {
        "link": f"{server.url}/api/now/table/sys_user_group/global",
        "value": "global",
    }
    assert result["closed_by"]["value"] == ADMIN_SYS_ID
    assert (result["state"], result["incident_state"], result["active"]) == ("7", "7", "false")


def test_create_defaults(client: httpx.Client, server: RunningEmulator) -> None:
    response = client.post(INCIDENTS, json={"short_description": "Disk full"})
    result = response.json()["result"]
    assert response.headers["Content-Type"] == "application/json;charset=UTF-8"
    assert response.headers["Location"] == f"{server.url}{INCIDENTS}/{result['sys_id']}"
    assert re.fullmatch(r"[0-9a-f]{32}", result["sys_id"])
    assert result["number"] == "INC0010001"
    assert create(client)["number"] == "INC0010002"
    now = "2024-05-01 12:00:00"
    assert {
        k: result[k] for k in ("opened_at", "sys_created_on", "sys_updated_on")
    } == dict.fromkeys(("opened_at", "sys_created_on", "sys_updated_on"), now)
    assert result["opened_by"] == {
        "link": f"{server.url}/api/now/table/sys_user/{ADMIN_SYS_ID}",
        "value": ADMIN_SYS_ID,
    }
    expected = {
        "state": "1",
        "incident_state": "1",
        "active": "true",
        "impact": "3",
        "urgency": "3",
        "priority": "5",
        "severity": "3",
        "caller_id": "",
        "sys_created_by": "admin",
        "sys_updated_by": "admin",
        "sys_mod_count": "0",
        "work_notes": "",
    }
    assert {k: result[k] for k in expected} == expected


@pytest.mark.parametrize(
    ("impact", "urgency", "priority"),
    [
        ("1", "1", "1"),
        ("1", "2", "2"),
        ("2", "1", "2"),
        ("1", "3", "3"),
        ("2", "2", "3"),
        ("3", "1", "3"),
        ("2", "3", "4"),
        ("3", "2", "4"),
        ("3", "3", "5"),
    ],
)
def test_priority_is_computed(
    client: httpx.Client, impact: str, urgency: str, priority: str
) -> None:
    # The written priority loses to the computed one, as with the default business rule.
    result = create(
        client, impact=impact, urgency=urgency, priority="1" if priority != "1" else "5"
    )
    assert result["priority"] == priority


def test_priority_is_recomputed_on_update(client: httpx.Client) -> None:
    sys_id = create(client)["sys_id"]
    result = client.patch(f"{INCIDENTS}/{sys_id}", json={"impact": 1, "urgency": 2}).json()
    assert (result["result"]["impact"], result["result"]["priority"]) == ("1", "2")


def test_json_values_are_stored_as_strings(client: httpx.Client) -> None:
    result = create(client, impact=2, knowledge=True, description=None, made_sla=False)
    assert (result["impact"], result["knowledge"], result["description"]) == ("2", "true", "")
    assert result["made_sla"] == "false"


def test_unknown_and_system_fields_are_ignored_on_write(client: httpx.Client) -> None:
    result = create(client, u_nonexistent="x", sys_id="f" * 32, number="INC9", sys_created_by="x")
    assert "u_nonexistent" not in result
    assert (result["number"], result["sys_created_by"]) == ("INC0010001", "admin")
    assert result["sys_id"] != "f" * 32


# ---- references ---------------------------------------------------------------------------


def test_references_accept_sys_id_user_name_or_name(client: httpx.Client) -> None:
    users = client.get("/api/now/table/sys_user", params={"sysparm_query": "user_name=jane.smith"})
    jane = users.json()["result"][0]["sys_id"]
    for value in (jane, "jane.smith", "Jane Smith"):
        assert create(client, assigned_to=value)["assigned_to"]["value"] == jane
    group = create(client, assignment_group="Network")["assignment_group"]
    assert group["link"].endswith(f"/sys_user_group/{group['value']}")


def test_invalid_reference_is_silently_dropped(client: httpx.Client) -> None:
    result = create(client, assigned_to="no.such.user", assignment_group="Nope")
    assert (result["assigned_to"], result["assignment_group"]) == ("", "")


def test_reference_tables_are_read_only(client: httpx.Client) -> None:
    groups = client.get("/api/now/table/sys_user_group").json()["result"]
    assert {g["name"] for g in groups} == {"Data Engineering", "Service Desk", "Network"}
    users = client.get("/api/now/table/sys_user", params={"sysparm_fields": "user_name,name"})
    assert {"user_name": "admin", "name": "System Administrator"} in users.json()["result"]
    assert "password" not in client.get("/api/now/table/sys_user").text
    assert client.post("/api/now/table/sys_user", json={"user_name": "x"}).status_code == 403


# ---- display values -----------------------------------------------------------------------


def test_display_value_false_true_all(client: httpx.Client, server: RunningEmulator) -> None:
    sys_id = create(client, assigned_to="john.doe", state="2", impact="1", urgency="2")["sys_id"]
    john = next(u for u in DEFAULT_USERS if u.user_name == "john.doe").sys_id
    link = f"{server.url}/api/now/table/sys_user/{john}"
    fields = {"sysparm_fields": "assigned_to,state,priority,impact,caller_id,number"}

    def get(mode: str, **extra: str) -> dict[str, Any]:
        params = {**fields, "sysparm_display_value": mode, **extra}
        result: dict[str, Any] = client.get(f"{INCIDENTS}/{sys_id}", params=params).json()["result"]
        return result

    assert get("false") == {
        "assigned_to": {"link": link, "value": john},
        "state": "2",
        "priority": "2",
        "impact": "1",
        "caller_id": "",
        "number": "INC0010001",
    }
    assert get("true") == {
        "assigned_to": {"display_value": "John Doe", "link": link},
        "state": "In Progress",
        "priority": "2 - High",
        "impact": "1 - High",
        "caller_id": "",
        "number": "INC0010001",
    }
    assert get("all") == {
        "assigned_to": {"display_value": "John Doe", "link": link, "value": john},
        "state": {"display_value": "In Progress", "value": "2"},
        "priority": {"display_value": "2 - High", "value": "2"},
        "impact": {"display_value": "1 - High", "value": "1"},
        "caller_id": {"display_value": "", "value": ""},
        "number": {"display_value": "INC0010001", "value": "INC0010001"},
    }
    no_link = {"sysparm_exclude_reference_link": "true"}
    assert get("false", **no_link)["assigned_to"] == john
    assert get("true", **no_link)["assigned_to"] == "John Doe"
    assert get("all", **no_link)["assigned_to"] == {"display_value": "John Doe", "value": john}


@pytest.mark.parametrize(
    ("state", "label"),
    [("1", "New"), ("2", "In Progress"), ("3", "On Hold"), ("8", "Canceled")],
)
def test_state_labels(client: httpx.Client, state: str, label: str) -> None:
    sys_id = create(client, state=state)["sys_id"]
    params = {"sysparm_display_value": "true", "sysparm_fields": "state,incident_state"}
    result = client.get(f"{INCIDENTS}/{sys_id}", params=params).json()["result"]
    assert result == {"state": label, "incident_state": label}


def test_sysparm_fields_on_every_verb(client: httpx.Client) -> None:
    only = {"sysparm_fields": "number,short_description,not_a_field"}
    created = client.post(INCIDENTS, params=only, json={"short_description": "a"}).json()
    assert created["result"] == {"number": "INC0010001", "short_description": "a"}
    sys_id = client.get(INCIDENTS, params={"sysparm_fields": "sys_id"}).json()["result"][0]
    path = f"{INCIDENTS}/{sys_id['sys_id']}"
    assert client.get(path, params=only).json()["result"]["short_description"] == "a"
    patched = client.patch(path, params=only, json={"short_description": "b"}).json()
    assert patched["result"] == {"number": "INC0010001", "short_description": "b"}
    listed = client.get(INCIDENTS, params=only).json()["result"]
    assert listed == [{"number": "INC0010001", "short_description": "b"}]


# ---- lists --------------------------------------------------------------------------------


def test_paging_headers_match_the_capture(
    client: httpx.Client, server: RunningEmulator, emulator: Emulator
) -> None:
    captured = capture("list-incident-200-headers.txt")
    captured_link = re.search(r"^< Link: (.*)$", captured, re.MULTILINE)
    assert captured_link is not None
    emulator.seed_incidents(73)
    response = client.get(INCIDENTS, params={"sysparm_limit": "1"})
    assert response.headers["X-Total-Count"] == "73"
    ours = captured_link[1].replace("https://dev86373.service-now.com", server.url)
    assert response.headers["Link"] == ours
    assert len(response.json()["result"]) == 1


def test_paging_walks_all_rows_and_keeps_other_params(
    client: httpx.Client, server: RunningEmulator, emulator: Emulator
) -> None:
    emulator.seed_incidents(25, description="even {i}")
    query = "descriptionLIKEeven^ORDERBYnumber"
    response = client.get(
        INCIDENTS,
        params={"sysparm_query": query, "sysparm_limit": "10", "sysparm_offset": "20"},
    )
    rows = response.json()["result"]
    assert [r["number"] for r in rows] == [f"INC00100{n}" for n in range(21, 26)]
    base = f"{server.url}{INCIDENTS}?sysparm_query=descriptionLIKEeven%5EORDERBYnumber"
    assert response.headers["Link"] == ",".join(
        [
            f'<{base}&sysparm_limit=10&sysparm_offset=0>;rel="first"',
            f'<{base}&sysparm_limit=10&sysparm_offset=10>;rel="prev"',
            f'<{base}&sysparm_limit=10&sysparm_offset=20>;rel="last"',
        ]
    )
    assert response.headers["X-Total-Count"] == "25"
    seen: list[str] = []
    url: str | None = f"{INCIDENTS}?sysparm_limit=7&sysparm_query=ORDERBYnumber"
    while url:
        page = client.get(url)
        seen += [r["number"] for r in page.json()["result"]]
        url = {rel: href for href, rel in _links(page)}.get("next")
    assert seen == [f"INC00{n}" for n in range(10001, 10026)]


def _links(response: httpx.Response) -> list[tuple[str, str]]:
    return re.findall(r'<([^>]+)>;rel="(\w+)"', response.headers["Link"])


def test_default_limit_and_empty_result(client: httpx.Client, emulator: Emulator) -> None:
    response = client.get(INCIDENTS)
    assert response.status_code == 200
    assert response.json() == {"result": []}
    assert response.headers["X-Total-Count"] == "0"
    emulator.seed_incidents(3)
    assert len(client.get(INCIDENTS, params={"sysparm_limit": "bogus"}).json()["result"]) == 3


# ---- journal ------------------------------------------------------------------------------


def test_journal_fields_append_and_read_back(
    client: httpx.Client, server: RunningEmulator, emulator: Emulator
) -> None:
    sys_id = create(client, work_notes="first note")["sys_id"]
    CLOCK.now = START + timedelta(minutes=5)
    path = f"{INCIDENTS}/{sys_id}"
    httpx.patch(
        server.url + path,
        json={"work_notes": "second note", "comments": "hello caller"},
        headers={"Authorization": "Bearer john-token"},
    )
    raw = client.get(path).json()["result"]
    assert (raw["work_notes"], raw["comments"], raw["comments_and_work_notes"]) == ("", "", "")
    params = {"sysparm_display_value": "true", "sysparm_fields": "work_notes,comments"}
    shown = client.get(path, params=params).json()["result"]
    assert shown["work_notes"] == (
        "2024-05-01 12:05:00 - John Doe (Work notes)\nsecond note\n\n"
        "2024-05-01 12:00:00 - System Administrator (Work notes)\nfirst note\n\n"
    )
    assert (
        shown["comments"]
        == "2024-05-01 12:05:00 - John Doe (Additional comments)\nhello caller\n\n"
    )
    combined = client.get(
        path, params={"sysparm_display_value": "all", "sysparm_fields": "comments_and_work_notes"}
    ).json()["result"]["comments_and_work_notes"]
    assert combined["value"] == ""
    assert combined["display_value"].count("(Work notes)") == 2
    assert [e["value"] for e in emulator.journal(sys_id)] == [
        "first note",
        "second note",
        "hello caller",
    ]


def test_sys_journal_field_is_queryable(client: httpx.Client) -> None:
    sys_id = create(client, work_notes="note", comments="comment")["sys_id"]
    create(client, work_notes="elsewhere")
    query = f"element_id={sys_id}^element=comments"
    rows = client.get("/api/now/table/sys_journal_field", params={"sysparm_query": query}).json()
    assert [
        {k: r[k] for k in ("element", "element_id", "name", "value", "sys_created_by")}
        for r in rows["result"]
    ] == [
        {
            "element": "comments",
            "element_id": sys_id,
            "name": "incident",
            "value": "comment",
            "sys_created_by": "admin",
        }
    ]


def test_mod_count_and_unchanged_writes(client: httpx.Client) -> None:
    sys_id = create(client, short_description="a")["sys_id"]
    path = f"{INCIDENTS}/{sys_id}"
    assert (
        client.patch(path, json={"short_description": "b"}).json()["result"]["sys_mod_count"] == "1"
    )
    assert (
        client.put(path, json={"short_description": "b"}).json()["result"]["sys_mod_count"] == "1"
    )
    assert client.put(path, json={"work_notes": "n"}).json()["result"]["sys_mod_count"] == "2"


# ---- state rules --------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["6", "7"])
def test_resolving_needs_close_code_and_notes(
    client: httpx.Client, emulator: Emulator, state: str
) -> None:
    sys_id = create(client)["sys_id"]
    path = f"{INCIDENTS}/{sys_id}"
    refused = client.patch(path, json={"state": state, "close_code": "Solved (Permanently)"})
    assert refused.status_code == 403
    assert refused.json() == DATA_POLICY
    assert emulator.incidents[0]["state"] == "1"
    client.patch(path, json={"close_code": "Solved (Permanently)", "close_notes": "fixed"})
    CLOCK.now = START + timedelta(hours=1)
    result = client.patch(path, json={"state": state}).json()["result"]
    assert (result["state"], result["incident_state"], result["active"]) == (state, state, "false")
    assert result["resolved_at"] == "2024-05-01 13:00:00"
    assert result["resolved_by"]["value"] == ADMIN_SYS_ID
    assert bool(result["closed_at"]) is (state == "7")


def test_refused_create_stores_nothing(client: httpx.Client, emulator: Emulator) -> None:
    response = client.post(INCIDENTS, json={"state": "7"})
    assert (response.status_code, response.json()) == (403, DATA_POLICY)
    assert emulator.incidents == []
    assert create(client)["number"] == "INC0010001"


def test_reopen_counts_and_incident_state_mirrors(client: httpx.Client) -> None:
    sys_id = create(client, state="6", close_code="Workaround", close_notes="n")["sys_id"]
    result = client.patch(f"{INCIDENTS}/{sys_id}", json={"incident_state": "2"}).json()["result"]
    assert (result["state"], result["active"], result["reopen_count"]) == ("2", "true", "1")


# ---- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "PATCH", "PUT", "DELETE"])
def test_unknown_sys_id_is_404(client: httpx.Client, method: str) -> None:
    response = client.request(method, f"{INCIDENTS}/{'0' * 32}", json={})
    assert response.status_code == 404
    assert response.json() == NOT_FOUND
    assert response.headers["Content-Type"] == "application/json;charset=UTF-8"


def test_delete_then_404(client: httpx.Client) -> None:
    path = f"{INCIDENTS}/{create(client)['sys_id']}"
    assert client.delete(path).status_code == 204
    assert client.get(path).status_code == 404


def test_unknown_table_is_400(client: httpx.Client) -> None:
    response = client.get("/api/now/table/u_nope")
    assert response.status_code == 400
    assert response.json() == {
        "error": {"message": "Invalid table u_nope", "detail": None},
        "status": "failure",
    }


@pytest.mark.parametrize("body", [b"{not json", b"", b"[1, 2]"])
def test_malformed_body_is_400(client: httpx.Client, body: bytes) -> None:
    headers = {"Content-Type": "application/json"}
    response = client.post(INCIDENTS, content=body, headers=headers)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["message"] == "Exception while reading request"
    assert error["detail"]


def test_non_ascii_passwords_are_refused_not_crashed_on(server: RunningEmulator) -> None:
    response = httpx.get(f"{server.url}/api/now/table/incident", auth=("admin", "pässwörd"))

    assert response.status_code == 401
