"""The Jira emulator's REST API over real HTTP: auth, metadata, issues, transitions, comments."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from jira_emulator import (
    ADMIN_ACCOUNT_ID,
    DEFAULT_EMAIL,
    JiraEmulator,
    Project,
    RunningEmulator,
    text_to_adf,
)

from .conftest import BEARER, JOHN, READER

JSON_TYPE = "application/json;charset=UTF-8"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+0000$")
NOT_FOUND = {
    "errorMessages": ["Issue does not exist or you do not have permission to see it."],
    "errors": {},
}
UNAUTHENTICATED = {
    "errorMessages": [
        "You are not authenticated. Authentication required to perform this operation."
    ],
    "errors": {},
}
INTERNAL = [{"key": "sd.public.comment", "value": {"internal": True}}]


def create(client: httpx.Client, **fields: Any) -> dict[str, Any]:
    body = {"project": {"key": "DQ"}, "issuetype": {"name": "Task"}, "summary": "A task"}
    response = client.post("/rest/api/3/issue", json={"fields": {**body, **fields}})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


# ---- auth ----------------------------------------------------------------------------------


def test_basic_auth_and_myself(client: httpx.Client, server: RunningEmulator) -> None:
    response = client.get("/rest/api/3/myself")
    assert response.status_code == 200
    assert response.headers["content-type"] == JSON_TYPE
    me = response.json()
    assert me["self"] == f"{server.url}/rest/api/3/user?accountId={ADMIN_ACCOUNT_ID}"
    assert {k: me[k] for k in ("accountId", "accountType", "emailAddress", "displayName")} == {
        "accountId": ADMIN_ACCOUNT_ID,
        "accountType": "atlassian",
        "emailAddress": DEFAULT_EMAIL,
        "displayName": "Alice Admin",
    }
    assert (me["active"], me["timeZone"]) == (True, "UTC")


def test_bearer_token_acts_as_its_account(server: RunningEmulator, emulator: JiraEmulator) -> None:
    headers = {"Authorization": f"Bearer {BEARER}"}
    response = httpx.get(f"{server.url}/rest/api/3/myself", headers=headers)
    assert response.json()["displayName"] == "John Doe"
    assert response.json()["accountId"] == JOHN.account_id


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Basic bm9wZQ=="},  # "nope", no colon
        {"Authorization": "Basic YWRtaW5AZXhhbXBsZS5jb206d3Jvbmc="},  # admin@example.com:wrong
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": "Digest whatever"},
    ],
)
def test_unauthenticated_is_401(
    server: RunningEmulator, emulator: JiraEmulator, headers: dict[str, str]
) -> None:
    response = httpx.get(f"{server.url}/rest/api/3/myself", headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Basic realm="protected-area"'
    assert response.json() == UNAUTHENTICATED


def test_account_without_token_cannot_log_in(
    server: RunningEmulator, emulator: JiraEmulator
) -> None:
    response = httpx.get(f"{server.url}/rest/api/3/myself", auth=(JOHN.email, ""))
    assert response.status_code == 401


def test_read_only_account_reads_but_cannot_write(
    server: RunningEmulator, client: httpx.Client
) -> None:
    issue = create(client)
    with httpx.Client(base_url=server.url, auth=(READER.email, "reader-token")) as reader:
        assert reader.get(f"/rest/api/3/issue/{issue['key']}").status_code == 200
        search = reader.post("/rest/api/3/search/jql", json={"jql": "project = DQ"})
        assert search.status_code == 200
        response = reader.post("/rest/api/3/issue", json={"fields": {}})
        assert response.status_code == 403
        assert response.json() == {
            "errorMessages": ["You do not have permission to create issues in this project."],
            "errors": {},
        }
        writes = [
            reader.put(f"/rest/api/3/issue/{issue['key']}", json={"fields": {"summary": "x"}}),
            reader.delete(f"/rest/api/3/issue/{issue['key']}"),
            reader.post(f"/rest/api/3/issue/{issue['key']}/comment", json={"body": text_to_adf("x")}),
            reader.post(f"/rest/api/3/issue/{issue['key']}/transitions", json={"transition": {"id": "21"}}),
        ]  # fmt: skip
        assert [w.status_code for w in writes] == [403] * 4


# ---- metadata ------------------------------------------------------------------------------


def test_project_by_key_or_id(client: httpx.Client, server: RunningEmulator) -> None:
    project = client.get("/rest/api/3/project/DQ").json()
    assert {k: project[k] for k in ("id", "key", "name", "projectTypeKey", "self")} == {
        "id": "10000",
        "key": "DQ",
        "name": "Data Quality",
        "projectTypeKey": "software",
        "self": f"{server.url}/rest/api/3/project/10000",
    }
    assert [t["name"] for t in project["issueTypes"]] == ["Task", "Bug"]
    sd = client.get("/rest/api/3/project/10001").json()
    assert (sd["key"], sd["projectTypeKey"]) == ("SD", "service_desk")


def test_unknown_project_is_404(client: httpx.Client) -> None:
    response = client.get("/rest/api/3/project/NOPE")
    assert response.status_code == 404
    assert response.json() == {
        "errorMessages": ["No project could be found with key 'NOPE'."],
        "errors": {},
    }


def test_service_desk_listing(client: httpx.Client) -> None:
    listing = client.get("/rest/servicedeskapi/servicedesk").json()
    assert {k: listing[k] for k in ("size", "start", "limit", "isLastPage")} == {
        "size": 1,
        "start": 0,
        "limit": 50,
        "isLastPage": True,
    }
    desk = listing["values"][0]
    assert {k: desk[k] for k in ("id", "projectId", "projectName", "projectKey")} == {
        "id": "1",
        "projectId": "10001",
        "projectName": "Service Desk",
        "projectKey": "SD",
    }


def test_configured_projects() -> None:
    projects = [Project("OPS", "Operations"), Project("HD", "Help", "service_desk")]
    emulator = JiraEmulator(projects=projects)
    created = emulator.seed_issues(1, project="HD")
    assert (created[0]["key"], created[0]["status"]) == ("HD-1", "Waiting for support")
    assert emulator.seed_issues(1, project="OPS")[0]["issuetype"] == "Task"


# ---- issues --------------------------------------------------------------------------------


def test_create_then_get_has_documented_shape(
    client: httpx.Client, server: RunningEmulator, emulator: JiraEmulator
) -> None:
    description = text_to_adf("Row counts differ\nbetween source and target")
    created = create(
        client,
        summary="Nightly load failed",
        description=description,
        priority={"name": "High"},
        labels=["etl", "nightly"],
        assignee={"accountId": JOHN.account_id},
    )
    assert created == {
        "id": "10000",
        "key": "DQ-1",
        "self": f"{server.url}/rest/api/3/issue/10000",
    }
    issue = client.get("/rest/api/3/issue/DQ-1").json()
    assert (issue["id"], issue["key"], issue["self"]) == ("10000", "DQ-1", created["self"])
    fields = issue["fields"]
    assert fields["summary"] == "Nightly load failed"
    assert fields["description"] == description
    assert fields["status"]["name"] == "To Do"
    assert fields["status"]["id"] == "10000"
    assert {k: fields["status"]["statusCategory"][k] for k in ("id", "key", "name", "colorName")} == {
        "id": 2, "key": "new", "name": "To Do", "colorName": "blue-gray",
    }  # fmt: skip
    assert {k: fields["priority"][k] for k in ("id", "name")} == {"id": "2", "name": "High"}
    assert fields["labels"] == ["etl", "nightly"]
    assignee = fields["assignee"]
    assert (assignee["accountId"], assignee["displayName"]) == (JOHN.account_id, "John Doe")
    assert (assignee["emailAddress"], assignee["active"]) == (JOHN.email, True)
    assert fields["reporter"]["accountId"] == fields["creator"]["accountId"] == ADMIN_ACCOUNT_ID
    assert TIMESTAMP.match(fields["created"])
    assert fields["created"] == fields["updated"]
    assert {k: fields["issuetype"][k] for k in ("id", "name")} == {"id": "10001", "name": "Task"}
    assert {k: fields["project"][k] for k in ("id", "key", "name", "projectTypeKey")} == {
        "id": "10000", "key": "DQ", "name": "Data Quality", "projectTypeKey": "software",
    }  # fmt: skip
    assert fields["comment"] == {
        "comments": [],
        "self": f"{server.url}/rest/api/3/issue/10000/comment",
        "maxResults": 0,
        "total": 0,
        "startAt": 0,
    }
    assert (fields["resolution"], fields["resolutiondate"]) == (None, None)
    stored = emulator.issues[0]
    assert (stored["key"], stored["assignee"], stored["priority"]) == (
        "DQ-1",
        JOHN.account_id,
        "High",
    )


def test_keys_count_per_project_and_ids_globally(client: httpx.Client) -> None:
    first = create(client)
    incident = create(client, project={"key": "SD"}, issuetype={"name": "[System] Incident"})
    second = create(client, project={"id": "10000"}, issuetype={"id": "10002"})
    assert [first["key"], incident["key"], second["key"]] == ["DQ-1", "SD-1", "DQ-2"]
    assert [first["id"], incident["id"], second["id"]] == ["10000", "10001", "10002"]
    fields = client.get(f"/rest/api/3/issue/{incident['id']}").json()["fields"]
    assert fields["status"]["name"] == "Waiting for support"
    assert fields["priority"]["name"] == "Medium"  # the default


def test_issue_lookup_by_id_and_case_insensitive_key(client: httpx.Client) -> None:
    created = create(client)
    assert client.get(f"/rest/api/3/issue/{created['id']}").json()["key"] == "DQ-1"
    assert client.get("/rest/api/3/issue/dq-1").json()["id"] == created["id"]


@pytest.mark.parametrize(
    ("fields", "errors"),
    [
        ({"summary": None}, {"summary": "You must specify a summary of the issue."}),
        ({"summary": "   "}, {"summary": "You must specify a summary of the issue."}),
        ({"project": {"key": "NOPE"}}, {"project": "valid project is required"}),
        ({"priority": {"name": "Urgent"}}, {"priority": "The priority selected is invalid."}),
        (
            {"labels": ["two words"]},
            {"labels": "The label 'two words' contains spaces which is invalid."},
        ),
        ({"issuetype": {"name": "Epic"}}, {"issuetype": "The issue type selected is invalid."}),
        ({"issuetype": None}, {"issuetype": "Specify an issue type"}),
        (
            {"description": "plain text"},
            {
                "description": "Operation value must be an Atlassian Document "
                "(see the Atlassian Document Format)"
            },
        ),
        (
            {"customfield_10010": "x"},
            {
                "customfield_10010": "Field 'customfield_10010' cannot be set. "
                "It is not on the appropriate screen, or unknown."
            },
        ),
        ({"assignee": {"accountId": "nobody"}}, {"assignee": "Specify a valid value for assignee"}),
        (
            {"summary": None, "priority": {"id": "99"}},
            {
                "summary": "You must specify a summary of the issue.",
                "priority": "The priority selected is invalid.",
            },
        ),
    ],
)
def test_create_validation_is_400(
    client: httpx.Client,
    emulator: JiraEmulator,
    fields: dict[str, Any],
    errors: dict[str, str],
) -> None:
    body = {"project": {"key": "DQ"}, "issuetype": {"name": "Task"}, "summary": "ok", **fields}
    body = {k: v for k, v in body.items() if v is not None}
    response = client.post("/rest/api/3/issue", json={"fields": body})
    assert response.status_code == 400
    assert response.json() == {"errorMessages": [], "errors": errors}
    assert emulator.issues == []


def test_refused_create_burns_no_key(client: httpx.Client) -> None:
    client.post("/rest/api/3/issue", json={"fields": {"project": {"key": "DQ"}}})
    assert create(client)["key"] == "DQ-1"


def test_malformed_json_is_400(client: httpx.Client) -> None:
    response = client.post(
        "/rest/api/3/issue", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["errorMessages"] == [
        "Invalid request payload. Refer to the REST API documentation and try again."
    ]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ("summary,status", {"summary", "status"}),
        ("summary&fields=labels", {"summary", "labels"}),
        ("*all,-comment,-description", "all-but"),
        ("-comment", "all-but"),
        ("nosuchfield", set()),
    ],
)
def test_fields_parameter_selects_fields(
    client: httpx.Client, fields: str, expected: set[str] | str
) -> None:
    create(client)
    everything = set(client.get("/rest/api/3/issue/DQ-1").json()["fields"])
    issue = client.get(f"/rest/api/3/issue/DQ-1?fields={fields}").json()
    if expected == "all-but":
        excluded = {part[1:] for part in fields.split(",") if part.startswith("-")}
        expected = everything - excluded
    assert set(issue["fields"]) == expected
    assert issue["key"] == "DQ-1"


def test_edit_fields_and_label_updates(client: httpx.Client) -> None:
    create(client, labels=["etl", "old"])
    before = client.get("/rest/api/3/issue/DQ-1").json()["fields"]
    body = {
        "fields": {
            "summary": "Renamed",
            "description": text_to_adf("New text"),
            "priority": {"id": "1"},
            "assignee": {"accountId": JOHN.account_id},
        },
        "update": {"labels": [{"add": "triaged"}, {"remove": "old"}]},
    }
    response = client.put("/rest/api/3/issue/DQ-1", json=body)
    assert response.status_code == 204
    assert response.content == b""
    after = client.get("/rest/api/3/issue/DQ-1").json()["fields"]
    assert after["summary"] == "Renamed"
    assert after["description"] == text_to_adf("New text")
    assert after["priority"]["name"] == "Highest"
    assert after["labels"] == ["etl", "triaged"]
    assert after["assignee"]["accountId"] == JOHN.account_id
    assert after["created"] == before["created"]
    assert after["updated"] >= before["updated"]


def test_edit_unassign_and_set_verbs(client: httpx.Client) -> None:
    create(client, assignee={"accountId": JOHN.account_id}, labels=["a"])
    update = {"summary": [{"set": "Via update"}], "labels": [{"set": ["x", "y"]}]}
    assert (
        client.put("/rest/api/3/issue/DQ-1", json={"fields": {"assignee": None}}).status_code == 204
    )
    assert client.put("/rest/api/3/issue/DQ-1", json={"update": update}).status_code == 204
    fields = client.get("/rest/api/3/issue/DQ-1").json()["fields"]
    assert (fields["assignee"], fields["summary"], fields["labels"]) == (
        None,
        "Via update",
        ["x", "y"],
    )


def test_refused_edit_changes_nothing(client: httpx.Client) -> None:
    create(client, summary="Original")
    body = {"fields": {"summary": "Changed", "priority": {"name": "Bogus"}}}
    response = client.put("/rest/api/3/issue/DQ-1", json=body)
    assert response.status_code == 400
    assert response.json() == {
        "errorMessages": [],
        "errors": {"priority": "The priority selected is invalid."},
    }
    project = client.put("/rest/api/3/issue/DQ-1", json={"fields": {"project": {"key": "SD"}}})
    assert "cannot be set" in project.json()["errors"]["project"]
    assert client.get("/rest/api/3/issue/DQ-1").json()["fields"]["summary"] == "Original"


def test_delete(client: httpx.Client, emulator: JiraEmulator) -> None:
    create(client)
    assert client.delete("/rest/api/3/issue/DQ-1").status_code == 204
    assert client.get("/rest/api/3/issue/DQ-1").status_code == 404
    assert emulator.issues == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/rest/api/3/issue/DQ-99"),
        ("GET", "/rest/api/3/issue/99999"),
        ("PUT", "/rest/api/3/issue/DQ-99"),
        ("DELETE", "/rest/api/3/issue/DQ-99"),
        ("GET", "/rest/api/3/issue/DQ-99/transitions"),
        ("POST", "/rest/api/3/issue/DQ-99/transitions"),
        ("GET", "/rest/api/3/issue/DQ-99/comment"),
        ("POST", "/rest/api/3/issue/DQ-99/comment"),
    ],
)
def test_missing_issue_is_404(client: httpx.Client, method: str, path: str) -> None:
    body: dict[str, Any] | None = None if method in ("GET", "DELETE") else {}
    response = client.request(method, path, json=body)
    assert response.status_code == 404
    assert response.json() == NOT_FOUND


# ---- transitions ---------------------------------------------------------------------------


def test_transitions_list_other_statuses(client: httpx.Client) -> None:
    create(client)
    transitions = client.get("/rest/api/3/issue/DQ-1/transitions").json()["transitions"]
    assert [(t["id"], t["name"], t["to"]["name"]) for t in transitions] == [
        ("21", "In Progress", "In Progress"),
        ("31", "Done", "Done"),
    ]
    done = transitions[1]["to"]
    assert (done["id"], done["statusCategory"]["key"]) == ("10001", "done")


def test_transition_changes_status_and_resolution(client: httpx.Client) -> None:
    create(client)
    response = client.post("/rest/api/3/issue/DQ-1/transitions", json={"transition": {"id": "31"}})
    assert response.status_code == 204
    fields = client.get("/rest/api/3/issue/DQ-1").json()["fields"]
    assert fields["status"]["name"] == "Done"
    assert fields["resolution"]["name"] == "Done"
    assert TIMESTAMP.match(fields["resolutiondate"])
    ids = [t["id"] for t in client.get("/rest/api/3/issue/DQ-1/transitions").json()["transitions"]]
    assert ids == ["11", "21"]
    client.post("/rest/api/3/issue/DQ-1/transitions", json={"transition": {"id": "11"}})
    fields = client.get("/rest/api/3/issue/DQ-1").json()["fields"]
    assert (fields["status"]["name"], fields["resolution"]) == ("To Do", None)


def test_transition_with_comment_update(client: httpx.Client, emulator: JiraEmulator) -> None:
    create(client)
    body = {
        "transition": {"id": "31"},
        "update": {"comment": [{"add": {"body": text_to_adf("Fixed upstream")}}]},
    }
    assert client.post("/rest/api/3/issue/DQ-1/transitions", json=body).status_code == 204
    assert [c["text"] for c in emulator.comments("DQ-1")] == ["Fixed upstream"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"transition": {"id": "99"}}, "Transition id '99' is not valid for this issue."),
        ({"transition": {"id": "11"}}, "Transition id '11' is not valid for this issue."),
        ({}, "'transition' identifier must be specified."),
    ],
)
def test_invalid_transition_is_400(
    client: httpx.Client, body: dict[str, Any], message: str
) -> None:
    create(client)  # in To Do, so 11 (to To Do) is not offered
    response = client.post("/rest/api/3/issue/DQ-1/transitions", json=body)
    assert response.status_code == 400
    assert response.json() == {"errorMessages": [message], "errors": {}}


def test_service_desk_workflow(client: httpx.Client) -> None:
    create(client, project={"key": "SD"}, issuetype={"name": "[System] Incident"})
    transitions = client.get("/rest/api/3/issue/SD-1/transitions").json()["transitions"]
    assert [(t["id"], t["name"]) for t in transitions] == [
        ("21", "In Progress"),
        ("31", "Resolved"),
    ]


# ---- comments ------------------------------------------------------------------------------


def test_comment_shape(client: httpx.Client, server: RunningEmulator) -> None:
    create(client)
    body = text_to_adf("First line\nSecond line")
    response = client.post("/rest/api/3/issue/DQ-1/comment", json={"body": body})
    assert response.status_code == 201
    comment = response.json()
    assert comment["self"] == f"{server.url}/rest/api/3/issue/10000/comment/{comment['id']}"
    assert comment["body"] == body
    assert comment["author"]["accountId"] == ADMIN_ACCOUNT_ID
    assert comment["updateAuthor"]["accountId"] == ADMIN_ACCOUNT_ID
    assert TIMESTAMP.match(comment["created"])
    assert comment["created"] == comment["updated"]
    assert comment["jsdPublic"] is True
    assert not {"visibility", "properties"} & set(comment)
    embedded = client.get("/rest/api/3/issue/DQ-1?fields=comment").json()["fields"]["comment"]
    assert embedded["comments"] == [comment]
    assert embedded["total"] == 1


def test_internal_comment_in_service_desk(client: httpx.Client, emulator: JiraEmulator) -> None:
    create(client, project={"key": "SD"}, issuetype={"name": "[System] Incident"})
    body = {"body": text_to_adf("Agents only"), "properties": INTERNAL}
    comment = client.post("/rest/api/3/issue/SD-1/comment", json=body).json()
    assert comment["jsdPublic"] is False
    public = client.post("/rest/api/3/issue/SD-1/comment", json={"body": text_to_adf("Hi")}).json()
    assert public["jsdPublic"] is True
    stored = emulator.comments("SD-1")
    assert [(c["text"], c["internal"], c["jsdPublic"]) for c in stored] == [
        ("Agents only", True, False),
        ("Hi", False, True),
    ]


def test_internal_property_outside_service_desk_is_stored(
    client: httpx.Client, emulator: JiraEmulator
) -> None:
    create(client)
    visibility = {"type": "role", "value": "Administrators"}
    body = {"body": text_to_adf("Note"), "properties": INTERNAL, "visibility": visibility}
    comment = client.post("/rest/api/3/issue/DQ-1/comment?expand=properties", json=body).json()
    assert comment["jsdPublic"] is True  # there is no service desk to hide it from
    assert comment["properties"] == INTERNAL
    assert comment["visibility"] == visibility
    assert emulator.comments("DQ-1")[0]["internal"] is True


def test_list_comments_pages_and_orders(client: httpx.Client, emulator: JiraEmulator) -> None:
    create(client)
    for n in range(5):
        client.post("/rest/api/3/issue/DQ-1/comment", json={"body": text_to_adf(f"c{n}")})
    page = client.get("/rest/api/3/issue/DQ-1/comment?startAt=1&maxResults=2").json()
    assert {k: page[k] for k in ("startAt", "maxResults", "total")} == {
        "startAt": 1,
        "maxResults": 2,
        "total": 5,
    }
    texts = [c["body"]["content"][0]["content"][0]["text"] for c in page["comments"]]
    assert texts == ["c1", "c2"]
    newest = client.get("/rest/api/3/issue/DQ-1/comment?orderBy=-created&maxResults=1").json()
    assert newest["comments"][0]["body"] == text_to_adf("c4")
    assert [c["text"] for c in emulator.comments("10000")] == [f"c{n}" for n in range(5)]


def test_list_comments_expands_properties(client: httpx.Client) -> None:
    create(client)
    keyed = [{"key": "ticketing.idempotency", "value": {"key": "k-1"}}, *INTERNAL]
    client.post("/rest/api/3/issue/DQ-1/comment", json={"body": text_to_adf("a")})
    client.post(
        "/rest/api/3/issue/DQ-1/comment", json={"body": text_to_adf("b"), "properties": keyed}
    )
    plain = client.get("/rest/api/3/issue/DQ-1/comment").json()["comments"]
    assert not any("properties" in comment for comment in plain)
    listed = client.get("/rest/api/3/issue/DQ-1/comment?orderBy=-created&expand=properties")
    assert [c["properties"] for c in listed.json()["comments"]] == [keyed, []]


@pytest.mark.parametrize(
    ("properties", "message"),
    [
        ([{"value": {}}], "The property key cannot be empty."),
        (
            [{"key": "k" * 256, "value": {}}],
            "The property key cannot be longer than 255 characters.",
        ),
        (
            [{"key": "k", "value": {"v": "x" * 32768}}],
            "The property value cannot be longer than 32768 characters.",
        ),
        (
            {"key": "k"},
            "Invalid request payload. Refer to the REST API documentation and try again.",
        ),
    ],
)
def test_invalid_comment_property_is_400(
    client: httpx.Client, emulator: JiraEmulator, properties: Any, message: str
) -> None:
    create(client)
    body = {"body": text_to_adf("x"), "properties": properties}
    response = client.post("/rest/api/3/issue/DQ-1/comment", json=body)
    assert response.status_code == 400
    assert response.json()["errorMessages"] == [message]
    assert emulator.comments("DQ-1") == []


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, {"errorMessages": [], "errors": {"comment": "Comment body can not be empty!"}}),
        (
            {"body": "plain"},
            {
                "errorMessages": [
                    "Operation value must be an Atlassian Document "
                    "(see the Atlassian Document Format)"
                ],
                "errors": {},
            },
        ),
    ],
)
def test_invalid_comment_is_400(
    client: httpx.Client, body: dict[str, Any], expected: dict[str, Any]
) -> None:
    create(client)
    response = client.post("/rest/api/3/issue/DQ-1/comment", json=body)
    assert response.status_code == 400
    assert response.json() == expected


def test_comment_bumps_issue_updated(client: httpx.Client, emulator: JiraEmulator) -> None:
    create(client)
    client.post("/rest/api/3/issue/DQ-1/comment", json={"body": text_to_adf("x")})
    stored = emulator.issues[0]
    assert stored["updated"] >= stored["created"]
    assert stored["updated"] == emulator.comments("DQ-1")[0]["created"]


def test_python_comments_of_unknown_issue_raises(emulator: JiraEmulator) -> None:
    with pytest.raises(KeyError):
        emulator.comments("DQ-404")


def test_seed_issues(emulator: JiraEmulator) -> None:
    seeded = emulator.seed_issues(
        2,
        summary="Check {i}",
        description="Line {i}",
        labels=["seeded"],
        priority="Low",
        assignee="john.doe@example.com",
        status="Done",
    )
    assert [s["key"] for s in seeded] == ["DQ-1", "DQ-2"]
    assert [s["summary"] for s in seeded] == ["Check 1", "Check 2"]
    first = seeded[0]
    assert first["description"] == text_to_adf("Line 1")
    assert (first["priority"], first["labels"], first["status"]) == ("Low", ["seeded"], "Done")
    assert (first["assignee"], first["resolution"]) == (JOHN.account_id, "Done")
    assert emulator.issues == seeded
