"""The host's wiring: database, plugins, connected providers, sync service and its dispatcher."""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import sqlalchemy as sa

from ticketing_core.errors import IntegrationUnusable, InvalidInput, TicketingError
from ticketing_core.hookspecs import Provider
from ticketing_core.http.network import BlockedAddress, NetworkPolicy
from ticketing_core.models import Capabilities
from ticketing_core.plugins import default_registry
from ticketing_core.policies import InboundPolicy, Messages, SyncPolicy
from ticketing_core.sync.database import Database, SchemaNotReady, sqlite_path
from ticketing_core.sync.inbound import Inbound, InboundWorker
from ticketing_core.sync.outbox import Outbox
from ticketing_core.sync.providers import ProviderPool
from ticketing_core.sync.schema import utcnow
from ticketing_core.sync.service import INTEGRATION, SyncService

from .db import HostStore, IntegrationRecord, token_hash
from .keys import KeysMisconfigured, keyring_for
from .settings import Settings

log = logging.getLogger(__name__)
STAYS_PENDING = "its events stay pending"


class RefusedHere(IntegrationUnusable):
    """This process's own settings refuse a stored integration (plain http without --allow-http,
    say): nothing is sent, and its events wait, spending no attempts, for a process started with
    the flag the message names."""


def require_existing(database: str) -> None:
    """Refuse a SQLite path naming no file, for a worker: it delivers from the database serve
    made, so such a path is a mistake (mistyped, or not given), never a database to make and then
    idle on. (A PostgreSQL database exists; a worker may make its schema before serve does.)"""
    path = sqlite_path(database)
    if path not in (None, ":memory:") and not Path(str(path)).is_file():
        raise SchemaNotReady(
            "there is no such file: give the database ticketing serve uses "
            "(--database or TICKETING_DATABASE)"
        )


class HostRuntime:
    """Everything the API and the workers need, built once per process; ``start``/``stop`` run
    the service's dispatcher, which :mod:`~ticketing_host.compose` attaches. ``worker=True``: a
    ``ticketing worker`` process, which uses the database and key ``serve`` made."""

    def __init__(self, settings: Settings, *, worker: bool = False) -> None:
        self.settings = settings
        self.network = NetworkPolicy(settings.allow_private_hosts, settings.allowed_hosts)
        self.role = "worker" if worker else "server"  # what messages call this process
        self._unusable: dict[int, str] = {}  # what was said about each integration not usable
        self._unusable_lock = threading.Lock()
        if worker:
            require_existing(settings.database)
        # A worker never makes a key: it must use the one serve made.
        keyring, key_file = keyring_for(settings.database, settings.secret_key, create=not worker)
        self.database = Database(settings.database)
        self.store = HostStore(self.database, keyring)
        if key_file is not None and key_file.created and self.unreadable_integrations():
            key_file.discard()
            raise KeysMisconfigured(
                f"{settings.database} holds credentials, but not its key file {key_file.path}: "
                "restore the key file or set TICKETING_SECRET_KEY (no new key was made)"
            )
        self.key_notices = key_file.notices() if key_file else []
        self.registry = default_registry()
        self.pool = ProviderPool(self._connect_stored, revision=self.store.revision)
        self.service = SyncService(
            self.database,
            provider_for=self.pool,
            policy_for=self._policy,
            comment_on_anomaly=self._comment_from_integration,
            messages=Messages(product=settings.product, public_url=settings.public_url),
            outbox=Outbox.from_settings(self.database, settings.delivery),
            interactive_deadline=settings.request_deadline,
            delivery_deadline=settings.delivery_deadline,
        )
        self.inbound = Inbound(self.service, self._inbound_policy, HostAnomalies(self.store))
        self.inbound_worker: InboundWorker | None = None
        """Runs the polls and reads notified tickets (with a broker, asks the workers to);
        attached to ``serve``'s runtime only."""

    def connect(
        self, type: str, api_url: str, api_access_token: str, options: Mapping[str, Any]
    ) -> Provider:
        """A provider of ``type`` for one instance (no network I/O), its connections held to
        the network policy.

        ``options`` come from users, so only those the provider lists as ``user_options`` pass.
        """
        user_options = self.capabilities(type).user_options
        if unknown := sorted(set(options) - set(user_options)):
            allowed = ", ".join(user_options) or "none"
            raise InvalidInput(f"options: {type} cannot use them: {unknown} (allowed: {allowed})")
        try:
            return self._build(type, api_url, api_access_token, **options)
        except TicketingError:
            raise
        except Exception as exc:
            # Building a provider does no I/O, so any other failure is the options' fault.
            raise InvalidInput(f"options: {type} cannot use them: {exc}") from None

    def capabilities(self, type: str) -> Capabilities:
        """What providers of ``type`` support: the factory's (a provider class's) declaration,
        else that of a provider built without options."""
        declared = getattr(self.registry.factory(type), "capabilities", None)
        if isinstance(declared, Capabilities):
            return declared
        with self._build(type, "https://capabilities.invalid", "-:-") as provider:
            return provider.capabilities

    def _build(self, type: str, api_url: str, api_access_token: str, **options: Any) -> Provider:
        if self._takes_transport(type):
            options["transport"] = self.network.transport()
        elif not self.settings.allow_private_hosts:
            raise InvalidInput(
                f"provider {type} takes no transport, so its connections cannot be held to the "
                "address rule; only a host run with --allow-private-hosts may use it"
            )
        return self.registry.connect(
            type,
            api_url=api_url,
            api_access_token=api_access_token,
            allow_http=self.settings.allow_http,
            **options,
        )

    def _takes_transport(self, type: str) -> bool:
        return "transport" in (getattr(self.registry.factory(type), "options", None) or ())

    def check_usable_here(self, integration: IntegrationRecord) -> None:
        """Raise, naming the flag this process lacks, when its own settings refuse a stored
        integration: plain http without --allow-http, a host outside --allowed-hosts, a private
        address (or a provider whose connections cannot be checked) without
        --allow-private-hosts; or a provider not installed here. The errors are
        IntegrationUnusable: the events wait."""
        url, role = integration.api_url, self.role
        uses = f"integration {integration.id} uses {url}"
        installed = [provider.name for provider in self.registry.providers()]
        if integration.type not in installed:
            raise RefusedHere(
                f"integration {integration.id} is a {integration.type} integration, and no "
                f"{integration.type} provider is installed in this {role} (installed: "
                f"{', '.join(installed) or 'none'}): install the distribution that provides it; "
                f"{STAYS_PENDING}"
            )
        parts = urlsplit(url)
        if parts.scheme == "http" and not self.settings.allow_http:
            raise RefusedHere(
                f"{uses}: this {role} was started without --allow-http (TICKETING_ALLOW_HTTP); "
                f"{STAYS_PENDING}"
            )
        host = (parts.hostname or "").lower()
        try:
            self.network.check_name(host)
        except BlockedAddress as exc:
            raise BlockedAddress(
                f"{uses}: {host} matches none of this {role}'s --allowed-hosts "
                f"(TICKETING_ALLOWED_HOSTS), which allow {', '.join(self.network.allowed_hosts)}; "
                f"{STAYS_PENDING}",
                reason=exc.reason,
            ) from None
        if self.settings.allow_private_hosts:
            return
        if not self._takes_transport(integration.type):
            raise RefusedHere(
                f"{uses}: its provider {integration.type} takes no transport, so its connections "
                f"cannot be held to the address rule; this {role} was started without "
                f"--allow-private-hosts (TICKETING_ALLOW_PRIVATE_HOSTS); {STAYS_PENDING}"
            )
        try:
            self.network.check_url(url)
        except BlockedAddress as exc:
            raise BlockedAddress(
                f"{uses} ({exc.reason}): this {role} was started without --allow-private-hosts "
                f"(TICKETING_ALLOW_PRIVATE_HOSTS); {STAYS_PENDING}",
                reason=exc.reason,
            ) from None

    def unusable_integrations(self) -> list[str]:
        """A warning per integration this process cannot use: its credentials cannot be
        decrypted, or its own settings refuse it (see :meth:`check_usable_here`)."""
        warnings = []
        for integration in self.store.integrations():
            try:
                self.check_usable_here(integration.checked())
            except IntegrationUnusable as exc:
                warnings.append(f"warning: {exc}")
        return warnings

    def unreadable_integrations(self) -> list[str]:
        """A warning per integration whose credentials the configured keys cannot decrypt."""
        return [
            f"warning: {integration.unreadable}"
            for integration in self.store.integrations()
            if integration.unreadable is not None
        ]

    def ensure_api_token(self) -> str | None:
        """Make an API token when none is configured or stored; returns it (only its hash is kept)."""
        if self.settings.api_token is not None or self.store.token_hashes():
            return None
        token = secrets.token_urlsafe(32)
        self.store.add_token_hash(token_hash(token))
        return token

    def accepted_token_hashes(self) -> list[str]:
        if self.settings.api_token is not None:
            return [token_hash(self.settings.api_token)]
        return self.store.token_hashes()

    def prune(self) -> None:
        """Forget what is past its retention: delivered events, finished request keys, the
        sync log's old rows, journal entry ids no read reaches back to."""
        self.service.prune()
        self.inbound.prune(utcnow() - self.service.outbox.retention)

    def start(self) -> None:
        self.service.start()
        if self.inbound_worker is not None:
            self.inbound_worker.start()

    def stop(self) -> None:
        if self.inbound_worker is not None:
            self.inbound_worker.stop()
        self.service.stop()
        self.pool.close()
        self.database.dispose()

    def _connect_stored(self, integration_id: int, conn: sa.Connection | None) -> Provider:
        """The provider for a stored integration, once this process may use it. When it may
        not, that is said once (a warning naming what to change), not at every attempt."""
        try:
            integration = self.store.integration(integration_id, conn).checked()
            self.check_usable_here(integration)
            provider = self.connect(
                integration.type,
                integration.api_url,
                integration.api_access_token,
                integration.options,
            )
        except IntegrationUnusable as exc:
            self._say_unusable(integration_id, str(exc))
            raise
        with self._unusable_lock:
            self._unusable.pop(integration_id, None)
        return provider

    def _say_unusable(self, integration_id: int, reason: str) -> None:
        with self._unusable_lock:
            if self._unusable.get(integration_id) == reason:
                return
            self._unusable[integration_id] = reason
        log.warning("%s", reason)

    def _policy(self, integration_id: int, conn: sa.Connection | None) -> SyncPolicy:
        sync_policy, _ = self.store.policies(integration_id, conn)
        return self.registry.policy(sync_policy)

    def _comment_from_integration(self, anomaly_id: int, text: str) -> None:
        self.store.add_comment(anomaly_id, text, origin=INTEGRATION)

    def _inbound_policy(
        self, integration_id: int, conn: sa.Connection | None
    ) -> InboundPolicy | None:
        _, options = self.store.policies(integration_id, conn)
        return None if options is None else InboundPolicy(**options)


@attrs.frozen
class HostAnomalies:
    """What inbound sync changes on the host's anomalies, in its transaction."""

    store: HostStore

    def comment(self, anomaly_id: int, text: str, origin: str, conn: sa.Connection) -> None:
        self.store.add_comment(anomaly_id, text, origin=origin, conn=conn)

    def set_status(self, anomaly_id: int, status: str, conn: sa.Connection) -> bool:
        return self.store.set_status(anomaly_id, status, utcnow(), conn) != status
