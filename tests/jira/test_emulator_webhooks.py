"""The emulator's webhooks: admin registration, what each change posts, signing, delivery."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import httpx
import pytest
from jira_emulator import ADMIN_ACCOUNT_ID, JiraEmulator, text_to_adf

from .conftest import BEARER, JOHN, NEWFOUNDLAND, NEWFOUNDLAND_TOKEN, Receiver

WEBHOOKS = "/rest/webhooks/1.0/webhook"
SECRET = "It's a Secret to Everybody"


def registration(endpoint: str, **overrides: object) -> dict[str, object]:
    return {
        "name": "Ticketing",
        "url": endpoint,
        "events": ["jira:issue_updated", "comment_created"],
        "filters": {"issue-related-events-section": "project = DQ"},
        "excludeBody": False,
        "secret": SECRET,
    } | overrides


def delivered(emulator: JiraEmulator, receiver: Receiver, count: int) -> list[dict[str, object]]:
    assert emulator.wait_for_webhooks()
    assert len(receiver.posts) == count, receiver.events()
    return [post.json() for post in receiver.posts]


# ---- registration --------------------------------------------------------------------------


def test_register_list_and_delete_a_webhook(client: httpx.Client, receiver: Receiver) -> None:
    created = client.post(WEBHOOKS, json=registration(receiver.url))
    assert created.status_code == 201, created.text
    hook = created.json()
    assert hook["self"].endswith(f"{WEBHOOKS}/1")
    assert (hook["name"], hook["url"], hook["enabled"]) == ("Ticketing", receiver.url, True)
    assert hook["filters"] == {"issue-related-events-section": "project = DQ"}
    assert hook["lastUpdatedUser"] == ADMIN_ACCOUNT_ID
    assert "secret" not in hook  # shown never again, as in Jira
    assert client.get(WEBHOOKS).json() == [hook]
    assert client.get(f"{WEBHOOKS}/1").json() == hook
    assert client.delete(f"{WEBHOOKS}/1").status_code == 204
    assert client.get(f"{WEBHOOKS}/1").status_code == 404
    assert client.get(WEBHOOKS).json() == []


def test_only_administrators_manage_webhooks(server: object, receiver: Receiver) -> None:
    base = server.url  # type: ignore[attr-defined]
    headers = {"Authorization": f"Bearer {BEARER}"}
    with httpx.Client(base_url=base, headers=headers) as john:
        response = john.post(WEBHOOKS, json=registration(receiver.url))
        assert response.status_code == 403
        assert response.json()["errorMessages"] == ["Only Jira administrators can manage webhooks."]
        assert john.get(WEBHOOKS).status_code == 403


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"name": " "}, "name"),
        ({"url": "ftp://example.com/hook"}, "url"),
        ({"events": "jira:issue_updated"}, "events"),
        ({"filters": {"issue-related-events-section": "project = NOPE"}}, "filters"),
        ({"filters": "project = DQ"}, "filters"),
        ({"secret": 42}, "secret"),
    ],
)
def test_a_bad_registration_names_the_field(
    client: httpx.Client, receiver: Receiver, overrides: dict[str, object], field: str
) -> None:
    response = client.post(WEBHOOKS, json=registration(receiver.url, **overrides))
    assert response.status_code == 400
    assert list(response.json()["errors"]) == [field]


# ---- what a change posts -------------------------------------------------------------------


def test_an_edit_posts_issue_updated_with_its_changelog_signed(
    client: httpx.Client, emulator: JiraEmulator, receiver: Receiver
) -> None:
    [issue] = emulator.seed_issues(1, summary="Old")
    emulator.add_webhook(receiver.url, SECRET)
    edit = {"fields": {"summary": "New", "priority": {"name": "High"}}}
    assert client.put(f"/rest/api/3/issue/{issue['key']}", json=edit).status_code == 204
    [body] = delivered(emulator, receiver, 1)
    post = receiver.posts[0]
    expected = hmac.new(SECRET.encode(), post.body, hashlib.sha256).hexdigest()
    assert post.headers["X-Hub-Signature"] == f"sha256={expected}"
    assert post.headers["Content-Type"] == "application/json"
    assert post.headers["X-Atlassian-Webhook-Identifier"]
    assert body["webhookEvent"] == "jira:issue_updated"
    assert body["issue_event_type_name"] == "issue_updated"
    assert body["user"]["accountId"] == ADMIN_ACCOUNT_ID  # type: ignore[index]
    assert body["issue"]["id"] == issue["id"]  # type: ignore[index]
    assert body["issue"]["fields"]["summary"] == "New"  # type: ignore[index]
    items = body["changelog"]["items"]  # type: ignore[index]
    assert [(i["field"], i["fromString"], i["toString"]) for i in items] == [
        ("summary", "Old", "New"),
        ("priority", "Medium", "High"),
    ]
    stored = emulator.issues[0]
    assert body["timestamp"] >= _epoch_ms(stored["updated"])  # type: ignore[operator]


def test_a_transition_posts_status_and_resolution(
    client: httpx.Client, emulator: JiraEmulator, receiver: Receiver
) -> None:
    [issue] = emulator.seed_issues(1)
    emulator.add_webhook(receiver.url, SECRET)
    done = {"transition": {"id": "31"}}  # To Do -> Done in the software workflow
    assert client.post(f"/rest/api/3/issue/{issue['id']}/transitions", json=done).status_code == 204
    [body] = delivered(emulator, receiver, 1)
    assert body["issue_event_type_name"] == "issue_generic"
    items = body["changelog"]["items"]  # type: ignore[index]
    assert [(i["field"], i["from"], i["to"]) for i in items] == [
        ("status", "10000", "10001"),
        ("resolution", None, "10000"),
    ]


def test_a_comment_posts_comment_created_and_issue_updated(
    client: httpx.Client, emulator: JiraEmulator, receiver: Receiver
) -> None:
    [issue] = emulator.seed_issues(1)
    emulator.add_webhook(receiver.url, SECRET)
    comment = {"body": text_to_adf("Looked at it")}
    assert client.post(f"/rest/api/3/issue/{issue['id']}/comment", json=comment).status_code == 201
    updated, created = delivered(emulator, receiver, 2)
    assert updated["webhookEvent"] == "jira:issue_updated"
    assert updated["issue_event_type_name"] == "issue_commented"
    assert "changelog" not in updated
    assert created["webhookEvent"] == "comment_created"
    assert "user" not in created  # the author is the comment's
    assert created["comment"]["author"]["accountId"] == ADMIN_ACCOUNT_ID  # type: ignore[index]
    assert created["comment"]["body"] == comment["body"]  # type: ignore[index]
    assert created["issue"]["key"] == issue["key"]  # type: ignore[index]
    assert created["comment"] == updated["comment"]


def test_only_the_registered_events_are_posted(
    client: httpx.Client, emulator: JiraEmulator, receiver: Receiver
) -> None:
    [issue] = emulator.seed_issues(1)
    emulator.add_webhook(receiver.url, events=["comment_created"])
    client.put(f"/rest/api/3/issue/{issue['id']}", json={"fields": {"summary": "Changed"}})
    client.post(f"/rest/api/3/issue/{issue['id']}/comment", json={"body": text_to_adf("Hi")})
    delivered(emulator, receiver, 1)
    assert receiver.events() == ["comment_created"]


def test_the_jql_filter_limits_the_issues(
    client: httpx.Client, emulator: JiraEmulator, receiver: Receiver
) -> None:
    [dq] = emulator.seed_issues(1)
    [sd] = emulator.seed_issues(1, project="SD")
    emulator.add_webhook(receiver.url, jql="project = SD")
    for issue in (dq, sd):
        client.put(f"/rest/api/3/issue/{issue['id']}", json={"fields": {"summary": "Changed"}})
    [body] = delivered(emulator, receiver, 1)
    assert body["issue"]["key"] == sd["key"]  # type: ignore[index]


def test_without_a_secret_nothing_is_signed(
    client: httpx.Client, emulator: JiraEmulator, receiver: Receiver
) -> None:
    [issue] = emulator.seed_issues(1)
    emulator.add_webhook(receiver.url)
    client.put(f"/rest/api/3/issue/{issue['id']}", json={"fields": {"summary": "Changed"}})
    delivered(emulator, receiver, 1)
    assert "X-Hub-Signature" not in receiver.posts[0].headers


def test_an_edit_that_changes_nothing_posts_nothing_and_leaves_no_history(
    client: httpx.Client, emulator: JiraEmulator, receiver: Receiver
) -> None:
    [issue] = emulator.seed_issues(1, summary="Same")
    emulator.add_webhook(receiver.url)
    client.put(f"/rest/api/3/issue/{issue['id']}", json={"fields": {"summary": "Same"}})
    delivered(emulator, receiver, 0)
    fetched = client.get(f"/rest/api/3/issue/{issue['id']}", params={"expand": "changelog"})
    assert fetched.json()["changelog"]["histories"] == []


# ---- acting as another account -------------------------------------------------------------


def test_act_as_changes_and_comments_as_that_account(
    emulator: JiraEmulator, receiver: Receiver
) -> None:
    [issue] = emulator.seed_issues(1, project="SD")
    emulator.add_webhook(receiver.url, SECRET, jql="project = SD")
    stored = emulator.act_as(JOHN.email, issue["key"], status="In Progress")
    assert stored["status"] == "In Progress"
    emulator.act_as(JOHN.account_id, issue["key"], comment="Internal note", internal=True)
    status_change, commented, comment_created = delivered(emulator, receiver, 3)
    assert status_change["user"]["accountId"] == JOHN.account_id  # type: ignore[index]
    assert commented["user"]["accountId"] == JOHN.account_id  # type: ignore[index]
    comment = comment_created["comment"]
    assert comment["author"]["accountId"] == JOHN.account_id  # type: ignore[index]
    assert comment["jsdPublic"] is False  # type: ignore[index]
    assert emulator.comments(issue["id"])[0]["internal"] is True


def test_act_as_takes_a_status_id_too(emulator: JiraEmulator) -> None:
    [issue] = emulator.seed_issues(1)
    assert emulator.act_as(JOHN.email, issue["key"], status="10001")["status"] == "Done"


def test_seeded_issues_can_share_one_time(emulator: JiraEmulator) -> None:
    at = datetime(2026, 12, 7, 10, 0, 0, 123456, tzinfo=UTC)
    seeded = emulator.seed_issues(3, at=at)
    assert {(i["created"], i["updated"]) for i in seeded} == {
        ("2026-12-07T10:00:00.123+0000", "2026-12-07T10:00:00.123+0000")
    }


def test_act_as_refuses_unknown_accounts_issues_and_transitions(emulator: JiraEmulator) -> None:
    [issue] = emulator.seed_issues(1)
    with pytest.raises(KeyError):
        emulator.act_as("nobody@example.com", issue["key"], comment="x")
    with pytest.raises(KeyError):
        emulator.act_as(JOHN.email, "DQ-999", comment="x")
    with pytest.raises(ValueError, match="no transition"):
        emulator.act_as(JOHN.email, issue["key"], status="To Do")  # where it is already


# ---- delivery --------------------------------------------------------------------------------


def test_failed_deliveries_are_dropped_and_counted(
    client: httpx.Client, emulator: JiraEmulator, receiver: Receiver
) -> None:
    [issue] = emulator.seed_issues(1)
    receiver.status = 500
    emulator.add_webhook(receiver.url)
    emulator.add_webhook("http://127.0.0.1:9/unreachable")
    client.put(f"/rest/api/3/issue/{issue['id']}", json={"fields": {"summary": "Changed"}})
    delivered(emulator, receiver, 1)
    assert emulator.stats()["webhook_deliveries"] == {"sent": 0, "failed": 2, "pending": 0}
    receiver.status = 204
    client.put(f"/rest/api/3/issue/{issue['id']}", json={"fields": {"summary": "Again"}})
    delivered(emulator, receiver, 2)  # the failed one was not retried
    assert emulator.stats()["webhook_deliveries"]["sent"] == 1


def test_deliveries_are_posted_outside_the_lock(
    server: object, emulator: JiraEmulator, receiver: Receiver
) -> None:
    """A receiver that reads the issue back while it is being notified (as the host does) gets
    its answer: the post is not made while the site holds its lock."""
    [issue] = emulator.seed_issues(1)
    answers: list[int] = []
    base = server.url  # type: ignore[attr-defined]

    def read_back(_post: object) -> None:
        with httpx.Client(base_url=base, auth=("admin@example.com", "jira-api-token")) as http:
            answers.append(http.get(f"/rest/api/3/issue/{issue['id']}", timeout=3).status_code)

    receiver.on_post = read_back
    emulator.add_webhook(receiver.url)
    emulator.act_as(JOHN.email, issue["key"], comment="Read me back")
    delivered(emulator, receiver, 2)
    assert answers == [200, 200]


# ---- the reads inbound sync relies on ----------------------------------------------------------


def test_updated_rises_with_every_change_and_the_changelog_says_who(
    client: httpx.Client, emulator: JiraEmulator
) -> None:
    [issue] = emulator.seed_issues(1)
    times = [emulator.issues[0]["updated"]]
    for summary in ("One", "Two", "Three"):
        emulator.act_as(JOHN.email, issue["key"], fields={"summary": summary})
        times.append(emulator.issues[0]["updated"])
    assert times == sorted(set(times))
    fetched = client.get(f"/rest/api/3/issue/{issue['id']}", params={"expand": "changelog"})
    changelog = fetched.json()["changelog"]
    assert changelog["total"] == 3
    newest = changelog["histories"][0]  # most recent first, as Jira's expansion
    assert newest["author"]["accountId"] == JOHN.account_id
    assert newest["created"] == times[-1]
    assert newest["items"][0]["toString"] == "Three"


def test_search_expands_the_changelog(client: httpx.Client, emulator: JiraEmulator) -> None:
    [issue] = emulator.seed_issues(1)
    emulator.act_as(JOHN.email, issue["key"], status="Done")
    body = {"jql": "project = DQ", "fields": ["updated"], "expand": "changelog"}
    [hit] = client.post("/rest/api/3/search/jql", json=body).json()["issues"]
    assert hit["changelog"]["histories"][0]["items"][0]["toString"] == "Done"


def test_bulk_fetch_leaves_out_what_is_missing(
    client: httpx.Client, emulator: JiraEmulator
) -> None:
    first, second = emulator.seed_issues(2)
    body = {
        "issueIdsOrKeys": [second["id"], "99999", first["key"], "NOPE-1", second["id"]],
        "fields": ["summary"],
        "expand": ["changelog"],
    }
    response = client.post("/rest/api/3/issue/bulkfetch", json=body)
    assert response.status_code == 200, response.text
    issues = response.json()["issues"]
    assert [issue["key"] for issue in issues] == [second["key"], first["key"]]
    assert set(issues[0]["fields"]) == {"summary"}
    assert issues[0]["changelog"]["histories"] == []
    too_many = {"issueIdsOrKeys": [str(n) for n in range(101)]}
    assert client.post("/rest/api/3/issue/bulkfetch", json=too_many).status_code == 400


def test_project_statuses_list_the_workflow(client: httpx.Client) -> None:
    response = client.get("/rest/api/3/project/SD/statuses")
    assert response.status_code == 200
    by_type = {entry["name"]: [s["name"] for s in entry["statuses"]] for entry in response.json()}
    workflow = ["Waiting for support", "In Progress", "Resolved"]
    assert by_type == {"[System] Incident": workflow, "Task": workflow, "Bug": workflow}
    assert client.get("/rest/api/3/project/NOPE/statuses").status_code == 404


def test_jql_dates_are_read_in_the_callers_time_zone(
    server: object, emulator: JiraEmulator
) -> None:
    emulator.seed_issues(1)
    updated = datetime.strptime(emulator.issues[0]["updated"], "%Y-%m-%dT%H:%M:%S.%f%z")
    local = updated.astimezone(ZoneInfo(NEWFOUNDLAND.time_zone)).strftime("%Y-%m-%d %H:%M")
    in_utc = updated.astimezone(UTC).strftime("%Y-%m-%d %H:%M")
    email, token = NEWFOUNDLAND_TOKEN.split(":")
    with httpx.Client(base_url=server.url, auth=(email, token)) as http:  # type: ignore[attr-defined]
        assert http.get("/rest/api/3/myself").json()["timeZone"] == "America/St_Johns"

        def found(since: str) -> int:
            body = {"jql": f'project = DQ AND updated >= "{since}"', "fields": ["id"]}
            return len(http.post("/rest/api/3/search/jql", json=body).json()["issues"])

        assert (found(local), found(in_utc)) == (1, 0)


def _epoch_ms(jira_time: str) -> int:
    moment = datetime.strptime(jira_time, "%Y-%m-%dT%H:%M:%S.%f%z").astimezone(UTC)
    return int(moment.timestamp() * 1000)
