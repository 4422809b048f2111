"""An in-memory ServiceNow Table API (``incident`` plus reference tables) as a Starlette app.

Shapes follow real captures: the ``{"result": ...}`` envelope, the error envelope, raw string
values for every field, references as ``{"link", "value"}``, ``X-Total-Count`` and ``Link``
headers. Faults (rate limits, outages, hibernation pages, answers lost, refused or cut off
after the commit, late commits, slow bodies; see :mod:`ticketing_localserver.emulation`) can be
queued from Python or over HTTP under ``/__emulator/``, as can a cap on requests in flight.

What is the instance's own, from Python or over HTTP:

- ``clock_skew`` (``POST /__emulator/clock {"skew_seconds": 600}``): added to every timestamp
  the instance writes (``sys_created_on``, ``opened_at``, journal entries, ...), as on an
  instance whose clock runs ahead of (or, negative, behind) the client's. The ``Date`` header
  is uvicorn's, so it stays unskewed.
- ``deny_tables`` (``POST /__emulator/acl {"deny_read": ["sys_journal_field"]}``): tables whose
  read ACL refuses every user; :attr:`User.can_read_journal` False refuses one user
  ``sys_journal_field`` (its read ACL is admin-only on many instances). A refused list or record
  GET answers 403; an incident's journal fields still display through
  ``sysparm_display_value``, as they do on a real instance.
- OAuth 2.0 (``POST /oauth_token.do``, a form, as instances have it): the password,
  client_credentials and refresh_token grants for ``oauth_clients``, the client named by the
  form fields ``client_id`` and ``client_secret`` as ServiceNow documents for every grant (a
  request with an ``Authorization`` header is refused, unless ``oauth_basic_client_auth`` lets
  the client come in a Basic header instead); its access tokens work as
  bearer tokens on the Table API until ``token_lifetime`` runs out or ``expire_tokens()``
  (``POST /__emulator/oauth {"token_lifetime": 1.5}`` or ``{"expire_tokens": true}``; a GET
  there counts token requests). Latency, ``down`` and the faults apply to it as to the Table API.
- ``sys_choice``: the choice lists (``state``, ``priority``, ...) as a read-only table, which
  display values follow; :meth:`Emulator.set_choice` adds or retires a choice, so a test can
  make an instance with states of its own.
- The generated Business Rules, played (:mod:`servicenow_emulator.notify`): given a URL and a
  secret (``notify_url``/``notify_secret`` at start, :meth:`Emulator.notify_to`, or
  ``POST /__emulator/notify {"url", "secret", "integration_user"}``; a GET there counts what was
  sent), every incident insert or update and every work note or comment by a user other than
  ``integration_user`` is posted, signed, from a background thread.
- Agents: :meth:`Emulator.act_as` (``POST /__emulator/act {"user", "sys_id", "fields"}``)
  changes an incident as another user would through the Table API.
"""

from __future__ import annotations

import hmac
import json
import math
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlencode

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

from .notify import Notifier, NotifyTarget
from .query import TEXT_QUERY, Resolver, parse

ADMIN_SYS_ID = "6816f79cc0a8016401c5a33be04be441"  # admin's sys_id on every real instance
DEFAULT_PASSWORD = "admin-password"  # noqa: S105 - the emulator's documented dev credential
DEFAULT_OAUTH_CLIENT_ID = "emulator-client"
DEFAULT_OAUTH_CLIENT_SECRET = "emulator-client-secret"  # noqa: S105 - documented dev credential
DEFAULT_LIMIT = 10000
TIMESTAMP = "%Y-%m-%d %H:%M:%S"

_GRANTS = ("password", "client_credentials", "refresh_token")
_REFRESH_LIFETIMES = 100  # a refresh token lasts this many access-token lifetimes
_WRITE_VERBS = {"POST": "Insert", "PATCH": "Update", "PUT": "Update", "DELETE": "Delete"}
_ID_NAMESPACE = uuid.UUID("3b1c2f8e-6d4a-4f0e-9a53-5e6f7a8b9c0d")
_HIBERNATING_PAGE = (
    "<html><head><title>Instance Hibernating page</title></head><body>"
    "<h1>Your instance is hibernating</h1>"
    "<p>Sign in to the developer portal to wake up your instance.</p></body></html>"
)


def _stable_id(table: str, key: str) -> str:
    return uuid.uuid5(_ID_NAMESPACE, f"{table}:{key}").hex


@dataclass(frozen=True)
class User:
    """A sys_user row; ``password`` None means no Basic login, ``can_write`` False means 403s
    on writes, ``can_read_journal`` False means 403s on reading ``sys_journal_field``."""

    user_name: str
    name: str
    password: str | None = field(default=None, repr=False)
    can_write: bool = True
    can_read_journal: bool = True
    sys_id: str = ""  # derived from user_name when empty, so ids are stable across runs

    def __post_init__(self) -> None:
        if not self.sys_id:
            object.__setattr__(self, "sys_id", _stable_id("sys_user", self.user_name))


@dataclass(frozen=True)
class Group:
    name: str
    description: str = ""
    sys_id: str = ""

    def __post_init__(self) -> None:
        if not self.sys_id:
            object.__setattr__(self, "sys_id", _stable_id("sys_user_group", self.name))


DEFAULT_USERS = (
    User("admin", "System Administrator", DEFAULT_PASSWORD, sys_id=ADMIN_SYS_ID),
    User("john.doe", "John Doe"),
    User("jane.smith", "Jane Smith"),
    User("beth.anglin", "Beth Anglin"),
)
DEFAULT_GROUPS = (
    Group("Data Engineering", "Owns the data pipelines"),
    Group("Service Desk", "First line support"),
    Group("Network", "Network operations"),
)


class ApiError(ServiceError):
    """An answer in ServiceNow's error envelope; raised anywhere below a request handler."""

    def __init__(
        self,
        status: int,
        message: str,
        detail: str | None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {message}: {detail}")
        self.status, self.message, self.detail = status, message, detail
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "detail": self.detail}, "status": "failure"}

    def response(self) -> Response:
        return json_response(self.body(), status=self.status, headers=self.headers)


class _Unauthenticated(ApiError):
    def __init__(self) -> None:
        super().__init__(
            401,
            "User Not Authenticated",
            "Required to provide Auth information",
            {"WWW-Authenticate": 'BASIC realm="Service-now"'},
        )

    def body(self) -> dict[str, Any]:
        # Key order as in the real capture, for byte-level comparisons.
        return {"error": {"detail": self.detail, "message": self.message}, "status": "failure"}


class _OAuthError(ServiceError):
    """An answer of ``/oauth_token.do``: OAuth's error shape, not the Table API's envelope."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(f"{status} {error}: {description}")
        self.status, self.error, self.description = status, error, description

    def response(self) -> Response:
        # Key order as in ServiceNow's answers.
        body = {"error_description": self.description, "error": self.error}
        return json_response(body, status=self.status)


def _access_denied() -> _OAuthError:
    # ServiceNow words every refused client, user or refresh token alike, naming none of them.
    return _OAuthError(401, "server_error", "access_denied")


@dataclass(frozen=True)
class _Issued:
    """An issued OAuth token: the user it acts as, its client, and until when (monotonic)."""

    user_name: str
    client_id: str
    expires: float


class _FaultAnswers:
    """The instance's answers to injected failures."""

    html_page = _HIBERNATING_PAGE

    def down(self) -> ApiError:
        return ApiError(503, "Service Unavailable", "The instance is down (emulator)")

    def rate_limited(self, headers: dict[str, str]) -> ApiError:
        detail = "The maximum number of requests for this user was exceeded (emulator)"
        return ApiError(429, "Too many requests", detail, headers)

    def server_error(self, status: int, headers: dict[str, str]) -> ApiError:
        return ApiError(status, HTTPStatus(status).phrase, "Injected fault (emulator)", headers)

    def lost(self) -> ApiError:
        return ApiError(504, "Gateway Timeout", "The response was lost (emulator)")

    def bad_control(self, error: Exception) -> ApiError:
        return ApiError(400, "Invalid emulator control request", repr(error))


# ---- tables -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Table:
    fields: tuple[str, ...]
    references: Mapping[str, str]  # field -> referenced table
    writable: bool = False
    choices: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


_INCIDENT_DEFAULTS: dict[str, str] = {
    "parent": "", "made_sla": "true", "caused_by": "", "watch_list": "", "upon_reject": "cancel",
    "sys_updated_on": "", "child_incidents": "0", "hold_reason": "", "approval_history": "",
    "number": "", "resolved_by": "", "sys_updated_by": "", "opened_by": "", "user_input": "",
    "sys_created_on": "", "sys_domain": "global", "state": "1", "sys_created_by": "",
    "knowledge": "false", "order": "", "calendar_stc": "", "closed_at": "", "cmdb_ci": "",
    "delivery_plan": "", "impact": "3", "active": "true", "work_notes_list": "",
    "business_service": "", "priority": "5", "sys_domain_path": "/", "rfc": "", "time_worked": "",
    "expected_start": "", "opened_at": "", "business_duration": "", "group_list": "",
    "work_end": "", "caller_id": "", "resolved_at": "", "approval_set": "", "subcategory": "",
    "work_notes": "", "short_description": "", "close_code": "", "correlation_display": "",
    "delivery_task": "", "work_start": "", "assignment_group": "", "additional_assignee_list": "",
    "business_stc": "", "description": "", "calendar_duration": "", "close_notes": "",
    "notify": "1", "sys_class_name": "incident", "closed_by": "", "follow_up": "",
    "parent_incident": "", "sys_id": "", "contact_type": "", "incident_state": "1",
    "urgency": "3", "problem_id": "", "company": "", "reassignment_count": "0",
    "activity_due": "", "assigned_to": "", "severity": "3", "comments": "",
    "approval": "not requested", "sla_due": "", "comments_and_work_notes": "", "due_date": "",
    "sys_mod_count": "0", "reopen_count": "0", "sys_tags": "", "escalation": "0",
    "upon_approval": "proceed", "correlation_id": "", "location": "", "category": "inquiry",
}  # fmt: skip
_STATES = {
    "1": "New", "2": "In Progress", "3": "On Hold", "6": "Resolved", "7": "Closed", "8": "Canceled",
}  # fmt: skip
_LEVELS = {"1": "1 - High", "2": "2 - Medium", "3": "3 - Low"}
_INCIDENT = _Table(
    fields=tuple(_INCIDENT_DEFAULTS),
    references={
        "assigned_to": "sys_user",
        "assignment_group": "sys_user_group",
        "opened_by": "sys_user",
        "caller_id": "sys_user",
        "resolved_by": "sys_user",
        "closed_by": "sys_user",
        "sys_domain": "sys_user_group",
    },
    writable=True,
    choices={
        "state": _STATES,
        "incident_state": _STATES,
        "priority": {
            "1": "1 - Critical",
            "2": "2 - High",
            "3": "3 - Moderate",
            "4": "4 - Low",
            "5": "5 - Planning",
        },
        "impact": _LEVELS,
        "urgency": _LEVELS,
        "severity": _LEVELS,
        "category": {
            "inquiry": "Inquiry / Help",
            "software": "Software",
            "hardware": "Hardware",
            "network": "Network",
            "database": "Database",
        },
        "hold_reason": {
            "1": "Awaiting Caller",
            "3": "Awaiting Problem",
            "4": "Awaiting Vendor",
            "5": "Awaiting Change",
        },
        "approval": {"not requested": "Not Yet Requested"},
    },
)
_SYSTEM_FIELDS = ("sys_created_on", "sys_created_by", "sys_updated_on", "sys_updated_by")
_USER_FIELDS = (
    "sys_id", "user_name", "name", "first_name", "last_name", "email", "active", "sys_class_name",
    *_SYSTEM_FIELDS, "sys_mod_count",
)  # fmt: skip
_GROUP_FIELDS = (
    "sys_id", "name", "description", "email", "manager", "active", *_SYSTEM_FIELDS, "sys_mod_count",
)  # fmt: skip
_JOURNAL_FIELDS = (
    "sys_id", "element", "element_id", "name", "value", "sys_created_on", "sys_created_by",
)  # fmt: skip
_CHOICE_FIELDS = (
    "sys_id", "name", "element", "value", "label", "sequence", "inactive", "language",
)  # fmt: skip
_TABLES: dict[str, _Table] = {
    "incident": _INCIDENT,
    "sys_user": _Table(fields=_USER_FIELDS, references={}),
    "sys_user_group": _Table(fields=_GROUP_FIELDS, references={"manager": "sys_user"}),
    "sys_journal_field": _Table(fields=_JOURNAL_FIELDS, references={}),
    "sys_choice": _Table(fields=_CHOICE_FIELDS, references={}),
}
# Fields that business rules own; writes to them are ignored like writes to unknown fields.
_READ_ONLY = frozenset(
    {
        "sys_id", "number", "sys_mod_count", "sys_class_name", "sys_domain", "sys_domain_path",
        "active", "comments_and_work_notes", *_SYSTEM_FIELDS,
    }
)  # fmt: skip
_JOURNAL_LABELS = {"work_notes": "Work notes", "comments": "Additional comments"}
# Which journal elements each readable journal field shows, newest entry first.
_JOURNAL_VIEWS = {
    "work_notes": ("work_notes",),
    "comments": ("comments",),
    "comments_and_work_notes": ("comments", "work_notes"),
}
_LOOKUP_KEYS = {"sys_user": ("user_name", "name"), "sys_user_group": ("name",)}
_WELL_KNOWN_DISPLAY = {"global": "global"}  # sys_domain's value names no row
_PRIORITY = {
    ("1", "1"): "1", ("1", "2"): "2", ("2", "1"): "2", ("1", "3"): "3", ("2", "2"): "3",
    ("3", "1"): "3", ("2", "3"): "4", ("3", "2"): "4", ("3", "3"): "5",
}  # fmt: skip
_RESOLVED, _CLOSED, _INACTIVE = ("6", "7"), "7", ("6", "7", "8")


@dataclass(frozen=True)
class _View:
    """How a response renders records: display mode, selected fields, link base."""

    mode: str  # "false" | "true" | "all"
    fields: tuple[str, ...]
    exclude_link: bool
    base: str  # scheme://host of the request

    @classmethod
    def of(cls, request: Request) -> _View:
        params = request.query_params
        mode = params.get("sysparm_display_value", "false").lower()
        fields = (name.strip() for name in params.get("sysparm_fields", "").split(","))
        return cls(
            mode=mode if mode in ("true", "all") else "false",
            fields=tuple(name for name in fields if name),
            exclude_link=params.get("sysparm_exclude_reference_link", "").lower() == "true",
            base=f"{request.url.scheme}://{request.url.netloc}",
        )


class Emulator(EmulatedService):
    """The emulated instance: tables, users, faults and the ASGI ``app`` serving them.

    Safe to drive from another thread while uvicorn serves ``app``: state sits behind one lock.
    """

    def __init__(
        self,
        *,
        users: Iterable[User] | None = None,
        groups: Iterable[Group] | None = None,
        tokens: Mapping[str, str] | None = None,
        number_start: int = 10001,
        latency_ms: int = 0,
        clock: Callable[[], datetime] | None = None,
        custom_fields: Iterable[str] = (),
        oauth_clients: Mapping[str, str] | None = None,
        oauth_client_user: str = "admin",
        oauth_basic_client_auth: bool = False,
        token_lifetime: float = 1800.0,
        notify_url: str | None = None,
        notify_secret: str | None = None,
        integration_user: str | None = None,
    ) -> None:
        """``tokens`` maps bearer tokens to user names; ``clock`` returns UTC datetimes;
        ``custom_fields`` are the instance's own incident columns (``u_...``), empty by default.

        ``oauth_clients`` maps OAuth client ids to secrets (``{}``: none); a client_credentials
        token acts as ``oauth_client_user`` (the OAuth app's "OAuth Application User");
        ``oauth_basic_client_auth`` also takes the client from a Basic ``Authorization`` header
        of a token request, which ServiceNow does not document (by default such a request is
        refused, so that a client's tests prove it sends form fields); ``token_lifetime`` is in
        seconds.

        ``notify_url`` and ``notify_secret`` (both or neither) start the instance with the
        generated Business Rules installed, skipping ``integration_user``'s changes; see
        :meth:`notify_to`."""
        super().__init__(_FaultAnswers(), latency_ms)
        self._custom_fields = dict.fromkeys(custom_fields, "")
        self._users = {user.user_name: user for user in (DEFAULT_USERS if users is None else users)}
        self._groups = tuple(DEFAULT_GROUPS if groups is None else groups)
        self._tokens = dict(tokens or {})
        if unknown := set(self._tokens.values()) - set(self._users):
            raise ValueError(f"tokens name unknown users: {sorted(unknown)}")
        self._number_start = number_start
        self._clock = clock or (lambda: datetime.now(UTC))
        default_clients = {DEFAULT_OAUTH_CLIENT_ID: DEFAULT_OAUTH_CLIENT_SECRET}
        self._oauth_clients = dict(default_clients if oauth_clients is None else oauth_clients)
        if self._oauth_clients and oauth_client_user not in self._users:
            raise ValueError(f"oauth_client_user names an unknown user: {oauth_client_user!r}")
        self._oauth_client_user = oauth_client_user
        self.oauth_basic_client_auth = oauth_basic_client_auth
        self._initial_token_lifetime = token_lifetime
        self._initial_target = _target(notify_url, notify_secret, integration_user)
        self._instant: str | None = None
        self._notifier = Notifier(lambda: (self._clock() + self.clock_skew).timestamp())
        self.reset()
        self.app = Starlette(routes=self._routes())

    # ---- Python API -----------------------------------------------------------------------

    def reset(self) -> None:
        """Forget incidents, journal, faults, issued OAuth tokens, the request log and added
        choices; restore latency, ``down``, the in-flight cap, the token lifetime, no clock
        skew, no denied tables and the notification target given at start, and count
        notifications from zero (those queued still go out). OAuth clients stay."""
        with self._lock:
            super().reset()
            self.token_lifetime = self._initial_token_lifetime
            self._access_tokens: dict[str, _Issued] = {}
            self._refresh_tokens: dict[str, _Issued] = {}
            self._token_requests = dict.fromkeys(_GRANTS, 0)
            self.clock_skew = timedelta(0)
            self.deny_tables: set[str] = set()  # read-denied for every user
            now = self._now()
            self._tables: dict[str, dict[str, dict[str, str]]] = {
                "incident": {},
                "sys_user": {u.sys_id: _user_row(u, now) for u in self._users.values()},
                "sys_user_group": {g.sys_id: _group_row(g, now) for g in self._groups},
                "sys_journal_field": {},
                "sys_choice": {},
            }
            self._journal_by_doc: dict[str, list[dict[str, str]]] = {}
            self._next_number = self._number_start
            for element, labels in _INCIDENT.choices.items():
                for sequence, (value, label) in enumerate(labels.items(), start=1):
                    self._put_choice("incident", element, value, label, str(sequence), "false")
            self._notifier.target = self._initial_target
            self._notifier.forget_counts()

    @property
    def incidents(self) -> list[dict[str, str]]:
        """Copies of the stored incident rows (raw values), in creation order."""
        with self._lock:
            return [dict(row) for row in self._tables["incident"].values()]

    def journal(self, sys_id: str) -> list[dict[str, str]]:
        """The sys_journal_field rows of one incident, oldest first."""
        with self._lock:
            return [dict(entry) for entry in self._journal_by_doc.get(sys_id, [])]

    def seed_incidents(self, n: int, *, user: str = "admin", **fields: str) -> list[dict[str, str]]:
        """Create ``n`` incidents as ``user``, in one transaction, so all at one instant of the
        instance's clock; ``{i}`` in a value becomes the 1-based index."""
        fields.setdefault("short_description", "Seeded incident {i}")
        with self._lock:
            author = self._users[user]
            self._instant = self._now()
            try:
                return [
                    dict(
                        self._insert(
                            {k: v.replace("{i}", str(i)) for k, v in fields.items()}, author
                        )
                    )
                    for i in range(1, n + 1)
                ]
            finally:
                self._instant = None

    def set_choice(
        self,
        table: str,
        element: str,
        value: str,
        label: str,
        *,
        inactive: bool = False,
        sequence: int | None = None,
    ) -> dict[str, str]:
        """Add a choice to ``table.element``, or change one (its label, whether it is retired,
        its place); a new one goes last unless ``sequence`` says otherwise. Returns its row."""
        with self._lock:
            old = self._tables["sys_choice"].get(_choice_id(table, element, value))
            if sequence is None:
                sequence = int(old["sequence"]) if old else self._last_sequence(table, element) + 1
            row = self._put_choice(
                table, element, value, label, str(sequence), "true" if inactive else "false"
            )
            return dict(row)

    def _last_sequence(self, table: str, element: str) -> int:
        rows = self._tables["sys_choice"].values()
        mine = (r for r in rows if (r["name"], r["element"]) == (table, element))
        return max((int(r["sequence"]) for r in mine), default=0)

    def act_as(self, user: str, sys_id: str, **fields: Any) -> dict[str, str]:
        """Change an incident as ``user`` (an agent) would through the Table API: ``state``,
        ``work_notes``, ``comments`` or any other field, with the same business rules,
        ``sys_mod_count``, journal rows and notifications. Returns a copy of the row."""
        with self._lock:
            author = self._users.get(user)
            if author is None:
                raise ValueError(f"unknown user {user!r}")
            row = self._tables["incident"].get(sys_id)
            if row is None:
                raise KeyError(f"no incident {sys_id!r}")
            self._apply(row, fields, author, is_new=False)
            return dict(row)

    def notify_to(
        self, url: str | None, secret: str | None = None, integration_user: str | None = None
    ) -> None:
        """Install the generated Business Rules, posting to ``url`` signed with ``secret`` and
        skipping ``integration_user``'s changes; ``url`` None removes them."""
        self._notifier.target = _target(url, secret, integration_user)

    def wait_for_notifications(self, timeout: float = 10.0) -> dict[str, Any]:
        """Wait until every notification queued so far was sent or dropped, then return the
        counts (``sent``, ``failed``, ``pending``); TimeoutError after ``timeout`` seconds."""
        self._notifier.wait(timeout)
        return self._notifier.stats()

    def notification_for(self, sys_id: str, event: str = "update") -> dict[str, str]:
        """The body the generated rules send for the incident's last change (``"update"``) or
        its last work note or comment (``"journal"``)."""
        with self._lock:
            row = self._tables["incident"][sys_id]
            if event == "update":
                return _update_notice(row)
            if event == "journal":
                return _journal_notice(row, self._journal_by_doc[sys_id][-1])
        raise ValueError(f"event must be 'update' or 'journal', not {event!r}")

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "incidents": len(self._tables["incident"]),
                "journal_entries": len(self._tables["sys_journal_field"]),
                "users": len(self._tables["sys_user"]),
                "groups": len(self._tables["sys_user_group"]),
                "clock_skew_seconds": self.clock_skew.total_seconds(),
                "deny_read": sorted(self.deny_tables),
                "notifications": self._notifier.stats(),
                **super().stats(),
            }

    @property
    def token_lifetime(self) -> float:
        """Seconds an access token issued from now on lasts; a refresh token lasts 100 times
        that."""
        return self._token_lifetime

    @token_lifetime.setter
    def token_lifetime(self, seconds: float) -> None:
        if not 0 <= seconds < math.inf:
            raise ValueError("token_lifetime must be a finite number of seconds, not negative")
        self._token_lifetime = float(seconds)

    def expire_tokens(self) -> None:
        """Expire every issued access token now (refresh tokens stay valid), so that the next
        Table API request with one answers 401."""
        now = time.monotonic()
        with self._lock:
            self._access_tokens = {
                token: replace(issued, expires=min(issued.expires, now))
                for token, issued in self._access_tokens.items()
            }

    def oauth_stats(self) -> dict[str, Any]:
        """``/oauth_token.do`` requests per grant type (answered or refused) and the access
        tokens still valid."""
        now = time.monotonic()
        with self._lock:
            return {
                "token_lifetime": self.token_lifetime,
                "oauth_token_requests": dict(self._token_requests),
                "oauth_tokens_active": sum(t.expires > now for t in self._access_tokens.values()),
            }

    # ---- routing --------------------------------------------------------------------------

    def _routes(self) -> list[Route]:
        api = self.api_endpoint(self._dispatch)
        journal = self.control_endpoint(
            lambda _body, request: self.journal(request.path_params["sys_id"])
        )
        clock = self.control_endpoint(self._control_clock)
        acl = self.control_endpoint(self._control_acl)
        oauth = self.control_endpoint(self._control_oauth)
        notify = self.control_endpoint(self._control_notify)
        act = self.control_endpoint(self._control_act)
        return [
            Route("/api/now/table/{table}", api, methods=["GET", "POST"]),
            Route(
                "/api/now/table/{table}/{sys_id}", api, methods=["GET", "PATCH", "PUT", "DELETE"]
            ),
            # Behind the same latency, faults and log as the Table API: it is the same instance.
            Route("/oauth_token.do", self.api_endpoint(self._oauth_token), methods=["POST"]),
            *self.control_routes(),
            Route("/__emulator/journal/{sys_id}", journal, methods=["GET"]),
            Route("/__emulator/clock", clock, methods=["POST"]),
            Route("/__emulator/acl", acl, methods=["POST"]),
            Route("/__emulator/oauth", oauth, methods=["GET", "POST"]),
            Route("/__emulator/notify", notify, methods=["GET", "POST"]),
            Route("/__emulator/act", act, methods=["POST"]),
        ]

    def _control_clock(self, body: dict[str, Any], _request: Request) -> dict[str, Any]:
        self.clock_skew = timedelta(seconds=float(body["skew_seconds"]))
        return self.stats()

    def _control_acl(self, body: dict[str, Any], _request: Request) -> dict[str, Any]:
        tables = body["deny_read"]
        if not isinstance(tables, list) or not all(isinstance(t, str) for t in tables):
            raise TypeError("deny_read must be a list of table names")
        if unknown := set(tables) - set(_TABLES):
            raise ValueError(f"unknown tables: {sorted(unknown)}")
        self.deny_tables = set(tables)
        return self.stats()

    def _control_oauth(self, body: dict[str, Any], _request: Request) -> dict[str, Any]:
        if "token_lifetime" in body:
            self.token_lifetime = float(body["token_lifetime"])
        expire = body.get("expire_tokens", False)
        if not isinstance(expire, bool):
            raise TypeError("expire_tokens must be true or false")
        if expire:
            self.expire_tokens()
        return self.oauth_stats()

    def _control_notify(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        if request.method == "POST":
            fields = {name: body.get(name) for name in ("url", "secret", "integration_user")}
            if not all(value is None or isinstance(value, str) for value in fields.values()):
                raise TypeError("url, secret and integration_user must be strings or null")
            self.notify_to(**fields)
        return self._notifier.stats()

    def _control_act(self, body: dict[str, Any], _request: Request) -> dict[str, Any]:
        fields = body.get("fields", {})
        if not isinstance(fields, dict):
            raise TypeError("fields must be an object")
        return self.act_as(str(body["user"]), str(body["sys_id"]), **fields)

    def _may_read(self, table: str, user: User) -> bool:
        if table in self.deny_tables:
            return False
        return user.can_read_journal or table != "sys_journal_field"

    def _basic_user(self, name: str, password: str) -> User | None:
        user = self._users.get(name)
        if user is None or user.password is None:
            return None
        # Bytes: compare_digest refuses non-ASCII str, and a password may be anything.
        return user if hmac.compare_digest(user.password.encode(), password.encode()) else None

    async def _dispatch(self, request: Request) -> Response:
        user = authenticate(
            request,
            basic=self._basic_user,
            bearer=lambda token: self._users.get(
                self._tokens.get(token) or self._oauth_user(token) or ""
            ),
            refused=_Unauthenticated,
        )
        name = request.path_params["table"]
        table = _TABLES.get(name)
        if table is None:
            raise ApiError(400, f"Invalid table {name}", None)
        method = request.method
        if method in _WRITE_VERBS and not (table.writable and user.can_write):
            detail = f"ACL Exception {_WRITE_VERBS[method]} Failed due to security constraints"
            raise ApiError(403, "Operation Failed", detail)
        if method == "GET" and not self._may_read(name, user):
            detail = f"ACL Exception Read Failed: the read ACL on {name} denies {user.user_name}"
            raise ApiError(403, "Operation Failed", f"{detail} (emulator)")
        body = await _read_object(request) if method in ("POST", "PATCH", "PUT") else {}
        view = _View.of(request)
        sys_id = request.path_params.get("sys_id")
        with self._lock:
            if sys_id is not None:
                return self._on_record(name, sys_id, method, body, user, view)
            if method == "GET":
                return self._list(name, request, view, user)
            row = self._insert(body, user)
            location = f"{view.base}/api/now/table/{name}/{row['sys_id']}"
            return json_response(
                {"result": self._render(name, row, view)}, 201, {"Location": location}
            )

    def _on_record(
        self, name: str, sys_id: str, method: str, body: Mapping[str, Any], user: User, view: _View
    ) -> Response:
        row = self._tables[name].get(sys_id)
        if row is None:
            raise ApiError(
                404, "No Record found", "Record doesn't exist or ACL restricts the record retrieval"
            )
        if method == "DELETE":
            del self._tables[name][sys_id]
            return Response(status_code=204)
        if method != "GET":
            self._apply(row, body, user, is_new=False)
        return json_response({"result": self._render(name, row, view)})

    def _list(self, name: str, request: Request, view: _View, user: User) -> Response:
        params = request.query_params
        query = parse(params.get("sysparm_query", ""), user_name=user.user_name)
        rows = query.apply(self._tables[name].values(), self._resolver(name))
        limit = int_param(params.get("sysparm_limit"), DEFAULT_LIMIT, minimum=1)
        offset = int_param(params.get("sysparm_offset"), 0, minimum=0)
        headers = {
            "X-Total-Count": str(len(rows)),
            "Link": _link_header(request, len(rows), limit, offset),
        }
        page = [self._render(name, row, view) for row in rows[offset : offset + limit]]
        return json_response({"result": page}, headers=headers)

    # ---- OAuth ----------------------------------------------------------------------------

    async def _oauth_token(self, request: Request) -> Response:
        form = _form(await request.body())
        grant = form.get("grant_type", "")
        with self._lock:  # before any check: refused requests count too
            if grant in self._token_requests:
                self._token_requests[grant] += 1
        client_id = self._oauth_client(request, form)
        with self._lock:
            return json_response(self._grant(_required(form, "grant_type"), form, client_id))

    def _oauth_client(self, request: Request, form: Mapping[str, str]) -> str:
        """The client a token request authenticates as: by its form fields, as ServiceNow
        documents; by a Basic header only where ``oauth_basic_client_auth`` allows it."""
        if request.headers.get("authorization"):
            if not self.oauth_basic_client_auth:
                raise _access_denied()
            return authenticate(
                request, basic=self._client, bearer=lambda _token: None, refused=_access_denied
            )
        client = self._client(form.get("client_id", ""), form.get("client_secret", ""))
        if client is None:
            raise _access_denied()
        return client

    def _client(self, client_id: str, secret: str) -> str | None:
        # RFC 6749 form-encodes Basic credentials, and not every client does: accept both.
        for name, key in ((client_id, secret), (unquote_plus(client_id), unquote_plus(secret))):
            expected = self._oauth_clients.get(name)
            if expected is not None and hmac.compare_digest(expected.encode(), key.encode()):
                return name
        return None

    def _grant(self, grant: str, form: Mapping[str, str], client_id: str) -> dict[str, Any]:
        if grant == "password":
            user = self._basic_user(_required(form, "username"), _required(form, "password"))
            if user is None:
                raise _access_denied()
            refresh = secrets.token_urlsafe(32)
            lifetime = self.token_lifetime * _REFRESH_LIFETIMES
            self._refresh_tokens[refresh] = _Issued(
                user.user_name, client_id, time.monotonic() + lifetime
            )
            return self._issue(user.user_name, client_id, refresh)
        if grant == "client_credentials":
            return self._issue(self._oauth_client_user, client_id, None)
        if grant == "refresh_token":
            refresh = _required(form, "refresh_token")
            issued = self._refresh_tokens.get(refresh)
            if not (issued and issued.client_id == client_id and issued.expires > time.monotonic()):
                raise _access_denied()
            return self._issue(issued.user_name, client_id, refresh)
        grants = ", ".join(_GRANTS)
        raise _OAuthError(400, "unsupported_grant_type", f"grant_type must be one of {grants}")

    def _issue(self, user_name: str, client_id: str, refresh: str | None) -> dict[str, Any]:
        now, lifetime = time.monotonic(), self.token_lifetime
        # Expired tokens are forgotten as new ones come, so a long run does not pile them up.
        self._access_tokens = {t: i for t, i in self._access_tokens.items() if i.expires > now}
        self._refresh_tokens = {t: i for t, i in self._refresh_tokens.items() if i.expires > now}
        token = secrets.token_urlsafe(32)
        self._access_tokens[token] = _Issued(user_name, client_id, now + lifetime)
        return {
            "access_token": token,
            **({"refresh_token": refresh} if refresh else {}),
            "scope": "useraccount",
            "token_type": "Bearer",
            "expires_in": int(lifetime),
        }

    def _oauth_user(self, token: str) -> str | None:
        """The user an unexpired OAuth access token acts as."""
        with self._lock:
            issued = self._access_tokens.get(token)
        return issued.user_name if issued and issued.expires > time.monotonic() else None

    # ---- writes ---------------------------------------------------------------------------

    def _insert(self, body: Mapping[str, Any], user: User) -> dict[str, str]:
        now = self._now()
        row = _INCIDENT_DEFAULTS | self._custom_fields
        row.update(
            sys_id=uuid.uuid4().hex,
            opened_at=now,
            opened_by=user.sys_id,
            sys_created_on=now,
            sys_created_by=user.user_name,
        )
        self._apply(row, body, user, is_new=True)
        # Numbered only once the data policy passed, so a refused insert burns no number.
        row["number"] = f"INC{self._next_number:07d}"
        self._next_number += 1
        self._tables["incident"][row["sys_id"]] = row
        self._notifier.offer(_update_notice(row))
        return row

    def _apply(
        self, row: dict[str, str], body: Mapping[str, Any], user: User, *, is_new: bool
    ) -> None:
        """Merge a write into ``row`` in place, running the business rules an instance would."""
        changes, notes = self._changes(body)
        after = {**row, **changes}
        # incident_state mirrors state; a write naming only incident_state moves both.
        if "state" not in changes and "incident_state" in changes:
            after["state"] = changes["incident_state"]
        after["incident_state"] = after["state"]
        if after["state"] in _RESOLVED and not (
            after["close_code"].strip() and after["close_notes"].strip()
        ):
            raise ApiError(
                403,
                "Operation Failed",
                "Data Policy Exception: \n The following fields are mandatory: "
                "Resolution code, Resolution notes\n",
            )
        now = self._now()
        _run_state_rules(row, after, changes, user.sys_id, now)
        after["priority"] = _PRIORITY.get((after["impact"], after["urgency"]), after["priority"])
        if not is_new:
            if after == row and not notes:
                return  # an unchanged record is not saved, as on a real instance
            after["sys_mod_count"] = str(int(row["sys_mod_count"]) + 1)
            if after["assignment_group"] != row["assignment_group"]:
                after["reassignment_count"] = str(int(row["reassignment_count"]) + 1)
        after.update(sys_updated_on=now, sys_updated_by=user.user_name)
        row.update(after)
        entries = [
            self._append_journal(row["sys_id"], element, text, user.user_name, now)
            for element, text in notes
        ]
        if not is_new:  # an insert notifies once it is stored
            self._notifier.offer(_update_notice(row))
        for entry in entries:
            self._notifier.offer(_journal_notice(row, entry))

    def _changes(self, body: Mapping[str, Any]) -> tuple[dict[str, str], list[tuple[str, str]]]:
        """Split a write into field changes and journal notes; unknown fields are dropped."""
        changes: dict[str, str] = {}
        notes: list[tuple[str, str]] = []
        for name, value in body.items():
            text = _coerce(value)
            if name in _JOURNAL_LABELS:
                if text.strip():
                    notes.append((name, text))
            elif name in _INCIDENT.references and name not in _READ_ONLY:
                changes[name] = self._lookup(_INCIDENT.references[name], text)
            elif (name in _INCIDENT_DEFAULTS or name in self._custom_fields) and (
                name not in _READ_ONLY
            ):
                changes[name] = text
        return changes, notes

    def _lookup(self, table: str, value: str) -> str:
        """A reference write: a sys_id, else a unique key; no match stores "" (silently)."""
        rows = self._tables[table]
        if value in rows or not value:
            return value
        for key in _LOOKUP_KEYS[table]:
            for row in rows.values():
                if row[key] == value:
                    return row["sys_id"]
        return ""

    def _append_journal(
        self, doc: str, element: str, text: str, author: str, now: str
    ) -> dict[str, str]:
        entry = {
            "sys_id": uuid.uuid4().hex,
            "element": element,
            "element_id": doc,
            "name": "incident",
            "value": text,
            "sys_created_on": now,
            "sys_created_by": author,
        }
        self._tables["sys_journal_field"][entry["sys_id"]] = entry
        self._journal_by_doc.setdefault(doc, []).append(entry)
        return entry

    def _put_choice(
        self, table: str, element: str, value: str, label: str, sequence: str, inactive: str
    ) -> dict[str, str]:
        row = {
            "sys_id": _choice_id(table, element, value),
            "name": table,
            "element": element,
            "value": value,
            "label": label,
            "sequence": sequence,
            "inactive": inactive,
            "language": "en",
        }
        self._tables["sys_choice"][row["sys_id"]] = row
        return row

    # ---- reads ----------------------------------------------------------------------------

    def _render(self, name: str, row: Mapping[str, str], view: _View) -> dict[str, Any]:
        names = [f for f in view.fields if f in row] if view.fields else list(row)
        return {field_name: self._render_field(name, row, field_name, view) for field_name in names}

    def _render_field(self, name: str, row: Mapping[str, str], field_name: str, view: _View) -> Any:
        table, raw = _TABLES[name], row[field_name]
        if field_name in table.references:
            return self._render_reference(table.references[field_name], raw, view)
        if view.mode == "false":
            return raw
        if name == "incident" and field_name in _JOURNAL_VIEWS:
            display = self._journal_text(row["sys_id"], _JOURNAL_VIEWS[field_name])
        else:
            choice = self._tables["sys_choice"].get(_choice_id(name, field_name, raw))
            display = choice["label"] if choice else raw
        return display if view.mode == "true" else {"display_value": display, "value": raw}

    def _render_reference(self, target: str, value: str, view: _View) -> Any:
        if not value:
            return {"display_value": "", "value": ""} if view.mode == "all" else ""
        rendered = {"link": f"{view.base}/api/now/table/{target}/{value}", "value": value}
        if view.mode != "false":
            row = self._tables[target].get(value)
            display = row["name"] if row else _WELL_KNOWN_DISPLAY.get(value, "")
            rendered = {"display_value": display, **rendered}
            if view.mode == "true":
                del rendered["value"]
        if view.exclude_link:
            del rendered["link"]
            # Without its link a one-key reference collapses to the bare string.
            return next(iter(rendered.values())) if len(rendered) == 1 else rendered
        return rendered

    def _journal_text(self, sys_id: str, elements: tuple[str, ...]) -> str:
        entries = [e for e in self._journal_by_doc.get(sys_id, []) if e["element"] in elements]
        return "".join(
            f"{e['sys_created_on']} - {self._display_name(e['sys_created_by'])} "
            f"({_JOURNAL_LABELS[e['element']]})\n{e['value']}\n\n"
            for e in reversed(entries)
        )

    def _display_name(self, user_name: str) -> str:
        user = self._users.get(user_name)
        return user.name if user else user_name

    def _resolver(self, name: str) -> Resolver:
        """Field values for queries: dot-walks through references, None for unknown fields."""
        table = _TABLES[name]

        def resolve(row: Mapping[str, str], path: str) -> str | None:
            if path == TEXT_QUERY:
                return self._searchable_text(name, row)
            head, _, rest = path.partition(".")
            if head not in table.fields:
                return None
            if not rest:
                return row.get(head, "")
            target = table.references.get(head)
            if target is None:
                return None
            return self._resolver(target)(self._tables[target].get(row.get(head, ""), {}), rest)

        return resolve

    def _searchable_text(self, name: str, row: Mapping[str, str]) -> str:
        if name != "incident":
            return "\n".join(row.values())
        notes = [e["value"] for e in self._journal_by_doc.get(row.get("sys_id", ""), [])]
        fields = [row.get(f, "") for f in ("short_description", "description", "number")]
        return "\n".join(fields + notes)

    def _now(self) -> str:
        """The instance's time: the clock, plus the skew set for this test; held still through
        a transaction that sets ``_instant``."""
        return self._instant or (self._clock() + self.clock_skew).strftime(TIMESTAMP)


# ---- helpers --------------------------------------------------------------------------------


async def _read_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise ApiError(400, "Exception while reading request", f"Cannot decode: {error}") from error
    if not isinstance(body, dict):
        raise ApiError(400, "Exception while reading request", "The payload is not a JSON object")
    return body


def _form(raw: bytes) -> dict[str, str]:
    """A form body's fields, the first value of each; a body that is no form has none."""
    fields = parse_qs(raw.decode(errors="replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items()}


def _required(form: Mapping[str, str], name: str) -> str:
    if not (value := form.get(name, "")):
        # Names the missing field, never a value: a body may hold a secret.
        raise _OAuthError(400, "invalid_request", f"Missing parameter: {name}")
    return value


def _target(
    url: str | None, secret: str | None, integration_user: str | None
) -> NotifyTarget | None:
    if url is None:
        return None
    if not secret:
        raise ValueError("notifications need a secret to sign them with")
    return NotifyTarget(url, secret, integration_user)


def _choice_id(table: str, element: str, value: str) -> str:
    return _stable_id("sys_choice", f"{table}.{element}={value}")


def _update_notice(row: Mapping[str, str]) -> dict[str, str]:
    """What the rule on ``incident`` sends for an insert or update."""
    return {
        "table": "incident",
        "sys_id": row["sys_id"],
        "sys_mod_count": row["sys_mod_count"],
        "sys_updated_on": row["sys_updated_on"],
        "sys_updated_by": row["sys_updated_by"],
        "event": "update",
    }


def _journal_notice(row: Mapping[str, str], entry: Mapping[str, str]) -> dict[str, str]:
    """What the rule on ``sys_journal_field`` sends for a work note or comment: the incident's
    sys_mod_count, the entry's time and author."""
    return {
        "table": "incident",
        "sys_id": row["sys_id"],
        "sys_mod_count": row["sys_mod_count"],
        "sys_updated_on": entry["sys_created_on"],
        "sys_updated_by": entry["sys_created_by"],
        "event": "journal",
    }


def _run_state_rules(
    before: Mapping[str, str], after: dict[str, str], changes: Mapping[str, str], by: str, now: str
) -> None:
    """Stamp resolution/closure on entering those states, count reopens, derive ``active``."""
    old, new = before["state"], after["state"]
    if new in _RESOLVED and old not in _RESOLVED:
        after["resolved_at"] = changes.get("resolved_at") or now
        after["resolved_by"] = changes.get("resolved_by") or by
    if new == _CLOSED and old != _CLOSED:
        after["closed_at"] = changes.get("closed_at") or now
        after["closed_by"] = changes.get("closed_by") or by
    if old in _RESOLVED and new not in _INACTIVE:
        after["reopen_count"] = str(int(after["reopen_count"]) + 1)
    after["active"] = "false" if new in _INACTIVE else "true"


def _link_header(request: Request, total: int, limit: int, offset: int) -> str:
    """first/prev/next/last as the instance sends them: prev may be negative, next only if more."""
    url = request.url
    kept = [
        (k, v)
        for k, v in request.query_params.multi_items()
        if k not in ("sysparm_limit", "sysparm_offset")
    ]

    def link(rel: str, at: int) -> str:
        query = urlencode([*kept, ("sysparm_limit", limit), ("sysparm_offset", at)])
        return f'<{url.scheme}://{url.netloc}{url.path}?{query}>;rel="{rel}"'

    links = [link("first", 0), link("prev", offset - limit)]
    if offset + limit < total:
        links.append(link("next", offset + limit))
    links.append(link("last", (total - 1) // limit * limit if total else 0))
    return ",".join(links)


def _coerce(value: Any) -> str:
    """JSON values as the instance stores them: strings, booleans "true"/"false", null as ""."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else json.dumps(value)


def _user_row(user: User, now: str) -> dict[str, str]:
    first, _, last = user.name.partition(" ")
    return {
        "sys_id": user.sys_id,
        "user_name": user.user_name,
        "name": user.name,
        "first_name": first,
        "last_name": last,
        "email": f"{user.user_name}@example.com",
        "active": "true",
        "sys_class_name": "sys_user",
        **dict.fromkeys(("sys_created_on", "sys_updated_on"), now),
        **dict.fromkeys(("sys_created_by", "sys_updated_by"), "system"),
        "sys_mod_count": "0",
    }


def _group_row(group: Group, now: str) -> dict[str, str]:
    return {
        "sys_id": group.sys_id,
        "name": group.name,
        "description": group.description,
        "email": "",
        "manager": "",
        "active": "true",
        **dict.fromkeys(("sys_created_on", "sys_updated_on"), now),
        **dict.fromkeys(("sys_created_by", "sys_updated_by"), "system"),
        "sys_mod_count": "0",
    }
