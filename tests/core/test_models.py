import attrs
import pytest

from ticketing_core.errors import InvalidInput
from ticketing_core.models import Page, SearchQuery, TicketChanges, TicketDraft


def test_search_query_offset_follows_page_and_size() -> None:
    assert SearchQuery(page=3, size=20).offset == 40


@pytest.mark.parametrize("size", [0, 101, -1])
def test_search_query_rejects_sizes_outside_1_to_100(size: int) -> None:
    with pytest.raises(InvalidInput, match="size must be between 1 and 100"):
        SearchQuery(size=size)


def test_search_query_rejects_page_below_1() -> None:
    with pytest.raises(InvalidInput, match="page must be 1 or more"):
        SearchQuery(page=0)


@pytest.mark.parametrize(("total", "pages"), [(0, 0), (1, 1), (20, 1), (21, 2), (45, 3)])
def test_page_counts_pages(total: int, pages: int) -> None:
    assert Page(items=(), total=total, page=1, size=20).pages == pages


def test_draft_needs_a_title() -> None:
    with pytest.raises(InvalidInput, match="title must not be empty"):
        TicketDraft(title="  ", description="d")


def test_records_are_frozen() -> None:
    draft = TicketDraft(title="t", description="d")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        draft.title = "other"  # type: ignore[misc]


def test_changes_know_when_they_are_empty() -> None:
    assert TicketChanges().is_empty()
    assert not TicketChanges(status="Resolved").is_empty()
    assert not TicketChanges(fields={"close_code": "Solved"}).is_empty()
