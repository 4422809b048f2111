"""The ServiceNow provider: the incident operations over the Table API, and inbound sync."""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar

import httpx

from ticketing_core.errors import InvalidInput, NotFound, UnexpectedResponse
from ticketing_core.hookspecs import InboundProvider
from ticketing_core.http import (
    RETRYING_DEPRECATED,
    OAuthClient,
    ServiceClient,
    ServiceDialect,
    create_once,
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
from ticketing_core.notifications import TICKETING_V1
from ticketing_servicenow import inbound, mapping
from ticketing_servicenow.envelopes import error_reason, result_of

TABLE = "incident"
INCIDENTS = f"/api/now/table/{TABLE}"
JOURNAL = "/api/now/table/sys_journal_field"
CHOICES = "/api/now/table/sys_choice"
USERS = "/api/now/table/sys_user"
STATE_CHOICES = f"name={TABLE}^element=state^inactive=false^language=en^ORDERBYsequence"
OAUTH_TOKEN_PATH = "/oauth_token.do"  # noqa: S105 - the instance's OAuth 2.0 token endpoint
# Characters that cannot change an encoded query; correlation_id holds 100 of them.
_SAFE_KEY = re.compile(r"[A-Za-z0-9._:@-]+")
# Display values for references (assigned_to's name) and raw values for codes, in one read.
DIALECT = ServiceDialect(
    "ServiceNow",
    error_reason,
    non_json_hint="a hibernating developer instance does this: wake it up and try again",
)
READ_PARAMS = {
    "sysparm_display_value": "all",
    "sysparm_exclude_reference_link": "true",
    "sysparm_fields": ",".join(mapping.TICKET_FIELDS),
}


class ServiceNowProvider(InboundProvider):
    """A :class:`ticketing_core.Provider` for one ServiceNow instance.

    ``api_access_token`` is ``username:password`` (Basic auth) or a bearer token. With OAuth
    options ``client_id`` and ``client_secret`` (an OAuth application registered on the
    instance), tokens come from ``{api_url}/oauth_token.do``: ``username:password`` uses the
    password grant, an empty token the client-credentials grant. Other options:
    ``timeout`` (seconds or ``httpx.Timeout``, per connect and read), ``deadline`` (seconds for a
    whole call where the caller sets no :func:`~ticketing_core.http.call_budget`),
    ``max_attempts`` and ``max_retry_wait`` for retries, ``close_code`` written with a resolution
    (most instances require one to resolve), ``transport`` (an httpx transport, for tests).

    Keyed creates store the key in ``correlation_id`` and look it up there first (one GET with
    ``sysparm_limit=1``; none with ``key_is_fresh``). Work notes carry no marker: whether one
    landed is told by counting its text in the incident's ``work_notes`` journal, read through
    display values, which an integration user with incident rights alone may do.

    Inbound sync reads ``sys_journal_field`` (work notes and comments), ``sys_choice`` (the
    instance's states) and, for a bearer or client-credentials connection, its own
    ``sys_user`` row once; the integration user needs read access to those three tables.
    Ticket status labels are the instance's own display values.
    """

    name = "servicenow"
    options: ClassVar[tuple[str, ...]] = (
        "close_code", "client_id", "client_secret", *ServiceClient.OPTIONS
    )  # fmt: skip
    capabilities = Capabilities(
        work_notes=True,
        public_comments=True,
        state_changes=True,
        idempotency_keys=True,
        inbound_sync=True,
        field_choices={
            "priority": ("1", "2", "3", "4", "5"),
            "urgency": ("1", "2", "3"),
            "impact": ("1", "2", "3"),
            "status": (*mapping.STATE_LABELS, *mapping.STATE_LABELS.values()),
            "severity": ("1", "2", "3"),
            "notify": ("1", "2"),
        },
        user_options=("close_code", "client_id", "client_secret"),
        secret_options=("client_secret",),
        extra_fields=mapping.EXTRA_FIELDS_WRITABLE,
        custom_field_prefix=mapping.CUSTOM_FIELD_PREFIX,
        notification_signature=TICKETING_V1,
    )

    def __init__(
        self,
        *,
        api_url: str,
        api_access_token: str,
        close_code: str = mapping.DEFAULT_CLOSE_CODE,
        client_id: str | None = None,
        client_secret: str | None = None,
        **client_options: Any,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.close_code = close_code
        # Basic auth and the password grant name the user; a bearer token is looked up once.
        user, colon, _ = api_access_token.partition(":")
        self._own_user = user if colon and user else None
        self._states: tuple[TicketStatus, ...] | None = None
        oauth = None
        if client_id or client_secret:
            if not (client_id and client_secret):
                raise InvalidInput("OAuth needs both client_id and client_secret")
            oauth = OAuthClient(self.api_url + OAUTH_TOKEN_PATH, client_id, client_secret)
        self._client = ServiceClient(
            self.api_url, api_access_token, DIALECT, oauth=oauth, **client_options
        )

    def __repr__(self) -> str:
        return f"ServiceNowProvider(api_url={self.api_url!r})"

    def close(self) -> None:
        self._client.close()

    def validate(self) -> None:
        response = self._client.request(
            "GET", INCIDENTS, params={"sysparm_limit": 1, "sysparm_fields": "sys_id"}
        )
        result_of(response)  # any JSON is not an instance: the envelope must be there

    def search(self, query: SearchQuery) -> Page:
        response = self._client.request(
            "GET",
            INCIDENTS,
            params=READ_PARAMS
            | {
                "sysparm_query": mapping.search_query(query),
                "sysparm_limit": query.size,
                "sysparm_offset": query.offset,
            },
        )
        items = tuple(self._tickets(result_of(response)))
        return Page(
            items=items,
            total=_total_count(response, default=query.offset + len(items)),
            page=query.page,
            size=query.size,
        )

    def get(self, ticket_id: str) -> Ticket:
        response = self._client.request("GET", self._record(ticket_id), params=READ_PARAMS)
        return self._ticket(result_of(response))

    def find(self, number: str) -> Ticket:
        found = self._first_where(f"number={mapping.escape_query_value(number.strip())}")
        if found is None:
            raise NotFound(f"ServiceNow has no incident numbered {number!r}", status_code=None)
        return found

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
        payload = mapping.draft_payload(draft, idempotency_key)
        if idempotency_key is None:
            return self._post(payload)
        condition = f"correlation_id={_checked_key(idempotency_key)}"
        return create_once(
            lambda: self._first_where(condition),
            lambda: self._post(payload),
            key_is_fresh=key_is_fresh,
        )

    def update(self, ticket_id: str, changes: TicketChanges) -> Ticket:
        if changes.is_empty():
            raise InvalidInput("no fields to update")
        payload = mapping.changes_payload(changes, close_code=self.close_code)
        self.capabilities.check_fields(changes.fields)
        response = self._client.request(
            "PATCH",
            self._record(ticket_id),
            params=READ_PARAMS,
            json=payload,
            idempotent=True,  # fields only: setting them twice is setting them once
        )
        return self._ticket(result_of(response))

    def add_work_note(
        self, ticket_id: str, text: str, *, idempotency_key: str | None = None
    ) -> int | None:
        # The journal keeps text only, so the key cannot travel; has_work_note counts instead.
        if not text.strip():
            raise InvalidInput("a work note must not be empty")
        response = self._client.request(
            "PATCH",
            self._record(ticket_id),
            params={"sysparm_fields": "sys_id,sys_mod_count"},
            json={"work_notes": mapping.journal_safe(text)},
        )
        return mapping.revision_of(result_of(response))

    def has_work_note(
        self, ticket_id: str, text: str, *, idempotency_key: str, identical_before: int
    ) -> bool:
        response = self._client.request(
            "GET",
            self._record(ticket_id),
            params={"sysparm_fields": "work_notes", "sysparm_display_value": "true"},
        )
        journal = result_of(response).get("work_notes") or ""
        return mapping.count_journal_entries(journal, mapping.journal_safe(text)) > identical_before

    def get_status(self, ticket_id: str) -> TicketStatus:
        response = self._client.request(
            "GET",
            self._record(ticket_id),
            params={"sysparm_fields": "state", "sysparm_display_value": "all"},
        )
        return mapping.to_status(result_of(response))

    # ---- inbound sync ---------------------------------------------------------------------

    def changed_since(
        self, cursor: str | None, *, overlap: float = 0.0, limit: int = inbound.MAX_BATCH
    ) -> ChangePage:
        """Keyset pages on ``(sys_updated_on, sys_id)``: ``limit`` is capped at 100 per
        request, ``overlap`` moves the start back to the beginning of that earlier second."""
        if limit < 1:
            raise InvalidInput("limit must be at least 1")
        if cursor is None:
            return ChangePage(tickets=(), cursor=self._newest_change().encode(), more=False)
        given = inbound.Cursor.decode(cursor)
        limit = min(limit, inbound.MAX_BATCH)
        query: dict[str, str | int] = {
            "sysparm_query": given.minus(overlap).query(),
            "sysparm_limit": limit,
        }
        for offset in range(0, HIDDEN_PAGES_SKIPPED * limit + 1, limit):
            skip = {"sysparm_offset": offset} if offset else {}
            response = self._client.request("GET", INCIDENTS, params=READ_PARAMS | query | skip)
            records = result_of(response)
            more = _more_after(response, limit, full_page=len(records) == limit)
            if records or not more:
                break
            # A page the user's ACLs hid whole (X-Total-Count counts before ACLs): look past it.
        else:
            more = False  # hidden pages all the way: this poll ends, the next one tries again
        last = inbound.Cursor.of(records[-1]) if records else given
        # The last page never moves the cursor back, however far the overlap reached.
        after = last if more else max(last, given)
        return ChangePage(tickets=tuple(self._tickets(records)), cursor=after.encode(), more=more)

    def get_many(self, ticket_ids: Sequence[str]) -> list[Ticket]:
        if len(ticket_ids) > inbound.MAX_BATCH:
            raise InvalidInput(f"at most {inbound.MAX_BATCH} tickets per read")
        wanted = {self._sys_id(ticket_id) for ticket_id in ticket_ids}
        if not wanted:
            return []
        response = self._client.request(
            "GET",
            INCIDENTS,
            params=READ_PARAMS
            | {
                "sysparm_query": f"sys_idIN{','.join(sorted(wanted))}",
                "sysparm_limit": len(wanted),
            },
        )
        # A query the instance could not read would match every record: keep those asked for.
        return [t for t in self._tickets(result_of(response)) if t.id in wanted]

    def journal_since(self, ticket_id: str, after: datetime | None) -> list[JournalEntry]:
        sys_id = self._sys_id(ticket_id)
        query = inbound.journal_query(TABLE, sys_id, after)
        rows: list[Mapping[str, Any]] = []
        while True:
            response = self._client.request(
                "GET",
                JOURNAL,
                params={
                    "sysparm_query": query,
                    "sysparm_fields": ",".join(inbound.JOURNAL_FIELDS),
                    "sysparm_limit": inbound.MAX_BATCH,
                    "sysparm_offset": len(rows),
                },
            )
            page = result_of(response)
            rows += page
            if not page or not _more_after(
                response, len(rows), full_page=len(page) == inbound.MAX_BATCH
            ):
                return _journal_entries(rows, sys_id)

    def own_user(self) -> str:
        if self._own_user is None:
            response = self._client.request(
                "GET",
                USERS,
                params={
                    "sysparm_query": "user_name=javascript:gs.getUserName()",
                    "sysparm_fields": "user_name",
                    "sysparm_limit": 1,
                },
            )
            found = [str(row.get("user_name") or "") for row in result_of(response)]
            if not found or not found[0]:
                raise UnexpectedResponse("ServiceNow names no sys_user for this connection")
            self._own_user = found[0]
        return self._own_user

    def states(self, *, refresh: bool = False) -> tuple[TicketStatus, ...]:
        """The instance's active incident states from ``sys_choice``, in their order; read
        once, then again with ``refresh`` or after a ticket showed a state not among them."""
        if self._states is None or refresh:
            response = self._client.request(
                "GET",
                CHOICES,
                params={"sysparm_query": STATE_CHOICES, "sysparm_fields": "value,label"},
            )
            choices = tuple(
                TicketStatus(code=str(row["value"]), label=str(row["label"]))
                for row in result_of(response)
            )
            self._states = choices or None  # an empty list (rows hidden) is asked again
            return choices
        return self._states

    def read_notification(self, body: Mapping[str, Any]) -> Notice:
        return inbound.read_notice(body, TABLE)

    def notification_setup(self, endpoint: str, secret: str) -> str:
        return inbound.business_rules(endpoint, secret, self.own_user(), TABLE)

    # ---- helpers ----------------------------------------------------------------------------

    def _newest_change(self) -> inbound.Cursor:
        response = self._client.request(
            "GET",
            INCIDENTS,
            params={
                "sysparm_query": "ORDERBYDESCsys_updated_on^ORDERBYDESCsys_id",
                "sysparm_fields": "sys_updated_on,sys_id",
                "sysparm_limit": 1,
            },
        )
        records = result_of(response)
        return inbound.Cursor.of(records[0]) if records else inbound.Cursor()

    def _post(self, payload: dict[str, str]) -> Ticket:
        response = self._client.request("POST", INCIDENTS, params=READ_PARAMS, json=payload)
        return self._ticket(result_of(response))

    def _first_where(self, condition: str) -> Ticket | None:
        response = self._client.request(
            "GET",
            INCIDENTS,
            params=READ_PARAMS
            | {"sysparm_query": f"{condition}^{mapping.SEARCH_ORDER}", "sysparm_limit": 1},
        )
        tickets = self._tickets(result_of(response))
        return tickets[0] if tickets else None

    def _tickets(self, records: Sequence[Mapping[str, Any]]) -> list[Ticket]:
        return [self._ticket(record) for record in records]

    def _ticket(self, record: Mapping[str, Any]) -> Ticket:
        ticket = mapping.to_ticket(record, self.api_url)
        if self._states is not None and ticket.status not in {s.label for s in self._states}:
            self._states = None  # a state we have not seen: read the choices again
        return ticket

    @classmethod
    def _record(cls, ticket_id: str) -> str:
        return f"{INCIDENTS}/{cls._sys_id(ticket_id)}"

    @staticmethod
    def _sys_id(ticket_id: str) -> str:
        sys_id = ticket_id.strip()
        if not sys_id or not sys_id.isalnum():
            raise InvalidInput(
                f"{ticket_id!r} is not a ServiceNow sys_id (32 hexadecimal characters)"
            )
        return sys_id


def _checked_key(key: str) -> str:
    if len(key) > mapping.CORRELATION_ID_MAX_LENGTH or not _SAFE_KEY.fullmatch(key):
        raise InvalidInput(
            "an idempotency key for ServiceNow is 1 to "
            f"{mapping.CORRELATION_ID_MAX_LENGTH} letters, digits or . _ : @ - "
            "(it is stored in correlation_id and queried)"
        )
    return key


def _journal_entries(rows: Sequence[Mapping[str, Any]], sys_id: str) -> list[JournalEntry]:
    """The rows of this record's work notes and comments (a query the instance could not read
    would match others too) as entries."""
    try:
        return [
            inbound.journal_entry(row)
            for row in rows
            if row.get("element_id") == sys_id and row.get("element") in inbound.JOURNAL_KINDS
        ]
    except (KeyError, ValueError, TypeError) as error:
        raise UnexpectedResponse(f"ServiceNow's journal rows are malformed: {error!r}") from None


HIDDEN_PAGES_SKIPPED = 10  # pages hidden by ACLs one poll looks past before it gives up


def _more_after(response: httpx.Response, listed: int, *, full_page: bool) -> bool:
    """Whether the query matches more than ``listed`` rows: ``X-Total-Count`` says (counted
    before ACLs, so a page short of its limit is not the end), else a full page may be
    followed by more."""
    total = _total_count(response, default=-1)
    return total > listed if total >= 0 else full_page


def _total_count(response: httpx.Response, *, default: int) -> int:
    try:
        return int(response.headers["X-Total-Count"])
    except (KeyError, ValueError):
        return default
