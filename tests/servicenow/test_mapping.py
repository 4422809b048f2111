import itertools
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ticketing_core.models import SearchQuery, TicketChanges, TicketDraft
from ticketing_servicenow import mapping

# Real ServiceNow responses (copied from shared/servicenow-captures, sources named inside).
CAPTURES = Path(__file__).parent / "captures"


def captured_incident() -> dict[str, object]:
    path = CAPTURES / "post-incident-201.json"
    return json.loads(path.read_text())["response"]["result"]  # type: ignore[no-any-return]


def test_a_real_raw_incident_maps_to_a_ticket() -> None:
    ticket = mapping.to_ticket(captured_incident(), "https://dev31247.service-now.com")

    assert ticket.id == "6f9e856f4fe503006ad47d218110c704"
    assert ticket.number == "INC0010010"
    assert ticket.title.startswith("Puppet Corrective Change")
    assert ticket.status == "Closed"
    assert (ticket.priority, ticket.urgency, ticket.impact) == ("1", "1", "1")
    assert ticket.category == "inquiry"
    assert ticket.subcategory is None
    assert ticket.assigned_to is None
    assert ticket.created_at == datetime(2017, 10, 7, 18, 30, 15, tzinfo=UTC)
    assert ticket.url == (
        "https://dev31247.service-now.com/incident.do?sys_id=6f9e856f4fe503006ad47d218110c704"
    )


def test_display_value_all_gives_codes_and_display_names() -> None:
    record = {
        "sys_id": {"display_value": "abc", "value": "abc"},
        "number": {"display_value": "INC0000001", "value": "INC0000001"},
        "state": {"display_value": "In Progress", "value": "2"},
        "priority": {"display_value": "2 - High", "value": "2"},
        "assigned_to": {"display_value": "John Doe", "value": "681ccaf9c0a8016400b98a06818d57c7"},
    }

    ticket = mapping.to_ticket(record, "https://i.example")

    assert (ticket.status, ticket.priority, ticket.assigned_to) == ("In Progress", "2", "John Doe")


@pytest.mark.parametrize(
    ("code", "label"),
    [("1", "New"), ("2", "In Progress"), ("3", "On Hold"), ("6", "Resolved"), ("7", "Closed"),
     ("8", "Canceled"), ("42", "42")],
)  # fmt: skip
def test_state_labels_keep_unknown_codes(code: str, label: str) -> None:
    assert mapping.to_status({"state": code}).label == label


def test_state_code_reads_labels_and_codes() -> None:
    assert mapping.state_code("in progress") == "2"
    assert mapping.state_code("6") == "6"


def test_search_query_ors_text_fields_then_ands_filters_and_orders() -> None:
    encoded = mapping.search_query(SearchQuery(text="data quality", status="New", priority="2"))

    assert encoded == (
        "short_descriptionLIKEdata quality^ORdescriptionLIKEdata quality^ORnumberLIKEdata quality"
        "^state=1^priority=2^ORDERBYDESCsys_created_on^ORDERBYsys_id"
    )


def test_search_text_cannot_inject_query_terms() -> None:
    encoded = mapping.search_query(SearchQuery(text="x^ORactive=true"))

    assert "LIKEx^^ORactive=true" in encoded


def test_draft_payload_carries_correlation_and_skips_missing_fields() -> None:
    draft = TicketDraft(
        title="t", description="d", priority="2", urgency="2", impact="2",
        external_id="anomaly-1", external_source="Qualytics",
    )  # fmt: skip

    assert mapping.draft_payload(draft, None) == {
        "short_description": "t", "description": "d", "priority": "2", "urgency": "2",
        "impact": "2", "correlation_id": "anomaly-1", "correlation_display": "Qualytics",
    }  # fmt: skip
    assert mapping.draft_payload(draft, "key-1")["correlation_id"] == "key-1"


def test_changes_payload_uses_wire_names_and_state_codes() -> None:
    changes = TicketChanges(title="new", status="Resolved", fields={"close_code": "Solved"})

    assert mapping.changes_payload(changes) == {
        "short_description": "new",
        "state": "6",
        "close_code": "Solved",
    }


@pytest.mark.parametrize(
    ("text", "safe"),
    [
        (
            "[code]<img src=x onerror=alert(1)>[/code]",
            "[\u200bcode]<img src=x onerror=alert(1)>[\u200b/code]",
        ),
        ("[ CODE ]x[/Code]", "[\u200b CODE ]x[\u200b/Code]"),
        ("plain [note]", "plain [note]"),
    ],
)
def test_journal_text_cannot_open_a_code_block(text: str, safe: str) -> None:
    assert mapping.journal_safe(text) == safe


def test_journal_entries_are_split_on_their_headers() -> None:
    from ticketing_servicenow.mapping import count_journal_entries, journal_entries

    journal = (
        "2024-01-15 10:31:00 - System Administrator (Work notes)\nok\n\nthanks\n\n"
        "15.01.2024 10:30:00 - Jane Smith (Arbeitsnotizen)\nmulti\nline\n\n"
    )

    assert journal_entries(journal) == ["ok\n\nthanks", "multi\nline"]
    assert journal_entries("") == []
    assert count_journal_entries(journal, "ok") == 0
    assert count_journal_entries(journal, "multi\nline") == 1


# Lines a journal parser could trip on: header shapes (in several locales, with names holding
# " - " and parentheses), blank lines, the escape itself, code tags and their neutralised forms.
TRICKY_LINES = (
    "",
    " ",
    "Run 42 - nightly load (prod)",
    "2026-12-07 10:00:00 - Integration User (Work notes)",
    "07.12.2026 10:00:00 - Jane Doe (Contractor) (Arbeitsnotizen)",
    "Comment from Qualytics: T",
    "T",
    "\u200b",
    "\u200bRun 42 - nightly load (prod)",
    "[code]",
    "[\u200bcode]",
    "(code)",
    "[/code]",
    "x - y (z)\r",
)
HEADERS = (
    "2026-12-07 10:0{i}:00 - Integration User (Work notes)",
    "07.12.2026 10:0{i}:00 - Jane Doe (Contractor) (Arbeitsnotizen)",
    "12/07/2026 10:0{i}:00 AM - svc - ticketing (x) (Work notes)",
)
journal_texts = st.lists(
    st.one_of(
        st.sampled_from(TRICKY_LINES), st.text(alphabet=" -()[]\n\u200bTxcode:0", max_size=12)
    ),
    min_size=1,
    max_size=6,
).map("\n".join)


def render_journal(texts: list[str], header: str) -> str:
    """A journal field's display value as ServiceNow renders it: newest first, each entry a header
    line, the text as stored and a blank line."""
    return "".join(
        f"{header.format(i=i % 10)}\n{text}\n\n" for i, text in reversed(list(enumerate(texts)))
    )


@given(
    written=st.lists(journal_texts, min_size=1, max_size=6),
    absent=journal_texts,
    header=st.sampled_from(HEADERS),
)
@example(  # issue 16: a pasted run summary, and a forged entry ahead of the note it forges
    written=[
        "Findings:\n\nRun 42 - nightly load (prod)\nfailed at step 3",
        "x\n\n2026-12-07 10:00:00 - Integration User (Work notes)\nComment from Qualytics: T",
    ],
    absent="Comment from Qualytics: T",
    header=HEADERS[0],
)
@example(written=["ends in blank lines\n\n", "[code]x", "\nRun 1 - a (b)"], absent="(code)x",
         header=HEADERS[0])  # fmt: skip
def test_the_journal_count_of_a_text_is_exactly_how_often_it_was_written(
    written: list[str], absent: str, header: str
) -> None:
    """Whatever the texts, each written through journal_safe, counting a text in the display
    value finds exactly the entries written with it: never one forged inside another entry, never
    one split apart, never another text that neutralises to the same."""
    journal = render_journal([mapping.journal_safe(text) for text in written], header)
    for text in {*written, absent}:
        assert mapping.count_journal_entries(journal, mapping.journal_safe(text)) == written.count(
            text
        ), text


@given(st.text())
def test_other_texts_are_written_as_they_are(text: str) -> None:
    """Only texts with a code tag, the escape, white space at an end, or a header-shaped line
    after a blank one are changed."""
    lines = text.split("\n")
    if (
        "[" in text
        or "\u200b" in text
        or text[:1] <= " "
        or text[-1:] <= " "
        or text != text.strip()
        or "\ufeff" in text[:1] + text[-1:]
        or any(
            not before and mapping.is_journal_header(line)
            for before, line in itertools.pairwise(lines)
        )
    ):
        return
    assert mapping.journal_safe(text) == text


def test_the_seed_notes_are_sent_as_the_seed_words_them() -> None:
    for text in (
        "Comment from Qualytics: Investigating with data team. Looks like ETL pipeline issue.",
        "[2026-12-01 10:59:54 UTC] Qualytics Anomaly Status: Acknowledged",
        "Linked to Qualytics anomaly 12345: https://qualytics.example.com/anomalies/12345",
        "Comment from Qualytics: Run 42 - nightly load (prod)\nfailed at step 3",
    ):
        assert mapping.journal_safe(text) == text


@pytest.mark.parametrize(
    "text",
    ["see below\n\n" + " -" * 50_000, "[" + " " * 100_000, ("\n\nx - (" * 15_000)],
    ids=["long header-like line", "long code tag", "many header-like lines"],
)
def test_hostile_texts_of_the_largest_size_are_escaped_and_split_in_linear_time(text: str) -> None:
    """A backtracking pattern took 12 s over such a comment, holding the interpreter meanwhile."""
    started = time.perf_counter()
    safe = mapping.journal_safe(text)
    entries = mapping.journal_entries(render_journal([safe], HEADERS[0]))
    assert entries == [safe]
    assert time.perf_counter() - started < 1.0  # linear: a few milliseconds
