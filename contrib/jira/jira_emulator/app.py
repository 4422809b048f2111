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
from datetime import UTC, datetime
from functools import partial
from http import HTTPStatus
from typing import Any, TypeVar

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

ADMIN_ACCOUNT_ID = "5f8a1c2b3d4e5f60718293a4"
DEFAULT_EMAIL = "admin@example.com"
DEFAULT_API_TOKEN = "jira-api-token"  # noqa: S105 - the emulator's documented dev credential
SD_PUBLIC_COMMENT = "sd.public.comment"

_EXPAND = "renderedFields,names,schema,operations,editmeta,changelog,versionedRepresentations"
_SEARCH_LIMIT, _ID_SEARCH_LIMIT, _DEFAULT_SEARCH = 100, 5000, 50
_COMMENT_LIMIT = 5000
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
    """An Atlassian account; ``api_token`` None means no Basic login, ``read_only`` 403s writes."""

    email: str
    display_name: str
    api_token: str | None = field(default=None, repr=False)
    read_only: bool = False
    account_id: str = ""  # derived from the email when empty, so ids are stable across runs

    def __post_init__(self) -> None:
        if not self.account_id:
            digest = hashlib.sha256(self.email.casefold().encode()).hexdigest()[:24]
            object.__setattr__(self, "account_id", digest)


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
    Account(DEFAULT_EMAIL, "Alice Admin", DEFAULT_API_TOKEN, account_id=ADMIN_ACCOUNT_ID),
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
        self.reset()
        self.app = Starlette(routes=self._routes())

    # ---- Python API -----------------------------------------------------------------------

    def reset(self) -> None:
        """Forget issues, comments, faults and the request log; restore latency and ``down``."""
        with self._lock:
            super().reset()
            self._issues: dict[str, _Issue] = {}  # by id, in creation order
            self._ids_by_key: dict[str, str] = {}
            self._key_counters = dict.fromkeys(self._projects, 0)
            self._next_issue_id = 10000
            self._next_comment_id = 10000

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

    def seed_issues(self, n: int, project: str = "DQ", **fields: Any) -> list[dict[str, Any]]:
        """Create ``n`` issues as the first account; ``{i}`` in a string becomes the 1-based index.

        ``fields``: summary, description (text or ADF), issuetype, priority, status (names),
        labels (list), assignee and reporter (email or account id).
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
                if status is not None:
                    self._move(issue, STATUSES[status])
                created.append(_stored_issue(issue))
            return created

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "issues": len(self._issues),
                "comments": sum(len(issue.comments) for issue in self._issues.values()),
                "accounts": len(self._accounts),
                "projects": len(self._projects),
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
        api: list[tuple[str, str, _Handler, str | None]] = [
            ("/rest/api/3/myself", "GET", self._myself, None),
            ("/rest/api/3/project/{project}", "GET", self._get_project, None),
            ("/rest/servicedeskapi/servicedesk", "GET", self._service_desks, None),
            ("/rest/api/3/issue", "POST", self._create, "create issues in this project"),
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
            return handler(_Call(request, account, body))

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
        return json_response(_issue_json(issue, call.base, selected))

    def _edit(self, call: _Call) -> Response:
        issue = self._issue(call)
        self._apply_edit(issue, call.body, call.account)
        return Response(status_code=204)

    def _apply_edit(self, issue: _Issue, body: Mapping[str, Any], author: Account) -> None:
        """Apply a body's ``fields`` and ``update``; all is validated first, so a refused edit
        changes nothing."""
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
        changed = {k: v for k, v in changes.items() if getattr(issue, k) != v}
        for name, value in changed.items():
            setattr(issue, name, value)
        for comment in comments:
            self._append_comment(issue, comment, author, visibility=None, properties=[])
        if changed:
            issue.updated = self._now()

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
        self._apply_edit(issue, call.body, call.account)
        self._move(issue, target)
        return Response(status_code=204)

    def _move(self, issue: _Issue, status: Status) -> None:
        now = self._now()
        # Done-category statuses carry a resolution, as the default workflows' post functions set.
        if status.category == "done" and issue.resolved is None:
            issue.resolved = now
        elif status.category != "done":
            issue.resolved = None
        issue.status = status
        issue.updated = now

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
        now = self._now()
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
        issue.updated = now
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

    # ---- search ---------------------------------------------------------------------------

    def _search_get(self, call: _Call) -> Response:
        params = call.request.query_params
        return self._search(
            call,
            params.get("jql", ""),
            params.get("maxResults"),
            params.getlist("fields"),
            params.get("nextPageToken"),
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
        )

    def _search(
        self,
        call: _Call,
        jql: str,
        max_results: str | None,
        fields: list[str],
        token: str | None,
    ) -> Response:
        search = self._compile(jql, call.account)
        selected = _select_fields(fields, default="id")
        # Like Jira, pages of ids (or keys) may be far larger than pages of full issues.
        cap = _ID_SEARCH_LIMIT if selected <= {"id", "key"} else _SEARCH_LIMIT
        limit = min(int_param(max_results, _DEFAULT_SEARCH, minimum=1), cap)
        offset = _decode_page_token(token, jql) if token else 0
        matched = search.select(self._rows())
        page = [row["_issue"] for row in matched[offset : offset + limit]]
        body: dict[str, Any] = {"issues": [_search_hit(i, call.base, selected) for i in page]}
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
        "timeZone": "UTC",
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


def _issue_json(issue: _Issue, base: str, selected: frozenset[str]) -> dict[str, Any]:
    fields = {name: _field_json(issue, name, base) for name in _ALL_FIELDS if name in selected}
    return {
        "expand": _EXPAND,
        "id": issue.id,
        "self": _issue_url(issue, base),
        "key": issue.key,
        "fields": fields,
    }


def _search_hit(issue: _Issue, base: str, selected: frozenset[str]) -> dict[str, Any]:
    # Enhanced search returns bare ids unless fields are asked for.
    return {"id": issue.id} if selected <= {"id"} else _issue_json(issue, base, selected)


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
