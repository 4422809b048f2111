"""Encoded queries: the parser and evaluator directly, then through the Table API."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import httpx
import pytest
from servicenow_emulator import DEFAULT_PASSWORD, Emulator, RunningEmulator, run_in_thread
from servicenow_emulator.query import TEXT_QUERY, Condition, parse

ROWS = [
    {"id": "a", "name": "Alpha", "count": "10", "tag": "red", "note": ""},
    {"id": "b", "name": "beta^2", "count": "9", "tag": "blue", "note": "x"},
    {"id": "c", "name": "Gamma", "count": "100", "tag": "red", "note": "y"},
    {"id": "d", "name": "delta", "count": "", "tag": "green", "note": ""},
]


def resolve(row: Mapping[str, str], field: str) -> str | None:
    if field == TEXT_QUERY:
        return " ".join(row.values())
    return row.get(field) if field in ROWS[0] else None


def ids(query: str) -> list[str]:
    return [row["id"] for row in parse(query).apply(ROWS, resolve)]


def test_parse_groups_or_inside_and() -> None:
    query = parse("tag=red^ORtag=blue^count>5^NQname=delta^ORDERBYDESCcount^ORDERBYname")
    assert query.groups == (
        (
            (Condition("tag", "=", "red"), Condition("tag", "=", "blue")),
            (Condition("count", ">", "5"),),
        ),
        ((Condition("name", "=", "delta"),),),
    )
    assert query.order_by == (("count", True), ("name", False))


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("tag=red", ["a", "c"]),
        ("name=alpha", ["a"]),  # case-insensitive, like the instance's collation
        ("tag!=red", ["b", "d"]),
        ("nameLIKEmm", ["c"]),
        ("nameLIKEA", ["a", "b", "c", "d"]),
        ("nameNOT LIKEa", []),
        ("nameNOT LIKEeta", ["a", "c", "d"]),
        ("nameSTARTSWITHbe", ["b"]),
        ("nameENDSWITHTA", ["d"]),
        ("tagINred,green", ["a", "c", "d"]),
        ("tagNOT INred,green", ["b"]),
        ("noteISEMPTY", ["a", "d"]),
        ("noteISNOTEMPTY", ["b", "c"]),
        ("count<10", ["b"]),  # numeric, not "10" < "9" as text
        ("count<=10", ["a", "b"]),
        ("count>10", ["c"]),
        ("count>=10", ["a", "c"]),  # the empty count matches no comparison
        ("name<c", ["a", "b"]),  # text when either side is not a number
        ("name>=Delta", ["c", "d"]),
    ],
)
def test_operators(query: str, expected: list[str]) -> None:
    assert ids(query) == expected


def test_or_binds_tighter_than_and() -> None:
    assert ids("tag=blue^ORtag=green^noteISEMPTY") == ["d"]
    assert ids("noteISEMPTY^tag=blue^ORtag=green") == ["d"]
    assert ids("tag=red^count>50^ORnote=x") == ["c"]


def test_new_query_ors_whole_groups() -> None:
    assert ids("tag=red^count<50^NQtag=green") == ["a", "d"]
    assert ids("tag=blue^NQtag=green^NQname=Gamma") == ["b", "c", "d"]


def test_order_by_keys_apply_in_order_and_stably() -> None:
    assert ids("ORDERBYcount") == ["d", "b", "a", "c"]  # empty first, then numerically
    assert ids("ORDERBYDESCcount") == ["c", "a", "b", "d"]
    assert ids("ORDERBYtag^ORDERBYDESCname") == ["b", "d", "c", "a"]
    assert ids("ORDERBYtag") == ["b", "d", "a", "c"]  # ties keep insertion order
    assert ids("tag=red^ORDERBYDESCid") == ["c", "a"]
    assert ids("") == ["a", "b", "c", "d"]


def test_escaped_caret_is_a_literal() -> None:
    assert ids("name=beta^^2") == ["b"]
    assert ids("nameLIKE^^^tag=blue") == ["b"]


def test_unknown_fields_and_unreadable_parts_are_ignored() -> None:
    assert ids("u_typo=1") == ["a", "b", "c", "d"]
    assert ids("u_typo=1^tag=red") == ["a", "c"]
    assert ids("tag=blue^ORu_typo=1") == ["b"]  # the dropped alternative does not widen the OR
    assert ids("tagBETWEENa@z^tag=green^EQ") == ["d"]
    assert ids("ORDERBYu_typo^ORDERBYDESCid") == ["d", "c", "b", "a"]


def test_text_query_needs_every_term() -> None:
    assert ids(f"{TEXT_QUERY}=RED alp") == ["a"]
    assert ids(f"{TEXT_QUERY}=red") == ["a", "c"]
    assert ids(f"{TEXT_QUERY}=red nothing") == []


def test_date_generate_is_read_as_a_literal() -> None:
    rows = [{"id": "old", "at": "2024-01-01 00:00:00"}, {"id": "new", "at": "2024-02-01 09:30:00"}]
    query = parse("at>javascript:gs.dateGenerate('2024-01-15','00:00:00')")
    assert [r["id"] for r in query.apply(rows, lambda row, f: row.get(f))] == ["new"]


# ---- through HTTP -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[RunningEmulator]:
    with run_in_thread(Emulator()) as running:
        yield running


@pytest.fixture
def client(server: RunningEmulator) -> Iterator[httpx.Client]:
    server.emulator.reset()
    with httpx.Client(base_url=server.url, auth=("admin", DEFAULT_PASSWORD), timeout=5) as http:
        yield http


def numbers(client: httpx.Client, query: str) -> list[str]:
    params = {"sysparm_query": query, "sysparm_fields": "number"}
    response = client.get("/api/now/table/incident", params=params)
    assert response.status_code == 200
    return [row["number"] for row in response.json()["result"]]


def test_http_queries(client: httpx.Client, server: RunningEmulator) -> None:
    emulator = server.emulator
    emulator.seed_incidents(1, short_description="Disk full on db1", assigned_to="john.doe")
    emulator.seed_incidents(1, short_description="VPN down", assignment_group="Network")
    emulator.seed_incidents(1, short_description="Printer jam", impact="1", urgency="1")
    assert numbers(client, "assigned_to.name=John Doe") == ["INC0010001"]
    assert numbers(client, "assigned_to.user_name=john.doe") == ["INC0010001"]
    assert numbers(client, "assignment_group.name=Network") == ["INC0010002"]
    assert numbers(client, "assigned_to.u_typo=x") == ["INC0010001", "INC0010002", "INC0010003"]
    assert numbers(client, "priority=1^ORshort_descriptionLIKEvpn") == ["INC0010002", "INC0010003"]
    assert numbers(client, "ORDERBYDESCnumber") == ["INC0010003", "INC0010002", "INC0010001"]
    assert numbers(client, "u_typo=1^ORDERBYpriority") == ["INC0010003", "INC0010001", "INC0010002"]
    john = numbers(client, "assigned_to.user_name=john.doe")
    assert numbers(client, "assigned_toISNOTEMPTY") == john


def test_http_text_query_searches_journal_and_number(client: httpx.Client) -> None:
    created = client.post("/api/now/table/incident", json={"short_description": "Disk full"})
    client.patch(
        f"/api/now/table/incident/{created.json()['result']['sys_id']}",
        json={"work_notes": "Rotated the LOGS on db1"},
    )
    client.post("/api/now/table/incident", json={"description": "disk is fine"})
    assert numbers(client, f"{TEXT_QUERY}=disk logs") == ["INC0010001"]
    assert numbers(client, f"{TEXT_QUERY}=DISK") == ["INC0010001", "INC0010002"]
    assert numbers(client, f"{TEXT_QUERY}=inc0010002") == ["INC0010002"]
