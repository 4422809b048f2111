"""The Jira Cloud provider: the ticket operations and inbound sync on one project over REST API v3."""

from __future__ import annotations

import re
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, ClassVar
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ticketing_core.errors import (
    InvalidInput,
    NotFound,
    ProviderError,
    UnexpectedResponse,
)
from ticketing_core.hookspecs import InboundProvider
from ticketing_core.http import (
    RETRYING_DEPRECATED,
    ServiceClient,
    ServiceDialect,
    create_once,
    json_body,
)
from ticketing_core.models import (
    Capabilities,
    ChangePage,
    JournalEntry,
    Notice,
    Page,
    SearchQuery,
    Ticket,
    TicketChanges,
    TicketDraft,
    TicketStatus,
)
from ticketing_core.notifications import HUB_SHA256
from ticketing_jira import inbound, mapping
from ticketing_jira.adf import text_to_adf
from ticketing_jira.inbound import PollCursor

API = "/rest/api/3"
ISSUES = f"{API}/issue"
SEARCH = f"{API}/search/jql"
DIALECT = ServiceDialect(
    "Jira",
    mapping.error_reason,
    non_json_hint="Jira answered with a web page (maintenance or a proxy)",
)
# Reads of one issue carry what tells who changed it last (see _ticket).
READ_PARAMS = {"fields": ",".join(mapping.INBOUND_FIELDS), "expand": "changelog"}
# Jira's own limits: 100 full issues per search page and per bulk fetch.
PAGE_LIMIT = BATCH_LIMIT = 100
# On a service-desk project, comments without this property are shown to the customer.
INTERNAL_COMMENT = {"key": "sd.public.comment", "value": {"internal": True}}
COMMENT_PAGE_SIZE = 100
_ISSUE_ID = re.compile(r"\d+")
_ISSUE_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_]*-\d+")


class JiraProvider(InboundProvider):
    """A :class:`ticketing_core.Provider` for one project of a Jira Cloud site.

    ``api_access_token`` is ``email:api_token`` (Basic auth) or an OAuth bearer token. ``project``
    is the project key, ``issue_type`` the name of the type new issues get. Other options go to
    :class:`ticketing_core.http.ServiceClient` (``timeout``, ``deadline``, ``max_attempts``,
    ``max_retry_wait``, ``transport``).

    Keyed creates carry the key as a label (``ticketing-key-<key>``) and look it up first (one
    JQL search; none with ``key_is_fresh``); keyed notes carry it in a
    comment property (:data:`ticketing_jira.mapping.NOTE_KEY_PROPERTY`), so the text stays as given.

    Inbound sync: ``Ticket.revision`` is the issue's ``updated`` in epoch milliseconds, and
    ``Ticket.updated_by`` (from the inbound reads) the accountId behind the newest changelog entry,
    comment or the creation, whichever is latest (see :func:`ticketing_jira.inbound.last_changed_by`).
    User names are accountIds throughout (``own_user``, ``JournalEntry.author``, notices).
    """

    name = "jira"
    options: ClassVar[tuple[str, ...]] = ("project", "issue_type", *ServiceClient.OPTIONS)
    capabilities = Capabilities(
        work_notes=True,  # internal comments on service-desk projects, plain comments otherwise
        public_comments=True,
        state_changes=True,
        idempotency_keys=True,
        inbound_sync=True,
        notification_signature=HUB_SHA256,
        field_choices={"priority": ("Highest", "High", "Medium", "Low", "Lowest")},
        user_options=("project", "issue_type"),
        extra_fields=("duedate",),  # labels are the key's home: replacing them is refused
        custom_field_prefix="customfield_",
    )

    def __init__(
        self,
        *,
        api_url: str,
        api_access_token: str,
        project: str = "DQ",
        issue_type: str = "Task",
        **client_options: Any,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.project = project
        self.issue_type = issue_type
        self._client = ServiceClient(self.api_url, api_access_token, DIALECT, **client_options)
        self._service_desk: bool | None = None  # read once; computing it twice is harmless
        self._me: tuple[str, ZoneInfo] | None = None  # accountId and profile time zone
        self._me_lock = threading.Lock()
        self._states: tuple[TicketStatus, ...] | None = None

    def __repr__(self) -> str:
        return f"JiraProvider(api_url={self.api_url!r}, project={self.project!r})"

    def close(self) -> None:
        self._client.close()

    def validate(self) -> None:
        self._client.request("GET", f"{API}/myself")
        # The credentials work; the project must exist too, or every create would fail later.
        self._client.request("GET", f"{API}/project/{quote(self.project, safe='')}")

    def search(self, query: SearchQuery) -> Page:
        conditions = mapping.search_jql(self.project, query)
        with _refused_input():
            issues = self._issues_on_page(f"{conditions} {mapping.SEARCH_ORDER}", query)
            count = self._json(
                "POST", f"{API}/search/approximate-count", json={"jql": conditions}, idempotent=True
            )
        items = tuple(mapping.to_ticket(issue, self.api_url) for issue in issues)
        # The count is approximate (eventually consistent): never below what this page shows.
        seen = query.offset + len(items) if items else 0
        total = max(int(count.get("count") or 0), seen)
        return Page(items=items, total=total, page=query.page, size=query.size)

    def get(self, ticket_id: str) -> Ticket:
        return self._ticket(self._json("GET", _issue_path(ticket_id), params=READ_PARAMS))

    def find(self, number: str) -> Ticket:
        key = number.strip()
        if not _ISSUE_KEY.fullmatch(key):
            raise NotFound(f"{number!r} is not a Jira issue key (like DQ-12)")
        return self._ticket(self._json("GET", f"{ISSUES}/{key}", params=READ_PARAMS))

    def create(
        self,
        draft: TicketDraft,
        *,
        idempotency_key: str | None = None,
        key_is_fresh: bool = False,
        retrying: bool | None = None,  # deprecated: changes nothing
    ) -> Ticket:
        if retrying is not None:
            warnings.warn(RETRYING_DEPRECATED, DeprecationWarning, stacklevel=2)
        key_label = None if idempotency_key is None else mapping.idempotency_label(idempotency_key)
        fields = mapping.draft_fields(
            draft, project=self.project, issue_type=self.issue_type, key_label=key_label
        )
        if key_label is None:
            return self._create(fields)
        return create_once(
            lambda: self._first_labelled(key_label),
            lambda: self._create(fields),
            key_is_fresh=key_is_fresh,
        )

    def update(self, ticket_id: str, changes: TicketChanges) -> Ticket:
        if changes.is_empty():
            raise InvalidInput("no fields to update")
        self.capabilities.check_fields(changes.fields)
        path = _issue_path(ticket_id)
        with _refused_input():
            # Found before writing anything, so an unreachable status changes nothing.
            transition_id = (
                None if changes.status is None else self._transition(ticket_id, changes.status)
            )
            if body := mapping.changes_body(changes):
                self._client.request("PUT", path, json=body)
            if transition_id is not None:
                # Not marked idempotent: a workflow refuses a transition to where the issue is.
                # A retried update finds the status reached and skips it (see _transition).
                self._client.request(
                    "POST", f"{path}/transitions", json={"transition": {"id": transition_id}}
                )
            # Last: a retry after a failed transition must not post the resolution twice.
            if changes.resolution:
                self._add_resolution_note(ticket_id, changes.resolution)
        return self.get(ticket_id)

    def add_work_note(
        self, ticket_id: str, text: str, *, idempotency_key: str | None = None
    ) -> int | None:
        if not text.strip():
            raise InvalidInput("a work note must not be empty")
        properties = [] if idempotency_key is None else [mapping.note_key_property(idempotency_key)]
        if self._is_service_desk():
            properties.append(INTERNAL_COMMENT)
        body: dict[str, Any] = {"body": text_to_adf(text)}
        if properties:
            body["properties"] = properties
        # A plain POST: never re-sent after a failure that may have landed; the caller asks
        # has_work_note with the key first.
        self._client.request("POST", f"{_issue_path(ticket_id)}/comment", json=body)
        return None  # the answer is the comment's: it does not tell the issue's revision

    def has_work_note(
        self, ticket_id: str, text: str, *, idempotency_key: str, identical_before: int
    ) -> bool:
        """Whether a comment carries ``idempotency_key`` in its key property.

        The key alone decides; ``text`` and ``identical_before`` are not needed. Every note added
        with a key carries it, and counting texts instead would take a person's identical comment,
        or one of our earlier notes, for this one.
        """
        return any(
            mapping.note_key(comment) == idempotency_key
            for comment in self._comments_newest_first(ticket_id)
        )

    def get_status(self, ticket_id: str) -> TicketStatus:
        issue = self._json("GET", _issue_path(ticket_id), params={"fields": "status"})
        return mapping.to_status(issue)

    # ---- inbound sync ---------------------------------------------------------------------

    def changed_since(
        self, cursor: str | None, *, overlap: float = 0.0, limit: int = PAGE_LIMIT
    ) -> ChangePage:
        """Changed issues in passes: each pass lists, in id order (a keyset that issues changed
        meanwhile cannot shift), the issues updated since the last pass's newest change minus
        ``overlap``, read in one request per page of ``limit``; the newest change when the pass
        began is where the next one starts. Within a page, oldest change first. ``overlap``
        widens only a pass's start (a cursor mid-pass keeps its own)."""
        if not 1 <= limit <= PAGE_LIMIT or overlap < 0:
            raise InvalidInput(f"limit must be 1 to {PAGE_LIMIT} and overlap not negative")
        if cursor is None:
            return ChangePage((), PollCursor(self._newest_change() or 0).encode(), more=False)
        position = PollCursor.decode(cursor)
        if position.between_passes:
            since = max(position.since - round(overlap * 1000), 0)
            position = PollCursor(since, head=self._newest_change() or since)
        return self._pass_page(position, limit)

    def get_many(self, ticket_ids: Sequence[str]) -> list[Ticket]:
        """One bulk fetch (``POST /rest/api/3/issue/bulkfetch``), which leaves out issues that
        are gone or hidden; a JQL ``id in (...)`` search would refuse the whole list instead."""
        ids = list(dict.fromkeys(_issue_id(ticket_id) for ticket_id in ticket_ids))
        if len(ids) > BATCH_LIMIT:
            raise InvalidInput(f"at most {BATCH_LIMIT} tickets are read at once, not {len(ids)}")
        if not ids:
            return []
        body = {
            "issueIdsOrKeys": ids,
            "fields": list(mapping.INBOUND_FIELDS),
            "expand": ["changelog"],
        }
        found = self._json("POST", f"{ISSUES}/bulkfetch", json=body, idempotent=True)
        return [self._ticket(issue) for issue in found.get("issues") or []]

    def journal_since(self, ticket_id: str, after: datetime | None) -> list[JournalEntry]:
        """The issue's comments, read newest first until one is older than ``after``."""
        entries: dict[str, JournalEntry] = {}  # by id: a comment added while paging repeats one
        for comment in self._comments_newest_first(ticket_id):
            entry = mapping.to_journal_entry(comment, _issue_id(ticket_id))
            if after is not None and entry.created_at < after:
                break
            entries.setdefault(entry.id, entry)
        return sorted(entries.values(), key=lambda entry: (entry.created_at, int(entry.id)))

    def own_user(self) -> str:
        return self._myself()[0]

    def states(self, *, refresh: bool = False) -> tuple[TicketStatus, ...]:
        """Every status an issue type of the project can be in, in Jira's order, each once; read
        once, then again with ``refresh`` or after an issue showed a status not among them."""
        if self._states is not None and not refresh:
            return self._states
        path = f"{API}/project/{quote(self.project, safe='')}/statuses"
        issue_types = json_body(self._client.request("GET", path), "Jira")
        if not isinstance(issue_types, list):
            raise UnexpectedResponse("Jira's project statuses are not a list")
        statuses = (
            mapping.status_of(status)
            for issue_type in issue_types
            if isinstance(issue_type, Mapping)
            for status in issue_type.get("statuses") or []
            if isinstance(status, Mapping)
        )
        found = tuple({status.code: status for status in statuses}.values())
        self._states = found or None  # none listed (no permission yet) is asked again
        return found

    def read_notification(self, body: Mapping[str, Any]) -> Notice:
        return inbound.read_notice(body, self.project)

    def notification_setup(self, endpoint: str, secret: str) -> str:
        return inbound.webhook_setup(self.api_url, self.project, endpoint, secret)

    def _pass_page(self, position: PollCursor, limit: int) -> ChangePage:
        jql = inbound.pass_jql(self.project, position.since, position.after, self._myself()[1])
        body = {
            "jql": jql,
            "maxResults": limit,
            "fields": list(mapping.INBOUND_FIELDS),
            "expand": "changelog",
        }
        with _refused_input():
            page = self._search_page(body)
        issues = list(page.get("issues") or [])
        tickets = sorted(
            (self._ticket(issue) for issue in issues),
            key=lambda ticket: (ticket.revision or 0, int(ticket.id)),
        )
        if page.get("isLast", True) or not tickets:
            resting = PollCursor(position.head if position.head is not None else position.since)
            return ChangePage(tuple(tickets), resting.encode(), more=False)
        resume = PollCursor(position.since, position.head, max(int(t.id) for t in tickets))
        return ChangePage(tuple(tickets), resume.encode(), more=True)

    def _newest_change(self) -> int | None:
        """The project's newest ``updated`` in epoch ms, None when it has no issues."""
        body = {
            "jql": inbound.newest_change_jql(self.project),
            "maxResults": 1,
            "fields": ["updated"],
        }
        with _refused_input():
            issues = self._search_page(body).get("issues") or []
        updated = (
            mapping.parse_time((issues[0].get("fields") or {}).get("updated")) if issues else None
        )
        return None if updated is None else mapping.epoch_ms(updated)

    def _ticket(self, issue: Mapping[str, Any]) -> Ticket:
        """An issue read with READ_PARAMS' fields and expansion, ``updated_by`` filled."""
        ticket = mapping.to_ticket(issue, self.api_url, updated_by=inbound.last_changed_by(issue))
        if self._states is not None and ticket.status not in {s.label for s in self._states}:
            self._states = None  # a status we have not seen: read the project's again
        return ticket

    def _myself(self) -> tuple[str, ZoneInfo]:
        """This connection's accountId and time zone: one read, then kept."""
        with self._me_lock:
            if self._me is None:
                me = self._json("GET", f"{API}/myself")
                account_id, zone = me.get("accountId"), me.get("timeZone") or "UTC"
                if not isinstance(account_id, str) or not account_id:
                    raise UnexpectedResponse("Jira's answer about this account has no accountId")
                try:
                    self._me = (account_id, ZoneInfo(str(zone)))
                except (ZoneInfoNotFoundError, ValueError):
                    raise UnexpectedResponse(f"Jira named an unknown time zone {zone!r}") from None
            return self._me

    def _create(self, fields: dict[str, Any]) -> Ticket:
        with _refused_input():
            created = self._json("POST", ISSUES, json={"fields": fields})
        if not created.get("id"):
            raise UnexpectedResponse("Jira's answer to the create has no issue id")
        return self.get(str(created["id"]))

    def _add_resolution_note(self, ticket_id: str, text: str) -> None:
        """Post the resolution once, keyed by ticket and text, so a retried update that already
        posted it (its answer lost) does not post it again."""
        key = mapping.resolution_note_key(ticket_id, text)
        if not self.has_work_note(ticket_id, text, idempotency_key=key, identical_before=0):
            self.add_work_note(ticket_id, text, idempotency_key=key)

    def _first_labelled(self, label: str) -> Ticket | None:
        jql = f"{mapping.labelled_jql(self.project, label)} {mapping.OLDEST_FIRST}"
        # A short read, so GET (search posts because free text can make its JQL long).
        params = READ_PARAMS | {"jql": jql, "maxResults": 1}
        issues = self._json("GET", SEARCH, params=params).get("issues") or []
        return self._ticket(issues[0]) if issues else None

    def _issues_on_page(self, jql: str, query: SearchQuery) -> list[dict[str, Any]]:
        body: dict[str, Any] = {"jql": jql, "maxResults": query.size, "fields": ["id"]}
        # Enhanced search pages by opaque token only: walk to the page reading ids, then read it.
        for _ in range(query.page - 1):
            skipped = self._search_page(body)
            token = skipped.get("nextPageToken")
            if skipped.get("isLast") or not token:
                return []
            body["nextPageToken"] = token
        page = self._search_page(body | {"fields": list(mapping.TICKET_FIELDS)})
        return list(page.get("issues") or [])

    def _search_page(self, body: dict[str, Any]) -> dict[str, Any]:
        # A read that posts only because free text can make its JQL long: safe to repeat.
        return self._json("POST", SEARCH, json=body, idempotent=True)

    def _transition(self, ticket_id: str, status: str) -> str | None:
        """The transition to ``status``; None if the issue is in it (workflows offer no loop)."""
        path = f"{_issue_path(ticket_id)}/transitions"
        transitions = self._json("GET", path).get("transitions") or []
        transition_id = mapping.transition_to(transitions, status)
        if transition_id is None and not self._is_in(ticket_id, status):
            targets = [mapping.status_of(t.get("to") or {}).label for t in transitions]
            raise InvalidInput(
                f"Jira offers no transition of issue {ticket_id} to status {status!r} "
                f"(available: {', '.join(map(repr, targets)) or 'none'})"
            )
        return transition_id

    def _is_in(self, ticket_id: str, status: str) -> bool:
        fields = self._json("GET", _issue_path(ticket_id), params={"fields": "status"})["fields"]
        current = fields.get("status") or {}
        if mapping.means_finished(status) and mapping.category_of(current) == "done":
            return True
        return mapping.is_status(mapping.status_of(current), status)

    def _comments_newest_first(self, ticket_id: str) -> Iterator[dict[str, Any]]:
        """Every comment with its properties. Newest first, so a comment added while paging
        shifts later pages by one (a comment seen twice) instead of hiding one."""
        path = f"{_issue_path(ticket_id)}/comment"
        start = 0
        while True:
            params = {
                "orderBy": "-created",
                "startAt": start,
                "maxResults": COMMENT_PAGE_SIZE,
                "expand": "properties",
            }
            page = self._json("GET", path, params=params)
            comments = page.get("comments") or []
            yield from comments
            start += len(comments)
            if not comments or start >= int(page.get("total") or 0):
                return

    def _is_service_desk(self) -> bool:
        if self._service_desk is None:
            project = self._json("GET", f"{API}/project/{quote(self.project, safe='')}")
            self._service_desk = project.get("projectTypeKey") == "service_desk"
        return self._service_desk

    def _json(self, method: str, path: str, **options: Any) -> dict[str, Any]:
        body = json_body(self._client.request(method, path, **options), "Jira")
        if not isinstance(body, dict):
            raise UnexpectedResponse(f"Jira answered {method} {path} with a {type(body).__name__}")
        return body


def _issue_path(ticket_id: str) -> str:
    return f"{ISSUES}/{_issue_id(ticket_id)}"


def _issue_id(ticket_id: str) -> str:
    issue_id = ticket_id.strip()
    if not _ISSUE_ID.fullmatch(issue_id):
        raise InvalidInput(f"{ticket_id!r} is not a Jira issue id (a number, like 10042)")
    return issue_id


@contextmanager
def _refused_input() -> Iterator[None]:
    """Jira answers 400 naming the fields or values it refuses: the caller's input is wrong."""
    try:
        yield
    except ProviderError as exc:
        if exc.status_code != 400:
            raise
        raise InvalidInput(exc.message) from None
