"""The sync log: one row per decision the engine makes about a change, in either direction.

Inbound: a notification received, refused (bad signature), a duplicate or stale change, an echo
of the integration's own write dropped, a state no choice list names, a change applied (and
what it changed), a read that failed. Outbound: each delivery delivered, checked (found on the
ticket after an answer was lost), in doubt, failed or dead. Written in the transaction that
makes the decision, so the log never tells of a change that did not happen; pruned with the
outbox.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import attrs
import sqlalchemy as sa

from ticketing_core.sync.schema import UtcDateTime, metadata

if TYPE_CHECKING:
    from ticketing_core.sync.database import Database

INBOUND, OUTBOUND = "in", "out"
MAX_DETAIL = 2000

log_rows = sa.Table(
    "sync_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Column("integration_id", sa.Integer, nullable=False),
    sa.Column("direction", sa.String(3), nullable=False),
    sa.Column("decision", sa.String(32), nullable=False),
    sa.Column("ticket_id", sa.String(128)),
    sa.Column("anomaly_id", sa.BigInteger),
    sa.Column("detail", sa.Text, nullable=False, default=""),
    sa.Index("ix_sync_log_ticket", "integration_id", "ticket_id", "id"),
    sa.Index("ix_sync_log_anomaly", "integration_id", "anomaly_id", "id"),
    sa.Index("ix_sync_log_at", "at"),
    sqlite_autoincrement=True,
)


@attrs.frozen
class LogEntry:
    """One decision. ``decision`` is one word or two ("echo dropped"); ``detail`` says what."""

    direction: str
    decision: str
    integration_id: int
    ticket_id: str | None = None
    anomaly_id: int | None = None
    detail: str = ""


@attrs.frozen
class LoggedEntry:
    """A stored :class:`LogEntry`, with its id and time (the database's clock)."""

    id: int
    at: datetime
    entry: LogEntry


class SyncLog:
    def __init__(self, database: Database) -> None:
        self.database = database

    def write(self, conn: sa.Connection, *entries: LogEntry) -> None:
        """Add ``entries`` in the caller's transaction, the one that acts on the decision."""
        if not entries:
            return
        now = self.database.now(conn)
        conn.execute(
            log_rows.insert(),
            [
                {**attrs.asdict(entry), "detail": entry.detail[:MAX_DETAIL], "at": now}
                for entry in entries
            ],
        )

    def entries(
        self,
        integration_id: int,
        *,
        ticket_id: str | None = None,
        anomaly_id: int | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> list[LoggedEntry]:
        """The integration's entries, newest first; ``before`` an id, to page back."""
        query = sa.select(log_rows).where(log_rows.c.integration_id == integration_id)
        if ticket_id is not None:
            query = query.where(log_rows.c.ticket_id == ticket_id)
        if anomaly_id is not None:
            query = query.where(log_rows.c.anomaly_id == anomaly_id)
        if before is not None:
            query = query.where(log_rows.c.id < before)
        with self.database.read() as conn:
            rows = conn.execute(query.order_by(log_rows.c.id.desc()).limit(limit)).mappings()
            return [_logged(row) for row in rows]

    def prune(self, older_than: datetime, conn: sa.Connection | None = None) -> int:
        """Forget entries made before ``older_than``; returns how many."""
        with self.database.begin(conn) as c:
            return c.execute(log_rows.delete().where(log_rows.c.at < older_than)).rowcount


def _logged(row: sa.RowMapping) -> LoggedEntry:
    fields = {name: row[name] for name in attrs.fields_dict(LogEntry)}
    return LoggedEntry(id=row["id"], at=row["at"], entry=LogEntry(**fields))
