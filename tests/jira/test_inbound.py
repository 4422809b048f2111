"""Inbound sync on the Jira provider: the poll, batch reads, journals, states and webhooks."""

from __future__ import annotations

import contextlib
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jira_emulator import ADMIN_ACCOUNT_ID, JiraEmulator, RunningEmulator
from ticketing_jira import JiraProvider
from ticketing_jira.inbound import PollCursor, jql_time, read_notice

from ticketing_core.errors import InvalidInput
from ticketing_core.hookspecs import InboundProvider
from ticketing_core.models import Notice, TicketChanges, TicketDraft, TicketStatus
from ticketing_core.notifications import HUB_SHA256, verify

from .conftest import BASIC_TOKEN, JOHN, NEWFOUNDLAND_TOKEN, Receiver

SECRET = "webhook-secret"
DRAFT = TicketDraft(title="Nulls in customer_email", description="150 nulls")


def api_calls(emulator: JiraEmulator, path_part: str) -> int:
    return sum(path_part in request["path"] for request in emulator.requests)


def poll(provider: JiraProvider, cursor: str, **options: Any) -> tuple[list[str], str, int]:
    """Every page from ``cursor`` until none follows: the keys listed, the cursor, the pages."""
    keys, pages, more = [], 0, True
    while more:
        page = provider.changed_since(cursor, **options)
        keys += [ticket.number for ticket in page.tickets]
        cursor, more, pages = page.cursor, page.more, pages + 1
    return keys, cursor, pages


def test_the_provider_declares_inbound_sync(provider: JiraProvider) -> None:
    assert isinstance(provider, InboundProvider)
    assert provider.capabilities.inbound_sync is True
    assert provider.capabilities.notification_signature == HUB_SHA256


# ---- own user and states -----------------------------------------------------------------


def test_own_user_is_the_account_id_read_once(
    provider: JiraProvider, emulator: JiraEmulator
) -> None:
    assert [provider.own_user() for _ in range(3)] == [ADMIN_ACCOUNT_ID] * 3
    assert api_calls(emulator, "/myself") == 1


def test_states_come_from_the_project(provider: JiraProvider, server: RunningEmulator) -> None:
    assert provider.states() == (
        TicketStatus("10000", "To Do"),
        TicketStatus("3", "In Progress"),
        TicketStatus("10001", "Done"),
    )
    with JiraProvider(api_url=server.url, api_access_token=BASIC_TOKEN, project="SD") as sd:
        assert [state.label for state in sd.states()] == [
            "Waiting for support",
            "In Progress",
            "Resolved",
        ]


def test_states_are_read_once_and_again_when_an_issue_shows_another(
    provider: JiraProvider, emulator: JiraEmulator
) -> None:
    states = provider.states()
    assert provider.states() == states
    assert api_calls(emulator, "/statuses") == 1

    created = provider.create(DRAFT)
    provider.get(created.id)  # a status among them: nothing to read again
    assert provider.states() == states
    assert api_calls(emulator, "/statuses") == 1

    provider._states = states[1:]  # read before "To Do" was added to the workflow
    provider.get(created.id)
    assert provider.states() == states
    assert provider.states(refresh=True) == states
    assert api_calls(emulator, "/statuses") == 3


# ---- reading tickets ------------------------------------------------------------------------


def test_get_many_reads_revision_and_who_changed_last(
    provider: JiraProvider, emulator: JiraEmulator
) -> None:
    first, second, third = emulator.seed_issues(3)
    emulator.act_as(JOHN.email, second["key"], status="In Progress")
    emulator.act_as(JOHN.email, third["key"], fields={"summary": "Edited by John"})
    emulator.act_as(ADMIN_ACCOUNT_ID, third["key"], comment="Admin has the last word")
    before = len(emulator.requests)
    tickets = provider.get_many([first["id"], second["id"], third["id"], "99999"])
    assert len(emulator.requests) == before + 1
    assert [t.number for t in tickets] == [first["key"], second["key"], third["key"]]
    assert [t.updated_by for t in tickets] == [ADMIN_ACCOUNT_ID, JOHN.account_id, ADMIN_ACCOUNT_ID]
    for ticket, stored in zip(tickets, emulator.issues, strict=True):
        assert ticket.revision == epoch_ms(stored["updated"])
    assert tickets[1].status == "In Progress"


def test_every_read_of_one_issue_names_who_changed_it_last(
    provider: JiraProvider, emulator: JiraEmulator
) -> None:
    own = provider.own_user()
    created = provider.create(DRAFT)
    updated = provider.update(created.id, TicketChanges(title="Own change"))
    assert (created.updated_by, updated.updated_by) == (own, own)
    emulator.act_as(JOHN.email, created.number, comment="John's turn")
    assert provider.get(created.id).updated_by == JOHN.account_id
    assert provider.find(created.number).updated_by == JOHN.account_id


def test_get_many_refuses_more_than_100_and_bad_ids(provider: JiraProvider) -> None:
    with pytest.raises(InvalidInput, match="at most 100"):
        provider.get_many([str(10000 + n) for n in range(101)])
    with pytest.raises(InvalidInput, match="not a Jira issue id"):
        provider.get_many(["DQ-1"])
    assert provider.get_many([]) == []


def test_revision_rises_with_every_change(provider: JiraProvider, emulator: JiraEmulator) -> None:
    [issue] = emulator.seed_issues(1)
    revisions = [provider.get(issue["id"]).revision]
    for n in range(3):
        emulator.act_as(JOHN.email, issue["key"], comment=f"note {n}")
        revisions.append(provider.get(issue["id"]).revision)
    assert revisions == sorted(set(revisions))


def test_journal_since_lists_comments_oldest_first(
    server: RunningEmulator, emulator: JiraEmulator
) -> None:
    [issue] = emulator.seed_issues(1, project="SD")
    emulator.act_as(JOHN.email, issue["key"], comment="First, public")
    emulator.act_as(JOHN.email, issue["key"], comment="Second, internal", internal=True)
    emulator.act_as(ADMIN_ACCOUNT_ID, issue["key"], comment="Third")
    stored = emulator.comments(issue["id"])
    with JiraProvider(api_url=server.url, api_access_token=BASIC_TOKEN, project="SD") as sd:
        entries = sd.journal_since(issue["id"], None)
        assert [(e.text, e.kind, e.author) for e in entries] == [
            ("First, public", "comment", JOHN.account_id),
            ("Second, internal", "work_note", JOHN.account_id),
            ("Third", "comment", ADMIN_ACCOUNT_ID),
        ]
        assert [e.id for e in entries] == [c["id"] for c in stored]
        assert {e.ticket_id for e in entries} == {issue["id"]}
        second_created = entries[1].created_at
        assert [e.text for e in sd.journal_since(issue["id"], second_created)] == [
            "Second, internal",
            "Third",
        ]
        assert sd.journal_since(issue["id"], second_created + timedelta(days=1)) == []


# ---- the reconciling poll ---------------------------------------------------------------------


def test_a_poll_starts_at_the_newest_change_and_lists_what_changed(
    provider: JiraProvider, emulator: JiraEmulator
) -> None:
    _, second, _ = emulator.seed_issues(3)
    start = provider.changed_since(None)
    assert (start.tickets, start.more) == ((), False)
    emulator.act_as(JOHN.email, second["key"], status="Done")
    page = provider.changed_since(start.cursor)
    changed = {t.number: t for t in page.tickets}
    # Unchanged issues may be listed again (JQL has minute resolution); the change must be.
    assert second["key"] in changed
    assert changed[second["key"]].updated_by == JOHN.account_id
    assert changed[second["key"]].status == "Done"
    assert page.more is False
    revisions = [t.revision or 0 for t in page.tickets]
    assert revisions == sorted(revisions)


def test_a_poll_pages_with_one_request_per_page(
    provider: JiraProvider, emulator: JiraEmulator
) -> None:
    provider.own_user()  # the host reads it first, for echoes; the poll needs its time zone
    emulator.seed_issues(1000)
    before = len(emulator.requests)
    keys, cursor, pages = poll(provider, PollCursor(0).encode(), limit=10)
    assert len(set(keys)) == len(keys) == 1000
    assert pages == 100
    assert len(emulator.requests) - before == 101  # the newest change, then 100 pages
    assert PollCursor.decode(cursor).between_passes


def test_issues_changed_during_a_pass_are_not_missed(
    provider: JiraProvider, emulator: JiraEmulator
) -> None:
    """Page 1 lists DQ-1 and DQ-2; then DQ-1 changes (moving to the end of an updated order)
    and DQ-4 changes: page 2 still starts at DQ-3, and the next pass lists both changes."""
    issues = emulator.seed_issues(5)
    first = provider.changed_since(PollCursor(0).encode(), limit=2)
    assert [t.number for t in first.tickets] == ["DQ-1", "DQ-2"]
    emulator.act_as(JOHN.email, issues[0]["key"], comment="moved")
    emulator.act_as(JOHN.email, issues[3]["key"], comment="moved too")
    keys, cursor, _ = poll(provider, first.cursor, limit=2)
    assert keys == ["DQ-3", "DQ-4", "DQ-5"]
    again, _, _ = poll(provider, cursor, limit=2)
    assert {"DQ-1", "DQ-4"} <= set(again)


def test_overlap_lists_recent_changes_again(provider: JiraProvider, emulator: JiraEmulator) -> None:
    [issue] = emulator.seed_issues(1)
    cursor = provider.changed_since(None).cursor
    emulator.act_as(JOHN.email, issue["key"], comment="once")
    listed, cursor, _ = poll(provider, cursor)
    assert listed == [issue["key"]]
    assert poll(provider, cursor, overlap=120)[0] == [issue["key"]]


def test_the_poll_writes_jql_dates_in_the_accounts_time_zone(
    server: RunningEmulator, emulator: JiraEmulator
) -> None:
    """Newfoundland is behind UTC: a date written as UTC would be read hours later and miss."""
    [issue] = emulator.seed_issues(1)
    with JiraProvider(api_url=server.url, api_access_token=NEWFOUNDLAND_TOKEN) as local:
        cursor = local.changed_since(None).cursor
        emulator.act_as(JOHN.email, issue["key"], status="In Progress")
        assert poll(local, cursor)[0] == [issue["key"]]


@pytest.mark.parametrize("cursor", ["", "jira1:x:1:0", "jira2:1::0", "jira1:1::0 ", "1"])
def test_a_cursor_not_ours_is_refused(provider: JiraProvider, cursor: str) -> None:
    with pytest.raises(InvalidInput, match="not a cursor"):
        provider.changed_since(cursor)


@pytest.mark.parametrize("options", [{"limit": 0}, {"limit": 101}, {"overlap": -1.0}])
def test_poll_options_out_of_range_are_refused(
    provider: JiraProvider, options: dict[str, Any]
) -> None:
    with pytest.raises(InvalidInput):
        provider.changed_since(PollCursor(0).encode(), **options)


# ---- JQL dates --------------------------------------------------------------------------------

NEW_YORK = ZoneInfo("America/New_York")


def test_jql_time_rounds_down_to_the_minute_in_the_zone() -> None:
    instant = datetime(2026, 7, 1, 12, 34, 56, 789000, tzinfo=UTC)
    assert jql_time(epoch_ms_of(instant), NEW_YORK) == "2026-07-01 08:34"
    assert jql_time(epoch_ms_of(instant), ZoneInfo("Asia/Kolkata")) == "2026-07-01 18:04"


def test_jql_time_never_names_a_time_jira_could_read_as_later() -> None:
    """On 2026-11-01 New York's clocks go from 02:00 EDT back to 01:00 EST, so 01:30 happens
    twice. In the first 01:30 the later reading would skip an hour: an hour earlier is named."""
    first_pass = datetime(2026, 11, 1, 5, 30, 20, tzinfo=UTC)  # 01:30:20 EDT
    second_pass = datetime(2026, 11, 1, 6, 30, 20, tzinfo=UTC)  # 01:30:20 EST
    assert jql_time(epoch_ms_of(first_pass), NEW_YORK) == "2026-11-01 00:30"
    assert jql_time(epoch_ms_of(second_pass), NEW_YORK) == "2026-11-01 01:30"


@given(
    instant=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2060, 1, 1), timezones=st.just(UTC)
    ),
    zone=st.sampled_from(
        ["UTC", "America/New_York", "America/St_Johns", "Australia/Lord_Howe", "Asia/Kolkata"]
    ),
)
def test_jql_time_is_at_or_before_the_instant_and_close(instant: datetime, zone: str) -> None:
    tz = ZoneInfo(zone)
    wall = datetime.strptime(jql_time(epoch_ms_of(instant), tz), "%Y-%m-%d %H:%M")
    readings = [wall.replace(tzinfo=tz, fold=fold).astimezone(UTC) for fold in (0, 1)]
    truncated = instant.replace(microsecond=instant.microsecond // 1000 * 1000)
    assert max(readings) <= truncated
    assert truncated - min(readings) < timedelta(hours=1, minutes=1)


# ---- notifications ----------------------------------------------------------------------------


@pytest.fixture
def hooked(emulator: JiraEmulator, receiver: Receiver) -> Receiver:
    emulator.add_webhook(receiver.url, SECRET, jql="project = DQ")
    return receiver


def test_webhooks_read_as_notices(
    provider: JiraProvider, emulator: JiraEmulator, hooked: Receiver
) -> None:
    [issue] = emulator.seed_issues(1)
    emulator.act_as(JOHN.email, issue["key"], status="Done")
    revision = provider.get(issue["id"]).revision
    emulator.act_as(JOHN.email, issue["key"], comment="Fixed upstream")
    assert emulator.wait_for_webhooks()
    for post in hooked.posts:  # what the host's receiver checks first
        verify(HUB_SHA256, [SECRET], post.headers, post.body, time.time())
    notices = [provider.read_notification(post.json()) for post in hooked.posts]
    assert notices[0] == Notice(issue["id"], "update", JOHN.account_id, revision)
    assert [(n.ticket_id, n.event, n.updated_by) for n in notices[1:]] == [
        (issue["id"], "journal", JOHN.account_id),  # jira:issue_updated, issue_commented
        (issue["id"], "journal", JOHN.account_id),  # comment_created
    ]


def test_a_notice_about_another_project_is_refused(
    server: RunningEmulator, emulator: JiraEmulator, receiver: Receiver
) -> None:
    emulator.add_webhook(receiver.url, SECRET)
    [issue] = emulator.seed_issues(1, project="SD")
    emulator.act_as(JOHN.email, issue["key"], comment="Not yours")
    assert emulator.wait_for_webhooks()
    with JiraProvider(api_url=server.url, api_access_token=BASIC_TOKEN) as dq:
        for post in receiver.posts:
            with pytest.raises(InvalidInput, match="project DQ"):
                dq.read_notification(post.json())


VALID_UPDATE = {
    "timestamp": 1767787200000,
    "webhookEvent": "jira:issue_updated",
    "issue_event_type_name": "issue_generic",
    "user": {"accountId": "abc123"},
    "issue": {
        "id": "10042",
        "key": "DQ-7",
        "fields": {"project": {"key": "DQ"}, "updated": "2026-12-07T10:00:00.000+0000"},
    },
    "changelog": {"id": "1", "items": []},
}


def test_a_valid_update_body_reads_fully() -> None:
    notice = read_notice(VALID_UPDATE, "DQ")
    assert notice == Notice("10042", "update", "abc123", 1796637600000)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"webhookEvent": "jira:issue_deleted"}, "webhookEvent"),
        ({"issue": None}, "no issue"),
        ({"issue": {"id": 10042, "key": "DQ-7"}}, "issue.id"),
        ({"issue": {"id": "0", "key": "DQ-7"}}, "issue.id"),
        ({"issue": {"id": "10042", "key": "SD-7"}}, "project DQ"),
        ({"issue": {"id": "10042", "key": "DQ-seven"}}, "project DQ"),
        (
            {"issue": {"id": "10042", "key": "DQ-7", "fields": {"project": {"key": "SD"}}}},
            "project",
        ),
        ({"user": {}}, "user.accountId"),
        (
            {"issue": {"id": "1", "key": "DQ-1", "fields": {"updated": "yesterday"}}},
            "fields.updated",
        ),
    ],
)
def test_a_malformed_body_is_refused_saying_why(change: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        read_notice(VALID_UPDATE | change, "DQ")


def test_a_comment_body_needs_its_author() -> None:
    body = {
        "webhookEvent": "comment_created",
        "issue": {"id": "10042", "key": "DQ-7"},
        "comment": {"id": "1", "author": {"accountId": "abc123"}},
    }
    assert read_notice(body, "DQ") == Notice("10042", "journal", "abc123")
    with pytest.raises(InvalidInput, match=r"comment\.author"):
        read_notice(body | {"comment": {"id": "1"}}, "DQ")
    with pytest.raises(InvalidInput, match="no comment"):
        read_notice({k: v for k, v in body.items() if k != "comment"}, "DQ")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(body=JSON)
def test_any_json_is_read_or_refused_with_invalid_input(body: Any) -> None:
    with contextlib.suppress(InvalidInput):
        read_notice(body, "DQ")


@given(
    path=st.lists(
        st.sampled_from(
            [
                "issue",
                "fields",
                "project",
                "user",
                "comment",
                "key",
                "id",
                "updated",
                "author",
                "accountId",
            ]
        ),
        min_size=1,
        max_size=4,
    ),
    value=JSON,
)
def test_a_valid_body_with_any_part_replaced_is_read_or_refused(
    path: list[str], value: Any
) -> None:
    for event in ("jira:issue_updated", "comment_created"):
        body = json.loads(
            json.dumps(
                VALID_UPDATE | {"webhookEvent": event, "comment": {"author": {"accountId": "x"}}}
            )
        )
        holder = body
        for name in path[:-1]:
            child = holder.get(name) if isinstance(holder, dict) else None
            if not isinstance(child, dict):
                break
            holder = child
        if isinstance(holder, dict):
            holder[path[-1]] = value
        try:
            notice = read_notice(body, "DQ")
        except InvalidInput:
            continue
        assert notice.ticket_id.isdigit()
        assert isinstance(notice.updated_by, str)
        assert notice.updated_by


# ---- set-up -------------------------------------------------------------------------------------


def test_the_setup_text_registers_a_working_webhook(
    provider: JiraProvider, client: httpx.Client, emulator: JiraEmulator, receiver: Receiver
) -> None:
    text = provider.notification_setup(receiver.url, SECRET)
    registration = json.loads(text[text.index("{") : text.rindex("}") + 1])
    assert registration["url"] == receiver.url
    assert registration["secret"] == SECRET
    assert registration["events"] == ["jira:issue_updated", "comment_created"]
    assert registration["filters"] == {"issue-related-events-section": 'project = "DQ"'}
    assert "POST " + provider.api_url + "/rest/webhooks/1.0/webhook" in text
    assert "Settings > System > WebHooks" in text
    assert client.post("/rest/webhooks/1.0/webhook", json=registration).status_code == 201
    [issue] = emulator.seed_issues(1)
    emulator.act_as(JOHN.email, issue["key"], comment="Through the pasted webhook")
    assert emulator.wait_for_webhooks()
    post = receiver.posts[-1]
    verify(HUB_SHA256, [SECRET], post.headers, post.body, time.time())
    assert provider.read_notification(post.json()).ticket_id == issue["id"]


# ---- helpers ----------------------------------------------------------------------------------


def epoch_ms(jira_time: str) -> int:
    return epoch_ms_of(datetime.strptime(jira_time, "%Y-%m-%dT%H:%M:%S.%f%z"))


def epoch_ms_of(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
