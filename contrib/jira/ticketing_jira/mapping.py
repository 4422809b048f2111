"""Jira issues <-> canonical tickets: fields, labels, JQL, transitions and Jira's error body."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from ticketing_core.errors import InvalidInput, UnexpectedResponse
from ticketing_core.http import is_json, json_body, status_line
from ticketing_core.models import (
    JournalEntry,
    SearchQuery,
    Ticket,
    TicketChanges,
    TicketDraft,
    TicketStatus,
)
from ticketing_jira.adf import adf_to_text, text_to_adf

# The fields a Ticket is built from; asking only for these keeps responses small.
TICKET_FIELDS = (
    "summary", "description", "status", "priority", "assignee", "labels", "created", "updated",
)  # fmt: skip
# Inbound reads add what tells who changed an issue last (see inbound.last_changed_by).
INBOUND_FIELDS = (*TICKET_FIELDS, "creator", "comment")
# Stable paging needs a total order: newest first, the key breaks ties.
SEARCH_ORDER = "ORDER BY created DESC, key DESC"
OLDEST_FIRST = "ORDER BY created ASC, key ASC"
IDEMPOTENCY_LABEL_PREFIX = "ticketing-key-"
LABEL_MAX_LENGTH = 255
# The comment property a keyed note carries: {"key": NOTE_KEY_PROPERTY, "value": {"key": <key>}}.
NOTE_KEY_PROPERTY = "ticketing.idempotency"
_JIRA_TIME = "%Y-%m-%dT%H:%M:%S.%f%z"  # 2024-01-15T10:30:00.000+0000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# ---- issues -> tickets ------------------------------------------------------------------------


def to_ticket(issue: Mapping[str, Any], api_url: str, *, updated_by: str | None = None) -> Ticket:
    if not issue.get("id") or not issue.get("key"):
        raise UnexpectedResponse("Jira's issue has no id or key")
    fields: Mapping[str, Any] = issue.get("fields") or {}
    status: Mapping[str, Any] = fields.get("status") or {}
    key = str(issue["key"])
    updated = parse_time(fields.get("updated"))
    return Ticket(
        id=str(issue["id"]),
        number=key,
        title=str(fields.get("summary") or ""),
        description=adf_to_text(fields.get("description")),
        status=str(status.get("name") or ""),
        priority=_text(fields.get("priority"), "name"),
        assigned_to=_text(fields.get("assignee"), "displayName"),
        created_at=parse_time(fields.get("created")),
        updated_at=updated,
        url=f"{api_url}/browse/{key}",
        extras={
            "status_category": _text(status.get("statusCategory"), "key") or "",
            "labels": ",".join(fields.get("labels") or []),
        },
        # Jira keeps no change counter; its millisecond ``updated`` rises with every change.
        updated_by=updated_by,
        revision=None if updated is None else epoch_ms(updated),
    )


def epoch_ms(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def to_journal_entry(comment: Mapping[str, Any], ticket_id: str) -> JournalEntry:
    """A comment as a journal entry: internal ones (``jsdPublic`` false: a service desk's
    agents-only comments) are work notes, the others comments."""
    author = comment.get("author") or {}
    created = parse_time(comment.get("created"))
    if not comment.get("id") or created is None:
        raise UnexpectedResponse("Jira's comment has no id or creation time")
    return JournalEntry(
        id=str(comment["id"]),
        ticket_id=ticket_id,
        kind="work_note" if comment.get("jsdPublic") is False else "comment",
        text=adf_to_text(comment.get("body")),
        author=str(author.get("accountId") or ""),
        created_at=created,
    )


def to_status(issue: Mapping[str, Any]) -> TicketStatus:
    return status_of((issue.get("fields") or {}).get("status") or {})


def status_of(status: Mapping[str, Any]) -> TicketStatus:
    return TicketStatus(code=str(status.get("id") or ""), label=str(status.get("name") or ""))


def parse_time(text: Any) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.strptime(str(text), _JIRA_TIME).astimezone(UTC)
    except ValueError:
        raise UnexpectedResponse(f"Jira sent an unreadable time {text!r}") from None


def _text(value: Any, key: str) -> str | None:
    """``value[key]`` of an object field (priority, assignee), or None when unset."""
    return str(value[key]) if isinstance(value, Mapping) and value.get(key) else None


# ---- tickets -> issue fields ------------------------------------------------------------------


def draft_fields(
    draft: TicketDraft, *, project: str, issue_type: str, key_label: str | None
) -> dict[str, Any]:
    """The create body's ``fields``; what Jira has no field for travels as labels.

    Assignment, urgency and impact have no Jira equivalent here and are left out.
    """
    fields: dict[str, Any] = {
        "project": {"key": project},
        "issuetype": {"name": issue_type},
        "summary": draft.title,
        "labels": labels(key_label, _reference(draft), draft.category, draft.subcategory),
    }
    if draft.description:
        fields["description"] = text_to_adf(draft.description)
    if draft.priority:
        fields["priority"] = {"name": draft.priority}
    return fields | dict(draft.fields)


def _reference(draft: TicketDraft) -> str | None:
    """``<source>-<id>`` of the record the ticket is about, so that it can be searched for."""
    if not draft.external_id:
        return None
    return "-".join(part for part in (draft.external_source, draft.external_id) if part)


def changes_body(changes: TicketChanges) -> dict[str, Any]:
    """The edit body: given fields set, category labels added (other labels, such as the
    idempotency key's, are kept). Status and resolution go through transitions and comments."""
    fields: dict[str, Any] = {}
    if changes.title is not None:
        fields["summary"] = changes.title
    if changes.description is not None:
        fields["description"] = text_to_adf(changes.description) if changes.description else None
    if changes.priority is not None:
        fields["priority"] = {"name": changes.priority}
    fields |= dict(changes.fields)
    body: dict[str, Any] = {"fields": fields} if fields else {}
    if added := labels(changes.category, changes.subcategory):
        body["update"] = {"labels": [{"add": name} for name in added]}
    return body


def labels(*texts: str | None) -> list[str]:
    """The given texts as labels, each once; blank ones are left out."""
    names = (label(text) for text in texts if text)
    return list(dict.fromkeys(name for name in names if name))


def label(text: str) -> str:
    """Jira labels cannot hold whitespace."""
    return re.sub(r"\s+", "_", text.strip())


def idempotency_label(key: str) -> str:
    """The label a create with ``key`` carries, so that a retried create finds its issue."""
    name = label(IDEMPOTENCY_LABEL_PREFIX + key)
    if len(name) > LABEL_MAX_LENGTH or not key.strip():
        raise InvalidInput(
            f"idempotency key must be 1 to {LABEL_MAX_LENGTH - len(IDEMPOTENCY_LABEL_PREFIX)} "
            f"characters: it is stored as a Jira label of at most {LABEL_MAX_LENGTH}"
        )
    return name


def note_key_property(key: str) -> dict[str, Any]:
    """The comment property that keeps a note's idempotency key beside its unchanged text."""
    return {"key": NOTE_KEY_PROPERTY, "value": {"key": key}}


def note_key(comment: Mapping[str, Any]) -> str | None:
    """The idempotency key a comment (listed with ``expand=properties``) carries, if any."""
    for prop in comment.get("properties") or []:
        if isinstance(prop, Mapping) and prop.get("key") == NOTE_KEY_PROPERTY:
            value = prop.get("value")
            key = value.get("key") if isinstance(value, Mapping) else None
            return key if isinstance(key, str) else None
    return None


def resolution_note_key(ticket_id: str, text: str) -> str:
    """The key of the comment an update posts a resolution as: the same ticket and text make
    the same key, so a retried update finds the comment its lost answer had posted."""
    digest = hashlib.sha256(f"{ticket_id.strip()}\n{text}".encode()).hexdigest()
    return f"resolution-{digest}"


# ---- JQL and transitions ----------------------------------------------------------------------


def quote_jql(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def search_jql(project: str, query: SearchQuery) -> str:
    """The search's conditions (without ordering); status and priority may be names or ids."""
    terms = [f"project = {quote_jql(project)}"]
    if query.text and query.text.strip():
        terms.append(f"text ~ {quote_jql(query.text.strip())}")
    if query.status:
        terms.append(f"status = {quote_jql(query.status.strip())}")
    if query.priority:
        terms.append(f"priority = {quote_jql(query.priority.strip())}")
    return " AND ".join(terms)


def labelled_jql(project: str, label: str) -> str:
    return f"project = {quote_jql(project)} AND labels = {quote_jql(label)}"


def is_status(status: TicketStatus, wanted: str) -> bool:
    """Whether ``status`` is ``wanted``, given by name or id (case-insensitively)."""
    return wanted.strip().casefold() in (status.label.casefold(), status.code.casefold())


# Canonical labels for a finished ticket (ServiceNow's among them). Jira workflows name their own
# final statuses freely, so these mean "any status of the done category" when none matches by name.
FINISHED = frozenset({"resolved", "closed", "done"})


def means_finished(wanted: str) -> bool:
    return wanted.strip().casefold() in FINISHED


def transition_to(transitions: Iterable[Mapping[str, Any]], status: str) -> str | None:
    """The id of the transition that leads to ``status``, if the workflow offers one."""
    transitions = list(transitions)
    for transition in transitions:
        if is_status(status_of(transition.get("to") or {}), status):
            return str(transition["id"])
    if means_finished(status):
        for transition in transitions:
            if category_of(transition.get("to") or {}) == "done":
                return str(transition["id"])
    return None


def category_of(status: Mapping[str, Any]) -> str:
    return str((status.get("statusCategory") or {}).get("key") or "")


# ---- errors -----------------------------------------------------------------------------------


def error_reason(response: httpx.Response) -> str:
    """Jira's ``errorMessages`` and field ``errors`` (``field: message``), or the status line."""
    reason = status_line(response)
    # A JSON body that cannot be decoded raises UndecodableBody: raise_for_status reports it.
    body = json_body(response, "Jira") if is_json(response) else {}
    if not isinstance(body, dict):
        return reason
    messages = [str(m) for m in body.get("errorMessages") or [] if str(m).strip()]
    field_errors = body.get("errors") or {}
    if isinstance(field_errors, dict):
        messages += [f"{field}: {message}" for field, message in field_errors.items()]
    return f"{'; '.join(messages)} ({reason})" if messages else reason
