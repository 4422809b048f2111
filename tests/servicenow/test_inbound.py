"""Inbound sync on ServiceNow, against the emulator: the change cursor, batch reads, journal
rows, the connection's own user, the instance's states, notifications and the Business Rules."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from servicenow_emulator import Emulator
from servicenow_emulator.app import DEFAULT_OAUTH_CLIENT_ID, DEFAULT_OAUTH_CLIENT_SECRET

from ticketing_core.errors import InvalidInput, PermissionDenied
from ticketing_core.hookspecs import InboundProvider
from ticketing_core.models import TicketChanges, TicketDraft, TicketStatus
from ticketing_core.notifications import TICKETING_V1, verify
from ticketing_servicenow import ServiceNowProvider
from ticketing_servicenow.inbound import Cursor

from ..conftest import BEARER_TOKEN

AGENT = "beth.anglin"
DRAFT = TicketDraft(title="Inbound", description="changes flow back")
SYS_ID = "0123456789abcdef0123456789abcdef"
NOTICE = {
    "table": "incident",
    "sys_id": SYS_ID,
    "sys_mod_count": "7",
    "sys_updated_on": "2026-12-07 10:00:00",
    "sys_updated_by": "jane.agent",
    "event": "update",
}
BUSINESS_RULE_RUNNER = Path(__file__).parent / "business_rule_runner.js"


def queries(emulator: Emulator, path: str = "/api/now/table/incident") -> list[dict[str, str]]:
    """The query parameters of the requests made so far to ``path``."""
    return [
        {k: v[0] for k, v in parse_qs(r["query"]).items()}
        for r in emulator.requests
        if r["path"] == path
    ]


def drain(
    provider: ServiceNowProvider, cursor: str, *, overlap: float = 0.0, limit: int = 100
) -> tuple[list[str], str, int]:
    """(ids listed, final cursor, pages) of one poll: ``overlap`` on its first page only."""
    ids: list[str] = []
    pages = 0
    more = True
    while more:
        page = provider.changed_since(cursor, overlap=overlap if not pages else 0.0, limit=limit)
        ids += [t.id for t in page.tickets]
        cursor, more, pages = page.cursor, page.more, pages + 1
        assert pages <= 1000, "the cursor loops"
    return ids, cursor, pages


@pytest.fixture
def bearer(emulator_url: str) -> Iterator[ServiceNowProvider]:
    with ServiceNowProvider(api_url=emulator_url, api_access_token=BEARER_TOKEN) as provider:
        yield provider


def test_it_declares_inbound_sync(provider: ServiceNowProvider) -> None:
    assert isinstance(provider, InboundProvider)
    assert provider.capabilities.inbound_sync
    assert provider.capabilities.notification_signature == TICKETING_V1


def test_tickets_carry_who_changed_them_and_their_revision(
    provider: ServiceNowProvider, emulator: Emulator
) -> None:
    created = provider.create(DRAFT)
    emulator.act_as(AGENT, created.id, state="2")

    updated = provider.get(created.id)

    assert (created.updated_by, created.revision) == ("admin", 0)
    assert (updated.updated_by, updated.revision, updated.status) == (AGENT, 1, "In Progress")


# ---- changed_since ----------------------------------------------------------------------------


def test_no_cursor_starts_at_the_newest_change_in_one_request(
    provider: ServiceNowProvider, emulator: Emulator
) -> None:
    old = emulator.seed_incidents(3)

    page = provider.changed_since(None)

    newest = max(old, key=lambda r: (r["sys_updated_on"], r["sys_id"]))
    assert (page.tickets, page.more) == ((), False)
    assert Cursor.decode(page.cursor) == Cursor(newest["sys_updated_on"], newest["sys_id"])
    assert len(emulator.requests) == 1


def test_a_change_after_the_cursor_is_listed(
    provider: ServiceNowProvider, emulator: Emulator
) -> None:
    ticket = emulator.seed_incidents(2)[0]
    cursor = provider.changed_since(None).cursor

    emulator.act_as(AGENT, ticket["sys_id"], work_notes="looking")
    page = provider.changed_since(cursor, overlap=1.0)

    changed = {t.id: t for t in page.tickets}[ticket["sys_id"]]
    assert (changed.updated_by, changed.revision) == (AGENT, 1)


def test_an_empty_instance_lists_from_the_beginning(
    provider: ServiceNowProvider, emulator: Emulator
) -> None:
    cursor = provider.changed_since(None).cursor
    rows = emulator.seed_incidents(3)

    ids, _, pages = drain(provider, cursor)

    assert sorted(ids) == sorted(r["sys_id"] for r in rows)
    assert pages == 1


@pytest.mark.parametrize("limit", [1, 7, 100])
def test_pages_inside_one_second_miss_nothing_and_repeat_nothing(
    provider: ServiceNowProvider, emulator: Emulator, limit: int
) -> None:
    cursor = provider.changed_since(None).cursor
    rows = emulator.seed_incidents(250)  # one instant of the instance's clock

    ids, final, pages = drain(provider, cursor, limit=limit)

    assert len({r["sys_updated_on"] for r in rows}) == 1
    assert sorted(ids) == sorted(r["sys_id"] for r in rows)
    assert pages == -(-250 // limit)  # X-Total-Count tells the last page: no empty one after
    assert drain(provider, final)[0] == []


def test_ten_thousand_changes_take_at_most_101_list_requests(
    provider: ServiceNowProvider, emulator: Emulator
) -> None:
    cursor = provider.changed_since(None).cursor
    emulator.seed_incidents(2500)  # a quarter of the size keeps the test quick: ⌈N/100⌉ + 1
    before = len(emulator.requests)

    ids, _, pages = drain(provider, cursor, limit=1000)

    assert len(set(ids)) == len(ids) == 2500
    assert pages == len(emulator.requests) - before <= 2500 // 100 + 1
    assert {q["sysparm_limit"] for q in queries(emulator)[1:]} == {"100"}


def test_overlap_lists_the_last_seconds_again_without_moving_back(
    provider: ServiceNowProvider, emulator: Emulator
) -> None:
    rows = emulator.seed_incidents(3)
    cursor = provider.changed_since(None).cursor

    again = provider.changed_since(cursor, overlap=5.0)
    later = provider.changed_since(again.cursor)

    assert sorted(t.id for t in again.tickets) == sorted(r["sys_id"] for r in rows)
    assert again.cursor == cursor
    assert later.tickets == ()


def test_overlap_reaches_back_to_the_start_of_that_second() -> None:
    cursor = Cursor("2026-12-07 10:00:00", SYS_ID)

    assert cursor.minus(0.5) == Cursor("2026-12-07 09:59:59")
    assert cursor.minus(60) == Cursor("2026-12-07 09:59:00")
    assert cursor.minus(0) == cursor
    assert Cursor().minus(60) == Cursor()


def test_the_keyset_query_resumes_inside_the_cursors_second() -> None:
    assert Cursor("2026-12-07 10:00:00", SYS_ID).query() == (
        f"sys_updated_on>2026-12-07 10:00:00^NQsys_updated_on=2026-12-07 10:00:00^sys_id>{SYS_ID}"
        "^ORDERBYsys_updated_on^ORDERBYsys_id"
    )


@pytest.mark.parametrize(
    "cursor",
    ["", "sn1", "sn2|2026-12-07 10:00:00|", "sn1|yesterday|", f"sn1||{SYS_ID}", "sn1|x^y|"],
)
def test_a_cursor_it_did_not_make_is_refused(provider: ServiceNowProvider, cursor: str) -> None:
    with pytest.raises(InvalidInput, match="change cursor"):
        provider.changed_since(cursor)


def test_a_limit_below_one_is_refused(provider: ServiceNowProvider) -> None:
    with pytest.raises(InvalidInput, match="limit"):
        provider.changed_since(Cursor().encode(), limit=0)


# ---- get_many -----------------------------------------------------------------------------------


def test_get_many_reads_a_batch_in_one_request(
    provider: ServiceNowProvider, emulator: Emulator
) -> None:
    rows = emulator.seed_incidents(100)
    wanted = [r["sys_id"] for r in rows[:99]] + ["f" * 32]

    found = provider.get_many(wanted)

    assert sorted(t.id for t in found) == sorted(wanted[:99])
    assert len(emulator.requests) == 1
    assert provider.get_many([]) == []
    assert len(emulator.requests) == 1


def test_get_many_refuses_more_than_100(provider: ServiceNowProvider) -> None:
    with pytest.raises(InvalidInput, match="at most 100"):
        provider.get_many([SYS_ID] * 101)
    with pytest.raises(InvalidInput, match="sys_id"):
        provider.get_many(["abc,def"])


# ---- journal_since ------------------------------------------------------------------------------


def test_journal_entries_with_kinds_and_authors(
    provider: ServiceNowProvider, emulator: Emulator
) -> None:
    created = provider.create(DRAFT)
    provider.add_work_note(created.id, "ours")
    emulator.act_as(AGENT, created.id, comments="to the caller")
    other = provider.create(DRAFT)
    provider.add_work_note(other.id, "another ticket's")

    entries = provider.journal_since(created.id, None)

    assert sorted((e.kind, e.text, e.author) for e in entries) == [
        ("comment", "to the caller", AGENT),
        ("work_note", "ours", "admin"),
    ]
    assert {e.ticket_id for e in entries} == {created.id}
    assert [e.created_at for e in entries] == sorted(e.created_at for e in entries)


def test_journal_since_a_time_includes_that_second(
    provider: ServiceNowProvider, emulator: Emulator
) -> None:
    created = provider.create(DRAFT)
    emulator.clock_skew = timedelta(seconds=-30)
    emulator.act_as(AGENT, created.id, work_notes="half a minute ago")
    emulator.clock_skew = timedelta(0)
    emulator.act_as(AGENT, created.id, work_notes="now")
    latest = emulator.journal(created.id)[-1]["sys_created_on"]
    at = datetime.strptime(latest, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)

    entries = provider.journal_since(created.id, at + timedelta(microseconds=999_999))

    assert [e.text for e in entries] == ["now"]


def test_journal_pages_through_many_entries(
    provider: ServiceNowProvider, emulator: Emulator
) -> None:
    created = provider.create(DRAFT)
    for n in range(130):
        emulator.act_as(AGENT, created.id, work_notes=f"note {n}")

    entries = provider.journal_since(created.id, None)

    assert sorted(e.text for e in entries) == sorted(f"note {n}" for n in range(130))
    assert len({e.id for e in entries}) == 130
    assert len(queries(emulator, "/api/now/table/sys_journal_field")) == 2


def test_an_unreadable_journal_is_permission_denied(
    provider: ServiceNowProvider, emulator: Emulator
) -> None:
    created = provider.create(DRAFT)
    emulator.deny_tables = {"sys_journal_field"}

    with pytest.raises(PermissionDenied, match="sys_journal_field"):
        provider.journal_since(created.id, None)


# ---- own_user and states ------------------------------------------------------------------------


def test_basic_auth_names_its_user_without_a_request(
    provider: ServiceNowProvider, emulator: Emulator
) -> None:
    assert provider.own_user() == "admin"
    assert emulator.requests == []


def test_a_bearer_token_reads_its_user_once(bearer: ServiceNowProvider, emulator: Emulator) -> None:
    assert bearer.own_user() == "admin"
    assert bearer.own_user() == "admin"

    [query] = queries(emulator, "/api/now/table/sys_user")
    assert query["sysparm_query"] == "user_name=javascript:gs.getUserName()"
    assert len(emulator.requests) == 1


def test_the_client_credentials_grant_reads_its_application_user(emulator_url: str) -> None:
    with ServiceNowProvider(
        api_url=emulator_url,
        api_access_token="",
        client_id=DEFAULT_OAUTH_CLIENT_ID,
        client_secret=DEFAULT_OAUTH_CLIENT_SECRET,
    ) as provider:
        assert provider.own_user() == "admin"


def test_states_come_from_the_instance(provider: ServiceNowProvider, emulator: Emulator) -> None:
    emulator.set_choice("incident", "state", "9", "Awaiting Agent")
    emulator.set_choice("incident", "state", "3", "On Hold", inactive=True)

    states = provider.states()

    assert states[-1] == TicketStatus(code="9", label="Awaiting Agent")
    assert "3" not in [s.code for s in states]
    assert provider.states() == states
    assert len(queries(emulator, "/api/now/table/sys_choice")) == 1


def test_a_ticket_in_a_new_state_shows_its_label_and_refreshes_the_states(
    provider: ServiceNowProvider, emulator: Emulator
) -> None:
    created = provider.create(DRAFT)
    before = provider.states()
    emulator.set_choice("incident", "state", "9", "Awaiting Agent")
    emulator.act_as(AGENT, created.id, state="9")

    ticket = provider.get(created.id)
    after = provider.states()

    assert ticket.status == "Awaiting Agent"
    assert provider.get_status(created.id) == TicketStatus(code="9", label="Awaiting Agent")
    assert ticket.status not in {s.label for s in before}
    assert TicketStatus(code="9", label="Awaiting Agent") in after
    assert provider.states(refresh=True) == after
    assert len(queries(emulator, "/api/now/table/sys_choice")) == 3


def test_a_renamed_state_is_shown_by_its_new_label(
    provider: ServiceNowProvider, emulator: Emulator
) -> None:
    emulator.set_choice("incident", "state", "2", "Work in Progress")

    created = provider.create(DRAFT)
    updated = provider.update(created.id, TicketChanges(status="2"))

    assert updated.status == "Work in Progress"


# ---- notifications ------------------------------------------------------------------------------


def test_a_notification_names_its_ticket(provider: ServiceNowProvider) -> None:
    notice = provider.read_notification(NOTICE)

    assert (notice.ticket_id, notice.event, notice.updated_by, notice.revision) == (
        SYS_ID,
        "update",
        "jane.agent",
        7,
    )
    assert provider.read_notification(NOTICE | {"event": "journal"}).event == "journal"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"table": "problem"}, "table"),
        ({"table": None}, "table"),
        ({"sys_id": SYS_ID.upper()}, "sys_id"),
        ({"sys_id": SYS_ID + "0"}, "sys_id"),
        ({"sys_id": SYS_ID[:-1] + "\n"}, "sys_id"),
        ({"sys_id": 7}, "sys_id"),
        ({"event": "delete"}, "event"),
        ({"event": ["update"]}, "event"),
        ({"sys_mod_count": 7}, "sys_mod_count"),
        ({"sys_mod_count": "-1"}, "sys_mod_count"),
        ({"sys_mod_count": "٣"}, "sys_mod_count"),  # an Arabic-Indic digit
        ({"sys_mod_count": "9" * 11}, "sys_mod_count"),
        ({"sys_updated_on": "yesterday"}, "sys_updated_on"),
        ({"sys_updated_by": ""}, "sys_updated_by"),
        ({"sys_updated_by": "a\nb"}, "sys_updated_by"),
        ({"sys_updated_by": "x" * 256}, "sys_updated_by"),
    ],
)
def test_a_malformed_notification_says_what_is_wrong(
    provider: ServiceNowProvider, change: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidInput, match=field) as caught:
        provider.read_notification(NOTICE | change)

    assert caught.value.field == field
    assert "\n" not in str(caught.value)


def test_a_notification_missing_a_field_is_refused(provider: ServiceNowProvider) -> None:
    for name in NOTICE:
        body = {k: v for k, v in NOTICE.items() if k != name}
        with pytest.raises(InvalidInput, match=name):
            provider.read_notification(body)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=10,
)


@given(
    body=st.one_of(
        JSON,
        st.fixed_dictionaries({}, optional={k: JSON | st.just(v) for k, v in NOTICE.items()}),
    )
)
def test_hostile_notifications_raise_invalid_input_only(body: Any) -> None:
    with ServiceNowProvider(api_url="https://acme.service-now.com", api_access_token="a:b") as sn:
        try:
            notice = sn.read_notification(body)
        except InvalidInput:
            return
    assert notice.ticket_id == body["sys_id"]


def test_the_emulators_notification_reads_back(
    provider: ServiceNowProvider, emulator: Emulator
) -> None:
    created = provider.create(DRAFT)
    emulator.act_as(AGENT, created.id, work_notes="from an agent")

    for event in ("update", "journal"):
        notice = provider.read_notification(emulator.notification_for(created.id, event))
        assert (notice.ticket_id, notice.event, notice.updated_by) == (created.id, event, AGENT)
        assert notice.revision == provider.get(created.id).revision


# ---- the Business Rules -------------------------------------------------------------------------

ENDPOINT = "https://anomalies.example.com/api/inbound/7"
SECRET = "s3cr3t-with-'quotes'-and-\"more\""


def test_the_business_rules_name_the_endpoint_skip_the_user_and_sign(
    provider: ServiceNowProvider,
) -> None:
    text = provider.notification_setup(ENDPOINT, SECRET)

    assert text.count(f"setEndpoint({json.dumps(ENDPOINT)})") == 2
    assert text.count('gs.getUserName() != "admin"') == 2
    assert "When:       async" in text
    assert "Table:      incident" in text
    assert "Table:      sys_journal_field" in text
    assert "current.element == 'work_notes' || current.element == 'comments'" in text
    assert "generateMac(key, 'HmacSHA256', timestamp + '.' + body)" in text
    assert "'X-Ticketing-Signature', 'v1=' + mac" in text
    assert SECRET not in text  # base64-encoded, as generateMac wants its key


@pytest.mark.skipif(shutil.which("node") is None, reason="runs the scripts under Node.js")
@pytest.mark.parametrize("rule", [1, 2])
def test_the_business_rules_send_what_the_receiver_verifies(
    provider: ServiceNowProvider, rule: int
) -> None:
    """Each rule's script, run under stand-ins for the ServiceNow APIs it calls (hashing with
    Node's HMAC), sends a body and headers that ticketing_core's verify accepts."""
    script = provider.notification_setup(ENDPOINT, SECRET).split("Script:\n")[rule]
    script = script.split("\n--- Rule")[0]

    sent = subprocess.run(
        ["node", str(BUSINESS_RULE_RUNNER)],
        input=script,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )

    request = json.loads(sent.stdout)
    body = request["body"].encode()
    assert request["endpoint"] == ENDPOINT
    assert request["method"] == "post"
    verify(TICKETING_V1, [SECRET], request["headers"], body, float(request["now"]))
    notice = provider.read_notification(json.loads(body))
    assert (notice.ticket_id, notice.revision, notice.updated_by) == (SYS_ID, 7, "jane.agent")
    assert notice.event == ("update" if rule == 1 else "journal")


@pytest.mark.parametrize(("rows", "more"), [(2, True), (1, False)])
def test_without_a_total_count_a_full_page_may_have_more(rows: int, more: bool) -> None:
    """A proxy that drops X-Total-Count: a full page is not taken for the last one."""
    record = {"sys_id": SYS_ID, "sys_updated_on": "2026-12-07 10:00:00", "state": "1"}

    def answer(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"result": [record] * rows})

    with ServiceNowProvider(
        api_url="https://acme.service-now.com",
        api_access_token="a:b",
        transport=httpx.MockTransport(answer),
    ) as provider:
        page = provider.changed_since(Cursor().encode(), limit=2)

    assert page.more is more
    assert Cursor.decode(page.cursor) == Cursor("2026-12-07 10:00:00", SYS_ID)
