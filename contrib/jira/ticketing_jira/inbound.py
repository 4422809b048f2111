"""What changes flowing back from Jira need, apart from HTTP: the poll's cursor and JQL, the
webhook body read as a notice, the last change's author, and the webhook set-up text.

Facts relied on (Atlassian's documentation):

- JQL date literals (``"yyyy-MM-dd HH:mm"``) have minute resolution and are read in the time
  zone of the user running the query (the ``timeZone`` of ``GET /rest/api/3/myself``).
- Search (``/rest/api/3/search/jql``) pages by opaque token; a keyset on ``id`` is used instead,
  because issues updated while a poll pages through them move in an ``updated`` order.
- The ``changelog`` expansion holds the recent changes with their authors; adding a comment
  changes ``updated`` but writes no changelog entry, so comments are looked at too.
- Admin webhooks with a secret send ``X-Hub-Signature: sha256=<hex HMAC-SHA256>`` of the body;
  their JQL filter cannot name the user who made a change.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from ticketing_core.errors import InvalidInput, UnexpectedResponse
from ticketing_core.models import Notice
from ticketing_jira.mapping import epoch_ms, parse_time, quote_jql

UPDATED = "jira:issue_updated"
COMMENT_CREATED = "comment_created"
WEBHOOK_EVENTS = (UPDATED, COMMENT_CREATED)
WEBHOOK_REGISTRATION = "/rest/webhooks/1.0/webhook"
_JQL_FILTER = "issue-related-events-section"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_ISSUE_ID = re.compile(r"[1-9]\d{0,17}")
_ISSUE_KEY = re.compile(r"([A-Za-z][A-Za-z0-9_]*)-[1-9]\d{0,17}")
_CURSOR = re.compile(r"jira1:(\d{1,15}):(\d{0,15}):(\d{1,18})")


# ---- the reconciling poll ---------------------------------------------------------------------


@dataclass(frozen=True)
class PollCursor:
    """Where a poll stands. A poll is one pass over the issues changed since ``since`` (epoch
    ms), in id order, resuming after issue ``after``; ``head`` is the newest change when the pass
    began, where the next pass starts. Between passes ``head`` is None and ``after`` 0."""

    since: int
    head: int | None = None
    after: int = 0

    @property
    def between_passes(self) -> bool:
        return self.head is None

    def encode(self) -> str:
        return f"jira1:{self.since}:{'' if self.head is None else self.head}:{self.after}"

    @classmethod
    def decode(cls, text: str) -> PollCursor:
        match = _CURSOR.fullmatch(text)
        if match is None:
            raise InvalidInput(f"{text[:80]!r} is not a cursor this provider returned")
        since, head, after = match.groups()
        return cls(int(since), int(head) if head else None, int(after))


def pass_jql(project: str, since: int, after: int, zone: tzinfo) -> str:
    """The issues of ``project`` changed since epoch ms ``since``, after issue id ``after``."""
    return (
        f"project = {quote_jql(project)} AND updated >= {quote_jql(jql_time(since, zone))} "
        f"AND id > {after} ORDER BY id ASC"
    )


def newest_change_jql(project: str) -> str:
    return f"project = {quote_jql(project)} ORDER BY updated DESC, id DESC"


def jql_time(instant_ms: int, zone: tzinfo) -> str:
    """A JQL date literal, read in ``zone``, at or before ``instant_ms`` (epoch ms).

    JQL has minute resolution, so the minute is rounded down. Where clocks go back, a wall time
    names two instants; if Jira could take the later one (past ``instant_ms``, skipping changes),
    the time one repeat earlier is written instead.
    """
    moment = _EPOCH + timedelta(milliseconds=instant_ms)
    wall = moment.astimezone(zone).replace(tzinfo=None, second=0, microsecond=0)
    readings = [wall.replace(tzinfo=zone, fold=fold).astimezone(UTC) for fold in (0, 1)]
    if max(readings) > moment:
        return jql_time(instant_ms - (max(readings) - min(readings)) // _MS, zone)
    return wall.strftime("%Y-%m-%d %H:%M")


# ---- who changed an issue last ----------------------------------------------------------------


def last_changed_by(issue: Mapping[str, Any]) -> str | None:
    """The accountId behind an issue's latest change, from an issue read with the ``creator``
    and ``comment`` fields and the ``changelog`` expansion: the newest of its changelog entries
    (field changes, transitions), its comments (created or edited) and its creation."""
    fields: Mapping[str, Any] = issue.get("fields") or {}
    histories = _objects(issue.get("changelog"), "histories")
    comments = _objects(fields.get("comment"), "comments")
    changes = [
        (fields.get("created"), fields.get("creator")),
        *((h.get("created"), h.get("author")) for h in histories),
        *((c.get("updated") or c.get("created"), c.get("updateAuthor")) for c in comments),
    ]
    dated = [(moment, _account_id(who)) for when, who in changes if (moment := parse_time(when))]
    return max(dated, key=lambda change: change[0])[1] if dated else None


def _objects(holder: Any, name: str) -> list[Mapping[str, Any]]:
    items = holder.get(name) if isinstance(holder, Mapping) else None
    return [item for item in items or [] if isinstance(item, Mapping)]


def _account_id(user: Any) -> str | None:
    account_id = user.get("accountId") if isinstance(user, Mapping) else None
    return account_id if isinstance(account_id, str) and account_id else None


# ---- webhook bodies ---------------------------------------------------------------------------


def read_notice(body: Any, project: str) -> Notice:
    """The notice in a ``jira:issue_updated`` or ``comment_created`` body about an issue of
    ``project``; :class:`InvalidInput` saying what is wrong with anything else."""
    if not isinstance(body, Mapping):
        raise InvalidInput("a Jira webhook body is a JSON object")
    event = body.get("webhookEvent")
    if event not in WEBHOOK_EVENTS:
        raise InvalidInput(f"webhookEvent must be one of {', '.join(WEBHOOK_EVENTS)}")
    issue = _issue_of(body, project)
    if event == COMMENT_CREATED:
        author = _object(body, "comment").get("author")
        return Notice(issue["id"], "journal", updated_by=_author(author, "comment.author"))
    commented = body.get("issue_event_type_name") == "issue_commented" or "comment" in body
    return Notice(
        issue["id"],
        "journal" if commented else "update",
        updated_by=_author(body.get("user"), "user"),
        revision=_revision(issue),
    )


def _issue_of(body: Mapping[str, Any], project: str) -> Mapping[str, Any]:
    issue = _object(body, "issue")
    issue_id, key = issue.get("id"), issue.get("key")
    if not isinstance(issue_id, str) or not _ISSUE_ID.fullmatch(issue_id):
        raise InvalidInput("issue.id must be a Jira issue id (digits, as a string)")
    key_match = _ISSUE_KEY.fullmatch(key) if isinstance(key, str) else None
    if key_match is None or key_match[1].casefold() != project.casefold():
        raise InvalidInput(f"issue.key must name an issue of project {project}")
    fields = issue.get("fields")
    named = fields.get("project") if isinstance(fields, Mapping) else None
    if named is not None and not _is_project(named, project):
        raise InvalidInput(f"issue.fields.project must be project {project}")
    return issue


def _is_project(named: Any, project: str) -> bool:
    key = named.get("key") if isinstance(named, Mapping) else None
    return isinstance(key, str) and key.casefold() == project.casefold()


def _object(body: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = body.get(name)
    if not isinstance(value, Mapping):
        raise InvalidInput(f"the webhook body has no {name} object")
    return value


def _author(user: Any, where: str) -> str:
    account_id = _account_id(user)
    if account_id is None:
        raise InvalidInput(f"{where}.accountId must be a non-empty string")
    return account_id


def _revision(issue: Mapping[str, Any]) -> int | None:
    """The issue's ``updated`` in epoch ms when the body carries it: the host skips the
    notification when it has applied a revision as new, and re-reads the issue otherwise."""
    fields = issue.get("fields")
    updated = fields.get("updated") if isinstance(fields, Mapping) else None
    if updated is None:
        return None
    try:
        moment = parse_time(updated) if isinstance(updated, str) else None
    except UnexpectedResponse:  # a body is input here, not the service's answer
        moment = None
    if moment is None:
        raise InvalidInput("issue.fields.updated must be a Jira time")
    return epoch_ms(moment)


# ---- set-up -----------------------------------------------------------------------------------


def webhook_setup(api_url: str, project: str, endpoint: str, secret: str) -> str:
    """The admin's instructions: the registration as JSON for Jira's admin webhook REST API,
    and the same in Jira's settings."""
    registration = {
        "name": f"Ticketing inbound sync ({project})",
        "url": endpoint,
        "events": list(WEBHOOK_EVENTS),
        "filters": {_JQL_FILTER: f"project = {quote_jql(project)}"},
        "excludeBody": False,
        "secret": secret,
    }
    return (
        f"Register this webhook as a Jira administrator:\n\n"
        f"POST {api_url}{WEBHOOK_REGISTRATION}\nContent-Type: application/json\n\n"
        f"{json.dumps(registration, indent=2)}\n\n"
        f"Or in Jira: Settings > System > WebHooks > Create a WebHook. Name it as above, set the "
        f"URL to {endpoint}, paste the secret into Secret, choose the events Issue: updated and "
        f"Comment: created, limit them to the issues matching the JQL "
        f"project = {quote_jql(project)}, leave Exclude body unticked, and save. Jira signs each "
        f"call with the secret (X-Hub-Signature). A webhook cannot leave out the changes this "
        f"connection's own account makes: the receiver drops those by the account id the "
        f"notification names.\n"
    )
