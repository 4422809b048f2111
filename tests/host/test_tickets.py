"""Searching, creating and linking tickets, and the ticket-links list, over real HTTP."""

from __future__ import annotations

import re
from typing import Any

import pytest
from servicenow_emulator import DEFAULT_GROUPS, Emulator

from .conftest import (
    ANOMALY_ID,
    PUBLIC_URL,
    SEED_TICKET_KEYS,
    SEED_TIME,
    TICKET_REQUEST,
    Host,
    create_integration,
    incident,
    links_path,
    ok,
    settled,
    tickets_path,
    work_notes,
)

SEARCH = "/api/integrations/ticketing/tickets/search"
ANOMALY_BLOCK = f"""

---

## Qualytics Anomaly Linked

- Anomaly ID: {ANOMALY_ID}
- Status: Active
- Type: Record
- Failed checks: not_null (customer_email): must not be null
- Link: {PUBLIC_URL}/anomalies/{ANOMALY_ID}"""


# -- search ----------------------------------------------------------------------------------------


def test_search_pages_through_matching_tickets_in_the_seed_shape(
    host: Host, emulator: Emulator, integration: dict[str, Any]
) -> None:
    emulator.seed_incidents(3, short_description="Data quality issue {i}", state="1")
    emulator.seed_incidents(2, short_description="Printer on fire {i}")

    first = ok(host.api.get(SEARCH, params={"query": "data quality", "size": 2, "page": 1}))
    second = ok(host.api.get(SEARCH, params={"query": "data quality", "size": 2, "page": 2}))

    assert list(first) == ["items", "total", "page", "size", "pages"]
    assert (first["total"], first["page"], first["size"], first["pages"]) == (3, 1, 2, 2)
    assert [list(item) for item in first["items"]] == [SEED_TICKET_KEYS] * 2
    assert len(second["items"]) == 1
    titles = {item["title"] for item in first["items"] + second["items"]}
    assert titles == {f"Data quality issue {i}" for i in (1, 2, 3)}
    assert first["items"][0]["status"] == "New"


def test_search_filters_by_status(
    host: Host, emulator: Emulator, integration: dict[str, Any]
) -> None:
    emulator.seed_incidents(1, short_description="Fresh")
    emulator.seed_incidents(1, short_description="Working", state="2")

    found = ok(host.api.get(SEARCH, params={"status": "2"}))

    assert [item["title"] for item in found["items"]] == ["Working"]


@pytest.mark.parametrize(
    ("param", "value"), [("size", 0), ("size", 101), ("page", 0), ("size", "many")]
)
def test_search_paging_out_of_range_is_422_naming_the_parameter(
    host: Host, integration: dict[str, Any], param: str, value: int | str
) -> None:
    response = host.api.get(SEARCH, params={param: value})

    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["detail"]] == [["query", param]]


def test_search_needs_an_integration(host: Host) -> None:
    response = host.api.get(SEARCH)

    assert response.status_code == 404
    assert "create one with POST /api/integrations" in response.json()["detail"]


def test_search_with_several_integrations_needs_integration_id(
    host: Host, emulator: Emulator, emulator_url: str
) -> None:
    create_integration(host, emulator_url)
    second = create_integration(host, emulator_url)
    emulator.seed_incidents(1)

    ambiguous = host.api.get(SEARCH)
    chosen = host.api.get(SEARCH, params={"integration_id": second["id"]})
    unknown = host.api.get(SEARCH, params={"integration_id": 999})

    assert ambiguous.status_code == 400
    assert ambiguous.json() == {"detail": "several integrations: pass integration_id"}
    assert ok(chosen)["total"] == 1
    assert unknown.status_code == 404


def test_a_failing_instance_is_502_with_its_reason(
    host: Host, emulator: Emulator, integration: dict[str, Any]
) -> None:
    emulator.add_fault("500")

    response = host.api.get(SEARCH)

    assert response.status_code == 502
    assert response.json() == {
        "detail": "ServiceNow is unavailable: Internal Server Error: Injected fault (emulator) "
        "(HTTP 500 Internal Server Error)"
    }


# -- create ----------------------------------------------------------------------------------------


def test_creating_a_ticket_describes_and_links_the_anomaly(
    host: Host, emulator: Emulator, ticket: dict[str, Any]
) -> None:
    created = ticket["ticket"]
    assert list(ticket) == ["ticket", "anomaly_id", "integration_id", "message"]
    assert list(created) == SEED_TICKET_KEYS
    assert ticket["anomaly_id"] == ANOMALY_ID
    assert (
        ticket["message"]
        == f"Ticket {created['ticket_number']} created and linked to anomaly 12345"
    )
    assert re.fullmatch(r"INC\d{7}", created["ticket_number"])
    assert created["title"] == TICKET_REQUEST["title"]
    assert created["description"] == TICKET_REQUEST["description"] + ANOMALY_BLOCK
    assert (created["status"], created["urgency"], created["impact"]) == ("New", "2", "2")
    assert (created["category"], created["subcategory"]) == ("Data", "Data Quality")
    assert created["assigned_to"] == "John Doe"
    assert re.fullmatch(SEED_TIME, created["created_at"])
    assert created["url"].endswith(f"/incident.do?sys_id={created['ticket_id']}")
    row = incident(emulator, created["ticket_id"])
    installation = host.runtime.database.installation_id
    assert re.fullmatch(rf"{installation}-[0-9a-f]{{32}}", row["correlation_id"])
    assert row["correlation_display"] == "Qualytics"
    assert row["assignment_group"] != ""


def test_a_retried_create_returns_the_first_ticket(
    host: Host, emulator: Emulator, ticket: dict[str, Any]
) -> None:
    again = ok(host.api.post(tickets_path(), json=TICKET_REQUEST))

    number = ticket["ticket"]["ticket_number"]
    assert again == ticket | {"message": f"Ticket {number} already linked to anomaly 12345"}
    assert len(emulator.incidents) == 1
    assert len(ok(host.api.get("/api/anomalies/12345/ticket-links"))) == 1


def test_an_idempotency_key_is_bound_to_its_request(
    host: Host, emulator: Emulator, integration: dict[str, Any], anomaly: dict[str, Any]
) -> None:
    headers = {"Idempotency-Key": "retry-7f3a"}
    retitled = TICKET_REQUEST | {"title": "Another request under the same key"}

    first = ok(host.api.post(tickets_path(), json=TICKET_REQUEST, headers=headers))
    again = ok(host.api.post(tickets_path(), json=TICKET_REQUEST, headers=headers))
    reused = host.api.post(tickets_path(), json=retitled, headers=headers)

    assert again["ticket"]["ticket_id"] == first["ticket"]["ticket_id"]
    assert reused.status_code == 409
    assert "used for a different request" in reused.json()["detail"]
    [row] = emulator.incidents
    # The provider gets this installation's digest of the key, never the caller's text.
    assert "retry-7f3a" not in row["correlation_id"]


def test_assignment_group_is_accepted_for_assigned_group(
    host: Host, emulator: Emulator, integration: dict[str, Any], anomaly: dict[str, Any]
) -> None:
    body = {k: v for k, v in TICKET_REQUEST.items() if k != "assigned_group"}

    created = ok(host.api.post(tickets_path(), json=body | {"assignment_group": "Network"}))

    row = incident(emulator, created["ticket"]["ticket_id"])
    assert row["assignment_group"] == next(g.sys_id for g in DEFAULT_GROUPS if g.name == "Network")


def test_choices_outside_the_providers_are_422_naming_each_field(
    host: Host, emulator: Emulator, integration: dict[str, Any], anomaly: dict[str, Any]
) -> None:
    response = host.api.post(tickets_path(), json=TICKET_REQUEST | {"priority": "9", "impact": 4})

    assert response.status_code == 422
    assert response.json()["detail"] == [
        {"type": "value_error", "loc": ["body", "priority"],
         "msg": "'9' is not one of: 1, 2, 3, 4, 5"},
        {"type": "value_error", "loc": ["body", "impact"], "msg": "'4' is not one of: 1, 2, 3"},
    ]  # fmt: skip
    assert emulator.incidents == []


def test_fields_the_provider_has_are_required(
    host: Host, emulator: Emulator, integration: dict[str, Any], anomaly: dict[str, Any]
) -> None:
    request = {k: v for k, v in TICKET_REQUEST.items() if k != "urgency"}

    response = host.api.post(tickets_path(), json=request)

    assert response.status_code == 422
    assert response.json()["detail"] == [
        {"type": "value_error", "loc": ["body", "urgency"],
         "msg": "required by this provider: one of 1, 2, 3"},
    ]  # fmt: skip
    assert emulator.incidents == []


@pytest.mark.parametrize(
    "change",
    [
        {"priority": None},
        {"title": "   "},
        {"severity": "1"},
        {"integration_id": "first"},
    ],
)
def test_a_bad_ticket_request_is_422(
    host: Host, emulator: Emulator, integration: dict[str, Any], anomaly: dict[str, Any],
    change: dict[str, Any],
) -> None:  # fmt: skip
    response = host.api.post(tickets_path(), json=TICKET_REQUEST | change)

    assert response.status_code == 422
    assert emulator.incidents == []


def test_a_ticket_for_an_unknown_anomaly_is_404(
    host: Host, emulator: Emulator, integration: dict[str, Any]
) -> None:
    response = host.api.post(tickets_path(999), json=TICKET_REQUEST)

    assert response.status_code == 404
    assert response.json() == {"detail": "anomaly 999 does not exist"}
    assert emulator.incidents == []


# -- link ------------------------------------------------------------------------------------------


@pytest.fixture
def existing(emulator: Emulator) -> dict[str, str]:
    """An incident a ServiceNow agent opened before anyone linked it."""
    [row] = emulator.seed_incidents(1, description="Orders load stopped at 02:00.")
    return row


@pytest.mark.parametrize("by", ["ticket_number", "ticket_id"])
def test_linking_appends_the_anomaly_once_and_notes_the_link(
    host: Host,
    emulator: Emulator,
    integration: dict[str, Any],
    anomaly: dict[str, Any],
    existing: dict[str, str],
    by: str,
) -> None:
    reference = existing["number" if by == "ticket_number" else "sys_id"]

    linked = ok(host.api.post(links_path(), json={by: reference}))
    again = ok(host.api.post(links_path(), json={by: reference}))

    assert linked["message"] == f"Ticket {existing['number']} linked to anomaly 12345"
    assert linked["ticket"]["ticket_id"] == existing["sys_id"]
    assert again["ticket"]["ticket_id"] == existing["sys_id"]
    assert incident(emulator, existing["sys_id"])["description"] == (
        "Orders load stopped at 02:00." + ANOMALY_BLOCK
    )
    settled(host)  # the linkage note is delivered after the answer
    assert work_notes(emulator, existing["sys_id"]) == [
        f"Linked to Qualytics anomaly 12345: {PUBLIC_URL}/anomalies/12345"
    ]
    assert len(ok(host.api.get("/api/anomalies/12345/ticket-links"))) == 1


@pytest.mark.parametrize(
    "body",
    [{}, {"ticket_id": "a" * 32, "ticket_number": "INC0010001"}, {"ticket_number": " "}],
)
def test_linking_needs_exactly_one_reference(
    host: Host, integration: dict[str, Any], anomaly: dict[str, Any], body: dict[str, str]
) -> None:
    response = host.api.post(links_path(), json=body)

    assert response.status_code == 422


@pytest.mark.parametrize(
    ("body", "status"),
    [({"ticket_number": "INC9999999"}, 404), ({"ticket_id": "0" * 32}, 404),
     ({"ticket_id": "not/a/sys_id"}, 422)],
)  # fmt: skip
def test_linking_a_ticket_that_is_not_there(
    host: Host,
    integration: dict[str, Any],
    anomaly: dict[str, Any],
    body: dict[str, str],
    status: int,
) -> None:
    response = host.api.post(links_path(), json=body)

    assert response.status_code == status
    assert isinstance(response.json()["detail"], str)


# -- links list ------------------------------------------------------------------------------------


def test_ticket_links_are_listed_in_the_seed_shape(
    host: Host, ticket: dict[str, Any], existing: dict[str, str]
) -> None:
    ok(host.api.post(links_path(), json={"ticket_number": existing["number"]}))

    links = ok(host.api.get("/api/anomalies/12345/ticket-links"))

    assert [list(link) for link in links] == [
        ["id", "anomaly_id", "integration_id", "ticket_id", "ticket_number", "ticket_url",
         "status", "last_synced", "ticket_metadata", "created"]
    ] * 2  # fmt: skip
    first, second = links
    assert first["ticket_id"] == ticket["ticket"]["ticket_id"]
    assert first["ticket_number"] == ticket["ticket"]["ticket_number"]
    assert first["ticket_url"] == ticket["ticket"]["url"]
    assert (first["anomaly_id"], first["integration_id"]) == (12345, ticket["integration_id"])
    assert (first["status"], first["ticket_metadata"]) == ("New", None)
    assert re.fullmatch(SEED_TIME, first["last_synced"])
    assert re.fullmatch(SEED_TIME, first["created"])
    assert second["ticket_number"] == existing["number"]


def test_ticket_links_of_an_unknown_anomaly_are_404(host: Host) -> None:
    assert host.api.get("/api/anomalies/999/ticket-links").status_code == 404


@pytest.mark.parametrize(
    ("params", "field", "message"),
    [
        (
            {"status": "Bogus"},
            "status",
            "'Bogus' is not one of: 1, 2, 3, 6, 7, 8, New, In Progress",
        ),
        ({"priority": "9"}, "priority", "'9' is not one of: 1, 2, 3, 4, 5"),
    ],
)
def test_search_filters_outside_the_providers_choices_are_422(
    host: Host, integration: dict[str, Any], params: dict[str, str], field: str, message: str
) -> None:
    response = host.api.get("/api/integrations/ticketing/tickets/search", params=params)

    assert response.status_code == 422
    (detail,) = response.json()["detail"]
    assert detail["loc"] == ["query", field]
    assert detail["msg"].startswith(message)


def test_search_accepts_status_labels_and_codes(
    host: Host, integration: dict[str, Any], ticket: dict[str, Any]
) -> None:
    for status in ("New", "1"):
        page = ok(host.api.get("/api/integrations/ticketing/tickets/search",
                               params={"status": status}))  # fmt: skip
        assert page["total"] == 1


def test_unpaired_surrogates_are_422_not_500(host: Host, anomaly: dict[str, Any]) -> None:
    response = host.api.post(
        f"/api/anomalies/{ANOMALY_ID}/comments",
        content=b'{"message": "bad \\ud800 text"}',
        headers={"Content-Type": "application/json"},
    )

    assert response.status_code == 422
