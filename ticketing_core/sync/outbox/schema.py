"""The outbox's tables and records: events, the tally of pruned notes, and integrations' pauses."""

from __future__ import annotations

import time
from datetime import datetime

import attrs
import cattrs
import sqlalchemy as sa
from cattrs.strategies import configure_tagged_union

from ticketing_core.errors import TicketingError
from ticketing_core.policies import Action, AddWorkNote
from ticketing_core.sync import lease
from ticketing_core.sync.keys import digest, event_key
from ticketing_core.sync.schema import UtcDateTime, metadata

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"

events = sa.Table(
    "sync_outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("integration_id", sa.Integer, nullable=False),
    sa.Column("ticket_id", sa.String(128), nullable=False),
    # Events sharing an ordering key are delivered one at a time, oldest first.
    sa.Column("ordering_key", sa.String(200), nullable=False),
    sa.Column("anomaly_id", sa.BigInteger),
    sa.Column("action", sa.JSON, nullable=False),
    sa.Column("note_digest", sa.String(64)),  # a note's text, hashed: finds identical ones
    sa.Column("status", sa.String(16), nullable=False, default=PENDING),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    # Of those, the failures during an outage: max_attempts does not count them.
    sa.Column("outage_attempts", sa.Integer, nullable=False, default=0),
    sa.Column("claims", sa.Integer, nullable=False, default=0),
    # An attempt may have landed; cleared once a look at the ticket says it did not. (Named
    # "ambiguous" in the database: a rename would stop every worker still running older code.)
    sa.Column("ambiguous", sa.Boolean, key="in_doubt", nullable=False, default=False),
    # Until then the service may still be working on an attempt in doubt: it is not sent again
    # before (a note is looked for at once all the same).
    sa.Column("doubt_until", UtcDateTime),
    sa.Column("claim_token", sa.String(32)),  # the fencing token of the current claim
    sa.Column("claimed_at", UtcDateTime),
    sa.Column("next_attempt_at", UtcDateTime, nullable=False),
    # Kept after it expires until the claim is settled: an expired lease is an unsettled claim.
    sa.Column("lease_until", UtcDateTime),
    sa.Column("last_error", sa.Text),
    sa.Column("created", UtcDateTime, nullable=False),
    sa.Column("delivered_at", UtcDateTime),
    # The ticket's revision the delivery's answer told (ServiceNow's sys_mod_count): two-way
    # sync knows the ticket at that revision as changed by us.
    sa.Column("revision", sa.BigInteger),
    sa.Index("ix_sync_outbox_due", "status", "next_attempt_at"),
    sa.Index("ix_sync_outbox_ordering", "ordering_key", "status", "id"),
    sa.Index("ix_sync_outbox_notes", "ticket_id", "note_digest", "status"),
    sa.Index("ix_sync_outbox_claimed", "integration_id", "claim_token"),  # fleet claims count them
    sqlite_autoincrement=True,  # ids are never reused, so a listing's ids stay meaningful
)

note_tally = sa.Table(
    "sync_note_tally",
    metadata,
    # How many notes of each text this outbox delivered to each ticket and then pruned: with the
    # delivered events still kept, what tells an identical earlier note from this one on a ticket
    # whose journal holds text only. Per ticket, whichever integration delivered them (a ticket is
    # linked through one integration at a time, and another may take it over).
    sa.Column("ticket_id", sa.String(128), primary_key=True),
    sa.Column("digest", sa.String(64), primary_key=True),
    sa.Column("delivered", sa.Integer, nullable=False),
)

pauses = sa.Table(
    "sync_throttle",  # the database's name for the pauses, kept for older workers' sake
    metadata,
    # An integration whose service is down or asked to slow down (429), or that this host cannot use:
    # claims leave it alone until then. ``seconds``: how long the pause was, which the next one doubles
    # if the calls claimed after it fail too (0 after a delivery).
    sa.Column("integration_id", sa.Integer, primary_key=True),
    sa.Column("until", UtcDateTime, nullable=False),
    sa.Column("seconds", sa.Float, nullable=False, default=0.0),
    # When a delivery to it last succeeded: a failure of a call claimed before then is the call's.
    sa.Column("delivered_at", UtcDateTime),
)

actions = cattrs.Converter()
configure_tagged_union(Action, actions, tag_name="type")


@attrs.frozen
class OutboxEvent:
    """One stored action for one ticket, with its delivery state as of its claim."""

    id: int
    integration_id: int
    ticket_id: str
    anomaly_id: int | None
    action: Action
    status: str
    attempts: int
    claims: int
    in_doubt: bool
    """Whether an earlier attempt may have reached the service (see :mod:`~ticketing_core.sync.delivery`)."""
    last_error: str | None
    created: datetime
    next_attempt_at: datetime
    delivered_at: datetime | None
    outage_attempts: int = 0
    """Of ``attempts``, those that failed during an outage (not counted against max_attempts)."""
    claimed_at: datetime | None = None
    """When this claim was made, on the database's clock."""
    claim_token: str | None = attrs.field(default=None, repr=False)
    identical_before: int = 0
    """For a note: how many notes with its text this outbox delivered to the ticket before it."""
    idempotency_key: str = ""
    """Unique to this event in this installation: what keyed writes of it carry."""
    claimed_monotonic: float = attrs.field(factory=time.monotonic, repr=False, eq=False)
    """When this process loaded the claim, on its own monotonic clock."""
    revision: int | None = None
    """Once delivered: the ticket's revision the service's answer told, if it did."""

    @property
    def ordering_key(self) -> str:
        """The ticket this event belongs to, as claims and wake-ups name it."""
        return ordering_key(self.integration_id, self.ticket_id)


@attrs.frozen
class NewEvent:
    """An action to store for a ticket of an integration."""

    integration_id: int
    ticket_id: str
    action: Action
    anomaly_id: int | None = None


class LeaseLost(TicketingError):
    """This worker's claim on an event expired and may be another's now: it must not act on it."""


class StillInDoubt(TicketingError):
    """An event in doubt was not found at its ticket, but the service may still be working on
    the earlier attempt: it is looked for again once its doubt window is over, not sent now."""

    def __init__(self, event_id: int, until: datetime) -> None:
        super().__init__(
            f"outbox event {event_id}: not at its ticket yet; looked for again at {until}"
        )
        self.until = until


def held(event: OutboxEvent) -> sa.ColumnElement[bool]:
    """The event's row while its claim holds it: the fence of every settle."""
    return lease.held(
        events, event.claim_token, events.c.id == event.id, events.c.status == PENDING
    )


def fenced(event: OutboxEvent) -> sa.Update:
    """An update of the event's row that changes nothing once its claim is lost."""
    return lease.fenced(
        events, event.claim_token, events.c.id == event.id, events.c.status == PENDING
    )


def ordering_key(integration_id: int, ticket_id: str) -> str:
    return f"{integration_id}:{ticket_id}"


def integration_of(ordering_key: str) -> int:
    return int(ordering_key.split(":", 1)[0])


def note_digest(action: Action) -> str | None:
    return digest(action.text) if isinstance(action, AddWorkNote) else None


def new_row(event: NewEvent, now: datetime) -> dict[str, object]:
    return {
        "integration_id": event.integration_id,
        "ticket_id": event.ticket_id,
        "ordering_key": ordering_key(event.integration_id, event.ticket_id),
        "anomaly_id": event.anomaly_id,
        "action": actions.unstructure(event.action, Action),
        "note_digest": note_digest(event.action),
        "status": PENDING,
        "attempts": 0,
        "outage_attempts": 0,
        "claims": 0,
        "in_doubt": False,
        "next_attempt_at": now,
        "created": now,
    }


def loaded_event(row: sa.RowMapping, installation_id: str) -> OutboxEvent:
    return OutboxEvent(
        id=row["id"],
        integration_id=row["integration_id"],
        ticket_id=row["ticket_id"],
        anomaly_id=row["anomaly_id"],
        action=actions.structure(row["action"], Action),  # type: ignore[arg-type]
        status=row["status"],
        attempts=row["attempts"],
        claims=row["claims"],
        in_doubt=row[events.c.in_doubt],
        last_error=row["last_error"],
        created=row["created"],
        next_attempt_at=row["next_attempt_at"],
        delivered_at=row["delivered_at"],
        revision=row["revision"],
        outage_attempts=row["outage_attempts"],
        claimed_at=row["claimed_at"],
        claim_token=row["claim_token"],
        idempotency_key=event_key(installation_id, row["id"]),
    )
