"""Inbound sync's bookkeeping: what was applied (each ticket's revision, how far its journal was
read), the notifications waiting to be read, and each integration's poll cursor and times."""

from __future__ import annotations

import secrets
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa

from ticketing_core.models import Notice, Ticket
from ticketing_core.sync.inbound.host import Heard
from ticketing_core.sync.inbound.schema import applied_entries, applied_tickets, cursors, notices

if TYPE_CHECKING:
    from ticketing_core.sync.database import Database

VERSIONS = 2**31  # a notification's version: a 32-bit column on PostgreSQL
BATCH = 100  # tickets per read: ServiceNow's sys_idIN and Jira's id in (...) take this many
NEW, DUPLICATE, STALE = "new", "duplicate", "stale"

# Built once: the receiver's batches run these several hundred times a second.
_REVISIONS = sa.select(
    applied_tickets.c.ticket_id, applied_tickets.c.revision, applied_tickets.c.entries_after
).where(
    applied_tickets.c.integration_id == sa.bindparam("integration"),
    applied_tickets.c.ticket_id.in_(sa.bindparam("tickets", expanding=True)),
)
_FORGET = notices.delete().where(
    notices.c.integration_id == sa.bindparam("integration"),
    notices.c.ticket_id == sa.bindparam("ticket"),
    notices.c.version == sa.bindparam("read_version"),
)


class InboundState:
    """The inbound tables' reads and writes; a method given ``conn`` works in that transaction."""

    def __init__(self, database: Database) -> None:
        self.database = database
        upsert = database.insert(notices)
        # A ticket notified again before it was read gets a new version (see :meth:`forget`).
        self._notify = upsert.on_conflict_do_update(
            index_elements=[notices.c.integration_id, notices.c.ticket_id],
            set_={"version": upsert.excluded.version},
        )

    def store(
        self, conn: sa.Connection, notified: Sequence[tuple[int, Notice]], now: datetime
    ) -> None:
        """Store notifications (by integration) for their tickets to be read. Each takes a
        random version, not a count: a count starts again once its row is forgotten, and a
        reader still holding the old count (another worker's) would forget the new one unread.
        (A new version equals the old one once in two billion; the poll then finds the change.)"""
        rows = [
            {"integration_id": iid, "ticket_id": notice.ticket_id,
             "version": secrets.randbelow(VERSIONS), "received": now}
            for iid, notice in notified
        ]  # fmt: skip
        if rows:
            conn.execute(self._notify, rows)

    def heard(self, integration_id: int) -> Heard:
        with self.database.read() as conn:
            row = conn.execute(
                sa.select(cursors.c.heard_at, cursors.c.polled_at).where(
                    cursors.c.integration_id == integration_id
                )
            ).first()
        return Heard(*row) if row is not None else Heard(None, None)

    def pending_integrations(self) -> list[int]:
        """Integrations with notifications waiting to be read."""
        with self.database.read() as conn:
            return list(conn.execute(sa.select(notices.c.integration_id).distinct()).scalars())

    def claim_revision(self, conn: sa.Connection, integration_id: int, ticket: Ticket) -> str:
        """Raise the ticket's applied revision to this one; NEW when this transaction did.

        One statement, so that of two transactions claiming one ticket the second waits for the
        first's row and then compares with what it committed (a newer revision still wins)."""
        if ticket.revision is None:
            return NEW
        stored = self.database.insert(applied_tickets).values(
            integration_id=integration_id, ticket_id=ticket.id, revision=ticket.revision
        )
        claimed = conn.execute(
            stored.on_conflict_do_update(
                index_elements=[applied_tickets.c.integration_id, applied_tickets.c.ticket_id],
                set_={"revision": stored.excluded.revision},
                where=applied_tickets.c.revision < stored.excluded.revision,
            ).returning(applied_tickets.c.revision)
        ).first()
        if claimed is not None:
            return NEW
        applied, _ = self.revisions(integration_id, [ticket.id], conn)[ticket.id]
        return seen_before(ticket.revision, applied) or STALE

    def unapplied(
        self, conn: sa.Connection, received: Sequence[tuple[int, Notice]]
    ) -> tuple[list[tuple[int, Notice]], list[tuple[int, Notice, int]]]:
        """Split notifications (by integration) into those to read and those whose revision is
        no newer than the one applied to their ticket, each with that applied revision."""
        told: dict[int, set[str]] = {}
        for integration_id, notice in received:
            if notice.revision is not None:
                told.setdefault(integration_id, set()).add(notice.ticket_id)
        applied = {
            integration_id: self.revisions(integration_id, sorted(tickets), conn)
            for integration_id, tickets in told.items()
        }
        fresh: list[tuple[int, Notice]] = []
        seen: list[tuple[int, Notice, int]] = []
        for integration_id, notice in received:
            revision, _ = applied.get(integration_id, {}).get(notice.ticket_id, (None, None))
            if revision is not None and seen_before(notice.revision, revision) is not None:
                seen.append((integration_id, notice, revision))
            else:
                fresh.append((integration_id, notice))
        return fresh, seen

    def read_entries_until(
        self, conn: sa.Connection, integration_id: int, ticket_id: str, until: datetime
    ) -> None:
        """The ticket's journal was read up to ``until``; never moved back."""
        conn.execute(
            applied_tickets.update()
            .where(
                applied_tickets.c.integration_id == integration_id,
                applied_tickets.c.ticket_id == ticket_id,
                sa.or_(
                    applied_tickets.c.entries_after.is_(None),
                    applied_tickets.c.entries_after < until,
                ),
            )
            .values(entries_after=until)
        )

    def revisions(
        self, integration_id: int, ticket_ids: Sequence[str], conn: sa.Connection | None = None
    ) -> dict[str, tuple[int, datetime | None]]:
        """Each ticket's applied revision and how far its journal was read, if applied yet."""
        if not ticket_ids:
            return {}
        with self.database.read(conn) as c:
            rows = c.execute(_REVISIONS, {"integration": integration_id, "tickets": ticket_ids})
            return {ticket_id: (revision, after) for ticket_id, revision, after in rows}

    def waiting(self, integration_id: int, read: Collection[str]) -> dict[str, int]:
        """Up to a batch of notified tickets but those ``read``, oldest notification first,
        with their versions."""
        with self.database.read() as conn:
            rows = conn.execute(
                sa.select(notices.c.ticket_id, notices.c.version)
                .where(
                    notices.c.integration_id == integration_id,
                    notices.c.ticket_id.not_in(sorted(read)),
                )
                .order_by(notices.c.received)
                .limit(BATCH)
            )
            return {ticket_id: version for ticket_id, version in rows}

    def forget(self, integration_id: int, batch: dict[str, int]) -> None:
        """Drop the notifications read, but not one that came again meanwhile."""
        if not batch:
            return
        rows = [
            {"integration": integration_id, "ticket": ticket_id, "read_version": version}
            for ticket_id, version in batch.items()
        ]
        with self.database.begin() as conn:
            conn.execute(_FORGET, rows)

    def cursor(self, integration_id: int) -> str | None:
        with self.database.read() as conn:
            found: str | None = conn.execute(
                sa.select(cursors.c.cursor).where(cursors.c.integration_id == integration_id)
            ).scalar()
        return found

    def save_cursor(self, integration_id: int, cursor: str, *, finished: bool) -> None:
        with self.database.begin() as conn:
            now = self.database.now(conn)
            if finished:
                self.touch(conn, integration_id, cursor=cursor, polled_at=now)
            else:
                self.touch(conn, integration_id, cursor=cursor)

    def touch(self, conn: sa.Connection, integration_id: int, **values: object) -> None:
        conn.execute(
            self.database.insert(cursors)
            .values(integration_id=integration_id, **values)
            .on_conflict_do_update(index_elements=[cursors.c.integration_id], set_=values)
        )

    def prune(self, older_than: datetime) -> int:
        """Forget journal entry ids seen before ``older_than``: reads never reach back so far."""
        with self.database.begin() as conn:
            return int(
                conn.execute(
                    applied_entries.delete().where(applied_entries.c.seen < older_than)
                ).rowcount
            )


def seen_before(revision: int | None, applied: int | None) -> str | None:
    """DUPLICATE or STALE when a ticket's ``revision`` (read, or told by a notification) is no
    newer than the one ``applied``; None when it is new, or either is unknown."""
    if applied is None or revision is None or revision > applied:
        return None
    return DUPLICATE if revision == applied else STALE
