"""The host's own tables (integrations, anomalies, their comments, API tokens) and their store.

They live beside ticketing_core's tables in the same database, under their own schema version.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

import attrs
import sqlalchemy as sa

from ticketing_core.models import Anomaly, FailedCheck
from ticketing_core.policies import DEFAULT_POLICY
from ticketing_core.sync.database import Database
from ticketing_core.sync.inbound.schema import forget_inbound
from ticketing_core.sync.keys import digest
from ticketing_core.sync.links import LinkStore
from ticketing_core.sync.outbox import Outbox
from ticketing_core.sync.schema import UtcDateTime, utcnow
from ticketing_core.sync.service import USER

from .keys import CredentialsUnreadable, Keyring, NotificationSecret

SCHEMA_VERSION = 3  # 2: credentials encrypted (keys.py), secret options apart; 3: inbound sync
MAX_ANOMALY_ID = 2**63 - 1  # BigInteger
MAX_INTEGRATION_ID = 2**31 - 1  # Integer
TYPE_LENGTH = 64

host_metadata = sa.MetaData()

integrations = sa.Table(
    "integrations",
    host_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("type", sa.String(TYPE_LENGTH), nullable=False),
    sa.Column("api_url", sa.Text, nullable=False),
    sa.Column("api_access_token", sa.Text, nullable=False),  # encrypted (Keyring.encrypt)
    sa.Column("secret_options", sa.Text),  # encrypted JSON object, when the provider has any
    # Bumped by every change of URL or credentials (not by re-encryption): see revision().
    sa.Column("revision", sa.Integer, nullable=False, default=0, server_default="0"),
    sa.Column("sync_policy", sa.String(64), nullable=False, default=DEFAULT_POLICY),
    sa.Column("options", sa.JSON, nullable=False, default=dict),  # provider keyword settings
    sa.Column("connected", sa.Boolean, nullable=False, default=True),
    sa.Column("status", sa.String(32), nullable=False, default="idle"),
    sa.Column("created", UtcDateTime, nullable=False),
    sa.Column("inbound", sa.JSON),  # the inbound policy's options; NULL: inbound sync off
    # Encrypted JSON list of {"secret", "until"}: the notification secrets still accepted.
    sa.Column("inbound_secrets", sa.Text),
    sqlite_autoincrement=True,  # a deleted integration's id is never given to another
)

anomalies = sa.Table(
    "anomalies",
    host_metadata,
    # Ids come from the caller or from max(id) + 1, never from a sequence a caller's id could collide with.
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("type", sa.String(TYPE_LENGTH), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("description", sa.Text, nullable=False, default=""),
    sa.Column("datastore", sa.Text),
    sa.Column("container", sa.Text),
    sa.Column("field", sa.Text),
    sa.Column("failed_checks", sa.JSON, nullable=False),
    sa.Column("created", UtcDateTime, nullable=False),
    sa.Column("updated", UtcDateTime, nullable=False),
)

anomaly_comments = sa.Table(
    "anomaly_comments",
    host_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "anomaly_id", sa.BigInteger, sa.ForeignKey("anomalies.id"), nullable=False, index=True
    ),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("origin", sa.String(16), nullable=False),
    sa.Column("created", UtcDateTime, nullable=False),
)

api_tokens = sa.Table(
    "api_tokens",
    host_metadata,
    sa.Column("token_sha256", sa.String(64), primary_key=True),
    sa.Column("created", UtcDateTime, nullable=False),
)


class UnknownRecord(LookupError):
    """No integration or anomaly with the id the caller gave."""


class DuplicateRecord(ValueError):
    """A record with the caller's id exists already."""


@attrs.frozen
class IntegrationRecord:
    """A stored integration, its credentials decrypted; they stay out of ``repr``.

    ``options`` holds the secret ones too. When the configured keys cannot decrypt the
    credentials, ``api_access_token`` is empty, ``options`` holds only the others, and
    ``unreadable`` says why (see :meth:`checked`).
    """

    id: int
    type: str
    api_url: str
    api_access_token: str = attrs.field(repr=False)
    sync_policy: str
    options: Mapping[str, Any] = attrs.field(repr=False)
    connected: bool
    status: str
    created: datetime
    unreadable: str | None = None
    inbound: Mapping[str, Any] | None = None
    """The inbound policy's options (see ``InboundPolicy``); None while inbound sync is off."""

    def checked(self) -> IntegrationRecord:
        """This record, if its credentials could be read; else raises CredentialsUnreadable."""
        if self.unreadable is not None:
            raise CredentialsUnreadable(self.unreadable)
        return self


@attrs.frozen
class Comment:
    """A comment on an anomaly, by a user or by the integration (the pull's status notes)."""

    id: int
    anomaly_id: int
    message: str
    origin: str
    created: datetime


@attrs.frozen
class AnomalyEntry:
    """An anomaly as the host stores it: the core record plus its times and comments."""

    anomaly: Anomaly
    created: datetime
    updated: datetime
    comments: tuple[Comment, ...] = ()


def _inbound_columns(conn: sa.Connection) -> None:
    """Schema 2 to 3: inbound sync's options and notification secrets."""
    conn.execute(sa.text("ALTER TABLE integrations ADD COLUMN inbound JSON"))
    conn.execute(sa.text("ALTER TABLE integrations ADD COLUMN inbound_secrets TEXT"))


def token_hash(token: str) -> str:
    return digest(token)


class HostStore:
    """Reads and writes the host tables; ``conn`` joins the caller's transaction. Credentials
    are encrypted with ``keyring`` on the way in and decrypted on the way out."""

    def __init__(self, database: Database, keyring: Keyring) -> None:
        self.keyring = keyring
        database.migrate(
            host_metadata,
            component="ticketing_host",
            version=SCHEMA_VERSION,
            upgrades={1: self._encrypt_credentials, 2: _inbound_columns},
        )
        self.database = database

    def _encrypt_credentials(self, conn: sa.Connection) -> None:
        """Schema 1 to 2: tokens were stored in the clear."""
        conn.execute(sa.text("ALTER TABLE integrations ADD COLUMN secret_options TEXT"))
        conn.execute(
            sa.text("ALTER TABLE integrations ADD COLUMN revision INTEGER NOT NULL DEFAULT 0")
        )
        rows = conn.execute(sa.select(integrations.c.id, integrations.c.api_access_token))
        for integration_id, token in rows.all():
            conn.execute(
                integrations.update()
                .where(integrations.c.id == integration_id)
                .values(api_access_token=self.keyring.encrypt(token))
            )

    # -- integrations ------------------------------------------------------------------------------

    def add_integration(
        self,
        *,
        type: str,
        api_url: str,
        api_access_token: str,
        sync_policy: str,
        options: Mapping[str, Any],
        secret_names: Iterable[str] = (),
    ) -> IntegrationRecord:
        """Store an integration; the options named in ``secret_names`` are stored encrypted."""
        with self.database.begin() as conn:
            row = conn.execute(
                integrations.insert()
                .values(
                    type=type,
                    api_url=api_url,
                    sync_policy=sync_policy,
                    created=utcnow(),
                    **self._credentials(api_access_token, options, secret_names),
                )
                .returning(*integrations.c)
            ).mappings()
            return self._record(row.one())

    def update_integration(
        self,
        integration_id: int,
        *,
        api_url: str,
        api_access_token: str,
        options: Mapping[str, Any],
        secret_names: Iterable[str] = (),
    ) -> IntegrationRecord:
        """Replace an integration's URL and credentials; its links and queued events stay."""
        with self.database.begin() as conn:
            row = conn.execute(
                integrations.update()
                .where(integrations.c.id == integration_id)
                .values(
                    api_url=api_url,
                    revision=integrations.c.revision + 1,
                    **self._credentials(api_access_token, options, secret_names),
                )
                .returning(*integrations.c)
            ).mappings()
            found = row.first()
        if found is None:
            raise UnknownRecord(f"integration {integration_id} does not exist")
        return self._record(found)

    def rotate_keys(self) -> tuple[int, list[str]]:
        """Re-encrypt every credential under the first key; returns how many integrations were
        re-encrypted and why those that could not be were left as they are."""
        rotated, unreadable = 0, []
        with self.database.begin() as conn:
            rows = conn.execute(sa.select(integrations).with_for_update()).mappings().all()
            for row in rows:
                what = f"integration {row['id']}'s credentials"
                columns = ("api_access_token", "secret_options", "inbound_secrets")
                stored = [row[column] for column in columns]
                if all(value is None or self.keyring.is_current(value) for value in stored):
                    continue
                try:
                    rotated_values = [
                        None if value is None else self.keyring.rotate(value, what)
                        for value in stored
                    ]
                except CredentialsUnreadable as exc:
                    unreadable.append(str(exc))
                    continue
                conn.execute(
                    integrations.update()
                    .where(integrations.c.id == row["id"])
                    .values(dict(zip(columns, rotated_values, strict=True)))
                )
                rotated += 1
        return rotated, unreadable

    def _credentials(
        self, token: str, options: Mapping[str, Any], secret_names: Iterable[str]
    ) -> dict[str, Any]:
        """The columns holding ``token`` and ``options``, the secret ones encrypted."""
        secret = {name: value for name, value in options.items() if name in set(secret_names)}
        return {
            "api_access_token": self.keyring.encrypt(token),
            "options": {name: value for name, value in options.items() if name not in secret},
            "secret_options": self.keyring.encrypt(json.dumps(secret)) if secret else None,
        }

    # -- inbound sync ----------------------------------------------------------------------------------

    def set_inbound(
        self, integration_id: int, options: Mapping[str, Any] | None, secret: str | None = None
    ) -> None:
        """Turn inbound sync on with ``options`` (``secret`` its first notification secret,
        when it was off), change its options, or turn it off (``None``: secrets forgotten)."""
        values: dict[str, Any] = {"inbound": None if options is None else dict(options)}
        if options is None:
            values["inbound_secrets"] = None
        elif secret is not None:
            values["inbound_secrets"] = self._secrets_column([NotificationSecret(secret, None)])
        with self.database.begin() as conn:
            self.integration(integration_id, conn)
            conn.execute(
                integrations.update().where(integrations.c.id == integration_id).values(**values)
            )
            if options is None:
                forget_inbound(integration_id, conn, applied=False)

    def add_inbound_secret(self, integration_id: int, secret: str, keep_for: timedelta) -> None:
        """Make ``secret`` the notification secret; those before it stay valid ``keep_for``."""
        with self.database.begin() as conn:
            now = utcnow()
            kept = [
                attrs.evolve(entry, until=entry.until or now + keep_for)
                for entry in self._secret_entries(integration_id, conn, lock=True)
                if entry.until is None or entry.until > now
            ]
            conn.execute(
                integrations.update()
                .where(integrations.c.id == integration_id)
                .values(
                    inbound_secrets=self._secrets_column([NotificationSecret(secret, None), *kept])
                )
            )

    def inbound_secrets(self, integration_id: int, conn: sa.Connection | None = None) -> list[str]:
        """The notification secrets valid now, newest first."""
        now = utcnow()
        return [
            entry.secret
            for entry in self._secret_entries(integration_id, conn)
            if entry.until is None or entry.until > now
        ]

    def inbound_integrations(self) -> list[int]:
        with self.database.read() as conn:
            return list(
                conn.execute(
                    sa.select(integrations.c.id).where(integrations.c.inbound.is_not(None))
                ).scalars()
            )

    def _secret_entries(
        self, integration_id: int, conn: sa.Connection | None, *, lock: bool = False
    ) -> list[NotificationSecret]:
        """``lock``: under a row lock, for a read-modify-write (two rotations at once)."""
        query = sa.select(integrations.c.inbound_secrets).where(integrations.c.id == integration_id)
        with self.database.read(conn) as c:
            stored = c.execute(query.with_for_update() if lock else query).scalar()
        what = f"integration {integration_id}'s notification secrets"
        return NotificationSecret.decrypted(self.keyring, stored, what) if stored else []

    def _secrets_column(self, entries: Iterable[NotificationSecret]) -> str:
        return NotificationSecret.encrypted(self.keyring, entries)

    def _record(self, row: sa.RowMapping) -> IntegrationRecord:
        fields = dict(row)
        fields.pop("revision")
        fields.pop("inbound_secrets")
        stored_token, stored_secrets = fields.pop("api_access_token"), fields.pop("secret_options")
        what = f"integration {row['id']}'s credentials"
        try:
            token = self.keyring.decrypt(stored_token, what)
            secrets = (
                json.loads(self.keyring.decrypt(stored_secrets, what)) if stored_secrets else {}
            )
        except CredentialsUnreadable as exc:
            return IntegrationRecord(**fields, api_access_token="", unreadable=str(exc))
        options = {**fields.pop("options"), **secrets}
        return IntegrationRecord(**fields, api_access_token=token, options=options)

    def integrations(self) -> list[IntegrationRecord]:
        with self.database.read() as conn:
            rows = conn.execute(sa.select(integrations).order_by(integrations.c.id)).mappings()
            return [self._record(row) for row in rows]

    def integration(
        self, integration_id: int, conn: sa.Connection | None = None
    ) -> IntegrationRecord:
        with self.database.read(conn) as c:
            row = (
                c.execute(sa.select(integrations).where(integrations.c.id == integration_id))
                .mappings()
                .first()
            )
        if row is None:
            raise UnknownRecord(f"integration {integration_id} does not exist")
        return self._record(row)

    def policies(
        self, integration_id: int, conn: sa.Connection | None = None
    ) -> tuple[str, Mapping[str, Any] | None]:
        """The integration's sync policy and inbound options, its credentials left encrypted:
        read for every comment and change queued."""
        with self.database.read(conn) as c:
            row = c.execute(
                sa.select(integrations.c.sync_policy, integrations.c.inbound).where(
                    integrations.c.id == integration_id
                )
            ).first()
        if row is None:
            raise UnknownRecord(f"integration {integration_id} does not exist")
        return row.sync_policy, row.inbound

    def revision(self, integration_id: int, conn: sa.Connection | None = None) -> int | None:
        """How many times the integration's URL or credentials changed: providers built at an
        older revision are stale. Re-encryption under a new key changes nothing here."""
        with self.database.read(conn) as c:
            return c.execute(
                sa.select(integrations.c.revision).where(integrations.c.id == integration_id)
            ).scalar()

    def delete_integration(self, integration_id: int) -> None:
        """Delete an integration, its ticket links and its undelivered syncs."""
        with self.database.begin() as conn:
            self.integration(integration_id, conn)
            LinkStore(self.database).delete_for_integration(integration_id, conn)
            Outbox(self.database).discard_for_integration(integration_id, conn)
            forget_inbound(integration_id, conn, applied=True)
            conn.execute(integrations.delete().where(integrations.c.id == integration_id))

    # -- anomalies ---------------------------------------------------------------------------------

    def add_anomaly(self, anomaly: Anomaly, *, assign_id: bool) -> AnomalyEntry:
        """Store ``anomaly``; with ``assign_id`` its id is ignored and the next free one is used."""
        now = utcnow()
        with self.database.begin() as conn:
            anomaly_id = self._next_anomaly_id(conn) if assign_id else anomaly.id
            values = attrs.asdict(attrs.evolve(anomaly, id=anomaly_id))  # checks become dicts
            try:
                conn.execute(anomalies.insert().values(**values, created=now, updated=now))
            except sa.exc.IntegrityError:
                raise DuplicateRecord(f"anomaly {anomaly_id} already exists") from None
            return self.anomaly(anomaly_id, conn)

    @staticmethod
    def _next_anomaly_id(conn: sa.Connection) -> int:
        highest = conn.execute(sa.select(sa.func.max(anomalies.c.id))).scalar_one() or 0
        if highest >= MAX_ANOMALY_ID:
            raise DuplicateRecord("no anomaly id is left above the highest one: give an id")
        return int(highest) + 1

    def anomaly(self, anomaly_id: int, conn: sa.Connection | None = None) -> AnomalyEntry:
        with self.database.read(conn) as c:
            found = _anomaly_row(c, anomaly_id, *anomalies.c)
            comments = c.execute(
                sa.select(anomaly_comments)
                .where(anomaly_comments.c.anomaly_id == anomaly_id)
                .order_by(anomaly_comments.c.id)
            ).mappings()
            return AnomalyEntry(
                anomaly=_anomaly(found),
                created=found["created"],
                updated=found["updated"],
                comments=tuple(Comment(**comment) for comment in comments),
            )

    def set_status(self, anomaly_id: int, status: str, at: datetime, conn: sa.Connection) -> str:
        """Change an anomaly's status; returns the status it had.

        Read under a row lock (PostgreSQL; SQLite's writers go one at a time), so of identical
        concurrent changes exactly one sees the old status.
        """
        previous = conn.execute(
            sa.select(anomalies.c.status).where(anomalies.c.id == anomaly_id).with_for_update()
        ).scalar()
        if previous is None:
            raise UnknownRecord(f"anomaly {anomaly_id} does not exist")
        previous = str(previous)
        conn.execute(
            anomalies.update().where(anomalies.c.id == anomaly_id).values(status=status, updated=at)
        )
        return previous

    def add_comment(
        self,
        anomaly_id: int,
        message: str,
        *,
        origin: str = USER,
        conn: sa.Connection | None = None,
    ) -> Comment:
        with self.database.begin(conn) as c:
            _anomaly_row(c, anomaly_id, anomalies.c.id)  # not its comments: they can be many
            row = c.execute(
                anomaly_comments.insert()
                .values(anomaly_id=anomaly_id, message=message, origin=origin, created=utcnow())
                .returning(*anomaly_comments.c)
            ).mappings()
            return Comment(**row.one())

    # -- API tokens --------------------------------------------------------------------------------

    def add_token_hash(self, digest: str) -> None:
        with self.database.begin() as conn:
            conn.execute(api_tokens.insert().values(token_sha256=digest, created=utcnow()))

    def token_hashes(self) -> list[str]:
        with self.database.read() as conn:
            return list(conn.execute(sa.select(api_tokens.c.token_sha256)).scalars())


def _anomaly_row(
    conn: sa.Connection, anomaly_id: int, *columns: sa.ColumnElement[Any]
) -> sa.RowMapping:
    """The anomaly's ``columns``; raises :class:`UnknownRecord` when there is no such anomaly."""
    found = conn.execute(sa.select(*columns).where(anomalies.c.id == anomaly_id)).mappings().first()
    if found is None:
        raise UnknownRecord(f"anomaly {anomaly_id} does not exist")
    return found


def _anomaly(row: sa.RowMapping) -> Anomaly:
    return Anomaly(
        id=row["id"],
        type=row["type"],
        status=row["status"],
        description=row["description"],
        failed_checks=tuple(FailedCheck(**check) for check in row["failed_checks"]),
        datastore=row["datastore"],
        container=row["container"],
        field=row["field"],
    )
