"""The link store: which ticket of which integration each anomaly is linked to."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ticketing_core.models import TicketLink
from ticketing_core.sync.schema import UtcDateTime, metadata, utcnow

if TYPE_CHECKING:
    from ticketing_core.sync.database import Database

links = sa.Table(
    "anomaly_ticket_link",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("anomaly_id", sa.BigInteger, nullable=False, index=True),
    sa.Column("integration_id", sa.Integer, nullable=False, index=True),
    sa.Column("ticket_id", sa.String(128), nullable=False),
    sa.Column("ticket_number", sa.String(128), nullable=False),
    sa.Column("ticket_url", sa.Text),
    sa.Column("status", sa.String(128)),
    sa.Column("last_synced", UtcDateTime),
    sa.Column("ticket_metadata", sa.JSON),
    sa.Column("created", UtcDateTime, nullable=False),
    sa.UniqueConstraint("anomaly_id", "integration_id", "ticket_id", name="uq_link_ticket"),
    sqlite_autoincrement=True,
)


class LinkStore:
    """The ``anomaly_ticket_link`` table."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def add(
        self,
        *,
        anomaly_id: int,
        integration_id: int,
        ticket_id: str,
        ticket_number: str,
        ticket_url: str | None,
        status: str | None,
        ticket_metadata: Mapping[str, Any] | None = None,
        conn: sa.Connection | None = None,
    ) -> TicketLink:
        """Store a link, or return the existing one for the same anomaly, integration and ticket."""
        with self.database.begin(conn) as c:
            existing = self.find(anomaly_id, integration_id, ticket_id, c)
            if existing is not None:
                return existing
            now = utcnow()
            insert = links.insert().values(
                anomaly_id=anomaly_id,
                integration_id=integration_id,
                ticket_id=ticket_id,
                ticket_number=ticket_number,
                ticket_url=ticket_url,
                status=status,
                last_synced=now,
                ticket_metadata=dict(ticket_metadata) if ticket_metadata else None,
                created=now,
            )
            try:
                with c.begin_nested():  # a savepoint: losing a race must not undo the caller's work
                    c.execute(insert)
            except sa.exc.IntegrityError:
                pass  # a concurrent request stored the same link first: return that one
            found = self.find(anomaly_id, integration_id, ticket_id, c)
            assert found is not None
            return found

    def get(self, link_id: int) -> TicketLink | None:
        with self.database.read() as c:
            row = c.execute(sa.select(links).where(links.c.id == link_id)).mappings().first()
        return _link(row) if row is not None else None

    def for_anomaly(self, anomaly_id: int, conn: sa.Connection | None = None) -> list[TicketLink]:
        with self.database.read(conn) as c:
            rows = c.execute(
                sa.select(links).where(links.c.anomaly_id == anomaly_id).order_by(links.c.id)
            )
            return [_link(row) for row in rows.mappings()]

    def for_ticket(
        self, integration_id: int, ticket_id: str, conn: sa.Connection | None = None
    ) -> list[TicketLink]:
        """The links of one ticket (one per anomaly it tracks)."""
        with self.database.read(conn) as c:
            rows = c.execute(
                sa.select(links)
                .where(links.c.integration_id == integration_id, links.c.ticket_id == ticket_id)
                .order_by(links.c.id)
            )
            return [_link(row) for row in rows.mappings()]

    def linked_tickets(self, integration_id: int, ticket_ids: Collection[str]) -> set[str]:
        """Those of ``ticket_ids`` that some anomaly is linked to through the integration."""
        found: set[str] = set()
        with self.database.read() as c:
            for chunk in _chunks(sorted(set(ticket_ids)), 500):
                found.update(
                    c.execute(
                        sa.select(links.c.ticket_id).where(
                            links.c.integration_id == integration_id,
                            links.c.ticket_id.in_(chunk),
                        )
                    ).scalars()
                )
        return found

    def record_status(
        self, link_id: int, status: str, synced_at: datetime, conn: sa.Connection | None = None
    ) -> None:
        with self.database.begin(conn) as c:
            c.execute(
                links.update()
                .where(links.c.id == link_id)
                .values(status=status, last_synced=synced_at)
            )

    def delete_for_integration(self, integration_id: int, conn: sa.Connection) -> None:
        conn.execute(links.delete().where(links.c.integration_id == integration_id))

    def integration_linking(self, ticket_id: str, conn: sa.Connection | None = None) -> int | None:
        """The integration through which ``ticket_id`` is linked, if any (at most one is)."""
        with self.database.read(conn) as c:
            found: int | None = c.execute(
                sa.select(links.c.integration_id).where(links.c.ticket_id == ticket_id).limit(1)
            ).scalar()
        return found

    def find(
        self,
        anomaly_id: int,
        integration_id: int,
        ticket_id: str,
        conn: sa.Connection | None = None,
    ) -> TicketLink | None:
        with self.database.read(conn) as c:
            row = (
                c.execute(
                    sa.select(links).where(
                        links.c.anomaly_id == anomaly_id,
                        links.c.integration_id == integration_id,
                        links.c.ticket_id == ticket_id,
                    )
                )
                .mappings()
                .first()
            )
        return _link(row) if row is not None else None


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _link(row: sa.RowMapping) -> TicketLink:
    return TicketLink(**dict(row))
