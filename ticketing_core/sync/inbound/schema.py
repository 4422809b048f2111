"""Inbound sync's tables: what was applied (ticket revisions, journal entry ids), the
notifications waiting to be read, and each integration's poll cursor."""

from __future__ import annotations

import sqlalchemy as sa

from ticketing_core.sync.schema import UtcDateTime, metadata

applied_tickets = sa.Table(
    "sync_inbound_tickets",
    metadata,
    sa.Column("integration_id", sa.Integer, primary_key=True),
    sa.Column("ticket_id", sa.String(128), primary_key=True),
    sa.Column("revision", sa.BigInteger, nullable=False),  # the newest change applied
    sa.Column("entries_after", UtcDateTime),  # journal entries up to here were read
)
applied_entries = sa.Table(
    "sync_inbound_entries",
    metadata,
    sa.Column("integration_id", sa.Integer, primary_key=True),
    sa.Column("entry_id", sa.String(128), primary_key=True),
    sa.Column("ticket_id", sa.String(128), nullable=False),
    sa.Column("seen", UtcDateTime, nullable=False, index=True),
)
notices = sa.Table(
    "sync_inbound_notices",
    metadata,
    sa.Column("integration_id", sa.Integer, primary_key=True),
    sa.Column("ticket_id", sa.String(128), primary_key=True),
    # New (random) at every notification, so one arriving while the ticket is read is not lost.
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("received", UtcDateTime, nullable=False),
)
cursors = sa.Table(
    "sync_inbound_state",
    metadata,
    sa.Column("integration_id", sa.Integer, primary_key=True),
    sa.Column("cursor", sa.Text),
    sa.Column("heard_at", UtcDateTime),  # the last notification accepted
    sa.Column("polled_at", UtcDateTime),  # the last poll finished
)


def forget_inbound(integration_id: int, conn: sa.Connection, *, applied: bool) -> None:
    """Drop an integration's waiting notifications and its poll, and with ``applied`` what was
    applied too (the integration was deleted). Turning inbound sync off keeps that, so that
    turning it on again never copies a note twice."""
    tables = (applied_tickets, applied_entries, notices, cursors) if applied else (notices, cursors)
    for table in tables:
        conn.execute(table.delete().where(table.c.integration_id == integration_id))
