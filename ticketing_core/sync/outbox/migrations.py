"""The upgrades of the engine's schema, oldest first: how a database made by an older version of
this code comes to hold today's tables (:data:`~ticketing_core.sync.schema.SCHEMA_VERSION`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import sqlalchemy as sa

from ticketing_core.sync.keys import digest
from ticketing_core.sync.schema import timestamp_type

Upgrade = Callable[[sa.Connection], None]


def _outbox_v2(conn: sa.Connection) -> None:
    """Schema 1 to 2: fenced claims replace the claim-count and clock bookkeeping of doubt.

    An event claimed more often than it failed was cut short by a dying worker: it stays in doubt.
    """
    if not sa.inspect(conn).has_table("sync_outbox"):
        return
    timestamp = timestamp_type(conn)
    for statement in (
        "ALTER TABLE sync_outbox ADD COLUMN claim_token VARCHAR(32)",
        f"ALTER TABLE sync_outbox ADD COLUMN claimed_at {timestamp}",
        "ALTER TABLE sync_outbox ADD COLUMN note_digest VARCHAR(64)",
        "UPDATE sync_outbox SET ambiguous = true WHERE claims > attempts AND status = 'pending'",
        "ALTER TABLE sync_outbox DROP COLUMN first_claimed_at",
    ):
        conn.exec_driver_sql(statement)
    # Digests of the stored notes' texts, so identical notes are counted across the upgrade.
    outbox = sa.table(
        "sync_outbox", sa.column("id"), sa.column("action", sa.JSON), sa.column("note_digest")
    )
    for event_id, action in conn.execute(sa.select(outbox.c.id, outbox.c.action)).all():
        if action.get("type") == "AddWorkNote":
            note_digest = digest(action["text"])
            conn.execute(
                outbox.update().where(outbox.c.id == event_id).values(note_digest=note_digest)
            )


def _outbox_v3(conn: sa.Connection) -> None:
    """Schema 2 to 3: an index for counting an integration's live claims (fleet claims)."""
    if sa.inspect(conn).has_table("sync_outbox"):
        conn.exec_driver_sql(
            "CREATE INDEX IF NOT EXISTS ix_sync_outbox_claimed "
            "ON sync_outbox (integration_id, claim_token)"
        )


def _outages_v4(conn: sa.Connection) -> None:
    """Schema 3 to 4: failures during outages counted apart; how long a pause lasted and when a
    delivery last succeeded."""
    inspector = sa.inspect(conn)
    timestamp = timestamp_type(conn)
    if inspector.has_table("sync_outbox"):
        conn.exec_driver_sql(
            "ALTER TABLE sync_outbox ADD COLUMN outage_attempts INTEGER NOT NULL DEFAULT 0"
        )
    if inspector.has_table("sync_throttle"):
        conn.exec_driver_sql(
            "ALTER TABLE sync_throttle ADD COLUMN seconds FLOAT NOT NULL DEFAULT 0"
        )
        conn.exec_driver_sql(f"ALTER TABLE sync_throttle ADD COLUMN delivered_at {timestamp}")


def _notes_per_ticket_v5(conn: sa.Connection) -> None:
    """Schema 4 to 5: when an event's doubt window ends, so a note in doubt is looked for at once
    and only its sending waits (events already in doubt waited their window in next_attempt_at);
    identical notes counted per ticket, whichever integration delivered them."""
    inspector = sa.inspect(conn)
    if inspector.has_table("sync_outbox"):
        timestamp = timestamp_type(conn)
        conn.exec_driver_sql(f"ALTER TABLE sync_outbox ADD COLUMN doubt_until {timestamp}")
        conn.exec_driver_sql("DROP INDEX IF EXISTS ix_sync_outbox_notes")
        conn.exec_driver_sql(
            "CREATE INDEX ix_sync_outbox_notes ON sync_outbox (ticket_id, note_digest, status)"
        )
    if inspector.has_table("sync_note_tally"):
        counts: dict[tuple[str, str], int] = {}
        for ordering_key, digest, delivered in conn.exec_driver_sql(
            "SELECT ordering_key, digest, delivered FROM sync_note_tally"
        ):
            ticket_id = ordering_key.partition(":")[2]  # was "<integration id>:<ticket id>"
            counts[ticket_id, digest] = counts.get((ticket_id, digest), 0) + delivered
        conn.exec_driver_sql("DROP TABLE sync_note_tally")
        conn.exec_driver_sql(
            "CREATE TABLE sync_note_tally (ticket_id VARCHAR(128) NOT NULL, "
            "digest VARCHAR(64) NOT NULL, delivered INTEGER NOT NULL, "
            "PRIMARY KEY (ticket_id, digest))"
        )
        tally = sa.table(
            "sync_note_tally", sa.column("ticket_id"), sa.column("digest"), sa.column("delivered")
        )
        if counts:
            conn.execute(
                tally.insert(),
                [{"ticket_id": t, "digest": d, "delivered": n} for (t, d), n in counts.items()],
            )


def _sync_log_v6(_conn: sa.Connection) -> None:
    """Schema 5 to 6: the sync log and inbound sync's tables, all new: the schema's
    ``create_all`` makes them."""


def _revisions_v7(conn: sa.Connection) -> None:
    """Schema 6 to 7: the ticket's revision a delivery's answer told."""
    if sa.inspect(conn).has_table("sync_outbox"):
        conn.exec_driver_sql("ALTER TABLE sync_outbox ADD COLUMN revision BIGINT")


UPGRADES: Mapping[int, Upgrade] = {
    1: _outbox_v2, 2: _outbox_v3, 3: _outages_v4, 4: _notes_per_ticket_v5, 5: _sync_log_v6,
    6: _revisions_v7,
}  # fmt: skip
"""``UPGRADES[n]`` turns schema ``n`` into ``n + 1``: written against the tables as they were then,
in plain SQL, so that they never change with the tables' definitions. An upgrade adds; it never
renames or drops what a worker still running the previous version reads."""
