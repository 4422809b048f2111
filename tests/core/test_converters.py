from datetime import UTC, datetime

import pytest

from ticketing_core.converters import structure, unstructure
from ticketing_core.errors import InvalidInput
from ticketing_core.models import Page, SearchQuery, Ticket

SEED_TICKET_KEYS = [
    "ticket_id", "ticket_number", "title", "description", "status", "priority", "urgency", "impact",
    "category", "subcategory", "created_at", "updated_at", "assigned_to", "url",
]  # fmt: skip


def make_ticket(**overrides: object) -> Ticket:
    fields: dict[str, object] = {
        "id": "abc123sys_id",
        "number": "INC0010042",
        "title": "Data quality issue in production",
        "description": "Missing values detected...",
        "status": "New",
        "priority": "3",
        "created_at": datetime(2024, 1, 15, 10, 30, tzinfo=UTC),
        "updated_at": datetime(2024, 1, 15, 14, 22, tzinfo=UTC),
        "assigned_to": "John Doe",
        "assignment_group": "Data Engineering",
        "url": "https://x.service-now.com/incident.do?sys_id=abc123sys_id",
        "extras": {"correlation_id": "k"},
    }
    return Ticket(**(fields | overrides))  # type: ignore[arg-type]


def test_ticket_has_exactly_the_seed_keys_in_order() -> None:
    data = unstructure(make_ticket())

    assert list(data) == SEED_TICKET_KEYS
    assert data["ticket_id"] == "abc123sys_id"
    assert data["ticket_number"] == "INC0010042"
    assert data["created_at"] == "2024-01-15T10:30:00"
    assert data["assigned_to"] == "John Doe"
    assert data["urgency"] is None


def test_times_are_written_in_utc() -> None:
    from datetime import timedelta, timezone

    plus_two = timezone(timedelta(hours=2))
    data = unstructure(make_ticket(created_at=datetime(2024, 1, 15, 12, 30, tzinfo=plus_two)))

    assert data["created_at"] == "2024-01-15T10:30:00"


def test_page_shape_counts_pages() -> None:
    page = Page(items=(make_ticket(),), total=45, page=1, size=20)

    data = unstructure(page)

    assert list(data) == ["items", "total", "page", "size", "pages"]
    assert data["pages"] == 3
    assert list(data["items"][0]) == SEED_TICKET_KEYS


def test_ticket_round_trips_through_the_seed_shape() -> None:
    ticket = make_ticket(extras={}, assignment_group=None)

    assert structure(unstructure(ticket), Ticket) == ticket


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"page": 0}, "page must be 1 or more, got 0"),
        ({"size": 101}, "size must be between 1 and 100, got 101"),
        ({"size": "many"}, "invalid value"),
        ({"colour": "red"}, "extra fields found (colour)"),
    ],
)
def test_search_query_input_errors_name_the_problem(data: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace(")", r"\)")):
        structure(data, SearchQuery)
