"""An in-memory Jira Cloud site (REST API v3 plus the service desk listing) as a Starlette app.

Shapes follow Atlassian's documentation: ``{"errorMessages": [...], "errors": {...}}`` for every
error, ADF for rich text, ``2024-01-15T10:30:00.000+0000`` timestamps, enhanced search with
opaque ``nextPageToken`` paging. Faults (rate limits, outages, maintenance pages, lost
responses) can be queued from Python or over HTTP under ``/__emulator/``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from http import HTTPStatus
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from ticketing_localserver.emulation import (
    EmulatedService,
    ServiceError,
    authenticate,
    int_param,
    json_response,
)

from .adf import adf_to_text, is_document, text_to_adf
from .jql import JqlError, Schema, Search, compile_query
from .webhooks import Delivery, Webhook, WebhookSender

ADMIN_ACCOUNT_ID = "5f8a1c2b3d4e5f60718293a4"
DEFAULT_EMAIL = "admin@example.com"
DEFAULT_API_TOKEN = "jira-api-token"  # noqa: S105 - the emulator's documented dev credential
SD_PUBLIC_COMMENT = "sd.public.comment"

_EXPAND = "renderedFields,names,schema,operations,editmeta,changelog,versionedRepresentations"
_SEARCH_LIMIT, _ID_SEARCH_LIMIT, _DEFAULT_SEARCH = 100, 5000, 50
_COMMENT_LIMIT = 5000
_BULK_FETCH_LIMIT = 100
_CHANGELOG_EXPAND_LIMIT = 100
# The registration body's key for the JQL filter, as Jira's admin webhook REST API names it.
_JQL_FILTER = "issue-related-events-section"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Entity property limits (Jira: "The property key cannot be longer than 255 characters.").
_PROPERTY_KEY_LIMIT, _PROPERTY_VALUE_LIMIT = 255, 32768
_ADF_REQUIRED = "Operation value must be an Atlassian Document (see the Atlassian Document Format)"
_BAD_PAYLOAD = "Invalid request payload. Refer to the REST API documentation and try again."
_MAINTENANCE_PAGE = (
    "<!DOCTYPE html><html><head><title>Atlassian Cloud Notifications</title></head><body>"
    "<h1>Your Atlassian Cloud site is currently unavailable.</h1>"
    "<p>We are performing scheduled maintenance. Please check back soon.</p></body></html>"
)


@dataclass(frozen=True)
class Account:
    """An Atlassian account; ``api_token`` None means no Basic login, ``read_only`` 403s writes.

    ``time_zone`` is the profile's (an IANA name): Jira reads JQL dates in it. ``site_admin``
    may manage webhooks.
    """

    email: str
    display_name: str
    api_token: str | None = field(default=None, repr=False)
    read_only: bool = False
    account_id: str = ""  # derived from the email when empty, so ids are stable across runs
    time_zone: str = "UTC"
    site_admin: bool = False

    def __post_init__(self) -> None:
        if not self.account_id:
            digest = hashlib.sha256(self.email.casefold().encode()).hexdigest()[:24]
            object.__setattr__(self, "account_id", digest)
        ZoneInfo(self.time_zone)  # an unknown zone fails here, not in the first search

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)


@dataclass(frozen=True)
class Status:
    id: str
    name: str
    category: str  # statusCategory key: "new", "indeterminate" or "done"


@dataclass(frozen=True)
class IssueType:
    id: str
    name: str


@dataclass(frozen=True)
class Priority:
    id: str
    name: str


STATUSES = {
    s.name: s
    for s in (
        Status("10000", "To Do", "new"),
        Status("3", "In Progress", "indeterminate"),
        Status("10001", "Done", "done"),
        Status("10002", "Waiting for support", "new"),
        Status("5", "Resolved", "done"),
    )
}
ISSUE_TYPES = {
    t.name: t
    for t in (
        IssueType("10001", "Task"),
        IssueType("10002", "Bug"),
        IssueType("10003", "[System] Incident"),
    )
}
PRIORITIES = {
    p.name: p
    for p in (
        Priority("1", "Highest"),
        Priority("2", "High"),
        Priority("3", "Medium"),
        Priority("4", "Low"),
        Priority("5", "Lowest"),
    )
}
DEFAULT_PRIORITY = "Medium"
# statusCategory key -> (id, name, colorName), as every Jira Cloud site has them.
_CATEGORIES = {
    "new": (2, "To Do", "blue-gray"),
    "indeterminate": (4, "In Progress", "yellow"),
    "done": (3, "Done", "green"),
}
_RESOLUTION_DONE = {"id": "10000", "name": "Done", "description": "Work has been completed."}
_DEFAULT_WORKFLOWS = {
    "software": ("To Do", "In Progress", "Done"),
    "service_desk": ("Waiting for support", "In Progress", "Resolved"),
}
_DEFAULT_ISSUE_TYPES = {
    "software": ("Task", "Bug"),
    "service_desk": ("[System] Incident", "Task", "Bug"),
}


@dataclass(frozen=True)
class Project:
    """A project; ``statuses`` is its workflow (the first is the initial status)."""

    key: str
    name: str
    project_type_key: str = "software"  # or "service_desk"
    id: str = ""  # assigned 10000, 10001, ... in configuration order when empty
    service_desk_id: str | None = None
    issue_types: tuple[str, ...] = ()  # names from ISSUE_TYPES; by project type when empty
    statuses: tuple[str, ...] = ()  # names from STATUSES; by project type when empty

    def __post_init__(self) -> None:
        kind = "service_desk" if self.project_type_key == "service_desk" else "software"
        if not self.issue_types:
            object.__setattr__(self, "issue_types", _DEFAULT_ISSUE_TYPES[kind])
        if not self.statuses:
            object.__setattr__(self, "statuses", _DEFAULT_WORKFLOWS[kind])
        unknown = [s for s in self.statuses if s not in STATUSES]
        unknown += [t for t in self.issue_types if t not in ISSUE_TYPES]
        if unknown:
            raise ValueError(f"project {self.key}: unknown statuses or issue types {unknown}")


DEFAULT_ACCOUNTS = (
    Account(
        DEFAULT_EMAIL,
        "Alice Admin",
        DEFAULT_API_TOKEN,
        account_id=ADMIN_ACCOUNT_ID,
        site_admin=True,
    ),
    Account("john.doe@example.com", "John Doe"),
    Account("jane.smith@example.com", "Jane Smith"),
)
DEFAULT_PROJECTS = (
    Project("DQ", "Data Quality", "software", id="10000"),
    Project("SD", "Service Desk", "service_desk", id="10001", service_desk_id="1"),
)


class ApiError(ServiceError):
    """An answer in Jira's error envelope; raised anywhere below a request handler."""

    def __init__(
        self,
        status: int,
        messages: Sequence[str] = (),
        errors: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status}: {list(messages)} {dict(errors or {})}")
        self.status, self.messages, self.errors = status, list(messages), dict(errors or {})
        self.headers = dict(headers or {})

    def response(self) -> Response:
        body = {"errorMessages": self.messages, "errors": self.errors}
        return json_response(body, status=self.status, headers=self.headers)


def _unauthenticated() -> ApiError:
    return ApiError(
        401,
        ["You are not authenticated. Authentication required to perform this operation."],
        headers={"WWW-Authenticate": 'Basic realm="protected-area"'},
    )


def _issue_not_found() -> ApiError:
    return ApiError(404, ["Issue does not exist or you do not have permission to see it."])


class _FaultAnswers:
    """The site's answers to injected failures."""

    html_page = _MAINTENANCE_PAGE

    def down(self) -> ApiError:
        return ApiError(503, ["Service Unavailable (emulator: the site is down)"])

    def rate_limited(self, headers: dict[str, str]) -> ApiError:
        return ApiError(429, ["Rate limit exceeded."], headers=headers)

    def server_error(self, status: int, headers: dict[str, str]) -> ApiError:
        message = f"{HTTPStatus(status).phrase} (emulator: injected fault)"
        return ApiError(status, [message], headers=headers)

    def lost(self) -> ApiError:
        return ApiError(504, ["Gateway Timeout (emulator: the response was lost)"])

    def bad_control(self, error: Exception) -> ApiError:
        return ApiError(400, [f"Invalid emulator control request: {error!r}"])


# ---- stored state ---------------------------------------------------------------------------


@dataclass
class _Comment:
    id: str
    author: Account
    body: dict[str, Any]
    text: str
    created: datetime
    visibility: dict[str, Any] | None
    properties: list[dict[str, Any]]
    internal: bool  # the sd.public.comment property says internal
    jsd_public: bool  # what Jira reports: internal only counts in service desk projects


@dataclass(frozen=True)
class _History:
    """One changelog entry: who changed which fields of an issue, and when."""

    id: str
    author: Account
    created: datetime
    items: tuple[dict[str, Any], ...]


@dataclass
class _Issue:
    id: str
    key: str
    project: Project
    issuetype: IssueType
    summary: str
    description: dict[str, Any] | None
    priority: Priority
    labels: list[str]
    assignee: Account | None
    reporter: Account | None
    creator: Account
    status: Status
    created: datetime
    updated: datetime
    resolved: datetime | None = None
    comments: list[_Comment] = field(default_factory=list)
    histories: list[_History] = field(default_factory=list)


@dataclass(frozen=True)
class _Call:
    """One authenticated /rest request, its JSON body read."""

    request: Request
    account: Account
    body: dict[str, Any]

    @property
    def base(self) -> str:
        return f"{self.request.url.scheme}://{self.request.url.netloc}"

    def param(self, name: str) -> str | None:
        return self.request.query_params.get(name)


_Handler = Callable[[_Call], Response]
_Ref = TypeVar("_Ref", IssueType, Priority)
# Fields an edit may set; a create also takes project and issuetype.
_EDITABLE = ("summary", "description", "priority", "labels", "assignee", "reporter")
_ALL_FIELDS = (
    "summary", "issuetype", "project", "status", "priority", "labels", "assignee", "reporter",
    "creator", "created", "updated", "resolution", "resolutiondate", "description", "comment",
)  # fmt: skip
# A webhook body carries the issue without its comments; a comment's body carries only a summary.
_ISSUE_EVENT_FIELDS = frozenset(_ALL_FIELDS) - {"comment"}
_COMMENT_EVENT_FIELDS = frozenset(
    {"summary", "issuetype", "project", "assignee", "priority", "status"}
)
_INTERNAL_PROPERTY = {"key": SD_PUBLIC_COMMENT, "value": {"internal": True}}


class JiraEmulator(EmulatedService):
    """The emulated site: projects, issues, accounts, faults and the ASGI ``app`` serving them.

    Safe to drive from another thread while uvicorn serves ``app``: state sits behind one lock.
    """

    def __init__(
        self,
        accounts: Iterable[Account] | None = None,
        tokens: Mapping[str, str] | None = None,
        projects: Iterable[Project] | None = None,
        latency_ms: int = 0,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        """``tokens`` maps bearer tokens to account emails; ``clock`` returns UTC datetimes."""
        super().__init__(_FaultAnswers(), latency_ms)
        self._accounts = {a.email.casefold(): a for a in (accounts or DEFAULT_ACCOUNTS)}
        self._tokens = {token: email.casefold() for token, email in (tokens or {}).items()}
        if unknown := set(self._tokens.values()) - set(self._accounts):
            raise ValueError(f"tokens name unknown accounts: {sorted(unknown)}")
        configured = projects or DEFAULT_PROJECTS
        self._projects = {
            p.key.upper(): p if p.id else dataclasses.replace(p, id=str(10000 + index))
            for index, p in enumerate(configured)
        }
        self._clock = clock or (lambda: datetime.now(UTC))
        self._webhook_sender = WebhookSender()
        # Jira's base URL setting, for the links in webhook bodies: where the site was last reached.
        self._site_url = "http://localhost"
        self.reset()
        self.app = Starlette(routes=self._routes())

    # ---- Python API -----------------------------------------------------------------------

    def reset(self) -> None:
        """Forget issues, comments, webhooks (and their queued deliveries), faults and the
        request log; restore latency and ``down``."""
        with self._lock:
            super().reset()
            self._issues: dict[str, _Issue] = {}  # by id, in creation order
            self._ids_by_key: dict[str, str] = {}
            self._key_counters = dict.fromkeys(self._projects, 0)
            self._next_issue_id = 10000
            self._next_comment_id = 10000
            self._next_history_id = 10000
            self._webhooks: dict[int, Webhook] = {}
            self._next_webhook_id = 1
            self._webhook_sender.reset()

    def add_webhook(
        self,
        url: str,
        secret: str | None = None,
        events: Sequence[str] = ("jira:issue_updated", "comment_created"),
        *,
        jql: str = "",
        name: str = "Emulator webhook",
    ) -> int:
        """Register an admin webhook as the site admin would; returns its id."""
        body = {
            "name": name,
            "url": url,
            "events": list(events),
            "filters": {_JQL_FILTER: jql},
            "secret": secret,
        }
        with self._lock:
            admin = next(a for a in self._accounts.values() if a.site_admin)
            return self._register(body, admin).id

    def wait_for_webhooks(self, timeout: float = 5.0) -> bool:
        """Wait until every webhook delivery queued so far has been attempted (False if
        ``timeout`` seconds pass first). Call it outside any lock of the receiver's."""
        return self._webhook_sender.wait(timeout)

    def act_as(
        self,
        account: str,
        issue: str,
        *,
        status: str | None = None,
        comment: str | None = None,
        internal: bool = False,
        fields: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Change an issue as ``account`` (email or account id) would through the REST API:
        edit ``fields`` (REST shape) and move to ``status`` (a name or id) as one change, then add ``comment``
        (an internal one with ``internal``, as a service desk agent can). Webhooks fire as for
        any client. Returns the stored issue."""
        with self._lock:
            author = self._account(account)
            target = self._find(issue)
            if author is None or target is None:
                raise KeyError(account if author is None else issue)
            if author.read_only:
                raise ApiError(403, ["You do not have permission to edit issues in this project."])
            if fields or status is not None:
                self._change(
                    target, {"fields": dict(fields or {})}, author, self._status(target, status)
                )
            if comment is not None:
                properties = [_INTERNAL_PROPERTY] if internal else []
                self._append_comment(target, text_to_adf(comment), author, None, properties)
            return _stored_issue(target)

    def _status(self, issue: _Issue, wanted: str | None) -> Status | None:
        """The workflow status named (or with the id) ``wanted``, other than the issue's own."""
        if wanted is None:
            return None
        for name in issue.project.statuses:
            status = STATUSES[name]
            if wanted in (status.name, status.id) and status != issue.status:
                return status
        raise ValueError(f"no transition of {issue.key} to {wanted!r}")

    @property
    def issues(self) -> list[dict[str, Any]]:
        """The stored issues, flattened (names, account ids, Jira timestamps), creation order."""
        with self._lock:
            return [_stored_issue(issue) for issue in self._issues.values()]

    def comments(self, issue_id_or_key: str) -> list[dict[str, Any]]:
        """One issue's comments, oldest first, with plain ``text`` and the ``internal`` flag."""
        with self._lock:
            issue = self._find(issue_id_or_key)
            if issue is None:
                raise KeyError(issue_id_or_key)
            return [_stored_comment(comment) for comment in issue.comments]

    def seed_issues(
        self, n: int, project: str = "DQ", *, at: datetime | None = None, **fields: Any
    ) -> list[dict[str, Any]]:
        """Create ``n`` issues as the first account; ``{i}`` in a string becomes the 1-based index.

        ``fields``: summary, description (text or ADF), issuetype, priority, status (names),
        labels (list), assignee and reporter (email or account id). ``at`` (UTC) is the time
        every one of them was created and last updated, instead of now.
        """
        fields.setdefault("summary", "Seeded issue {i}")
        with self._lock:
            target = self._projects[project.upper()]
            creator = next(iter(self._accounts.values()))
            created = []
            for i in range(1, n + 1):
                values = {k: _numbered(v, i) for k, v in fields.items()}
                status = values.pop("status", None)
                if status is not None and status not in target.statuses:
                    raise ValueError(f"{status!r} is not in {target.key}'s workflow")
                issue = self._create_issue(self._seed_fields(target, values), creator)
                if status is not None:  # moved right after creation; set-up, so nobody is notified
                    self._move(issue, STATUSES[status])
                    self._touch(issue)
                if at is not None:
                    issue.created = issue.updated = at.replace(
                        microsecond=at.microsecond // 1000 * 1000
                    )
                created.append(_stored_issue(issue))
            return created

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "issues": len(self._issues),
                "comments": sum(len(issue.comments) for issue in self._issues.values()),
                "accounts": len(self._accounts),
                "projects": len(self._projects),
                "webhooks": len(self._webhooks),
                "webhook_deliveries": self._webhook_sender.counts(),
                **super().stats(),
            }

    def _seed_fields(self, project: Project, values: dict[str, Any]) -> dict[str, Any]:
        """Python-API shorthand turned into the JSON a client would send."""
        api: dict[str, Any] = {
            "project": {"key": project.key},
            "issuetype": {"name": values.pop("issuetype", project.issue_types[0])},
        }
        for name, value in values.items():
            if name == "description" and isinstance(value, str):
                value = text_to_adf(value)
            elif name == "priority":
                value = {"name": value}
            elif name in ("assignee", "reporter"):
                account = self._account(value)
                value = {"accountId": account.account_id if account else value}
            api[name] = value
        return api

    # ---- routing --------------------------------------------------------------------------

    def _routes(self) -> list[Route]:
        issue = "/rest/api/3/issue/{issue}"
        webhooks = "/rest/webhooks/1.0/webhook"
        api: list[tuple[str, str, _Handler, str | None]] = [
            ("/rest/api/3/myself", "GET", self._myself, None),
            ("/rest/api/3/project/{project}", "GET", self._get_project, None),
            ("/rest/api/3/project/{project}/statuses", "GET", self._project_statuses, None),
            ("/rest/servicedeskapi/servicedesk", "GET", self._service_desks, None),
            ("/rest/api/3/issue", "POST", self._create, "create issues in this project"),
            ("/rest/api/3/issue/bulkfetch", "POST", self._bulk_fetch, None),
            (issue, "GET", self._get_issue, None),
            (issue, "PUT", self._edit, "edit issues in this project"),
            (issue, "DELETE", self._delete, "delete issues in this project"),
            (f"{issue}/transitions", "GET", self._transitions, None),
            (f"{issue}/transitions", "POST", self._transition, "transition this issue"),
            (f"{issue}/comment", "GET", self._list_comments, None),
            (f"{issue}/comment", "POST", self._add_comment, "add comments to this issue"),
            ("/rest/api/3/search/jql", "GET", self._search_get, None),
            ("/rest/api/3/search/jql", "POST", self._search_post, None),
            ("/rest/api/3/search/approximate-count", "POST", self._approximate_count, None),
            (webhooks, "GET", self._list_webhooks, None),
            (webhooks, "POST", self._register_webhook, "register webhooks"),
            (webhooks + "/{webhook}", "GET", self._get_webhook, None),
            (webhooks + "/{webhook}", "DELETE", self._delete_webhook, "delete webhooks"),
        ]
        return [
            *(
                Route(path, self.api_endpoint(partial(self._answer, h, action)), methods=[m])
                for path, m, h, action in api
            ),
            *self.control_routes(),
        ]

    async def _answer(
        self, handler: _Handler, write_action: str | None, request: Request
    ) -> Response:
        """Authenticate, refuse writes to read-only accounts, run ``handler`` under the lock."""
        account = authenticate(
            request,
            basic=self._basic_account,
            bearer=lambda token: self._accounts.get(self._tokens.get(token, "")),
            refused=_unauthenticated,
        )
        if write_action is not None and account.read_only:
            raise ApiError(403, [f"You do not have permission to {write_action}."])
        body = await _read_object(request) if request.method in ("POST", "PUT") else {}
        with self._lock:
            call = _Call(request, account, body)
            self._site_url = call.base
            return handler(call)

    def _basic_account(self, email: str, token: str) -> Account | None:
        account = self._accounts.get(email.casefold())
        if account is None or account.api_token is None:
            return None
        # Bytes: compare_digest refuses non-ASCII str, and a token may be anything.
        return account if hmac.compare_digest(account.api_token.encode(), token.encode()) else None

    # ---- site metadata --------------------------------------------------------------------

    def _myself(self, call: _Call) -> Response:
        me = _user_json(call.account, call.base)
        return json_response({**me, "locale": "en_US"})

    def _get_project(self, call: _Call) -> Response:
        wanted = call.request.path_params["project"]
        project = self._project(wanted)
        if project is None:
            raise ApiError(404, [f"No project could be found with key '{wanted}'."])
        return json_response(
            {
                "expand": "description,lead,issueTypes,url,projectKeys,permissions,insight",
                **_project_json(project, call.base),
                "style": "classic",
                "isPrivate": False,
                "issueTypes": [
                    _issue_type_json(ISSUE_TYPES[name], call.base) for name in project.issue_types
                ],
            }
        )

    def _project_statuses(self, call: _Call) -> Response:
        """The statuses each issue type of the project can be in (here: the project workflow)."""
        wanted = call.request.path_params["project"]
        project = self._project(wanted)
        if project is None:
            raise ApiError(404, [f"No project could be found with key '{wanted}'."])
        statuses = [_status_json(STATUSES[name], call.base) for name in project.statuses]
        return json_response(
            [
                {**_issue_type_json(ISSUE_TYPES[name], call.base), "statuses": statuses}
                for name in project.issue_types
            ]
        )

    def _service_desks(self, call: _Call) -> Response:
        desks = [p for p in self._projects.values() if p.service_desk_id is not None]
        start = int_param(call.param("start"), 0, minimum=0)
        limit = int_param(call.param("limit"), 50, minimum=1)
        page = desks[start : start + limit]
        url = f"{call.base}/rest/servicedeskapi/servicedesk"
        values = [
            {
                "id": p.service_desk_id,
                "projectId": p.id,
                "projectName": p.name,
                "projectKey": p.key,
                "_links": {"self": f"{url}/{p.service_desk_id}"},
            }
            for p in page
        ]
        return json_response(
            {
                "_expands": [],
                "size": len(values),
                "start": start,
                "limit": limit,
                "isLastPage": start + limit >= len(desks),
                "_links": {"base": call.base, "context": "", "self": url},
                "values": values,
            }
        )

    # ---- issues ---------------------------------------------------------------------------

    def _create(self, call: _Call) -> Response:
        fields = call.body.get("fields")
        issue = self._create_issue(fields if isinstance(fields, dict) else {}, call.account)
        body = {"id": issue.id, "key": issue.key, "self": _issue_url(issue, call.base)}
        return json_response(body, status=201)

    def _create_issue(self, fields: Mapping[str, Any], creator: Account) -> _Issue:
        errors: dict[str, str] = {}
        project = self._project_ref(fields.get("project"))
        if project is None:
            errors["project"] = "valid project is required"
        issuetype = _issue_type_ref(project, fields.get("issuetype"), errors)
        if not _is_text(fields.get("summary")):
            errors["summary"] = "You must specify a summary of the issue."
        changes = self._field_changes(fields, errors, allowed=("project", "issuetype", *_EDITABLE))
        if errors or project is None or issuetype is None:  # either None has an error recorded
            raise ApiError(400, errors=errors)
        now = self._now()
        self._key_counters[project.key] += 1
        issue = _Issue(
            id=str(self._next_issue_id),
            key=f"{project.key}-{self._key_counters[project.key]}",
            project=project,
            issuetype=issuetype,
            summary="",
            description=None,
            priority=PRIORITIES[DEFAULT_PRIORITY],
            labels=[],
            assignee=None,
            reporter=creator,
            creator=creator,
            status=STATUSES[project.statuses[0]],
            created=now,
            updated=now,
        )
        self._next_issue_id += 1
        for name, value in changes.items():
            setattr(issue, name, value)
        self._issues[issue.id] = issue
        self._ids_by_key[issue.key] = issue.id
        return issue

    def _get_issue(self, call: _Call) -> Response:
        issue = self._issue(call)
        selected = _select_fields(call.request.query_params.getlist("fields"), default="*all")
        return json_response(_issue_json(issue, call.base, selected, _expands(call)))

    def _bulk_fetch(self, call: _Call) -> Response:
        """Up to 100 issues by id or key; those missing or hidden are left out, not refused."""
        refs = call.body.get("issueIdsOrKeys")
        if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
            raise ApiError(400, ["issueIdsOrKeys must be a non-empty list of issue ids or keys."])
        if len(refs) > _BULK_FETCH_LIMIT:
            raise ApiError(400, [f"You can request at most {_BULK_FETCH_LIMIT} issues at once."])
        fields = call.body.get("fields") or []
        expand = call.body.get("expand") or []
        if not isinstance(fields, list) or not isinstance(expand, list):
            raise ApiError(400, [_BAD_PAYLOAD])
        selected = _select_fields([str(f) for f in fields], default="*navigable")
        expands = frozenset(str(e) for e in expand)
        found = {issue.id: issue for ref in refs if (issue := self._find(ref.strip()))}
        issues = [_issue_json(issue, call.base, selected, expands) for issue in found.values()]
        return json_response({"expand": _EXPAND, "issues": issues, "issueErrors": []})

    def _edit(self, call: _Call) -> Response:
        issue = self._issue(call)
        self._change(issue, call.body, call.account)
        return Response(status_code=204)

    def _change(
        self,
        issue: _Issue,
        body: Mapping[str, Any],
        author: Account,
        target: Status | None = None,
    ) -> None:
        """Apply an edit body (and the move to ``target``) as one changelog entry and one
        ``jira:issue_updated``, then add the body's comments. All is validated first, so a
        refused edit changes nothing."""
        changes, comments = self._edit_changes(issue, body)
        items = [_change_item(name, getattr(issue, name), value) for name, value in changes.items()]
        for name, value in changes.items():
            setattr(issue, name, value)
        if target is not None:
            items += self._move(issue, target)
        self._record(issue, author, items, "issue_updated" if target is None else "issue_generic")
        for comment in comments:
            self._append_comment(issue, comment, author, visibility=None, properties=[])

    def _edit_changes(
        self, issue: _Issue, body: Mapping[str, Any]
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The attribute values a body's ``fields`` and ``update`` change, and the comments its
        ``update`` adds; raises for anything refused."""
        fields, update = body.get("fields") or {}, body.get("update") or {}
        if not isinstance(fields, dict) or not isinstance(update, dict):
            raise ApiError(400, [_BAD_PAYLOAD])
        errors: dict[str, str] = {}
        changes = self._field_changes(fields, errors, allowed=_EDITABLE)
        comments: list[dict[str, Any]] = []
        for name, operations in update.items():
            if name not in (*_EDITABLE, "comment") or not isinstance(operations, list):
                errors[name] = _cannot_set(name)
                continue
            for operation in operations:
                self._update_operation(issue, name, operation, changes, comments, errors)
        if errors:
            raise ApiError(400, errors=errors)
        return {k: v for k, v in changes.items() if getattr(issue, k) != v}, comments

    def _record(
        self, issue: _Issue, author: Account, items: list[dict[str, Any]], event_type: str
    ) -> None:
        """Note a change of ``items`` in the changelog and notify the webhooks; no-op changes
        leave no trace, as in Jira."""
        if not items:
            return
        history = _History(str(self._next_history_id), author, self._touch(issue), tuple(items))
        self._next_history_id += 1
        issue.histories.append(history)
        payload = _issue_event(issue, author, self._site_url, event_type)
        self._notify(
            "jira:issue_updated", issue, {**payload, "changelog": _changelog_event(history)}
        )

    def _touch(self, issue: _Issue) -> datetime:
        """Mark ``issue`` changed now. Its ``updated`` rises strictly with every change (by a
        millisecond when the clock has not moved), so clients can use it as a revision."""
        issue.updated = max(self._now(), issue.updated + timedelta(milliseconds=1))
        return issue.updated

    def _update_operation(
        self,
        issue: _Issue,
        name: str,
        operation: Any,
        changes: dict[str, Any],
        comments: list[dict[str, Any]],
        errors: dict[str, str],
    ) -> None:
        """Fold one ``update`` verb (``{"add": x}``, ``{"remove": x}``, ``{"set": x}``) in."""
        verb, value = next(iter(operation.items())) if isinstance(operation, dict) else ("", None)
        if name == "comment" and verb == "add" and isinstance(value, dict):
            if is_document(value.get("body")):
                comments.append(value["body"])
            else:
                errors["comment"] = "Comment body can not be empty!"
        elif name == "labels" and verb in ("add", "remove") and isinstance(value, str):
            labels = list(changes.get("labels", issue.labels))
            if verb == "remove":
                changes["labels"] = [label for label in labels if label != value]
            else:
                try:
                    changes["labels"] = _parse_labels([*labels, value])
                except _InvalidValue as error:
                    errors["labels"] = str(error)
        elif verb == "set" and name != "comment":
            changes.update(self._field_changes({name: value}, errors, allowed=_EDITABLE))
        else:
            errors[name] = f"Operation '{verb}' is not supported for field '{name}'."

    def _field_changes(
        self, fields: Mapping[str, Any], errors: dict[str, str], *, allowed: Sequence[str]
    ) -> dict[str, Any]:
        """Validated attribute values for the settable fields in ``fields``; errors collected."""
        parsers: dict[str, Callable[[Any], Any]] = {
            "summary": _parse_summary,
            "description": _parse_description,
            "priority": _parse_priority,
            "labels": _parse_labels,
            "assignee": lambda value: self._parse_user("assignee", value),
            "reporter": lambda value: self._parse_user("reporter", value),
        }
        changes: dict[str, Any] = {}
        for name, value in fields.items():
            if name not in allowed:
                errors[name] = _cannot_set(name)
            elif name in parsers:  # project and issuetype are resolved by the create itself
                try:
                    changes[name] = parsers[name](value)
                except _InvalidValue as error:
                    errors[name] = str(error)
        return changes

    def _parse_user(self, name: str, value: Any) -> Account | None:
        account_id = value.get("accountId") if isinstance(value, dict) else value
        # null and "-1" (automatic) both leave the issue unassigned here.
        if account_id is None or (name == "assignee" and account_id == "-1"):
            return None
        account = self._by_account_id(account_id)
        if account is None:
            raise _InvalidValue(f"Specify a valid value for {name}")
        return account

    def _delete(self, call: _Call) -> Response:
        issue = self._issue(call)
        del self._issues[issue.id]
        del self._ids_by_key[issue.key]
        return Response(status_code=204)

    # ---- transitions ----------------------------------------------------------------------

    def _transitions(self, call: _Call) -> Response:
        issue = self._issue(call)
        transitions = [
            {
                "id": transition_id,
                "name": status.name,
                "to": _status_json(status, call.base),
                "hasScreen": False,
                "isGlobal": True,
                "isInitial": False,
                "isAvailable": True,
                "isConditional": False,
                "isLooped": False,
            }
            for transition_id, status in _transition_targets(issue)
        ]
        return json_response({"expand": "transitions", "transitions": transitions})

    def _transition(self, call: _Call) -> Response:
        issue = self._issue(call)
        ref = call.body.get("transition")
        wanted = str(ref.get("id", "")) if isinstance(ref, dict) else ""
        if not wanted:
            raise ApiError(400, ["'transition' identifier must be specified."])
        target = dict(_transition_targets(issue)).get(wanted)
        if target is None:
            raise ApiError(400, [f"Transition id '{wanted}' is not valid for this issue."])
        self._change(issue, call.body, call.account, target)
        return Response(status_code=204)

    def _move(self, issue: _Issue, status: Status) -> list[dict[str, Any]]:
        """Put ``issue`` in ``status``; the changelog items saying so."""
        items = [_change_item("status", issue.status, status)]
        # Done-category statuses carry a resolution, as the default workflows' post functions set.
        resolved = status.category == "done"
        if resolved != (issue.resolved is not None):
            items.append(_resolution_item(resolved))
            issue.resolved = self._now() if resolved else None
        issue.status = status
        return items

    # ---- comments -------------------------------------------------------------------------

    def _add_comment(self, call: _Call) -> Response:
        issue = self._issue(call)
        body = call.body.get("body")
        if body is None or body == "":
            raise ApiError(400, errors={"comment": "Comment body can not be empty!"})
        if not is_document(body):
            raise ApiError(400, [_ADF_REQUIRED])
        properties = _parse_properties(call.body.get("properties") or [])
        visibility = call.body.get("visibility")
        if not isinstance(visibility, dict):
            visibility = None
        comment = self._append_comment(issue, body, call.account, visibility, properties)
        return json_response(_comment_json(issue, comment, call.base, _expands(call)), status=201)

    def _append_comment(
        self,
        issue: _Issue,
        body: dict[str, Any],
        author: Account,
        visibility: dict[str, Any] | None,
        properties: list[dict[str, Any]],
    ) -> _Comment:
        internal = any(
            p.get("key") == SD_PUBLIC_COMMENT
            and isinstance(p.get("value"), dict)
            and p["value"].get("internal") is True
            for p in properties
        )
        now = self._touch(issue)
        comment = _Comment(
            id=str(self._next_comment_id),
            author=author,
            body=body,
            text=adf_to_text(body),
            created=now,
            visibility=visibility,
            properties=properties,
            internal=internal,
            # The property only hides comments from customers where there is a service desk.
            jsd_public=not (internal and issue.project.project_type_key == "service_desk"),
        )
        self._next_comment_id += 1
        issue.comments.append(comment)
        base = self._site_url
        comment_json = _comment_json(issue, comment, base, frozenset())
        commented = _issue_event(issue, author, base, "issue_commented")
        self._notify("jira:issue_updated", issue, {**commented, "comment": comment_json})
        summary = _issue_json(issue, base, _COMMENT_EVENT_FIELDS)
        self._notify("comment_created", issue, {"comment": comment_json, "issue": summary})
        return comment

    def _list_comments(self, call: _Call) -> Response:
        issue = self._issue(call)
        start = int_param(call.param("startAt"), 0, minimum=0)
        limit = int_param(call.param("maxResults"), _COMMENT_LIMIT, minimum=0)
        ordered = issue.comments[::-1] if call.param("orderBy") == "-created" else issue.comments
        page = ordered[start : start + limit]
        expands = _expands(call)
        return json_response(
            {
                "startAt": start,
                "maxResults": limit,
                "total": len(issue.comments),
                "comments": [_comment_json(issue, c, call.base, expands) for c in page],
            }
        )

    # ---- webhooks -------------------------------------------------------------------------

    def _list_webhooks(self, call: _Call) -> Response:
        _require_admin(call.account)
        return json_response([_webhook_json(hook, call.base) for hook in self._webhooks.values()])

    def _get_webhook(self, call: _Call) -> Response:
        _require_admin(call.account)
        return json_response(_webhook_json(self._webhook(call), call.base))

    def _register_webhook(self, call: _Call) -> Response:
        _require_admin(call.account)
        return json_response(_webhook_json(self._register(call.body, call.account), call.base), 201)

    def _delete_webhook(self, call: _Call) -> Response:
        _require_admin(call.account)
        del self._webhooks[self._webhook(call).id]
        return Response(status_code=204)

    def _webhook(self, call: _Call) -> Webhook:
        wanted = call.request.path_params["webhook"]
        hook = self._webhooks.get(int(wanted)) if wanted.isdigit() else None
        if hook is None:
            raise ApiError(404, [f"No webhook with id {wanted} exists."])
        return hook

    def _register(self, body: Mapping[str, Any], account: Account) -> Webhook:
        """A webhook from a registration body (``name``, ``url``, ``events``, ``filters``,
        ``excludeBody``, ``secret``), stored; every problem is reported at once."""
        errors: dict[str, str] = {}
        name, url, events = body.get("name"), body.get("url"), body.get("events", [])
        filters, secret = body.get("filters") or {}, body.get("secret")
        if not _is_text(name):
            errors["name"] = "The webhook name must not be empty."
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            errors["url"] = "The webhook URL must be an absolute http(s) URL."
        if not isinstance(events, list) or not all(_is_text(e) for e in events):
            errors["events"] = "Events must be a list of event names."
        jql = (filters.get(_JQL_FILTER) or "") if isinstance(filters, dict) else None
        if not isinstance(jql, str):
            errors["filters"] = f"Filters must be an object with '{_JQL_FILTER}' JQL."
        elif jql:
            try:
                compile_query(jql, self._schema(account))
            except JqlError as error:
                errors["filters"] = str(error)
        if secret is not None and not isinstance(secret, str):
            errors["secret"] = "The secret must be a string."  # noqa: S105 - a message
        if errors:
            raise ApiError(400, errors=errors)
        hook = Webhook(
            id=self._next_webhook_id,
            name=str(name),
            url=str(url),
            events=tuple(events),
            jql=str(jql),
            secret=secret or None,
            exclude_body=body.get("excludeBody") is True,
            registered_by=account.account_id,
            registered_at=_epoch_ms(self._now()),
        )
        self._next_webhook_id += 1
        self._webhooks[hook.id] = hook
        return hook

    def _notify(self, event: str, issue: _Issue, payload: Mapping[str, Any]) -> None:
        """Queue ``event`` about ``issue`` for every webhook that wants it. Only queued here:
        the sender posts from its own thread, never under the site's lock."""
        hooks = [
            h for h in self._webhooks.values() if event in h.events and self._matches(h, issue)
        ]
        if not hooks:
            return
        body = {"timestamp": _epoch_ms(self._now()), "webhookEvent": event, **payload}
        encoded = json.dumps(body).encode()
        for hook in hooks:
            sent = b"" if hook.exclude_body else encoded
            self._webhook_sender.send(Delivery(hook.url, sent, hook.secret))

    def _matches(self, hook: Webhook, issue: _Issue) -> bool:
        if not hook.jql:
            return True
        # Read as the account that registered it; one that is gone makes the filter match none.
        account = self._by_account_id(hook.registered_by)
        try:
            search = compile_query(hook.jql, self._schema(account)) if account else None
        except JqlError:  # it names something gone since (an issue key): it matches nothing
            return False
        return search is not None and bool(search.select([_row(issue)]))

    # ---- search ---------------------------------------------------------------------------

    def _search_get(self, call: _Call) -> Response:
        params = call.request.query_params
        return self._search(
            call,
            params.get("jql", ""),
            params.get("maxResults"),
            params.getlist("fields"),
            params.get("nextPageToken"),
            params.get("expand") or "",
        )

    def _search_post(self, call: _Call) -> Response:
        body = call.body
        fields = body.get("fields") or []
        if not isinstance(fields, list):
            raise ApiError(400, [_BAD_PAYLOAD])
        max_results = body.get("maxResults")
        return self._search(
            call,
            str(body.get("jql") or ""),
            None if max_results is None else str(max_results),
            [str(f) for f in fields],
            body.get("nextPageToken"),
            str(body.get("expand") or ""),
        )

    def _search(
        self,
        call: _Call,
        jql: str,
        max_results: str | None,
        fields: list[str],
        token: str | None,
        expand: str,
    ) -> Response:
        search = self._compile(jql, call.account)
        selected = _select_fields(fields, default="id")
        # Like Jira, pages of ids (or keys) may be far larger than pages of full issues.
        cap = _ID_SEARCH_LIMIT if selected <= {"id", "key"} else _SEARCH_LIMIT
        limit = min(int_param(max_results, _DEFAULT_SEARCH, minimum=1), cap)
        offset = _decode_page_token(token, jql) if token else 0
        matched = search.select(self._rows())
        page = [row["_issue"] for row in matched[offset : offset + limit]]
        expands = frozenset(part.strip() for part in expand.split(","))
        hits = [_search_hit(issue, call.base, selected, expands) for issue in page]
        body: dict[str, Any] = {"issues": hits}
        is_last = offset + limit >= len(matched)
        if not is_last:
            body["nextPageToken"] = _page_token(offset + limit, jql)
        body["isLast"] = is_last
        return json_response(body)

    def _approximate_count(self, call: _Call) -> Response:
        search = self._compile(str(call.body.get("jql") or ""), call.account)
        return json_response({"count": len(search.select(self._rows()))})

    def _compile(self, jql: str, account: Account) -> Search:
        try:
            search = compile_query(jql, self._schema(account))
        except JqlError as error:
            raise ApiError(400, [str(error)]) from error
        if not search.bounded:
            raise ApiError(
                400,
                [
                    "Unbounded JQL queries are not allowed here. "
                    "Please add a search restriction to your query."
                ],
            )
        return search

    def _schema(self, account: Account) -> Schema:
        categories = {
            alias.casefold(): key
            for key, (number, name, _) in _CATEGORIES.items()
            for alias in (key, name, str(number))
        }
        return Schema(
            vocabulary={
                "project": _aliases((p.id, p.key, p.name) for p in self._projects.values()),
                "status": _aliases((s.id, s.name) for s in STATUSES.values()),
                "statusCategory": categories,
                "priority": _aliases((p.id, p.name) for p in PRIORITIES.values()),
                "issuetype": _aliases((t.id, t.name) for t in ISSUE_TYPES.values()),
                "key": {key.casefold(): key.casefold() for key in self._ids_by_key},
            },
            ranks={p.id: len(PRIORITIES) - int(p.id) for p in PRIORITIES.values()},
            current_user=account.account_id,
            now=self._clock(),
            zone=account.zone,
        )

    def _rows(self) -> list[dict[str, Any]]:
        return [_row(issue) for issue in self._issues.values()]

    # ---- lookups --------------------------------------------------------------------------

    def _issue(self, call: _Call) -> _Issue:
        issue = self._find(call.request.path_params["issue"])
        if issue is None:
            raise _issue_not_found()
        return issue

    def _find(self, id_or_key: str) -> _Issue | None:
        issue_id = id_or_key if id_or_key.isdigit() else self._ids_by_key.get(id_or_key.upper())
        return self._issues.get(issue_id or "")

    def _project(self, id_or_key: str) -> Project | None:
        for project in self._projects.values():
            if id_or_key.upper() == project.key or id_or_key == project.id:
                return project
        return None

    def _project_ref(self, ref: Any) -> Project | None:
        if not isinstance(ref, dict):
            return None
        wanted = ref.get("key") or ref.get("id")
        return self._project(str(wanted)) if wanted else None

    def _account(self, email_or_id: str) -> Account | None:
        return self._accounts.get(email_or_id.casefold()) or self._by_account_id(email_or_id)

    def _by_account_id(self, account_id: Any) -> Account | None:
        return next((a for a in self._accounts.values() if a.account_id == account_id), None)

    def _now(self) -> datetime:
        # Jira keeps milliseconds; truncating here keeps JQL comparisons and output consistent.
        now = self._clock()
        return now.replace(microsecond=now.microsecond // 1000 * 1000)


# ---- rendering ------------------------------------------------------------------------------


def _timestamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


def _issue_url(issue: _Issue, base: str) -> str:
    return f"{base}/rest/api/3/issue/{issue.id}"


def _user_json(account: Account, base: str) -> dict[str, Any]:
    return {
        "self": f"{base}/rest/api/3/user?accountId={account.account_id}",
        "accountId": account.account_id,
        "emailAddress": account.email,
        "displayName": account.display_name,
        "active": True,
        "timeZone": account.time_zone,
        "accountType": "atlassian",
    }


def _status_json(status: Status, base: str) -> dict[str, Any]:
    number, name, color = _CATEGORIES[status.category]
    return {
        "self": f"{base}/rest/api/3/status/{status.id}",
        "description": "",
        "name": status.name,
        "id": status.id,
        "statusCategory": {
            "self": f"{base}/rest/api/3/statuscategory/{number}",
            "id": number,
            "key": status.category,
            "colorName": color,
            "name": name,
        },
    }


def _project_json(project: Project, base: str) -> dict[str, Any]:
    return {
        "self": f"{base}/rest/api/3/project/{project.id}",
        "id": project.id,
        "key": project.key,
        "name": project.name,
        "projectTypeKey": project.project_type_key,
        "simplified": False,
    }


def _issue_type_json(issuetype: IssueType, base: str) -> dict[str, Any]:
    return {
        "self": f"{base}/rest/api/3/issuetype/{issuetype.id}",
        "id": issuetype.id,
        "name": issuetype.name,
        "subtask": False,
        "hierarchyLevel": 0,
    }


def _comment_json(
    issue: _Issue, comment: _Comment, base: str, expands: frozenset[str]
) -> dict[str, Any]:
    author = _user_json(comment.author, base)
    rendered: dict[str, Any] = {
        "self": f"{_issue_url(issue, base)}/comment/{comment.id}",
        "id": comment.id,
        "author": author,
        "body": comment.body,
        "updateAuthor": author,
        "created": _timestamp(comment.created),
        "updated": _timestamp(comment.created),
        "jsdPublic": comment.jsd_public,
    }
    if comment.visibility is not None:
        rendered["visibility"] = comment.visibility
    if "properties" in expands:
        rendered["properties"] = comment.properties
    return rendered


def _field_json(issue: _Issue, name: str, base: str) -> Any:
    if name == "comment":
        comments = [_comment_json(issue, c, base, frozenset()) for c in issue.comments]
        return {
            "comments": comments,
            "self": f"{_issue_url(issue, base)}/comment",
            "maxResults": len(comments),
            "total": len(comments),
            "startAt": 0,
        }
    renderers: dict[str, Callable[[], Any]] = {
        "summary": lambda: issue.summary,
        "issuetype": lambda: _issue_type_json(issue.issuetype, base),
        "project": lambda: _project_json(issue.project, base),
        "status": lambda: _status_json(issue.status, base),
        "priority": lambda: {
            "self": f"{base}/rest/api/3/priority/{issue.priority.id}",
            "id": issue.priority.id,
            "name": issue.priority.name,
        },
        "labels": lambda: list(issue.labels),
        "assignee": lambda: issue.assignee and _user_json(issue.assignee, base),
        "reporter": lambda: issue.reporter and _user_json(issue.reporter, base),
        "creator": lambda: _user_json(issue.creator, base),
        "created": lambda: _timestamp(issue.created),
        "updated": lambda: _timestamp(issue.updated),
        "resolution": lambda: (
            None
            if issue.resolved is None
            else {"self": f"{base}/rest/api/3/resolution/10000", **_RESOLUTION_DONE}
        ),
        "resolutiondate": lambda: None if issue.resolved is None else _timestamp(issue.resolved),
        "description": lambda: issue.description,
    }
    return renderers[name]()


def _issue_json(
    issue: _Issue, base: str, selected: frozenset[str], expands: frozenset[str] = frozenset()
) -> dict[str, Any]:
    fields = {name: _field_json(issue, name, base) for name in _ALL_FIELDS if name in selected}
    rendered = {
        "expand": _EXPAND,
        "id": issue.id,
        "self": _issue_url(issue, base),
        "key": issue.key,
        "fields": fields,
    }
    if "changelog" in expands:
        rendered["changelog"] = _changelog_json(issue, base)
    return rendered


def _search_hit(
    issue: _Issue, base: str, selected: frozenset[str], expands: frozenset[str]
) -> dict[str, Any]:
    # Enhanced search returns bare ids unless fields are asked for.
    if selected <= {"id"} and "changelog" not in expands:
        return {"id": issue.id}
    return _issue_json(issue, base, selected, expands)


def _changelog_json(issue: _Issue, base: str) -> dict[str, Any]:
    """The ``changelog`` expansion: "recent updates to an issue, sorted by date, starting from
    the most recent" (Jira's words), at most 100 of them."""
    recent = issue.histories[::-1][:_CHANGELOG_EXPAND_LIMIT]
    return {
        "startAt": 0,
        "maxResults": len(recent),
        "total": len(issue.histories),
        "histories": [
            {
                "id": history.id,
                "author": _user_json(history.author, base),
                "created": _timestamp(history.created),
                "items": list(history.items),
            }
            for history in recent
        ],
    }


def _change_item(name: str, old: Any, new: Any) -> dict[str, Any]:
    """A changelog item: the field's old and new value, as ids (``from``/``to``) where the
    value is a thing with one, and as text (``fromString``/``toString``)."""
    (old_id, old_text), (new_id, new_text) = _change_value(old), _change_value(new)
    return {
        "field": name,
        "fieldtype": "jira",
        "fieldId": name,
        "from": old_id,
        "fromString": old_text,
        "to": new_id,
        "toString": new_text,
    }


def _change_value(value: Any) -> tuple[str | None, str | None]:
    if value is None:
        return None, None
    if isinstance(value, Status | Priority):
        return value.id, value.name
    if isinstance(value, Account):
        return value.account_id, value.display_name
    if isinstance(value, list):
        return None, " ".join(value)
    if isinstance(value, dict):
        return None, adf_to_text(value)
    return None, str(value)


def _resolution_item(resolved: bool) -> dict[str, Any]:
    done = (_RESOLUTION_DONE["id"], _RESOLUTION_DONE["name"])
    (old_id, old_text), (new_id, new_text) = (
        ((None, None), done) if resolved else (done, (None, None))
    )
    return {
        "field": "resolution",
        "fieldtype": "jira",
        "fieldId": "resolution",
        "from": old_id,
        "fromString": old_text,
        "to": new_id,
        "toString": new_text,
    }


def _issue_event(issue: _Issue, author: Account, base: str, event_type: str) -> dict[str, Any]:
    """The common part of a ``jira:issue_updated`` body: who, what kind of change, the issue."""
    return {
        "issue_event_type_name": event_type,
        "user": _user_json(author, base),
        "issue": _issue_json(issue, base, _ISSUE_EVENT_FIELDS),
    }


def _changelog_event(history: _History) -> dict[str, Any]:
    return {"id": history.id, "items": list(history.items)}


def _webhook_json(hook: Webhook, base: str) -> dict[str, Any]:
    """A registered webhook as the admin REST API shows it; the secret is never shown again."""
    return {
        "self": f"{base}/rest/webhooks/1.0/webhook/{hook.id}",
        "name": hook.name,
        "url": hook.url,
        "events": list(hook.events),
        "filters": {_JQL_FILTER: hook.jql},
        "excludeBody": hook.exclude_body,
        "enabled": True,
        "lastUpdatedUser": hook.registered_by,
        "lastUpdated": hook.registered_at,
    }


def _require_admin(account: Account) -> None:
    if not account.site_admin:
        raise ApiError(403, ["Only Jira administrators can manage webhooks."])


def _epoch_ms(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def _select_fields(specs: Iterable[str], *, default: str) -> frozenset[str]:
    """Jira's ``fields`` parameter: names, ``*all`` / ``*navigable``, ``-name`` exclusions."""
    tokens = [token.strip() for spec in specs for token in spec.split(",") if token.strip()]
    tokens = tokens or [default]
    excluded = {token[1:] for token in tokens if token.startswith("-")}
    named = {token for token in tokens if not token.startswith("-")}
    # Only exclusions, or a wildcard: start from every field (navigable ones are all of ours).
    if not named or named & {"*all", "*navigable"}:
        named |= set(_ALL_FIELDS)
    return frozenset(named - excluded - {"*all", "*navigable"})


def _stored_issue(issue: _Issue) -> dict[str, Any]:
    return {
        "id": issue.id,
        "key": issue.key,
        "project": issue.project.key,
        "issuetype": issue.issuetype.name,
        "summary": issue.summary,
        "description": issue.description,
        "priority": issue.priority.name,
        "labels": list(issue.labels),
        "assignee": issue.assignee.account_id if issue.assignee else None,
        "reporter": issue.reporter.account_id if issue.reporter else None,
        "status": issue.status.name,
        "resolution": None if issue.resolved is None else _RESOLUTION_DONE["name"],
        "created": _timestamp(issue.created),
        "updated": _timestamp(issue.updated),
    }


def _stored_comment(comment: _Comment) -> dict[str, Any]:
    return {
        "id": comment.id,
        "author": comment.author.account_id,
        "body": comment.body,
        "text": comment.text,
        "internal": comment.internal,
        "jsdPublic": comment.jsd_public,
        "visibility": comment.visibility,
        "properties": comment.properties,
        "created": _timestamp(comment.created),
    }


def _row(issue: _Issue) -> dict[str, Any]:
    """What a JQL query sees of ``issue`` (canonical, casefolded values; see jql.Row)."""
    description = adf_to_text(issue.description)
    comments = "\n".join(comment.text for comment in issue.comments)

    def person(account: Account | None) -> frozenset[str]:
        return frozenset({account.account_id.casefold()}) if account else frozenset()

    return {
        "_issue": issue,
        "project": frozenset({issue.project.id}),
        "key": frozenset({issue.key.casefold()}),
        "id": int(issue.id),
        "summary": issue.summary,
        "description": description,
        "comment": comments,
        "text": "\n".join((issue.summary, description, comments)),
        "status": frozenset({issue.status.id}),
        "statusCategory": frozenset({issue.status.category}),
        "priority": frozenset({issue.priority.id}),
        "labels": frozenset(label.casefold() for label in issue.labels),
        "assignee": person(issue.assignee),
        "reporter": person(issue.reporter),
        "issuetype": frozenset({issue.issuetype.id}),
        "created": issue.created,
        "updated": issue.updated,
    }


# ---- helpers --------------------------------------------------------------------------------


async def _read_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw) if raw.strip() else {}
    except (ValueError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        raise ApiError(400, [_BAD_PAYLOAD])
    return body


def _numbered(value: Any, index: int) -> Any:
    return value.replace("{i}", str(index)) if isinstance(value, str) else value


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


class _InvalidValue(ValueError):
    """A field value Jira refuses; the message goes in ``errors`` under the field's name."""


def _parse_summary(value: Any) -> str:
    if not _is_text(value):
        raise _InvalidValue("You must specify a summary of the issue.")
    if len(value) > 255:
        raise _InvalidValue("Summary must be less than 255 characters.")
    return str(value)


def _parse_description(value: Any) -> dict[str, Any] | None:
    if value is not None and not is_document(value):
        raise _InvalidValue(_ADF_REQUIRED)
    return None if value is None else dict(value)


def _parse_priority(value: Any) -> Priority:
    priority = _lookup(PRIORITIES.values(), value)
    if priority is None:
        raise _InvalidValue("The priority selected is invalid.")
    return priority


def _parse_labels(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(label, str) for label in value):
        raise _InvalidValue("data was not an array")
    for label in value:
        if not label.strip() or any(char.isspace() for char in label):
            raise _InvalidValue(f"The label '{label}' contains spaces which is invalid.")
    return list(dict.fromkeys(value))  # Jira keeps each label once


def _parse_properties(value: Any) -> list[dict[str, Any]]:
    """A comment's ``properties`` on create: ``[{"key": ..., "value": <any JSON>}]``, each key
    once (the last wins), within Jira's entity property limits."""
    if not isinstance(value, list) or not all(isinstance(p, dict) for p in value):
        raise ApiError(400, [_BAD_PAYLOAD])
    by_key: dict[str, dict[str, Any]] = {}
    for prop in value:
        key = prop.get("key")
        if not _is_text(key):
            raise ApiError(400, ["The property key cannot be empty."])
        if len(key) > _PROPERTY_KEY_LIMIT:
            raise ApiError(
                400, [f"The property key cannot be longer than {_PROPERTY_KEY_LIMIT} characters."]
            )
        if len(json.dumps(prop.get("value"))) > _PROPERTY_VALUE_LIMIT:
            raise ApiError(
                400,
                [f"The property value cannot be longer than {_PROPERTY_VALUE_LIMIT} characters."],
            )
        by_key[key] = {"key": key, "value": prop.get("value")}
    return list(by_key.values())


def _cannot_set(name: str) -> str:
    return f"Field '{name}' cannot be set. It is not on the appropriate screen, or unknown."


def _lookup(known: Iterable[_Ref], ref: Any) -> _Ref | None:
    """A ``{"id": ...}`` or ``{"name": ...}`` reference resolved against ``known``."""
    if not isinstance(ref, dict):
        return None
    for item in known:
        if ("id" in ref and str(ref["id"]) == item.id) or ref.get("name") == item.name:
            return item
    return None


def _issue_type_ref(project: Project | None, ref: Any, errors: dict[str, str]) -> IssueType | None:
    if ref is None:
        errors["issuetype"] = "Specify an issue type"
        return None
    if project is None:
        return None
    issuetype = _lookup((ISSUE_TYPES[name] for name in project.issue_types), ref)
    if issuetype is None:
        errors["issuetype"] = "The issue type selected is invalid."
    return issuetype


def _transition_targets(issue: _Issue) -> list[tuple[str, Status]]:
    """(transition id, target) for every other status of the workflow; ids 11, 21, 31, ..."""
    workflow = [STATUSES[name] for name in issue.project.statuses]
    return [
        (str(11 + 10 * index), status)
        for index, status in enumerate(workflow)
        if status != issue.status
    ]


def _expands(call: _Call) -> frozenset[str]:
    return frozenset(part.strip() for part in (call.param("expand") or "").split(","))


def _aliases(groups: Iterable[tuple[str, ...]]) -> dict[str, str]:
    """Casefolded spelling -> canonical value (each group's first member)."""
    return {alias.casefold(): group[0] for group in groups for alias in group}


def _page_token(offset: int, jql: str) -> str:
    # Bound to the query so a token cannot page through a different result set.
    return base64.urlsafe_b64encode(f"{offset}:{_digest(jql)}".encode()).decode()


def _decode_page_token(token: str, jql: str) -> int:
    try:
        offset, _, digest = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        if digest == _digest(jql):
            return int(offset)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise ApiError(400, ["The provided next page token is invalid or expired."])


def _digest(jql: str) -> str:
    return hashlib.sha256(jql.encode()).hexdigest()[:16]
