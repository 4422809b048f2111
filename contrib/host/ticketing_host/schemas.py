"""The HTTP edge: request and response bodies, converted to and from the core's records.

Shapes are the seed's. Request bodies are strict (unknown keys are errors); responses are built from
``ticketing_core.converters.unstructure`` so the ticket and link shapes are the core's canonical ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal, Self

import attrs
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    StrictStr,
    StringConstraints,
    model_validator,
)

from ticketing_core.converters import unstructure
from ticketing_core.models import Anomaly, FailedCheck, Page, Ticket, TicketDraft, TicketLink
from ticketing_core.policies import DEFAULT_POLICY, MAX_RECONCILE_INTERVAL, MIN_RECONCILE_INTERVAL
from ticketing_core.sync.inbound import Heard
from ticketing_core.sync.outbox import DeliveryState
from ticketing_core.sync.synclog import LoggedEntry

from .db import (
    MAX_ANOMALY_ID,
    MAX_INTEGRATION_ID,
    TYPE_LENGTH,
    AnomalyEntry,
    Comment,
    IntegrationRecord,
)

AnomalyStatus = Literal["Active", "Acknowledged", "Resolved", "Invalid", "Duplicate", "Discarded"]
Reference = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
IntegrationIdField = Annotated[int, Field(ge=1, le=MAX_INTEGRATION_ID)]
INTEGRATION_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# Texts that become a ticket's fields or work notes: far above what a person writes, far below
# what would hold up a delivery (the body itself is capped at 1 MB before it is read).
MAX_TITLE = 1_000
MAX_TEXT = 100_000
Title = Annotated[str, Field(max_length=MAX_TITLE)]
Text = Annotated[str, Field(max_length=MAX_TEXT)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- errors ----------------------------------------------------------------------------------------


class ErrorOut(BaseModel):
    detail: str


class Issue(BaseModel):
    type: str
    loc: list[str | int]
    msg: str


class InvalidOut(BaseModel):
    """A 422: the fields that failed validation, or one sentence for input checked later."""

    detail: list[Issue] | str


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "The request cannot be served as asked."},
    401: {"model": ErrorOut, "description": "Missing or invalid API token."},
    404: {"model": ErrorOut, "description": "No such integration, anomaly or ticket."},
    409: {
        "model": ErrorOut,
        "description": "Clashes with an earlier request, or is still running.",
    },
    413: {"model": ErrorOut, "description": "The request body is larger than 1 MB."},
    422: {"model": InvalidOut, "description": "Invalid input."},
    502: {"model": ErrorOut, "description": "The ticketing instance failed or refused the call."},
    503: {
        "model": ErrorOut,
        "description": "The host cannot use the integration as configured (it cannot read its "
        "credentials, or was started without a flag it needs, such as --allow-http), or its "
        "database cannot take the request now (locked by another process, read-only): nothing "
        "was changed.",
    },
}


# -- integrations ----------------------------------------------------------------------------------


class IntegrationIn(Body):
    type: str
    api_url: str
    api_access_token: SecretStr
    sync_policy: str = DEFAULT_POLICY
    # Provider settings passed to its factory, e.g. {"project": "OPS"} for Jira.
    options: dict[str, StrictStr] = Field(default_factory=dict)


class IntegrationChange(Body):
    """A PATCH: the fields given replace the stored ones (``options`` as a whole)."""

    api_url: str | None = None
    api_access_token: SecretStr | None = None
    options: dict[str, StrictStr] | None = None


IntegrationStatus = Literal["idle", "delivering", "paused", "failing", "credentials unreadable"]


class IntegrationOut(BaseModel):
    """An integration as created (the seed's shape)."""

    id: int
    type: str
    category: Literal["ticketing"] = "ticketing"
    api_url: str
    connected: bool = Field(
        description="False while the host cannot use the integration (see error) or its "
        "deliveries are paused (see paused_until)."
    )
    status: IntegrationStatus = Field(
        description="How its deliveries stand: paused (they wait until paused_until: its "
        "instance is down, asked to slow down, or a process cannot use it; last_error says "
        "which), failing (events failed and wait for a retry, or are dead), delivering (events "
        "pending), idle (nothing to deliver), or credentials unreadable (see error)."
    )
    created: str
    error: str | None = Field(
        default=None, description="Why the host cannot use the integration now, if it cannot."
    )

    @classmethod
    def of(cls, integration: IntegrationRecord, state: DeliveryState | None = None) -> Self:
        # Field by field: the record holds the credentials, which no response may carry.
        state = state or DeliveryState()
        status = "credentials unreadable" if integration.unreadable else state.status
        return cls(
            id=integration.id,
            type=integration.type,
            api_url=integration.api_url,
            connected=integration.connected
            and integration.unreadable is None
            and state.paused_until is None,
            status=status,
            created=integration.created.strftime(INTEGRATION_TIME_FORMAT),
            error=integration.unreadable,
        )


class IntegrationStateOut(IntegrationOut):
    """An integration with how its deliveries stand (every answer but a create's). Fields
    without a value are left out."""

    pending: int = Field(description="Events waiting to be delivered (those in flight too).")
    dead: int = Field(
        description="Events parked as dead: see ticketing outbox list --status dead, then "
        "retry or discard them."
    )
    paused_until: str | None = Field(
        default=None,
        description="While deliveries to it are paused: until when (UTC). Claims wait until "
        "then; a longer outage pauses again, up to a minute at a time.",
    )
    last_error: str | None = Field(
        default=None,
        description="The last failure of an event still pending or dead, on one line: why it "
        "is paused or failing.",
    )
    last_delivered_at: str | None = Field(
        default=None, description="When an event was last delivered to it (UTC)."
    )
    inbound: InboundStateOut = Field(
        description="Two-way sync: whether changes flow back from its tickets, and when the "
        "instance was last heard from. Never the secret."
    )

    @classmethod
    def of(
        cls,
        integration: IntegrationRecord,
        state: DeliveryState | None = None,
        heard: Heard | None = None,
    ) -> Self:
        state = state or DeliveryState()
        shown = IntegrationOut.of(integration, state).model_dump()
        return cls(
            **shown,
            pending=state.pending,
            dead=state.dead,
            paused_until=_shown_time(state.paused_until),
            last_error=state.last_error,
            last_delivered_at=_shown_time(state.last_delivered_at),
            inbound=InboundStateOut.of(integration.inbound, heard),
        )


# -- two-way sync ----------------------------------------------------------------------------------


class InboundOptions(Body):
    """The inbound policy's options (see the README's "Two-way sync")."""

    copy_entries: StrictBool = Field(
        default=True,
        description="Copy the ticket's work notes and comments written by people (not by the "
        "integration) to the anomaly as comments.",
    )
    status_map: dict[Annotated[str, Field(min_length=1, max_length=128)], AnomalyStatus] = Field(
        default_factory=dict,
        description="Ticket status -> anomaly status: the only way a ticket changes an "
        "anomaly's own status. Each ticket status must be in the instance's choice list.",
        max_length=64,
    )
    reconcile_interval_s: float = Field(
        default=300.0,
        ge=MIN_RECONCILE_INTERVAL,
        le=MAX_RECONCILE_INTERVAL,
        description="Seconds between reconciling polls, which catch notifications lost while "
        "the host was down.",
    )


class InboundIn(InboundOptions):
    enabled: StrictBool


class InboundStateOut(BaseModel):
    enabled: bool
    copy_entries: bool | None = None
    status_map: dict[str, str] | None = None
    reconcile_interval_s: float | None = None
    last_notified_at: str | None = Field(
        default=None, description="When a notification was last accepted (UTC)."
    )
    last_polled_at: str | None = Field(
        default=None, description="When the reconciling poll last finished (UTC)."
    )

    @classmethod
    def of(cls, options: Mapping[str, Any] | None, heard: Heard | None) -> Self:
        if options is None:
            return cls(enabled=False)
        heard = heard or Heard(None, None)
        return cls(
            enabled=True,
            **options,
            last_notified_at=_shown_time(heard.notified_at),
            last_polled_at=_shown_time(heard.polled_at),
        )


class InboundOut(BaseModel):
    """Inbound sync as set; ``secret`` and ``business_rule`` (what to install on the service,
    holding the secret) only when a secret was made by this request."""

    enabled: bool
    endpoint: str | None = None
    secret: str | None = None
    business_rule: str | None = None
    previous_secret_valid_until: str | None = None


class SyncLogOut(BaseModel):
    id: int
    at: str
    direction: Literal["in", "out"]
    decision: str
    ticket_id: str | None
    anomaly_id: int | None
    detail: str

    @classmethod
    def of(cls, logged: LoggedEntry) -> Self:
        entry = attrs.asdict(logged.entry)
        del entry["integration_id"]
        return cls(id=logged.id, at=logged.at.strftime(INTEGRATION_TIME_FORMAT), **entry)


def _shown_time(moment: datetime | None) -> str | None:
    return None if moment is None else moment.strftime(INTEGRATION_TIME_FORMAT)


# -- tickets ---------------------------------------------------------------------------------------


class TicketOut(BaseModel):
    ticket_id: str
    ticket_number: str
    title: str
    description: str
    status: str
    priority: str | None
    urgency: str | None
    impact: str | None
    category: str | None
    subcategory: str | None
    created_at: str | None
    updated_at: str | None
    assigned_to: str | None
    url: str | None


class PageOut(BaseModel):
    items: list[TicketOut]
    total: int
    page: int
    size: int
    pages: int

    @classmethod
    def of(cls, page: Page) -> Self:
        return cls.model_validate(unstructure(page))


class TicketRequest(Body):
    model_config = ConfigDict(coerce_numbers_to_str=True)  # merged with Body's: "2" or 2

    title: Title
    description: Text
    priority: str
    # Required where the provider has them (its field_choices), e.g. ServiceNow; Jira has neither.
    urgency: str | None = None
    impact: str | None = None
    category: str | None = None
    subcategory: str | None = None
    assigned_to: str | None = None
    assigned_group: str | None = Field(
        default=None, validation_alias=AliasChoices("assigned_group", "assignment_group")
    )
    integration_id: IntegrationIdField | None = None

    def choice_fields(self) -> dict[str, str | None]:
        """The enumerated fields, checked against the provider's ``field_choices``."""
        return {"priority": self.priority, "urgency": self.urgency, "impact": self.impact}

    def to_draft(self) -> TicketDraft:
        return TicketDraft(
            title=self.title,
            description=self.description,
            priority=self.priority,
            urgency=self.urgency,
            impact=self.impact,
            category=self.category,
            subcategory=self.subcategory,
            assigned_to=self.assigned_to,
            assignment_group=self.assigned_group,
        )


class LinkRequest(Body):
    ticket_id: Reference | None = None
    ticket_number: Reference | None = None
    integration_id: IntegrationIdField | None = None

    @model_validator(mode="after")
    def one_reference(self) -> Self:
        if (self.ticket_id is None) == (self.ticket_number is None):
            raise ValueError("give exactly one of ticket_id and ticket_number")
        return self


class TicketResult(BaseModel):
    ticket: TicketOut
    anomaly_id: int
    integration_id: int
    message: str

    @classmethod
    def of(cls, ticket: Ticket, link: TicketLink, message: str) -> Self:
        return cls(
            ticket=TicketOut.model_validate(unstructure(ticket)),
            anomaly_id=link.anomaly_id,
            integration_id=link.integration_id,
            message=message,
        )


class TicketLinkOut(BaseModel):
    id: int
    anomaly_id: int
    integration_id: int
    ticket_id: str
    ticket_number: str
    ticket_url: str | None
    status: str | None
    last_synced: str | None
    ticket_metadata: dict[str, Any] | None
    created: str

    @classmethod
    def of_all(cls, links: list[TicketLink]) -> list[Self]:
        return [cls.model_validate(data) for data in unstructure(links)]


# -- anomalies -------------------------------------------------------------------------------------


class FailedCheckModel(Body):
    rule: str
    field: str | None = None
    description: str | None = None


class AnomalyIn(Body):
    id: int | None = Field(
        default=None, ge=1, le=MAX_ANOMALY_ID, description="Chosen by the server when omitted."
    )
    type: str = Field(max_length=TYPE_LENGTH)
    status: AnomalyStatus
    description: Text = ""
    datastore: str | None = None
    container: str | None = None
    field: str | None = None
    failed_checks: list[FailedCheckModel] = []

    def to_anomaly(self) -> Anomaly:
        return Anomaly(
            id=self.id or 0,
            type=self.type,
            status=self.status,
            description=self.description,
            failed_checks=tuple(FailedCheck(**check.model_dump()) for check in self.failed_checks),
            datastore=self.datastore,
            container=self.container,
            field=self.field,
        )


class StatusIn(Body):
    status: AnomalyStatus


class CommentIn(Body):
    message: Annotated[str, Field(min_length=1, max_length=MAX_TEXT)]


class CommentOut(BaseModel):
    id: int
    message: str
    origin: Literal["user", "integration", "ticket"]
    created: str

    @classmethod
    def of(cls, comment: Comment) -> Self:
        return cls.model_validate(unstructure(comment))


class AnomalyOut(BaseModel):
    id: int
    type: str
    status: str
    description: str
    datastore: str | None
    container: str | None
    field: str | None
    failed_checks: list[FailedCheckModel]
    created: str
    updated: str
    comments: list[CommentOut]

    @classmethod
    def of(cls, entry: AnomalyEntry) -> Self:
        data = unstructure(entry)
        anomaly = data.pop("anomaly")
        return cls.model_validate({**anomaly, **data})
