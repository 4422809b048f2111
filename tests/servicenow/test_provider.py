"""The ServiceNow provider against the emulator, over real HTTP."""

from __future__ import annotations

import time
from urllib.parse import parse_qs

import pytest
from servicenow_emulator import Emulator

from ticketing_core import errors
from ticketing_core.models import SearchQuery, TicketChanges, TicketDraft
from ticketing_servicenow import ServiceNowProvider

from ..conftest import BEARER_TOKEN

DRAFT = TicketDraft(
    title="Data Quality Anomaly - Missing values in customer_email",
    description="150 null values detected in customer_email field",
    priority="2",
    urgency="2",
    impact="2",
    category="Data",
    subcategory="Data Quality",
    assigned_to="john.doe",
    assignment_group="Data Engineering",
)


def connect(url: str, token: str, **options: object) -> ServiceNowProvider:
    return ServiceNowProvider(api_url=url, api_access_token=token, **options)  # type: ignore[arg-type]


def test_validate_accepts_good_credentials(provider: ServiceNowProvider) -> None:
    provider.validate()


def test_wrong_password_is_an_authentication_error_without_the_secret(emulator_url: str) -> None:
    provider = connect(emulator_url, "admin:wrong-secret-pw")

    with pytest.raises(errors.AuthenticationFailed) as caught:
        provider.validate()

    assert "User Not Authenticated" in str(caught.value)
    assert "wrong-secret-pw" not in str(caught.value)
    assert "wrong-secret-pw" not in repr(provider)


def test_bearer_token_authenticates(emulator_url: str) -> None:
    connect(emulator_url, BEARER_TOKEN).validate()
    with pytest.raises(errors.AuthenticationFailed):
        connect(emulator_url, "another-token").validate()


def test_create_returns_the_incident_as_stored(provider: ServiceNowProvider) -> None:
    ticket = provider.create(DRAFT)

    assert ticket.number.startswith("INC")
    assert len(ticket.id) == 32
    assert ticket.status == "New"
    assert (ticket.priority, ticket.urgency, ticket.impact) == ("3", "2", "2")
    assert (ticket.category, ticket.subcategory) == ("Data", "Data Quality")
    assert ticket.assigned_to == "John Doe"
    assert ticket.assignment_group == "Data Engineering"
    assert ticket.url == f"{provider.api_url}/incident.do?sys_id={ticket.id}"
    assert ticket.created_at is not None


def test_priority_comes_back_as_the_instance_computes_it(provider: ServiceNowProvider) -> None:
    ticket = provider.create(TicketDraft(title="t", description="d", priority="5", urgency="1",
                                         impact="1"))  # fmt: skip

    assert ticket.priority == "1"


def test_get_reads_the_same_ticket(provider: ServiceNowProvider) -> None:
    created = provider.create(DRAFT)

    assert provider.get(created.id) == created


def test_find_by_number(provider: ServiceNowProvider) -> None:
    created = provider.create(DRAFT)

    assert provider.find(created.number).id == created.id
    with pytest.raises(errors.NotFound):
        provider.find("INC9999999")


def test_missing_ticket_is_not_found(provider: ServiceNowProvider) -> None:
    with pytest.raises(errors.NotFound, match="No Record found"):
        provider.get("0" * 32)


def test_update_patches_given_fields_only(provider: ServiceNowProvider) -> None:
    created = provider.create(DRAFT)

    updated = provider.update(created.id, TicketChanges(title="New title", status="In Progress"))

    assert (updated.title, updated.status) == ("New title", "In Progress")
    assert updated.description == created.description


def test_resolving_needs_close_fields_and_works_with_them(provider: ServiceNowProvider) -> None:
    created = provider.create(DRAFT)

    with pytest.raises(errors.PermissionDenied, match="mandatory"):
        provider.update(created.id, TicketChanges(status="Resolved"))
    resolved = provider.update(
        created.id,
        TicketChanges(
            status="Resolved",
            fields={"close_code": "Solved (Permanently)", "close_notes": "fixed upstream"},
        ),
    )

    assert resolved.status == "Resolved"
    assert provider.get_status(created.id).label == "Resolved"


def test_work_note_lands_in_the_journal(provider: ServiceNowProvider, emulator: Emulator) -> None:
    created = provider.create(DRAFT)

    provider.add_work_note(created.id, "[code]<b>x</b>[/code] Investigating")

    notes = [entry["value"] for entry in emulator.journal(created.id)]
    assert notes == ["[\u200bcode]<b>x</b>[\u200b/code] Investigating"]


def test_status_reads_only_the_state(provider: ServiceNowProvider, emulator: Emulator) -> None:
    created = provider.create(DRAFT)

    status = provider.get_status(created.id)

    assert (status.code, status.label) == ("1", "New")
    assert "sysparm_fields=state" in emulator.requests[-1]["query"]


def test_unknown_state_is_shown_as_is(provider: ServiceNowProvider) -> None:
    created = provider.create(DRAFT)
    provider.update(created.id, TicketChanges(status="42"))

    assert provider.get(created.id).status == "42"
    assert provider.get_status(created.id).label == "42"


def test_search_pages_with_total_and_stable_order(
    provider: ServiceNowProvider, emulator: Emulator
) -> None:
    emulator.seed_incidents(45, short_description="data quality issue", priority="3")
    emulator.seed_incidents(5, short_description="printer on fire")

    pages = [provider.search(SearchQuery(text="quality", page=n, size=20)) for n in (1, 2, 3)]

    assert [p.total for p in pages] == [45, 45, 45]
    assert [len(p.items) for p in pages] == [20, 20, 5]
    assert pages[0].pages == 3
    ids = [t.id for p in pages for t in p.items]
    assert len(set(ids)) == 45


def test_search_filters_by_status_and_priority(provider: ServiceNowProvider) -> None:
    first = provider.create(DRAFT)
    provider.create(TicketDraft(title="other", description="d", urgency="3", impact="3"))
    provider.update(first.id, TicketChanges(status="In Progress"))

    by_status = provider.search(SearchQuery(status="2"))
    by_label = provider.search(SearchQuery(status="In Progress"))
    by_priority = provider.search(SearchQuery(priority="5"))

    assert [t.id for t in by_status.items] == [first.id]
    assert [t.id for t in by_label.items] == [first.id]
    assert [t.title for t in by_priority.items] == ["other"]


def test_rate_limit_with_retry_after_is_waited_out(
    provider: ServiceNowProvider, emulator: Emulator
) -> None:
    emulator.add_fault("429", count=2, retry_after=1)

    started = time.monotonic()
    provider.validate()

    assert time.monotonic() - started >= 2.0
    assert [r["status"] for r in emulator.requests] == [429, 429, 200]


def test_rate_limit_beyond_the_attempts_is_raised_with_the_wait(
    emulator: Emulator, emulator_url: str
) -> None:
    emulator.add_fault("429", count=5, retry_after=0)
    provider = connect(emulator_url, "admin:admin-password", max_attempts=2)

    with pytest.raises(errors.RateLimited) as caught:
        provider.validate()

    assert caught.value.retry_after == 0


def test_503_is_retried_but_500_is_not(provider: ServiceNowProvider, emulator: Emulator) -> None:
    emulator.add_fault("503", count=1, retry_after=0)
    provider.validate()

    emulator.add_fault("500", count=1)
    with pytest.raises(errors.ProviderUnavailable):
        provider.validate()


def test_hibernating_instance_html_is_an_unexpected_response(
    provider: ServiceNowProvider, emulator: Emulator
) -> None:
    emulator.add_fault("html", count=1)

    with pytest.raises(errors.UnexpectedResponse, match="hibernating"):
        provider.validate()


def test_timeout_is_reported_as_such(emulator: Emulator, emulator_url: str) -> None:
    emulator.add_fault("timeout", count=1, seconds=2)
    provider = connect(emulator_url, "admin:admin-password", timeout=0.5, max_attempts=1)

    with pytest.raises(errors.ProviderTimeout):
        provider.validate()


def test_a_read_is_retried_after_a_timeout(emulator: Emulator, emulator_url: str) -> None:
    emulator.add_fault("timeout", count=1, seconds=2)
    provider = connect(emulator_url, "admin:admin-password", timeout=0.5)

    provider.validate()

    assert [r["method"] for r in emulator.requests][-1] == "GET"


@pytest.mark.parametrize("fault", ["503_after_commit", "close_after_commit", "drop_after_commit"])
def test_a_work_note_is_never_sent_twice(
    provider: ServiceNowProvider, emulator: Emulator, fault: str
) -> None:
    created = provider.create(DRAFT)
    emulator.add_fault(fault, method="PATCH")

    with pytest.raises(errors.ProviderUnavailable) as failure:
        provider.add_work_note(created.id, "once")

    assert failure.value.may_have_landed
    assert [e["value"] for e in emulator.journal(created.id)] == ["once"]
    assert provider.has_work_note(created.id, "once", idempotency_key="k", identical_before=0)
    assert not provider.has_work_note(created.id, "once", idempotency_key="k", identical_before=1)


def test_a_refused_work_note_is_sent_again(
    provider: ServiceNowProvider, emulator: Emulator
) -> None:
    created = provider.create(DRAFT)
    emulator.add_fault("429", method="PATCH", retry_after=0)

    provider.add_work_note(created.id, "after a 429")

    assert [e["value"] for e in emulator.journal(created.id)] == ["after a 429"]


def test_an_unkeyed_create_is_not_sent_again_after_a_503(
    provider: ServiceNowProvider, emulator: Emulator
) -> None:
    emulator.add_fault("503_after_commit", method="POST")

    with pytest.raises(errors.ProviderUnavailable):
        provider.create(DRAFT)

    assert len(emulator.incidents) == 1


def test_counting_notes_needs_no_journal_table_rights(
    provider: ServiceNowProvider, emulator: Emulator
) -> None:
    emulator.deny_tables = {"sys_journal_field"}
    created = provider.create(DRAFT)
    for text in ("same", "other\nlines", "same"):
        provider.add_work_note(created.id, text)

    def landed(text: str, before: int) -> bool:
        return provider.has_work_note(
            created.id, text, idempotency_key="k", identical_before=before
        )

    assert (landed("same", 1), landed("same", 2), landed("other\nlines", 0)) == (True, False, True)
    assert not landed("other", 0)  # a prefix is not the note
    assert not landed("never sent", 0)


def test_one_deadline_bounds_a_call_whose_answer_dribbles(
    emulator: Emulator, emulator_url: str
) -> None:
    emulator.add_fault("dribble", seconds=0.2)  # a body of hundreds of bytes, one per 0.2 s
    provider = connect(emulator_url, "admin:admin-password", deadline=1.0)

    started = time.monotonic()
    with pytest.raises(errors.ProviderTimeout, match="deadline"):
        provider.validate()

    assert time.monotonic() - started < 2.0


def test_a_call_budget_bounds_retries_to_one_attempt(
    provider: ServiceNowProvider, emulator: Emulator
) -> None:
    from ticketing_core.http import call_budget

    emulator.add_fault("503", count=2)
    with call_budget(attempts=1), pytest.raises(errors.ProviderUnavailable):
        provider.validate()

    assert len(emulator.requests) == 1


def test_unreachable_instance_is_unavailable() -> None:
    provider = connect("http://127.0.0.1:9", "admin:admin-password")

    with pytest.raises(errors.ProviderUnavailable, match="cannot reach"):
        provider.validate()


def test_a_key_that_made_an_incident_returns_it_instead_of_making_another(
    provider: ServiceNowProvider, emulator: Emulator
) -> None:
    first = provider.create(DRAFT, idempotency_key="qualytics-anomaly-1-k1")
    again = provider.create(DRAFT, idempotency_key="qualytics-anomaly-1-k1")

    assert again.id == first.id
    assert len(emulator.incidents) == 1
    assert first.extras["correlation_id"] == "qualytics-anomaly-1-k1"
    # Each keyed create looks its key up first: absent, so one POST; then found.
    assert [r["method"] for r in emulator.requests] == ["GET", "POST", "GET"]
    [lookup] = parse_qs(emulator.requests[0]["query"])["sysparm_query"]
    assert lookup.startswith("correlation_id=qualytics-anomaly-1-k1^")


def test_a_fresh_key_skips_the_lookup(provider: ServiceNowProvider, emulator: Emulator) -> None:
    ticket = provider.create(DRAFT, idempotency_key="fresh-1", key_is_fresh=True)

    assert [r["method"] for r in emulator.requests] == ["POST"]
    assert ticket.extras["correlation_id"] == "fresh-1"


def test_retrying_is_deprecated_and_changes_nothing(
    provider: ServiceNowProvider, emulator: Emulator
) -> None:
    first = provider.create(DRAFT, idempotency_key="old-caller-1")

    with pytest.warns(DeprecationWarning, match="retrying"):
        again = provider.create(DRAFT, idempotency_key="old-caller-1", retrying=False)

    assert again.id == first.id
    assert len(emulator.incidents) == 1


def test_ambiguous_create_failure_looks_the_key_up_instead_of_posting_twice(
    provider: ServiceNowProvider, emulator: Emulator
) -> None:
    emulator.add_fault("503_after_commit", count=1, method="POST")

    ticket = provider.create(DRAFT, idempotency_key="key-after-503")

    assert len(emulator.incidents) == 1
    assert ticket.id == emulator.incidents[0]["sys_id"]
    assert [r["method"] for r in emulator.requests] == ["GET", "POST", "GET"]


def test_a_create_refused_with_a_503_is_sent_again_once_its_key_is_absent(
    provider: ServiceNowProvider, emulator: Emulator
) -> None:
    emulator.add_fault("503", count=1, method="POST")

    provider.create(DRAFT, idempotency_key="key-refused", key_is_fresh=True)

    assert len(emulator.incidents) == 1
    assert [r["method"] for r in emulator.requests] == ["POST", "GET", "POST"]


@pytest.mark.parametrize("fault", ["close_after_commit", "drop_after_commit"])
def test_a_create_whose_answer_was_lost_is_found_by_its_key(
    provider: ServiceNowProvider, emulator: Emulator, fault: str
) -> None:
    emulator.add_fault(fault, method="POST")

    ticket = provider.create(DRAFT, idempotency_key="key-lost", key_is_fresh=True)

    assert [row["sys_id"] for row in emulator.incidents] == [ticket.id]


def test_ambiguous_timeout_on_create_does_not_duplicate(
    emulator: Emulator, emulator_url: str
) -> None:
    emulator.add_fault("late_commit", count=1, seconds=1.0, method="POST")
    provider = connect(emulator_url, "admin:admin-password", timeout=0.3)

    # The instance is still working on it: a lookup now proves nothing, so nothing is re-sent.
    with pytest.raises(errors.ProviderTimeout):
        provider.create(DRAFT, idempotency_key="key-after-timeout")
    assert emulator.incidents == []
    time.sleep(1.2)  # the instance commits the POST after the client gave up
    again = provider.create(DRAFT, idempotency_key="key-after-timeout")

    assert [row["sys_id"] for row in emulator.incidents] == [again.id]


def test_overlong_idempotency_key_is_refused(provider: ServiceNowProvider) -> None:
    with pytest.raises(errors.InvalidInput, match="1 to 100"):
        provider.create(DRAFT, idempotency_key="k" * 101)


@pytest.mark.parametrize("key", ["a^ORnumber!=x", "a b", "", "ключ"])
def test_a_key_that_could_change_a_query_is_refused(
    provider: ServiceNowProvider, emulator: Emulator, key: str
) -> None:
    with pytest.raises(errors.InvalidInput, match="letters, digits"):
        provider.create(DRAFT, idempotency_key=key)
    assert emulator.requests == []


def test_provider_is_thread_safe_and_overlaps_requests(
    provider: ServiceNowProvider, emulator: Emulator
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    created = provider.create(DRAFT)
    emulator.latency_ms = 200

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: provider.add_work_note(created.id, f"note {i}"), range(8)))
    elapsed = time.monotonic() - started

    assert len(emulator.journal(created.id)) == 8
    assert elapsed < 8 * 0.2 / 2


def test_a_note_is_not_taken_for_another_that_starts_with_it(
    provider: ServiceNowProvider,
) -> None:
    created = provider.create(DRAFT)
    provider.add_work_note(created.id, "ok\n\nthanks")

    def landed(text: str) -> bool:
        return provider.has_work_note(created.id, text, idempotency_key="k", identical_before=0)

    assert (landed("ok"), landed("thanks"), landed("ok\n\nthanks")) == (False, False, True)


def test_a_create_answered_by_a_gateway_page_is_not_sent_again() -> None:
    import httpx

    sent: list[str] = []

    def gateway(request: httpx.Request) -> httpx.Response:
        sent.append(request.method)
        if request.method == "POST":  # the instance may still be inserting behind the gateway
            return httpx.Response(502, html="<html><body>Bad Gateway</body></html>")
        return httpx.Response(200, json={"result": []})

    provider = ServiceNowProvider(
        api_url="https://acme.service-now.test",
        api_access_token="admin:x",
        transport=httpx.MockTransport(gateway),
    )

    with pytest.raises(errors.ProviderUnavailable) as failure:
        provider.create(DRAFT, idempotency_key="behind-a-gateway")

    assert failure.value.may_have_landed
    # Looked (absent), posted, looked again (nothing yet), and did not post again.
    assert sent == ["GET", "POST", "GET"]


def test_a_create_whose_lookup_fails_after_a_503_still_says_it_may_have_landed() -> None:
    import httpx

    sent: list[str] = []

    def instance(request: httpx.Request) -> httpx.Response:
        sent.append(request.method)
        if request.method == "POST":  # committed, then answered 503 in the instance's format
            return httpx.Response(503, json={"error": {"message": "busy"}, "status": "failure"})
        return httpx.Response(403, json={"error": {"message": "ACL"}, "status": "failure"})

    provider = ServiceNowProvider(
        api_url="https://acme.service-now.test",
        api_access_token="admin:x",
        transport=httpx.MockTransport(instance),
    )

    with pytest.raises(errors.ProviderUnavailable) as failure:
        provider.create(DRAFT, idempotency_key="lookup-refused", key_is_fresh=True)

    # Whoever holds the key must look before sending it again: the failure keeps saying so.
    assert failure.value.may_have_landed
    assert isinstance(failure.value.__cause__, errors.PermissionDenied)
    assert sent == ["POST", "GET"]


def test_journal_fields_cannot_be_set_by_an_update(
    provider: ServiceNowProvider, emulator: Emulator
) -> None:
    created = provider.create(DRAFT)

    with pytest.raises(errors.InvalidInput, match="add a work note instead"):
        provider.update(created.id, TicketChanges(fields={"work_notes": "appended twice on retry"}))
    assert emulator.journal(created.id) == []


@pytest.mark.parametrize("field", ["sys_id", "number", "state", "correlation_id", "nosuchfield"])
def test_fields_an_incident_does_not_let_an_update_set_are_refused_unsent(
    provider: ServiceNowProvider, emulator: Emulator, field: str
) -> None:
    created = provider.create(DRAFT)
    sent = len(emulator.requests)

    with pytest.raises(errors.InvalidInput, match=f"no settable field {field}: .* or a custom u_"):
        provider.update(created.id, TicketChanges(fields={field: "x"}))
    assert len(emulator.requests) == sent


def test_custom_u_fields_and_declared_fields_are_set(
    provider: ServiceNowProvider, emulator: Emulator
) -> None:
    created = provider.create(DRAFT)

    provider.update(
        created.id, TicketChanges(fields={"u_data_team": "dq", "contact_type": "email"})
    )

    [row] = emulator.incidents
    assert (row["u_data_team"], row["contact_type"]) == ("dq", "email")
