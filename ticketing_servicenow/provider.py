"""The ServiceNow provider: the seven incident operations over the Table API."""

from __future__ import annotations

import re
import warnings
from typing import Any, ClassVar

import httpx

from ticketing_core.errors import InvalidInput, NotFound
from ticketing_core.hookspecs import Provider
from ticketing_core.http import (
    RETRYING_DEPRECATED,
    OAuthClient,
    ServiceClient,
    ServiceDialect,
    create_once,
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
from ticketing_servicenow import mapping
from ticketing_servicenow.envelopes import error_reason, result_of

INCIDENTS = "/api/now/table/incident"
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


class ServiceNowProvider(Provider):
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
        items = tuple(self._tickets(response))
        return Page(
            items=items,
            total=_total_count(response, default=query.offset + len(items)),
            page=query.page,
            size=query.size,
        )

    def get(self, ticket_id: str) -> Ticket:
        response = self._client.request("GET", self._record(ticket_id), params=READ_PARAMS)
        return mapping.to_ticket(result_of(response), self.api_url)

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
        return mapping.to_ticket(result_of(response), self.api_url)

    def add_work_note(
        self, ticket_id: str, text: str, *, idempotency_key: str | None = None
    ) -> None:
        # The journal keeps text only, so the key cannot travel; has_work_note counts instead.
        if not text.strip():
            raise InvalidInput("a work note must not be empty")
        self._client.request(
            "PATCH",
            self._record(ticket_id),
            params={"sysparm_fields": "sys_id"},
            json={"work_notes": mapping.journal_safe(text)},
        )

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
            "GET", self._record(ticket_id), params={"sysparm_fields": "state"}
        )
        return mapping.to_status(result_of(response))

    def _post(self, payload: dict[str, str]) -> Ticket:
        response = self._client.request("POST", INCIDENTS, params=READ_PARAMS, json=payload)
        return mapping.to_ticket(result_of(response), self.api_url)

    def _first_where(self, condition: str) -> Ticket | None:
        response = self._client.request(
            "GET",
            INCIDENTS,
            params=READ_PARAMS
            | {"sysparm_query": f"{condition}^{mapping.SEARCH_ORDER}", "sysparm_limit": 1},
        )
        tickets = self._tickets(response)
        return tickets[0] if tickets else None

    def _tickets(self, response: httpx.Response) -> list[Ticket]:
        return [mapping.to_ticket(record, self.api_url) for record in result_of(response)]

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


def _total_count(response: httpx.Response, *, default: int) -> int:
    try:
        return int(response.headers["X-Total-Count"])
    except (KeyError, ValueError):
        return default
