"""The Jira Cloud provider: the seven ticket operations on one project over REST API v3."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar
from urllib.parse import quote

from ticketing_core.errors import (
    InvalidInput,
    NotFound,
    ProviderError,
    UnexpectedResponse,
)
from ticketing_core.hookspecs import Provider
from ticketing_core.http import (
    RETRYING_DEPRECATED,
    ServiceClient,
    ServiceDialect,
    create_once,
    json_body,
)
from ticketing_core.models import (
    Capabilities,
    Page,
    SearchQuery,
    Ticket,
    TicketChanges,
    TicketDraft,
    TicketStatus,
)
from ticketing_jira import mapping
from ticketing_jira.adf import text_to_adf

API = "/rest/api/3"
ISSUES = f"{API}/issue"
SEARCH = f"{API}/search/jql"
DIALECT = ServiceDialect(
    "Jira",
    mapping.error_reason,
    non_json_hint="Jira answered with a web page (maintenance or a proxy)",
)
READ_PARAMS = {"fields": ",".join(mapping.TICKET_FIELDS)}
# On a service-desk project, comments without this property are shown to the customer.
INTERNAL_COMMENT = {"key": "sd.public.comment", "value": {"internal": True}}
COMMENT_PAGE_SIZE = 100
_ISSUE_ID = re.compile(r"\d+")
_ISSUE_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_]*-\d+")


class JiraProvider(Provider):
    """A :class:`ticketing_core.Provider` for one project of a Jira Cloud site.

    ``api_access_token`` is ``email:api_token`` (Basic auth) or an OAuth bearer token. ``project``
    is the project key, ``issue_type`` the name of the type new issues get. Other options go to
    :class:`ticketing_core.http.ServiceClient` (``timeout``, ``deadline``, ``max_attempts``,
    ``max_retry_wait``, ``transport``).

    Keyed creates carry the key as a label (``ticketing-key-<key>``) and look it up first (one
    JQL search; none with ``key_is_fresh``); keyed notes carry it in a
    comment property (:data:`ticketing_jira.mapping.NOTE_KEY_PROPERTY`), so the text stays as given.
    """

    name = "jira"
    options: ClassVar[tuple[str, ...]] = ("project", "issue_type", *ServiceClient.OPTIONS)
    capabilities = Capabilities(
        work_notes=True,  # internal comments on service-desk projects, plain comments otherwise
        public_comments=True,
        state_changes=True,
        idempotency_keys=True,
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
        issue = self._json("GET", _issue_path(ticket_id), params=READ_PARAMS)
        return mapping.to_ticket(issue, self.api_url)

    def find(self, number: str) -> Ticket:
        key = number.strip()
        if not _ISSUE_KEY.fullmatch(key):
            raise NotFound(f"{number!r} is not a Jira issue key (like DQ-12)")
        issue = self._json("GET", f"{ISSUES}/{key}", params=READ_PARAMS)
        return mapping.to_ticket(issue, self.api_url)

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
    ) -> None:
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
        return mapping.to_ticket(issues[0], self.api_url) if issues else None

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
    issue_id = ticket_id.strip()
    if not _ISSUE_ID.fullmatch(issue_id):
        raise InvalidInput(f"{ticket_id!r} is not a Jira issue id (a number, like 10042)")
    return f"{ISSUES}/{issue_id}"


@contextmanager
def _refused_input() -> Iterator[None]:
    """Jira answers 400 naming the fields or values it refuses: the caller's input is wrong."""
    try:
        yield
    except ProviderError as exc:
        if exc.status_code != 400:
            raise
        raise InvalidInput(exc.message) from None
