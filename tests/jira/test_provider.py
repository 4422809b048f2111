"""The Jira provider against the Jira emulator, over real HTTP."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from jira_emulator import DEFAULT_EMAIL, JiraEmulator, RunningEmulator, text_to_adf
from ticketing_jira import JiraProvider
from ticketing_jira import provider as provider_module

from ticketing_core import errors
from ticketing_core.http import call_budget
from ticketing_core.models import SearchQuery, TicketChanges, TicketDraft

from .conftest import BASIC_TOKEN, BEARER, JOHN

DRAFT = TicketDraft(
    title="Data Quality Anomaly - Missing values in customer_email",
    description="150 null values detected\nin customer_email field",
    priority="High",
    urgency="2",
    impact="2",
    category="Data",
    subcategory="Data Quality",
    assigned_to="john.doe",
    assignment_group="Data Engineering",
    external_id="12345",
    external_source="qualytics anomaly",
)
SEARCH = "/rest/api/3/search/jql"
ISSUES = "/rest/api/3/issue"
KEY_PROPERTY = "ticketing.idempotency"
# Faults that let a write commit and then lose its answer: a 504 from a proxy, a 503, no answer.
AFTER_COMMIT = ["drop_after_commit", "503_after_commit", "close_after_commit"]


def connect(server: RunningEmulator, token: str = BASIC_TOKEN, **options: object) -> JiraProvider:
    return JiraProvider(api_url=server.url, api_access_token=token, **options)  # type: ignore[arg-type]


def calls(emulator: JiraEmulator) -> list[tuple[str, str]]:
    return [(r["method"], r["path"]) for r in emulator.requests]


def wait_for_stalled(emulator: JiraEmulator, count: int) -> None:
    """Wait until ``count`` requests are logged: a stalled one answers after the client gave up,
    and must not land in the next test's log."""
    deadline = time.monotonic() + 5
    while len(emulator.requests) < count and time.monotonic() < deadline:
        time.sleep(0.05)


# ---- credentials -------------------------------------------------------------------------------


def test_validate_with_email_and_api_token(provider: JiraProvider, emulator: JiraEmulator) -> None:
    provider.validate()

    assert calls(emulator) == [("GET", "/rest/api/3/myself"), ("GET", "/rest/api/3/project/DQ")]


def test_bearer_token_acts_as_its_account(server: RunningEmulator, emulator: JiraEmulator) -> None:
    jira = connect(server, BEARER)

    jira.validate()
    jira.create(TicketDraft(title="by John", description=""))

    assert emulator.issues[0]["reporter"] == JOHN.account_id


@pytest.mark.parametrize("token", [f"{DEFAULT_EMAIL}:wrong-secret-token", "unknown-bearer-token"])
def test_rejected_credentials_are_401_without_the_secret(
    server: RunningEmulator, emulator: JiraEmulator, token: str
) -> None:
    jira = connect(server, token)

    with pytest.raises(errors.AuthenticationFailed) as caught:
        jira.validate()

    secret = token.partition(":")[2] or token
    assert "You are not authenticated" in str(caught.value)
    assert secret not in str(caught.value)
    assert secret not in repr(jira)


def test_repr_shows_only_url_and_project(server: RunningEmulator) -> None:
    assert repr(connect(server, project="SD")) == (
        f"JiraProvider(api_url={server.url!r}, project='SD')"
    )


def test_unknown_option_is_a_type_error(server: RunningEmulator) -> None:
    with pytest.raises(TypeError):
        connect(server, colour="blue")


# ---- create, get, find -------------------------------------------------------------------------


def test_create_returns_the_issue_as_stored(
    provider: JiraProvider, emulator: JiraEmulator, server: RunningEmulator
) -> None:
    ticket = provider.create(DRAFT)

    assert (ticket.id, ticket.number) == ("10000", "DQ-1")
    assert ticket.title == DRAFT.title
    assert ticket.description == DRAFT.description
    assert (ticket.status, ticket.priority, ticket.assigned_to) == ("To Do", "High", None)
    assert ticket.url == f"{server.url}/browse/DQ-1"
    assert ticket.created_at is not None
    assert ticket.created_at.tzinfo == UTC
    assert abs(ticket.created_at - datetime.now(UTC)) < timedelta(seconds=5)
    assert ticket.extras == {
        "status_category": "new",
        "labels": "qualytics_anomaly-12345,Data,Data_Quality",
    }
    stored = emulator.issues[0]
    assert stored["description"] == text_to_adf(DRAFT.description)
    assert (stored["issuetype"], stored["assignee"]) == ("Task", None)


def test_create_without_priority_or_description_takes_jira_defaults(
    provider: JiraProvider, emulator: JiraEmulator
) -> None:
    ticket = provider.create(TicketDraft(title="Bare", description=""))

    assert (ticket.priority, ticket.description, ticket.extras["labels"]) == ("Medium", "", "")
    assert emulator.issues[0]["description"] is None


def test_create_in_a_service_desk_project(server: RunningEmulator, emulator: JiraEmulator) -> None:
    jira = connect(server, project="SD", issue_type="[System] Incident")

    ticket = jira.create(DRAFT)

    assert (ticket.number, ticket.status) == ("SD-1", "Waiting for support")
    assert emulator.issues[0]["issuetype"] == "[System] Incident"


def test_get_and_find_read_the_same_ticket(provider: JiraProvider) -> None:
    created = provider.create(DRAFT)

    assert provider.get(created.id) == created
    assert provider.find("DQ-1") == created
    assert provider.find(" dq-1 ").id == created.id


def test_missing_or_malformed_references(provider: JiraProvider) -> None:
    provider.create(DRAFT)

    with pytest.raises(errors.NotFound):
        provider.get("10001")
    with pytest.raises(errors.NotFound):
        provider.find("DQ-2")
    with pytest.raises(errors.NotFound, match="not a Jira issue key"):
        provider.find("../myself")
    with pytest.raises(errors.InvalidInput, match="not a Jira issue id"):
        provider.get("DQ-1")  # a key: the CLI then falls back to find


def test_field_errors_are_invalid_input_naming_the_field(
    provider: JiraProvider, emulator: JiraEmulator
) -> None:
    with pytest.raises(errors.InvalidInput, match="priority: The priority selected is invalid"):
        provider.create(TicketDraft(title="t", description="d", priority="Urgent"))
    with pytest.raises(errors.InvalidInput, match="issuetype"):
        provider.create(TicketDraft(title="t", description="d", fields={"issuetype": "x"}))

    assert emulator.issues == []


# ---- idempotent create -------------------------------------------------------------------------


def test_keyed_create_looks_its_key_up_then_posts(
    provider: JiraProvider, emulator: JiraEmulator
) -> None:
    ticket = provider.create(DRAFT, idempotency_key="anomaly 12345 create")

    assert emulator.issues[0]["labels"][0] == "ticketing-key-anomaly_12345_create"
    assert [issue["id"] for issue in emulator.issues] == [ticket.id]
    assert calls(emulator) == [("GET", SEARCH), ("POST", ISSUES), ("GET", f"{ISSUES}/{ticket.id}")]


def test_a_fresh_key_sends_one_post_and_no_search(
    provider: JiraProvider, emulator: JiraEmulator
) -> None:
    ticket = provider.create(DRAFT, idempotency_key="fresh 1", key_is_fresh=True)

    assert emulator.issues[0]["labels"][0] == "ticketing-key-fresh_1"
    assert calls(emulator) == [("POST", ISSUES), ("GET", f"{ISSUES}/{ticket.id}")]


def test_a_key_that_made_an_issue_returns_it_instead_of_making_another(
    provider: JiraProvider, emulator: JiraEmulator
) -> None:
    first = provider.create(DRAFT, idempotency_key="anomaly 12345 create")
    before = len(emulator.requests)

    again = provider.create(DRAFT, idempotency_key="anomaly 12345 create")

    assert again == first
    assert len(emulator.issues) == 1
    assert calls(emulator)[before:] == [("GET", SEARCH)]


def test_retrying_is_deprecated_and_changes_nothing(
    provider: JiraProvider, emulator: JiraEmulator
) -> None:
    first = provider.create(DRAFT, idempotency_key="old caller")

    with pytest.warns(DeprecationWarning, match="retrying"):
        again = provider.create(DRAFT, idempotency_key="old caller", retrying=False)

    assert again == first
    assert len(emulator.issues) == 1


def test_the_same_key_in_another_project_is_another_issue(
    provider: JiraProvider, server: RunningEmulator
) -> None:
    desk = connect(server, project="SD", issue_type="[System] Incident")

    assert provider.create(DRAFT, idempotency_key="k").number == "DQ-1"
    assert desk.create(DRAFT, idempotency_key="k").number == "SD-1"


@pytest.mark.parametrize("fault", AFTER_COMMIT)
def test_lost_create_answer_is_looked_up_instead_of_posting_twice(
    provider: JiraProvider, emulator: JiraEmulator, fault: str
) -> None:
    emulator.add_fault(fault, method="POST")

    ticket = provider.create(DRAFT, idempotency_key="key-after-commit", key_is_fresh=True)

    assert [issue["id"] for issue in emulator.issues] == [ticket.id]
    assert calls(emulator) == [("POST", ISSUES), ("GET", SEARCH)]


def test_create_refused_with_503_before_commit_is_looked_up_then_sent_again(
    provider: JiraProvider, emulator: JiraEmulator
) -> None:
    emulator.add_fault("503", method="POST")  # the emulator refuses before storing anything

    ticket = provider.create(DRAFT, idempotency_key="key-after-503", key_is_fresh=True)

    assert [issue["id"] for issue in emulator.issues] == [ticket.id]
    assert calls(emulator)[:3] == [("POST", ISSUES), ("GET", SEARCH), ("POST", ISSUES)]


@pytest.mark.parametrize("fault", AFTER_COMMIT)
def test_create_without_a_key_is_not_sent_again_after_a_lost_answer(
    provider: JiraProvider, emulator: JiraEmulator, fault: str
) -> None:
    emulator.add_fault(fault, method="POST")

    with pytest.raises(errors.ProviderUnavailable) as caught:
        provider.create(DRAFT)

    assert caught.value.may_have_landed
    assert len(emulator.issues) == 1
    assert calls(emulator) == [("POST", ISSUES)]


def test_overlong_idempotency_key_is_refused(provider: JiraProvider) -> None:
    with pytest.raises(errors.InvalidInput, match="idempotency key"):
        provider.create(DRAFT, idempotency_key="k" * 250)


# ---- search ------------------------------------------------------------------------------------


def test_search_filters_by_text_status_and_priority(
    provider: JiraProvider, emulator: JiraEmulator
) -> None:
    emulator.seed_issues(2, summary="nulls in email {i}", priority="High")
    emulator.seed_issues(1, summary="nulls in phone", priority="Low", status="In Progress")
    emulator.seed_issues(1, summary="other", project="SD")

    def numbers(
        text: str | None = None, status: str | None = None, priority: str | None = None
    ) -> list[str]:
        page = provider.search(SearchQuery(text=text, status=status, priority=priority))
        assert page.total == len(page.items)
        return [ticket.number for ticket in page.items]

    assert numbers() == ["DQ-3", "DQ-2", "DQ-1"]
    assert numbers(text="nulls in email") == ["DQ-2", "DQ-1"]
    assert numbers(status="in progress") == numbers(status="3") == ["DQ-3"]
    assert numbers(priority="High") == numbers(priority="2") == ["DQ-2", "DQ-1"]
    assert numbers(text="nulls", status="To Do", priority="Low") == []


def test_search_text_with_quotes_and_backslashes(
    provider: JiraProvider, emulator: JiraEmulator
) -> None:
    emulator.seed_issues(1, summary='path "C:\\data" is empty')
    emulator.seed_issues(1, summary="unrelated")

    page = provider.search(SearchQuery(text='"C:\\data"'))

    assert [t.title for t in page.items] == ['path "C:\\data" is empty']


def test_search_walks_to_the_page_reading_ids_only(
    provider: JiraProvider, emulator: JiraEmulator
) -> None:
    emulator.seed_issues(7, summary="paged {i}")

    page = provider.search(SearchQuery(page=3, size=3))

    assert [t.number for t in page.items] == ["DQ-1"]
    assert (page.total, page.pages) == (7, 3)
    searches = [r for r in emulator.requests if r["path"] == SEARCH]
    assert len(searches) == 3  # two pages skipped, then the page itself


def test_search_posts_are_reads_retried_after_a_503(
    provider: JiraProvider, emulator: JiraEmulator
) -> None:
    emulator.seed_issues(2)
    emulator.add_fault("503", method="POST")
    emulator.add_fault("504", method="POST")

    page = provider.search(SearchQuery())

    assert page.total == 2
    assert [(r["path"], r["status"]) for r in emulator.requests] == [
        (SEARCH, 503),
        (SEARCH, 504),
        (SEARCH, 200),
        ("/rest/api/3/search/approximate-count", 200),
    ]


def test_unknown_status_in_a_search_is_invalid_input(provider: JiraProvider) -> None:
    with pytest.raises(errors.InvalidInput, match="'Parked' does not exist"):
        provider.search(SearchQuery(status="Parked"))


# ---- update and status ---------------------------------------------------------------------------


def test_update_changes_given_fields_and_keeps_labels(
    provider: JiraProvider, emulator: JiraEmulator
) -> None:
    created = provider.create(DRAFT, idempotency_key="k1")

    updated = provider.update(
        created.id,
        TicketChanges(
            title="Renamed", description="New\ntext", priority="Lowest", category="Pipelines"
        ),
    )

    assert (updated.title, updated.description, updated.priority) == (
        "Renamed",
        "New\ntext",
        "Lowest",
    )
    assert updated.extras["labels"].split(",") == [
        "ticketing-key-k1",
        "qualytics_anomaly-12345",
        "Data",
        "Data_Quality",
        "Pipelines",
    ]
    assert provider.get(created.id) == updated


def test_update_with_only_unmapped_fields_sends_nothing(
    provider: JiraProvider, emulator: JiraEmulator
) -> None:
    created = provider.create(DRAFT)
    before = len(emulator.requests)

    assert provider.update(created.id, TicketChanges(assigned_to="jane")) == created
    assert [r["method"] for r in emulator.requests[before:]] == ["GET"]


def test_empty_changes_are_refused(provider: JiraProvider) -> None:
    created = provider.create(DRAFT)

    with pytest.raises(errors.InvalidInput, match="no fields"):
        provider.update(created.id, TicketChanges())


def test_bad_field_in_update_is_invalid_input(provider: JiraProvider) -> None:
    created = provider.create(DRAFT)

    with pytest.raises(errors.InvalidInput, match="priority"):
        provider.update(created.id, TicketChanges(priority="Bogus"))


@pytest.mark.parametrize("status", ["In Progress", "in progress", "3"])
def test_status_change_by_name_or_id(provider: JiraProvider, status: str) -> None:
    created = provider.create(DRAFT)

    updated = provider.update(created.id, TicketChanges(status=status))

    assert updated.status == "In Progress"
    assert updated.extras["status_category"] == "indeterminate"
    assert provider.get_status(created.id).code == "3"


def test_resolution_is_an_internal_comment_after_the_transition(
    server: RunningEmulator, emulator: JiraEmulator
) -> None:
    desk = connect(server, project="SD", issue_type="[System] Incident")
    created = desk.create(DRAFT)

    resolved = desk.update(
        created.id, TicketChanges(status="Resolved", resolution="Fixed upstream")
    )

    assert resolved.status == "Resolved"
    [note] = emulator.comments(created.id)
    assert (note["text"], note["internal"], note["jsdPublic"]) == ("Fixed upstream", True, False)
    writes = [path for method, path in calls(emulator) if method == "POST"]
    assert writes[-2:] == [
        f"/rest/api/3/issue/{created.id}/transitions",
        f"/rest/api/3/issue/{created.id}/comment",
    ]


def test_status_already_reached_is_left_alone(provider: JiraProvider) -> None:
    created = provider.create(DRAFT)

    assert provider.update(created.id, TicketChanges(status="to do")).status == "To Do"


def test_status_without_a_transition_lists_the_available_ones_and_changes_nothing(
    provider: JiraProvider,
) -> None:
    created = provider.create(DRAFT)

    with pytest.raises(errors.InvalidInput, match="available: 'In Progress', 'Done'"):
        provider.update(created.id, TicketChanges(title="Renamed", status="Waiting for support"))

    assert provider.get(created.id) == created


def test_get_status_reads_only_the_status(provider: JiraProvider, emulator: JiraEmulator) -> None:
    created = provider.create(DRAFT)

    status = provider.get_status(created.id)

    assert (status.code, status.label) == ("10000", "To Do")
    assert emulator.requests[-1]["query"] == "fields=status"


# ---- work notes --------------------------------------------------------------------------------


def test_work_note_is_a_plain_comment_outside_a_service_desk(
    provider: JiraProvider, emulator: JiraEmulator
) -> None:
    created = provider.create(DRAFT)

    provider.add_work_note(created.id, "Investigating\nwith the data team")

    [comment] = emulator.comments(created.id)
    assert comment["text"] == "Investigating\nwith the data team"
    assert comment["body"] == text_to_adf("Investigating\nwith the data team")
    assert (comment["properties"], comment["internal"]) == ([], False)


def test_work_note_is_internal_in_a_service_desk_project_checked_once(
    server: RunningEmulator, emulator: JiraEmulator
) -> None:
    desk = connect(server, project="SD", issue_type="[System] Incident")
    created = desk.create(DRAFT)

    desk.add_work_note(created.id, "first")
    desk.add_work_note(created.id, "second")

    stored = emulator.comments(created.id)
    assert [(c["text"], c["internal"], c["jsdPublic"]) for c in stored] == [
        ("first", True, False),
        ("second", True, False),
    ]
    assert calls(emulator).count(("GET", "/rest/api/3/project/SD")) == 1


def test_blank_work_note_is_refused(provider: JiraProvider) -> None:
    created = provider.create(DRAFT)

    with pytest.raises(errors.InvalidInput, match="must not be empty"):
        provider.add_work_note(created.id, "  ")


def test_keyed_note_keeps_its_text_and_carries_the_key_in_a_property(
    provider: JiraProvider, emulator: JiraEmulator
) -> None:
    created = provider.create(DRAFT)

    provider.add_work_note(created.id, "Investigating", idempotency_key="note-1")

    [comment] = emulator.comments(created.id)
    assert comment["text"] == "Investigating"
    assert comment["properties"] == [{"key": KEY_PROPERTY, "value": {"key": "note-1"}}]


def test_keyed_note_in_a_service_desk_is_internal_too(
    server: RunningEmulator, emulator: JiraEmulator
) -> None:
    desk = connect(server, project="SD", issue_type="[System] Incident")
    created = desk.create(DRAFT)

    desk.add_work_note(created.id, "Agents only", idempotency_key="note-1")

    [comment] = emulator.comments(created.id)
    assert (comment["internal"], comment["jsdPublic"]) == (True, False)
    assert {p["key"] for p in comment["properties"]} == {KEY_PROPERTY, "sd.public.comment"}
    assert desk.has_work_note(
        created.id, "Agents only", idempotency_key="note-1", identical_before=0
    )


def test_has_work_note_looks_for_the_key_across_pages(
    provider: JiraProvider, emulator: JiraEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(provider_module, "COMMENT_PAGE_SIZE", 2)  # make it walk pages
    created = provider.create(DRAFT)
    provider.add_work_note(created.id, "oldest\nnote", idempotency_key="k-oldest")
    for n in range(4):
        provider.add_work_note(created.id, f"note {n}", idempotency_key=f"k-{n}")
    provider.add_work_note(created.id, "unkeyed")

    def has(text: str, key: str, identical_before: int = 0) -> bool:
        return provider.has_work_note(
            created.id, text, idempotency_key=key, identical_before=identical_before
        )

    assert has("oldest\nnote", "k-oldest")  # found on the last page
    assert has("note 3", "k-3")
    assert not has("note 3", "k-9")  # another key: not found
    assert not has("oldest\nnote", "k-other")  # the same text under a different key
    assert not has("unkeyed", "k-unkeyed")  # text alone never counts
    assert not has("note 3", "k-9", identical_before=1)
    listed = [r for r in emulator.requests if r["path"].endswith("/comment")]
    assert all("expand=properties" in r["query"] for r in listed if r["method"] == "GET")


@pytest.mark.parametrize("fault", AFTER_COMMIT)
def test_comment_whose_answer_is_lost_after_commit_is_not_sent_again(
    provider: JiraProvider, emulator: JiraEmulator, fault: str
) -> None:
    created = provider.create(DRAFT)
    emulator.add_fault(fault, method="POST")

    with pytest.raises(errors.ProviderUnavailable) as caught:
        provider.add_work_note(created.id, "Once only", idempotency_key="note-lost")

    assert caught.value.may_have_landed
    assert [c["text"] for c in emulator.comments(created.id)] == ["Once only"]
    assert calls(emulator).count(("POST", f"{ISSUES}/{created.id}/comment")) == 1
    assert provider.has_work_note(
        created.id, "Once only", idempotency_key="note-lost", identical_before=0
    )


def test_comment_refused_with_503_is_not_sent_again_and_not_found(
    provider: JiraProvider, emulator: JiraEmulator
) -> None:
    created = provider.create(DRAFT)
    emulator.add_fault("503", method="POST")

    with pytest.raises(errors.ProviderUnavailable):
        provider.add_work_note(created.id, "Refused", idempotency_key="note-503")

    assert emulator.comments(created.id) == []
    assert calls(emulator).count(("POST", f"{ISSUES}/{created.id}/comment")) == 1
    assert not provider.has_work_note(
        created.id, "Refused", idempotency_key="note-503", identical_before=0
    )


def test_comment_rate_limited_is_sent_again(provider: JiraProvider, emulator: JiraEmulator) -> None:
    created = provider.create(DRAFT)
    emulator.add_fault("429", method="POST", retry_after=0)

    provider.add_work_note(created.id, "After the wait", idempotency_key="note-429")

    assert [c["text"] for c in emulator.comments(created.id)] == ["After the wait"]


# ---- the service failing -----------------------------------------------------------------------


def test_rate_limit_is_waited_out(provider: JiraProvider, emulator: JiraEmulator) -> None:
    emulator.add_fault("429", count=2, retry_after=1)

    started = time.monotonic()
    provider.validate()

    assert time.monotonic() - started >= 2.0
    assert [r["status"] for r in emulator.requests] == [429, 429, 200, 200]


def test_maintenance_page_is_an_unexpected_response(
    provider: JiraProvider, emulator: JiraEmulator
) -> None:
    emulator.add_fault("html")

    with pytest.raises(errors.UnexpectedResponse, match="maintenance or a proxy"):
        provider.validate()


def test_timeout_is_reported_as_such(server: RunningEmulator, emulator: JiraEmulator) -> None:
    emulator.add_fault("timeout", seconds=1)

    with pytest.raises(errors.ProviderTimeout) as caught:
        connect(server, timeout=0.2, max_attempts=1).validate()

    assert caught.value.may_have_landed
    wait_for_stalled(emulator, 1)


def test_a_read_that_timed_out_is_sent_again(
    server: RunningEmulator, emulator: JiraEmulator
) -> None:
    emulator.add_fault("timeout", seconds=1)

    connect(server, timeout=0.2).validate()

    wait_for_stalled(emulator, 3)  # the stalled GET, its repeat, then the project read
    assert calls(emulator).count(("GET", "/rest/api/3/myself")) == 2


def test_call_budget_of_one_attempt_is_honoured(
    provider: JiraProvider, emulator: JiraEmulator
) -> None:
    emulator.add_fault("503")

    with call_budget(attempts=1), pytest.raises(errors.ProviderUnavailable):
        provider.validate()

    assert len(emulator.requests) == 1


def test_server_error_carries_jira_message(provider: JiraProvider, emulator: JiraEmulator) -> None:
    emulator.add_fault("500")

    with pytest.raises(errors.ProviderUnavailable, match=r"injected fault\) \(HTTP 500 "):
        provider.validate()


def test_canonical_resolved_reaches_a_done_status_with_one_resolution_comment(
    provider: JiraProvider, emulator: JiraEmulator
) -> None:
    issue = provider.create(TicketDraft(title="t", description="d"))
    resolve = TicketChanges(status="Resolved", resolution="Anomaly 1 was marked Resolved.")
    emulator.add_fault("500", count=1, method="POST")  # the transition fails once

    with pytest.raises(errors.ProviderUnavailable):
        provider.update(issue.id, resolve)
    resolved = provider.update(issue.id, resolve)

    assert resolved.status == "Done"
    assert resolved.extras["status_category"] == "done"
    assert [c["text"] for c in emulator.comments(issue.id)] == ["Anomaly 1 was marked Resolved."]


@pytest.mark.parametrize("lost", ["transition", "comment"])
def test_update_retried_after_a_lost_answer_posts_the_resolution_once(
    provider: JiraProvider, emulator: JiraEmulator, lost: str
) -> None:
    issue = provider.create(TicketDraft(title="t", description="d"))
    resolve = TicketChanges(status="Resolved", resolution="Anomaly 1 was marked Resolved.")
    if lost == "comment":
        emulator.add_fault("429", method="POST", retry_after=0)  # lets the transition through
    emulator.add_fault("drop_after_commit", method="POST")

    with pytest.raises(errors.ProviderUnavailable) as caught:
        provider.update(issue.id, resolve)
    assert caught.value.may_have_landed
    resolved = provider.update(issue.id, resolve)

    assert resolved.status == "Done"
    [note] = emulator.comments(issue.id)
    assert note["text"] == "Anomaly 1 was marked Resolved."
    assert note["properties"][0]["key"] == KEY_PROPERTY
    transitions = calls(emulator).count(("POST", f"{ISSUES}/{issue.id}/transitions"))
    assert transitions == (2 if lost == "comment" else 1)


def test_resolution_comment_of_another_ticket_does_not_count(
    provider: JiraProvider, emulator: JiraEmulator
) -> None:
    first, second = (provider.create(TicketDraft(title=t, description="")) for t in "ab")
    resolve = TicketChanges(resolution="Same text")

    provider.update(first.id, resolve)
    provider.update(second.id, resolve)
    provider.update(second.id, resolve)  # a retry: already there

    assert [c["text"] for c in emulator.comments(first.id)] == ["Same text"]
    assert [c["text"] for c in emulator.comments(second.id)] == ["Same text"]


def test_validate_refuses_a_project_that_does_not_exist(server: RunningEmulator) -> None:
    with pytest.raises(errors.NotFound, match="No project could be found with key 'NOPE'"):
        connect(server, project="NOPE").validate()
