"""Encryption at rest for integration credentials: Fernet keys from TICKETING_SECRET_KEY or a key
file beside a SQLite database, used through MultiFernet (the first key encrypts, all decrypt).

Stored values are ``<key id>:<Fernet token>``; the key id (a short digest of the key, not the key)
tells an operator which key a credential was stored under when it can no longer be read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path

import attrs
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from ticketing_core.errors import IntegrationUnusable, TicketingError
from ticketing_core.sync.database import sqlite_path
from ticketing_core.sync.keys import digest

KEY_VARIABLE = "TICKETING_SECRET_KEY"
KEY_FILE_SUFFIX = ".key"


class KeysMisconfigured(TicketingError):
    """The keys are missing or malformed (an operator's configuration error)."""


class CredentialsUnreadable(IntegrationUnusable):
    """A stored credential cannot be decrypted with the configured keys; nothing was sent."""


def key_id(key: bytes) -> str:
    return digest(key.decode("ascii"))[:8]  # a Fernet key is URL-safe base64


@attrs.frozen
class Keyring:
    """The configured keys, newest first; ``source`` says where they came from, for messages."""

    keys: tuple[bytes, ...] = attrs.field(repr=False)
    source: str

    @classmethod
    def parse(cls, value: str, source: str) -> Keyring:
        keys = tuple(k.strip().encode() for k in value.split(",") if k.strip())
        if not keys:
            raise KeysMisconfigured(
                f"{source} holds no key: make one with `ticketing keys generate`"
            )
        for position, key in enumerate(keys, 1):
            try:
                Fernet(key)
            except ValueError:
                raise KeysMisconfigured(
                    f"{source}: key {position} of {len(keys)} is not a Fernet key (32 url-safe "
                    "base64-encoded bytes): make one with `ticketing keys generate`"
                ) from None
        return cls(keys, source)

    @property
    def ids(self) -> list[str]:
        return [key_id(key) for key in self.keys]

    def encrypt(self, secret: str) -> str:
        return self._stored(self._fernet().encrypt(secret.encode()))

    def decrypt(self, stored: str, what: str) -> str:
        return self._opened(stored, what, MultiFernet.decrypt).decode()

    def is_current(self, stored: str) -> bool:
        return stored.partition(":")[0] == key_id(self.keys[0])

    def rotate(self, stored: str, what: str) -> str:
        """``stored`` re-encrypted under the first key (MultiFernet's rotation)."""
        return self._stored(self._opened(stored, what, MultiFernet.rotate))

    def _stored(self, token: bytes) -> str:
        return f"{key_id(self.keys[0])}:{token.decode()}"

    def _opened(
        self, stored: str, what: str, operation: Callable[[MultiFernet, bytes], bytes]
    ) -> bytes:
        stored_under, _, token = stored.partition(":")
        try:
            return operation(self._fernet(), token.encode())
        except InvalidToken:
            raise CredentialsUnreadable(
                f"{what} cannot be decrypted: it was stored under key {stored_under}, and "
                f"{self.source} holds {', '.join(self.ids)}; configure the key it was stored "
                "with (nothing is sent meanwhile, queued events wait)"
            ) from None

    def _fernet(self) -> MultiFernet:
        return MultiFernet([Fernet(key) for key in self.keys])


def generate_key() -> str:
    return Fernet.generate_key().decode()


@attrs.frozen
class KeyFile:
    """Where a SQLite database's key file is, and what happened to it on opening."""

    path: Path
    created: bool = False
    shared: bool = False  # readable or writable by others than its owner

    def notices(self) -> list[str]:
        said = []
        if self.created:
            said.append(
                f"Generated the encryption key for stored credentials in {self.path} (mode "
                f"0600): back it up with the database, or set {KEY_VARIABLE} instead"
            )
        if self.shared:
            said.append(f"warning: {self.path} is readable by others: chmod 600 {self.path}")
        return said

    def discard(self) -> None:
        """Undo a key file just made (the database turned out to hold another key's data)."""
        if self.created:
            self.path.unlink(missing_ok=True)


def keyring_for(
    database: str, configured: str | None, *, create: bool
) -> tuple[Keyring, KeyFile | None]:
    """The keys for ``database``, and its key file if they come from one.

    ``configured`` (TICKETING_SECRET_KEY) wins. Without it a SQLite database uses the key file
    beside it, made (mode 0600) when ``create`` and there is none; an in-memory database gets
    a key for the process. PostgreSQL requires a configured key: its rows may be read by anyone
    with database access, and a key file beside a server has no obvious place.
    """
    if configured:
        return Keyring.parse(configured, KEY_VARIABLE), None
    path = sqlite_path(database)
    if path is None:
        raise KeysMisconfigured(
            f"{KEY_VARIABLE} is required with PostgreSQL (it encrypts stored credentials): "
            "make one with `ticketing keys generate`"
        )
    if path == ":memory:":
        return Keyring((generate_key().encode(),), "this process's key"), None
    key_file = Path(path + KEY_FILE_SUFFIX)
    created = False
    if not key_file.exists():
        if not create:
            raise KeysMisconfigured(f"no {KEY_VARIABLE} and no key file {key_file}")
        created = _write_private(key_file, generate_key())
    keyring = Keyring.parse(key_file.read_text(), "the key file beside the database")
    shared = bool(key_file.stat().st_mode & 0o077)
    return keyring, KeyFile(key_file, created, shared)


def _write_private(path: Path, content: str) -> bool:
    """Write ``path`` whole, mode 0600, unless it exists (another process made it first): a
    reader never sees it half-written. Returns whether this call made it."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(content + "\n")
    try:
        os.link(temporary, path)
        return True
    except FileExistsError:
        return False
    finally:
        temporary.unlink()


@attrs.frozen
class NotificationSecret:
    """A secret notifications are signed with; ``until`` None for the current one, else when a
    replaced one stops being accepted. Stored as an encrypted JSON list, like credentials."""

    secret: str = attrs.field(repr=False)
    until: datetime | None

    @staticmethod
    def encrypted(keyring: Keyring, secrets: Iterable[NotificationSecret]) -> str:
        listed = [{"secret": s.secret, "until": s.until and s.until.isoformat()} for s in secrets]
        return keyring.encrypt(json.dumps(listed))

    @staticmethod
    def decrypted(keyring: Keyring, stored: str, what: str) -> list[NotificationSecret]:
        return [
            NotificationSecret(
                item["secret"], item["until"] and datetime.fromisoformat(item["until"])
            )
            for item in json.loads(keyring.decrypt(stored, what))
        ]
