"""Confirming and settling claims: every write a worker makes about the event it holds, fenced.

A settle names the event's claim (:func:`~ticketing_core.sync.outbox.schema.fenced`): a worker
whose claim was lost changes nothing. What a failure leads to (a retry, a pause, dead) is the
policy's (:mod:`~ticketing_core.sync.outbox.policy`); this module writes it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any

import attrs
import sqlalchemy as sa

from ticketing_core.errors import IntegrationUnusable, ProviderError, may_have_landed
from ticketing_core.policies import AddWorkNote, ChangeTicket
from ticketing_core.sync.outbox import policy
from ticketing_core.sync.outbox.base import OutboxBase
from ticketing_core.sync.outbox.schema import (
    DEAD,
    DELIVERED,
    PENDING,
    LeaseLost,
    OutboxEvent,
    StillInDoubt,
    events,
    fenced,
    held,
    pauses,
)
from ticketing_core.sync.synclog import OUTBOUND, LogEntry


class Settling(OutboxBase):
    def confirm(self, event: OutboxEvent) -> None:
        """Confirm the claim just before sending; for an event in doubt (whose look, made after
        the claim, found it absent), also that its doubt window was over when it was claimed, so
        that the look saw all the service would ever do with the earlier attempt; and clear the
        doubt.

        Raises :class:`LeaseLost` when the claim is no longer this worker's, and
        :class:`StillInDoubt` when the look may have come too early. A claim made less than a
        third of a lease ago is certainly still held (clocks may disagree on the time, not on how
        fast it passes), so confirming it costs no write.
        """
        fresh = time.monotonic() - event.claimed_monotonic < self.lease.total_seconds() / 3
        if fresh and not event.in_doubt:
            return
        with self.database.begin() as conn:
            now = self.database.now(conn)
            window_over = sa.or_(
                events.c.doubt_until.is_(None), events.c.doubt_until <= event.claimed_at
            )
            confirmed = conn.execute(
                fenced(event)
                .where(window_over)
                .values(lease_until=now + self.lease, in_doubt=False)
            ).rowcount
            if confirmed:
                return
            until = conn.execute(sa.select(events.c.doubt_until).where(held(event))).scalar()
        if until is not None:
            raise StillInDoubt(event.id, until)
        raise LeaseLost(f"outbox event {event.id}: the lease expired; another worker may hold it")

    def settle_delivered(self, *claimed: OutboxEvent) -> dict[int, datetime]:
        """Settle delivered events in one transaction: when, on the database's clock, per event
        id still claimed (those whose claim was lost are left out and change nothing: empty when
        none was)."""
        if not claimed:
            return {}
        with self.database.begin() as conn:
            return self._settle_delivered(conn, claimed)

    def _settle_delivered(
        self, conn: sa.Connection, claimed: Sequence[OutboxEvent]
    ) -> dict[int, datetime]:
        if not claimed:
            return {}
        now = self.database.now(conn)
        # The revisions the deliveries' answers told: the newest in the settling statement,
        # the others of a run (rarely any) one statement each.
        told = {event.id: event.revision for event in claimed if event.revision is not None}
        newest = max(told, default=0)
        settled = conn.execute(
            _SETTLE_DELIVERED,
            {
                "ids": [event.id for event in claimed],
                "tokens": list({event.claim_token for event in claimed}),
                "settled_at": now,
                "told_id": newest,
                "told": told.get(newest),
            },
        ).all()
        settled_ids = {event_id for (event_id,) in settled}
        others = [
            {"event_id": event_id, "told": revision}
            for event_id, revision in told.items()
            if event_id != newest and event_id in settled_ids
        ]
        if others:
            conn.execute(_RECORD_REVISION, others)
        self.log.write(
            conn,
            *(
                _entry(event, "checked" if event.in_doubt else "delivered")
                for event in claimed
                if event.id in settled_ids
            ),
        )
        for integration_id in sorted(
            {event.integration_id for event in claimed if event.id in settled_ids}
        ):
            self._record_delivery(conn, integration_id, now)
        return dict.fromkeys(settled_ids, now)

    def settle_failed(self, event: OutboxEvent, error: BaseException) -> str | None:
        """Record a failed attempt: back off and retry, or park as dead; in an outage, pause.

        Returns the new status, or None when the claim was lost (nothing is recorded).
        """
        if isinstance(error, IntegrationUnusable):
            return self._wait_until_usable(event, error)
        if isinstance(error, StillInDoubt):
            return self._look_again(event, error.until)
        retryable = isinstance(error, ProviderError) and error.retryable
        with self.database.begin() as conn:
            # The event's row, then the integration's: the order every writer takes them in.
            held_row = sa.select(events.c.in_doubt.label("in_doubt")).where(held(event))
            held_row = held_row.with_for_update()
            row = conn.execute(held_row).first()
            if row is None:
                return None  # the claim was lost
            # Still in doubt: confirm() never ran, so this claim sent nothing (its look failed).
            landed = may_have_landed(error) and not row.in_doubt
            last = conn.execute(
                sa.select(pauses).where(pauses.c.integration_id == event.integration_id)
                .with_for_update()
            ).first()  # fmt: skip
            now = self.database.now(conn)
            waits = policy.waits_out(event, error, last)
            # Exact: nobody else settles while this claim holds.
            counted = event.attempts - event.outage_attempts + (not waits)
            status = PENDING if waits or (retryable and counted < self.max_attempts) else DEAD
            if waits:
                until, seconds = policy.outage_pause(
                    event, now, error, last, self.backoff_initial, self.backoff_max
                )
                self._pause(conn, event.integration_id, until, seconds)
                next_attempt = until
            else:
                wait = policy.backoff(counted, error, self.backoff_initial, self.backoff_max)
                next_attempt = now + wait
            if landed and not isinstance(event.action, AddWorkNote):
                # Nothing to look for: not before the service is done with the call.
                next_attempt = max(next_attempt, now + self.doubt)
            conn.execute(
                fenced(event).values(
                    status=status,
                    attempts=events.c.attempts + 1,
                    outage_attempts=events.c.outage_attempts + int(waits),
                    in_doubt=sa.true() if landed else events.c.in_doubt,
                    doubt_until=now + self.doubt if landed else events.c.doubt_until,
                    last_error=f"{type(error).__name__}: {error}"[:2000],
                    next_attempt_at=next_attempt,
                    lease_until=None,
                    claim_token=None,
                )
            )
            decision = "dead" if status == DEAD else "in doubt" if landed else "failed"
            self.log.write(conn, _entry(event, decision, f"{type(error).__name__}: {error}"))
        return status

    def _wait_until_usable(self, event: OutboxEvent, error: IntegrationUnusable) -> str | None:
        """Nothing was sent: give the event back unchanged but for its time, and pause the
        integration, until the host can use it again (its key, its network rule)."""
        with self.database.begin() as conn:
            until = self.database.now(conn) + timedelta(seconds=self.backoff_max)
            settled = conn.execute(
                fenced(event).values(
                    next_attempt_at=until,
                    last_error=f"{type(error).__name__}: {error}"[:2000],
                    lease_until=None,
                    claim_token=None,
                )
            ).rowcount
            if settled:
                self._pause(conn, event.integration_id, until, 0.0)  # no outage to double
        return PENDING if settled else None

    def _look_again(self, event: OutboxEvent, until: datetime) -> str | None:
        """A note in doubt not found yet: give it back unchanged but for its time, to be looked
        for again once the service is certainly done with the earlier attempt."""
        with self.database.begin() as conn:
            settled = conn.execute(
                fenced(event).values(next_attempt_at=until, lease_until=None, claim_token=None)
            ).rowcount
        return PENDING if settled else None

    def _upsert_pause(
        self, conn: sa.Connection, integration_id: int, row: dict[str, Any], **changes: Any
    ) -> None:
        insert = self.database.insert(pauses)
        conn.execute(
            insert.values(integration_id=integration_id, **row).on_conflict_do_update(
                index_elements=[pauses.c.integration_id], set_=changes
            )
        )

    def _pause(
        self, conn: sa.Connection, integration_id: int, until: datetime, seconds: float
    ) -> None:
        """Keep claims off an integration until ``until`` (or later, if an earlier pause asked
        for longer), remembering the pause's length."""
        later = sa.func.greatest if self.database.is_postgresql else sa.func.max  # two-argument
        self._upsert_pause(
            conn,
            integration_id,
            {"until": until, "seconds": seconds},
            until=later(pauses.c.until, until),  # a shorter wait never shortens it
            seconds=seconds,
        )

    def _record_delivery(self, conn: sa.Connection, integration_id: int, now: datetime) -> None:
        """A delivery succeeded: the service is up. Later failures of calls claimed before now
        count against their events, and the next outage's pauses start from the shortest."""
        conn.execute(
            self._delivery_recorded,
            {"integration_id": integration_id, "until": now, "seconds": 0.0, "delivered_at": now},
        )

    @cached_property
    def _delivery_recorded(self) -> sa.Insert:
        """The upsert of :meth:`_record_delivery`, built once (it runs on every delivery)."""
        insert = self.database.insert(pauses)
        return insert.on_conflict_do_update(
            index_elements=[pauses.c.integration_id],
            set_={"delivered_at": insert.excluded.delivered_at, "seconds": 0.0},
        )


_RECORD_REVISION = (
    events.update()
    .where(events.c.id == sa.bindparam("event_id", type_=events.c.id.type))
    .values(revision=sa.bindparam("told", type_=events.c.revision.type))
)

_SETTLE_DELIVERED = (
    events.update()
    .where(
        events.c.id.in_(sa.bindparam("ids", expanding=True)),
        events.c.claim_token.in_(sa.bindparam("tokens", expanding=True)),
        events.c.status == PENDING,
    )
    .values(
        status=DELIVERED,
        delivered_at=sa.bindparam("settled_at", type_=events.c.delivered_at.type),
        lease_until=None,
        claim_token=None,
        last_error=None,
        revision=sa.case(
            (
                events.c.id == sa.bindparam("told_id", type_=events.c.id.type),
                sa.bindparam("told", type_=events.c.revision.type),
            ),
            else_=events.c.revision,
        ),
    )
    .returning(events.c.id)
)


def _entry(event: OutboxEvent, decision: str, why: str = "") -> LogEntry:
    """The sync log's row for an outbound decision: what the event carries, and why."""
    if isinstance(event.action, ChangeTicket):
        changed = {k: v for k, v in attrs.asdict(event.action.changes).items() if v}
        what = f"change {changed}"
    else:
        what = f"work note {event.action.text[:200]!r}"
    detail = f"event {event.id}: {what}" + (f"; {why}" if why else "")
    return LogEntry(
        OUTBOUND, decision, event.integration_id, event.ticket_id, event.anomaly_id, detail
    )
