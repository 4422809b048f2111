"""How each integration's deliveries stand, read from the outbox's tables (read only): what
``GET /api/integrations/{id}`` shows beside the integration itself.

The outbox keeps the facts: its events' status and last error, and per integration a pause (its
claims wait until then: the instance is down, asked to slow down, or a process cannot use it) and
when a delivery to it last succeeded. Times are the database's, as the outbox's are.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Literal

import attrs
import sqlalchemy as sa

from ticketing_core.outbox import DEAD, DELIVERED, PENDING, events, throttles
from ticketing_core.store import Database

DeliveryStatus = Literal["idle", "delivering", "paused", "failing"]
MAX_ERROR = 500  # characters of the last error shown


@attrs.frozen
class DeliveryState:
    """One integration's deliveries: events pending and dead, the pause in force, the last
    failure of an event still undelivered (one line), and the last delivery."""

    pending: int = 0
    dead: int = 0
    retrying: int = 0
    """Of the pending events, those that failed before and wait to be tried again."""
    paused_until: datetime | None = None
    last_error: str | None = None
    last_delivered_at: datetime | None = None

    @property
    def status(self) -> DeliveryStatus:
        """``paused`` while its claims wait (until ``paused_until``); else ``failing`` when events
        failed (pending a retry, or dead); else ``delivering`` with events pending; else ``idle``."""
        if self.paused_until is not None:
            return "paused"
        if self.retrying or self.dead:
            return "failing"
        return "delivering" if self.pending else "idle"


def delivery_states(
    database: Database, integration_ids: Collection[int]
) -> dict[int, DeliveryState]:
    """The delivery state of each of these integrations (those without events are idle)."""
    ids = sorted(set(integration_ids))
    if not ids:
        return {}
    with database.read() as conn:
        now = database.now(conn)
        counts: dict[int, dict[str, int]] = {i: {} for i in ids}
        for integration_id, status, count, failed in conn.execute(
            sa.select(
                events.c.integration_id,
                events.c.status,
                sa.func.count(),
                sa.func.count(events.c.last_error),
            )
            .where(events.c.integration_id.in_(ids), events.c.status.in_((PENDING, DEAD)))
            .group_by(events.c.integration_id, events.c.status)
        ):
            counts[integration_id][status] = count
            if status == PENDING:
                counts[integration_id]["retrying"] = failed
        pauses = {
            row.integration_id: row
            for row in conn.execute(sa.select(throttles).where(throttles.c.integration_id.in_(ids)))
        }
        states = {}
        for integration_id in ids:
            found, pause = counts[integration_id], pauses.get(integration_id)
            undelivered = found.get(PENDING, 0) + found.get(DEAD, 0)
            states[integration_id] = DeliveryState(
                pending=found.get(PENDING, 0),
                dead=found.get(DEAD, 0),
                retrying=found.get("retrying", 0),
                paused_until=pause.until if pause is not None and pause.until > now else None,
                last_error=_last_error(conn, integration_id) if undelivered else None,
                last_delivered_at=(pause.delivered_at if pause is not None else None)
                or _last_delivered(conn, integration_id),
            )
        return states


def _last_error(conn: sa.Connection, integration_id: int) -> str | None:
    """The error of the undelivered event that failed last (its next try is the latest: a
    failure puts it off), on one line."""
    error = conn.execute(
        sa.select(events.c.last_error)
        .where(
            events.c.integration_id == integration_id,
            events.c.status.in_((PENDING, DEAD)),
            events.c.last_error.is_not(None),
        )
        .order_by(events.c.next_attempt_at.desc(), events.c.id.desc())
        .limit(1)
    ).scalar()
    if error is None:
        return None
    line = " ".join(str(error).split())
    return line if len(line) <= MAX_ERROR else line[: MAX_ERROR - 1] + "…"


def _last_delivered(conn: sa.Connection, integration_id: int) -> datetime | None:
    """For an outbox that has not recorded a delivery in its pause row yet: its latest delivered
    event still kept."""
    latest: datetime | None = conn.execute(
        sa.select(sa.func.max(events.c.delivered_at)).where(
            events.c.integration_id == integration_id, events.c.status == DELIVERED
        )
    ).scalar()
    return latest
