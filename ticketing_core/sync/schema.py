"""The engine's schema: one SQLAlchemy ``MetaData`` every table of the engine joins, the column
type for times, and the tables that say which schema a database holds."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

SCHEMA_VERSION = 7
"""The version of the engine's schema this code creates and reads (see
:mod:`ticketing_core.sync.outbox.migrations` for the upgrades to it)."""

metadata = sa.MetaData()


class UtcDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("component", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
)

installation = sa.Table(
    "installation",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("created", UtcDateTime, nullable=False),
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def timestamp_type(conn: sa.Connection) -> str:
    """The column type :class:`UtcDateTime` creates, for columns that upgrades add."""
    return "TIMESTAMP WITH TIME ZONE" if conn.dialect.name == "postgresql" else "DATETIME"
