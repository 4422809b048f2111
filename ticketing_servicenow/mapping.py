"""Incident records <-> canonical tickets: wire names, state labels, display values, queries."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import attrs
import cattrs

from ticketing_core.errors import InvalidInput
from ticketing_core.models import SearchQuery, Ticket, TicketChanges, TicketDraft, TicketStatus

STATE_LABELS = {
    "1": "New",
    "2": "In Progress",
    "3": "On Hold",
    "6": "Resolved",
    "7": "Closed",
    "8": "Canceled",
}
STATE_CODES = {label.lower(): code for code, label in STATE_LABELS.items()}

# The fields a Ticket is built from; asking only for these keeps responses small.
TICKET_FIELDS = (
    "sys_id", "number", "short_description", "description", "state", "priority", "urgency", "impact",
    "category", "subcategory", "assigned_to", "assignment_group", "sys_created_on", "sys_updated_on",
    "correlation_id", "correlation_display", "sys_updated_by", "sys_mod_count",
)  # fmt: skip
EXTRA_FIELDS = ("correlation_id", "correlation_display")
# Incident fields an update may set besides the canonical ones (whose ServiceNow names, such as
# ``state``, are refused so their choices are checked). System fields (``sys_*``, ``number``) and the
# key in ``correlation_id`` are never written.
EXTRA_FIELDS_WRITABLE = (
    "business_service", "caller_id", "caused_by", "close_code", "close_notes", "cmdb_ci", "company",
    "contact_type", "due_date", "hold_reason", "location", "notify", "parent_incident", "problem_id",
    "rfc", "severity",
)  # fmt: skip
CUSTOM_FIELD_PREFIX = "u_"
TEXT_SEARCH_FIELDS = ("short_description", "description", "number")
# Stable paging needs a total order: newest first, sys_id breaks ties.
SEARCH_ORDER = "ORDERBYDESCsys_created_on^ORDERBYsys_id"
CORRELATION_ID_MAX_LENGTH = 100

_CANONICAL_TO_WIRE = {"title": "short_description", "status": "state", "resolution": "close_notes"}
DEFAULT_CLOSE_CODE = "Solved (Permanently)"


@attrs.frozen
class FieldValue:
    """One field read with ``sysparm_display_value=all``: stored value and what users see."""

    value: str = ""
    display: str = ""


def _field_value(data: Any, _: type) -> FieldValue:
    # Lenient: accept the "all" shape, a reference {"value", "link"} or a plain string.
    if isinstance(data, Mapping):
        value = str(data.get("value") or "")
        return FieldValue(value, str(data.get("display_value") or value))
    text = "" if data is None else str(data)
    return FieldValue(text, text)


@attrs.frozen
class IncidentRecord:
    """The incident fields we read, as ServiceNow names them."""

    sys_id: FieldValue
    number: FieldValue = FieldValue()
    short_description: FieldValue = FieldValue()
    description: FieldValue = FieldValue()
    state: FieldValue = FieldValue()
    priority: FieldValue = FieldValue()
    urgency: FieldValue = FieldValue()
    impact: FieldValue = FieldValue()
    category: FieldValue = FieldValue()
    subcategory: FieldValue = FieldValue()
    assigned_to: FieldValue = FieldValue()
    assignment_group: FieldValue = FieldValue()
    sys_created_on: FieldValue = FieldValue()
    sys_updated_on: FieldValue = FieldValue()
    correlation_id: FieldValue = FieldValue()
    correlation_display: FieldValue = FieldValue()
    sys_updated_by: FieldValue = FieldValue()
    sys_mod_count: FieldValue = FieldValue()


wire = cattrs.Converter()  # lenient: instances return many more fields than we read
wire.register_structure_hook(FieldValue, _field_value)


def state_label(code: str) -> str:
    """The label for a state code; an unknown code (a custom state) is shown as it is."""
    return STATE_LABELS.get(code, code)


def status_of(state: FieldValue) -> str:
    """A state's label as the instance displays it (its own ``sys_choice``); read without
    display values, the base system's label for the code."""
    return state.display if state.display != state.value else state_label(state.value)


def state_code(status: str) -> str:
    """A state code from a label ("In Progress") or a code ("2")."""
    return STATE_CODES.get(status.strip().lower(), status.strip())


def to_ticket(data: Mapping[str, Any], api_url: str) -> Ticket:
    record = wire.structure(data, IncidentRecord)
    sys_id = record.sys_id.value
    return Ticket(
        id=sys_id,
        number=record.number.value,
        title=record.short_description.value,
        description=record.description.value,
        status=status_of(record.state),
        priority=record.priority.value or None,
        urgency=record.urgency.value or None,
        impact=record.impact.value or None,
        category=record.category.value or None,
        subcategory=record.subcategory.value or None,
        assigned_to=record.assigned_to.display or None,
        assignment_group=record.assignment_group.display or None,
        created_at=_parse_glide_time(record.sys_created_on.value),
        updated_at=_parse_glide_time(record.sys_updated_on.value),
        url=ticket_url(api_url, sys_id),
        extras={name: getattr(record, name).value for name in EXTRA_FIELDS},
        updated_by=record.sys_updated_by.value or None,
        revision=_revision(record.sys_mod_count.value),
    )


def to_status(data: Mapping[str, Any]) -> TicketStatus:
    state = _field_value(data.get("state"), FieldValue)
    return TicketStatus(code=state.value, label=status_of(state))


def revision_of(data: Mapping[str, Any]) -> int | None:
    """The record's ``sys_mod_count``, read raw or with display values; None if unreadable."""
    return _revision(_field_value(data.get("sys_mod_count"), FieldValue).value)


def _revision(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


def ticket_url(api_url: str, sys_id: str) -> str:
    return f"{api_url}/incident.do?sys_id={sys_id}"


def _parse_glide_time(text: str) -> datetime | None:
    # Raw (non-display) glide date-times are "YYYY-MM-DD HH:MM:SS" in UTC.
    if not text:
        return None
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)


def draft_payload(draft: TicketDraft, idempotency_key: str | None) -> dict[str, str]:
    """The POST body: the seed's fields plus correlation so a retried create can find its record."""
    payload = {
        "short_description": draft.title,
        "description": draft.description,
        "priority": draft.priority,
        "urgency": draft.urgency,
        "impact": draft.impact,
        "category": draft.category,
        "subcategory": draft.subcategory,
        "assigned_to": draft.assigned_to,
        "assignment_group": draft.assignment_group,
        "correlation_id": idempotency_key or draft.external_id,
        "correlation_display": draft.external_source,
    }
    return {key: value for key, value in payload.items() if value is not None} | dict(draft.fields)


def changes_payload(
    changes: TicketChanges, *, close_code: str = DEFAULT_CLOSE_CODE
) -> dict[str, str]:
    """The PATCH body: only the given fields, under their ServiceNow names.

    A resolution becomes ``close_notes`` with ``close_code``: the data policy most instances have
    refuses to resolve or close without both.
    """
    payload: dict[str, str] = {}
    for attribute in attrs.fields(TicketChanges):
        value = getattr(changes, attribute.name)
        if attribute.name == "fields" or value is None:
            continue
        if attribute.name == "status":
            value = state_code(value)
        if attribute.name == "resolution":
            payload["close_code"] = close_code
        payload[_CANONICAL_TO_WIRE.get(attribute.name, attribute.name)] = value
    if journal := sorted(set(changes.fields) & set(JOURNAL_FIELDS)):
        # A journal write is an append, not a setting: repeating the PATCH would add it twice.
        raise InvalidInput(f"{', '.join(journal)} cannot be updated: add a work note instead")
    return payload | dict(changes.fields)


def escape_query_value(value: str) -> str:
    """``^`` separates encoded-query terms; ServiceNow reads ``^^`` as a literal caret."""
    return value.replace("^", "^^")


def search_query(query: SearchQuery) -> str:
    """The encoded query for a search: text in any text field, AND the filters, then a total order.

    ``^OR`` binds tighter than ``^``, so ``a^ORb^c`` reads (a OR b) AND c.
    """
    terms: list[str] = []
    if query.text and query.text.strip():
        text = escape_query_value(query.text.strip())
        terms.append("^OR".join(f"{field}LIKE{text}" for field in TEXT_SEARCH_FIELDS))
    if query.status:
        terms.append(f"state={escape_query_value(state_code(query.status))}")
    if query.priority:
        terms.append(f"priority={escape_query_value(query.priority.strip())}")
    return "^".join([*terms, SEARCH_ORDER])


# Fields whose writes append to the journal rather than set a value.
JOURNAL_FIELDS = ("work_notes", "comments")

# A journal field's display value is its entries, newest first, each a header line
# ``<when> - <who> (<label>)`` (in the reader's locale and date format), the text as stored, and a
# blank line. A text may hold the same shapes, so what we write is escaped to keep the split exact.
# The checks below are plain string scans: texts are up to 100,000 characters, and a backtracking
# pattern over such a line takes seconds.
# Invisible, and never the first character of a real header (those start with a date).
JOURNAL_ESCAPE = "\u200b"


def is_journal_header(line: str) -> bool:
    """Whether a line has a journal header's shape: ``<anything> - <anything> (<label>)``, the
    label free of parentheses."""
    opening = line.rfind("(")
    return (
        line.endswith(")")
        and opening > 0
        and line[opening - 1] == " "
        and ")" not in line[opening + 1 : -1]
        and opening + 1 < len(line) - 1
        and " - " in line[: opening - 1]
    )


def journal_entries(journal: str) -> list[str]:
    """The texts of a journal field's display value, newest first.

    An entry starts with a header-shaped line, first or after a blank line that ends the previous
    entry's text (not its header). Exact for texts written through :func:`journal_safe`, which
    escapes every header-shaped line after a blank line.
    """
    lines = journal.split("\n")
    starts: list[int] = []
    for k, line in enumerate(lines[:-1]):  # a header line ends with a newline
        # After the newline ending a line and a blank line's, neither part of the last header.
        after_blank = k == 0 or (
            k >= 2 and not lines[k - 1] and (not starts or k >= starts[-1] + 3)
        )
        if after_blank and not line.startswith(JOURNAL_ESCAPE) and is_journal_header(line):
            starts.append(k)
    if not starts:
        return []
    ends = [start - 1 for start in starts[1:]] + [len(lines)]
    texts = ["\n".join(lines[start + 1 : end]) for start, end in zip(starts, ends, strict=True)]
    texts[-1] = texts[-1].removesuffix("\n\n")
    return texts


def count_journal_entries(journal: str, text: str) -> int:
    """How many entries of a journal field's display value hold exactly ``text``."""
    return sum(entry == text for entry in journal_entries(journal))


def journal_safe(text: str) -> str:
    """``text`` as it is written to a journal field: unchanged, unless it holds a ``[code]`` tag,
    a header-shaped line after a blank line (which could pass for the start of another entry), or
    starts or ends with white space or a control character (which an instance trimming entries
    would drop); those get an
    invisible escape (U+200B) before the line, after the ``[`` or at that end. So does the escape
    itself in those places.

    One-to-one, so two different texts are never written the same, and counting a text's entries
    (:func:`count_journal_entries`) counts the writes of that text alone.
    """
    lines = _without_code_tags(text).split("\n")
    for n in range(1, len(lines)):
        line = lines[n]
        if not lines[n - 1] and (line.startswith(JOURNAL_ESCAPE) or is_journal_header(line)):
            lines[n] = JOURNAL_ESCAPE + line
    safe = "\n".join(lines)
    if _trimmable(safe[:1]):
        safe = JOURNAL_ESCAPE + safe
    if _trimmable(safe[-1:]):
        safe += JOURNAL_ESCAPE
    return safe


def _trimmable(char: str) -> bool:
    """Whether a trim could drop ``char`` from an end: white space as Python, Java (control
    characters too) or JavaScript (the byte-order mark) see it; or the escape, kept one-to-one."""
    return bool(char) and (char.isspace() or char <= " " or char in ("\ufeff", JOURNAL_ESCAPE))


def _without_code_tags(text: str) -> str:
    """An escape after every ``[`` that opens a ``[code]`` or ``[/code]`` tag (the journal renders
    the text between them as raw HTML) or that the escape already follows."""
    pieces, copied = [], 0
    for at in _positions(text, "["):
        if text.startswith(JOURNAL_ESCAPE, at + 1) or _opens_code_tag(text, at + 1):
            pieces.append(text[copied : at + 1] + JOURNAL_ESCAPE)
            copied = at + 1
    return "".join(pieces) + text[copied:]


def _positions(text: str, char: str) -> Iterator[int]:
    at = text.find(char)
    while at >= 0:
        yield at
        at = text.find(char, at + 1)


def _opens_code_tag(text: str, at: int) -> bool:
    """Whether ``text[at:]`` reads ``code]`` or ``/code]``, with white space around the parts and
    in any case, as ServiceNow reads the tag. Stops at the first character out of place."""

    def spaces(at: int) -> int:
        while at < len(text) and text[at].isspace():
            at += 1
        return at

    at = spaces(at)
    if text.startswith("/", at):
        at = spaces(at + 1)
    if text[at : at + 4].lower() != "code":
        return False
    at = spaces(at + 4)
    return text.startswith("]", at)
