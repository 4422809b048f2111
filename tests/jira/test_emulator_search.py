"""Enhanced JQL search, approximate counts, the JQL subset and the ADF helpers."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from jira_emulator import (
    DEFAULT_EMAIL,
    JiraEmulator,
    RunningEmulator,
    adf_to_text,
    run_in_thread,
    text_to_adf,
)
from jira_emulator.jql import And, Clause, Function, JqlError, Not, Or, SortKey, parse

SEARCH = "/rest/api/3/search/jql"
START = datetime(2024, 1, 15, 10, 30, tzinfo=UTC)


class TickingClock:
    """Each reading is one minute after the last, so every issue has its own timestamps."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        self.now += timedelta(minutes=1)
        return self.now


CLOCK = TickingClock()


@pytest.fixture(scope="module")
def server() -> Iterator[RunningEmulator]:
    """Replaces the shared server here: timestamps come from the ticking clock."""
    with run_in_thread(JiraEmulator(clock=CLOCK)) as running:
        yield running


@pytest.fixture
def emulator(emulator: JiraEmulator) -> JiraEmulator:
    """The shared fixture's reset, plus the clock back at START."""
    CLOCK.now = START
    return emulator


@pytest.fixture
def dataset(emulator: JiraEmulator, client: httpx.Client) -> None:
    """DQ-1..3 and SD-1 (ids 10000..10003), differing in every field the queries look at.

    Created at 10:31 (DQ-1), 10:32 (DQ-2, moved 10:33), 10:34 (DQ-3, moved 10:35), 10:36 (SD-1);
    DQ-3's comment at 10:37.
    """
    emulator.seed_issues(
        1,
        summary="Nightly load failed",
        description="Row count mismatch in orders",
        labels=["etl", "urgent"],
        priority="High",
        assignee="john.doe@example.com",
    )
    emulator.seed_issues(
        1, summary="Schema drift detected", labels=["schema"], priority="Low", status="In Progress"
    )
    emulator.seed_issues(
        1,
        summary="Duplicate rows in orders",
        priority="Highest",
        assignee=DEFAULT_EMAIL,
        status="Done",
    )
    emulator.seed_issues(1, project="SD", summary="VPN down", issuetype="[System] Incident")
    comment = {"body": text_to_adf("Checked by ops")}
    assert client.post("/rest/api/3/issue/DQ-3/comment", json=comment).status_code == 201


def keys(client: httpx.Client, jql: str) -> list[str]:
    response = client.post(SEARCH, json={"jql": jql, "fields": ["key"], "maxResults": 100})
    assert response.status_code == 200, response.text
    return [issue["key"] for issue in response.json()["issues"]]


def error_of(response: httpx.Response) -> str:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["errors"] == {}
    [message] = body["errorMessages"]
    return str(message)


# ---- paging --------------------------------------------------------------------------------


def test_paging_with_next_page_token_get(client: httpx.Client, emulator: JiraEmulator) -> None:
    emulator.seed_issues(25)
    jql = "project = DQ ORDER BY key ASC"
    params: dict[str, Any] = {"jql": jql, "maxResults": 10, "fields": "summary,status"}
    pages = []
    while True:
        response = client.get(SEARCH, params=params)
        assert response.status_code == 200
        page = response.json()
        pages.append(page)
        if page["isLast"]:
            assert "nextPageToken" not in page
            break
        params["nextPageToken"] = page["nextPageToken"]
    assert [len(p["issues"]) for p in pages] == [10, 10, 5]
    assert [p["isLast"] for p in pages] == [False, False, True]
    found = [issue["key"] for page in pages for issue in page["issues"]]
    assert found == [f"DQ-{n}" for n in range(1, 26)]
    first = pages[0]["issues"][0]
    assert set(first) == {"expand", "id", "self", "key", "fields"}
    assert set(first["fields"]) == {"summary", "status"}
    assert first["fields"]["summary"] == "Seeded issue 1"


def test_paging_with_next_page_token_post(client: httpx.Client, emulator: JiraEmulator) -> None:
    emulator.seed_issues(7)
    body: dict[str, Any] = {"jql": "project = DQ ORDER BY created DESC", "maxResults": 3}
    found: list[str] = []
    for expected_last in (False, False, True):
        page = client.post(SEARCH, json=body).json()
        assert page["isLast"] is expected_last
        found += [issue["id"] for issue in page["issues"]]
        body["nextPageToken"] = page.get("nextPageToken")
    assert found == [str(10000 + n) for n in range(6, -1, -1)]


def test_search_returns_ids_only_by_default(client: httpx.Client, emulator: JiraEmulator) -> None:
    emulator.seed_issues(2)
    page = client.get(SEARCH, params={"jql": "project = DQ"}).json()
    assert page == {"issues": [{"id": "10001"}, {"id": "10000"}], "isLast": True}


def test_search_hits_match_get_issue(client: httpx.Client, emulator: JiraEmulator) -> None:
    emulator.seed_issues(1)
    hit = client.post(SEARCH, json={"jql": "key = DQ-1", "fields": ["*all"]}).json()["issues"][0]
    assert hit == client.get("/rest/api/3/issue/DQ-1").json()


def test_page_size_caps(client: httpx.Client, emulator: JiraEmulator) -> None:
    emulator.seed_issues(120)
    full = client.post(
        SEARCH, json={"jql": "project = DQ", "maxResults": 500, "fields": ["summary"]}
    )
    assert len(full.json()["issues"]) == 100
    ids = client.post(SEARCH, json={"jql": "project = DQ", "maxResults": 500, "fields": ["id"]})
    assert (len(ids.json()["issues"]), ids.json()["isLast"]) == (120, True)
    default = client.post(SEARCH, json={"jql": "project = DQ"}).json()
    assert len(default["issues"]) == 50


def test_token_is_bound_to_its_query(client: httpx.Client, emulator: JiraEmulator) -> None:
    emulator.seed_issues(3)
    token = client.post(SEARCH, json={"jql": "project = DQ", "maxResults": 1}).json()
    body = {"jql": "project = SD", "nextPageToken": token["nextPageToken"]}
    assert "next page token" in error_of(client.post(SEARCH, json=body))
    assert "next page token" in error_of(client.post(SEARCH, json={**body, "nextPageToken": "%%"}))


def test_approximate_count(client: httpx.Client, dataset: None) -> None:
    count = "/rest/api/3/search/approximate-count"
    assert client.post(count, json={"jql": "project = DQ"}).json() == {"count": 3}
    assert client.post(count, json={"jql": "project = SD AND labels = nothing"}).json() == {
        "count": 0
    }
    assert "does not exist" in error_of(client.post(count, json={"jql": "nope = 1"}))


# ---- JQL -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("jql", "expected"),
    [
        ("project = DQ", ["DQ-1", "DQ-2", "DQ-3"]),
        ("PROJECT = dq", ["DQ-1", "DQ-2", "DQ-3"]),
        ('project = "Data Quality"', ["DQ-1", "DQ-2", "DQ-3"]),
        ("project in (DQ, SD) AND priority >= High", ["DQ-1", "DQ-3"]),
        ("priority < Medium", ["DQ-2"]),
        ("priority = 2", ["DQ-1"]),
        ("labels = etl OR labels = schema", ["DQ-1", "DQ-2"]),
        ("labels in (urgent, schema)", ["DQ-1", "DQ-2"]),
        ("labels IS EMPTY", ["DQ-3", "SD-1"]),
        ("labels is not empty", ["DQ-1", "DQ-2"]),
        ("labels != etl", ["DQ-2"]),
        ("assignee IS EMPTY AND project = DQ", ["DQ-2"]),
        ("assignee = currentUser()", ["DQ-3"]),
        ("assignee != currentUser()", ["DQ-1"]),
        ("assignee in (EMPTY, currentUser())", ["DQ-2", "DQ-3", "SD-1"]),
        ('summary ~ "orders"', ["DQ-3"]),
        ("summary ~ ORDERS", ["DQ-3"]),
        ('summary ~ "lo*d"', ["DQ-1"]),
        ('text ~ "orders"', ["DQ-1", "DQ-3"]),
        ("comment ~ ops", ["DQ-3"]),
        ('description ~ "mismatch"', ["DQ-1"]),
        ("description is empty", ["DQ-2", "DQ-3", "SD-1"]),
        ("summary !~ rows AND project = DQ", ["DQ-1", "DQ-2"]),
        ("NOT status = Done AND project = DQ", ["DQ-1", "DQ-2"]),
        ("project = DQ AND NOT (status = Done OR priority = Low)", ["DQ-1"]),
        ('project = DQ AND (status = "In Progress" OR priority = Highest)', ["DQ-2", "DQ-3"]),
        # AND binds tighter than OR: Done, or (SD and Medium).
        ("status = Done OR project = SD AND priority = Medium", ["DQ-3", "SD-1"]),
        ("statusCategory = done", ["DQ-3"]),
        ('statusCategory = "To Do"', ["DQ-1", "SD-1"]),
        ("statusCategory in (new, indeterminate)", ["DQ-1", "DQ-2", "SD-1"]),
        ("status = 3", ["DQ-2"]),
        ('status NOT IN ("To Do", Done) AND project = DQ', ["DQ-2"]),
        ("key in (DQ-1, dq-3)", ["DQ-1", "DQ-3"]),
        ("issuekey = SD-1", ["SD-1"]),
        ('issuetype = "[System] Incident"', ["SD-1"]),
        ("type = Task", ["DQ-1", "DQ-2", "DQ-3"]),
        ("id > 10001", ["DQ-3", "SD-1"]),
        ("id in (10000, 10003)", ["DQ-1", "SD-1"]),
        ("created >= -1d", ["DQ-1", "DQ-2", "DQ-3", "SD-1"]),
        ('created > "2024-01-15 10:33"', ["DQ-3", "SD-1"]),
        ("created < 2024/01/15", []),
        ("updated <= now()", ["DQ-1", "DQ-2", "DQ-3", "SD-1"]),
    ],
)
def test_jql_filters(client: httpx.Client, dataset: None, jql: str, expected: list[str]) -> None:
    assert keys(client, f"{jql} ORDER BY key") == expected


@pytest.mark.parametrize(
    ("order_by", "expected"),
    [
        ("priority DESC", ["DQ-3", "DQ-1", "DQ-2"]),
        ("priority", ["DQ-2", "DQ-1", "DQ-3"]),
        ("key DESC", ["DQ-3", "DQ-2", "DQ-1"]),
        ("created", ["DQ-1", "DQ-2", "DQ-3"]),
        # DQ-3 was commented on last; DQ-2 moved to In Progress after DQ-1 was created.
        ("updated DESC, key ASC", ["DQ-3", "DQ-2", "DQ-1"]),
        ("id desc", ["DQ-3", "DQ-2", "DQ-1"]),
    ],
)
def test_order_by(client: httpx.Client, dataset: None, order_by: str, expected: list[str]) -> None:
    assert keys(client, f"project = DQ ORDER BY {order_by}") == expected


def test_default_order_is_newest_first(client: httpx.Client, dataset: None) -> None:
    assert keys(client, "project in (DQ, SD)") == ["SD-1", "DQ-3", "DQ-2", "DQ-1"]


def test_keys_sort_numerically(client: httpx.Client, emulator: JiraEmulator) -> None:
    emulator.seed_issues(10)
    assert keys(client, "key in (DQ-2, DQ-10, DQ-9) ORDER BY key") == ["DQ-2", "DQ-9", "DQ-10"]


UNBOUNDED = (
    "Unbounded JQL queries are not allowed here. Please add a search restriction to your query."
)
BAD_DATE = (
    "Date value 'yesterday' for field 'created' is invalid. Valid formats include: "
    "'yyyy/MM/dd HH:mm', 'yyyy-MM-dd HH:mm', 'yyyy/MM/dd', 'yyyy-MM-dd', or a period format "
    "e.g. '-5d', '4w 2d'."
)
OPERATORS = (
    "The valid operators are '=', '!=', '<', '>', '<=', '>=', '~', '!~', 'IN', 'NOT IN', 'IS' "
    "and 'IS NOT'."
)
RESERVED = (
    "The character '#' is a reserved JQL character. You must enclose it in a string or use the "
    "escape '\\u0023' instead."
)


def missing(field: str) -> str:
    return f"Field '{field}' does not exist or you do not have permission to view it."


@pytest.mark.parametrize(
    ("jql", "message"),
    [
        ("foo = bar", missing("foo")),
        ("project = DQ ORDER BY nope", missing("nope")),
        ("project = NOPE", "The value 'NOPE' does not exist for the field 'project'."),
        ("status = Closed", "The value 'Closed' does not exist for the field 'status'."),
        ("key = DQ-999", "An issue with key 'DQ-999' does not exist for field 'key'."),
        ("status ~ Done", "The operator '~' is not supported by the 'status' field."),
        ("summary = x", "The operator '=' is not supported by the 'summary' field."),
        ("labels > a", "The operator '>' is not supported by the 'labels' field."),
        ("project = DQ ORDER BY description", "Not able to sort using field 'description'."),
        ("assignee = foo()", "Unable to find JQL function 'foo()'."),
        ("created > yesterday", BAD_DATE),
        ("", UNBOUNDED),
        ("ORDER BY created", UNBOUNDED),
    ],
)
def test_invalid_jql_is_400(client: httpx.Client, dataset: None, jql: str, message: str) -> None:
    assert error_of(client.get(SEARCH, params={"jql": jql})) == message


@pytest.mark.parametrize(
    ("jql", "message", "character"),
    [
        ("project = DQ AND", "Expecting a field name but got 'EOF'.", 17),
        ("project = DQ status = Done", "Expecting either 'OR' or 'AND' but got 'status'.", 14),
        ("project DQ", f"Expecting operator but got 'DQ'. {OPERATORS}", 9),
        ("(project = DQ", "Expecting ')' but got 'EOF'.", 14),
        ('summary ~ "open', "The quoted string 'open' has not been completed.", 11),
        ("project = D#Q", RESERVED, 12),
        ("labels = and", "Expecting either a value, list or function but got 'and'.", 10),
        ("labels is x", "Expecting 'EMPTY' or 'NULL'.", 11),
        ("project = DQ\nAND ~", "Expecting a field name but got '~'.", 5),
    ],
)
def test_jql_syntax_error_is_400(
    client: httpx.Client, jql: str, message: str, character: int
) -> None:
    line = jql.count("\n") + 1
    expected = f"Error in the JQL Query: {message} (line {line}, character {character})"
    assert error_of(client.post(SEARCH, json={"jql": jql})) == expected


def test_quoted_values_unescape(client: httpx.Client, emulator: JiraEmulator) -> None:
    emulator.seed_issues(1, summary='Say "hi" \\ bye')
    assert keys(client, r'summary ~ "\"hi\" \\"') == ["DQ-1"]
    assert keys(client, "summary ~ 'say'") == ["DQ-1"]


def test_parse_tree() -> None:
    query = parse('a = 1 OR NOT b IN (x, "y z") AND c IS NOT EMPTY ORDER BY created DESC, key')
    assert query.where == Or(
        (
            Clause("a", "=", ("1",)),
            And((Not(Clause("b", "in", ("x", "y z"))), Clause("c", "is not", (None,)))),
        )
    )
    assert query.order_by == (SortKey("created", True), SortKey("key", False))
    assert parse("assignee = currentUser()").where == Clause(
        "assignee", "=", (Function("currentUser", ()),)
    )
    with pytest.raises(JqlError):
        parse("a = 1 ORDER created")


# ---- ADF -----------------------------------------------------------------------------------


def test_text_to_adf_and_back() -> None:
    assert text_to_adf("") == {"type": "doc", "version": 1, "content": []}
    doc = text_to_adf("one\n\nthree")
    assert doc["content"][0] == {"type": "paragraph", "content": [{"type": "text", "text": "one"}]}
    assert doc["content"][1] == {"type": "paragraph", "content": []}
    assert adf_to_text(doc) == "one\n\nthree"
    assert adf_to_text(None) == ""


def test_adf_to_text_reads_rich_documents() -> None:
    doc = {
        "type": "doc",
        "version": 1,
        "content": [
            {"type": "heading", "attrs": {"level": 2}, "content": [{"type": "text", "text": "T"}]},
            {
                "type": "paragraph",
                "content": [
                    {"type": "text", "text": "bold", "marks": [{"type": "strong"}]},
                    {"type": "text", "text": " and "},
                    {"type": "mention", "attrs": {"id": "x", "text": "@Alice"}},
                    {"type": "hardBreak"},
                    {"type": "inlineCard", "attrs": {"url": "https://example.com"}},
                ],
            },
            {
                "type": "bulletList",
                "content": [
                    {"type": "listItem", "content": [_paragraph("a")]},
                    {"type": "listItem", "content": [_paragraph("b")]},
                ],
            },
        ],
    }
    assert adf_to_text(doc) == "T\nbold and @Alice\nhttps://example.com\na\nb"


def _paragraph(text: str) -> dict[str, Any]:
    return {"type": "paragraph", "content": [{"type": "text", "text": text}]}
