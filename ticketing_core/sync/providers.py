"""Connected providers by integration, built on first use and reused, rebuilt when their
integration's settings change."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import attrs
import sqlalchemy as sa

from ticketing_core.hookspecs import Provider
from ticketing_core.http.budget import DEFAULT_DEADLINE

# Takes the caller's open transaction, if any, so a lookup never checks out a second connection.
ProviderFor = Callable[[int, sa.Connection | None], Provider]


class ProviderPool:
    """Connected providers by integration id, built on first use and reused (one HTTP client each).

    With ``revision`` (what an integration's stored settings are now, e.g. its row), a provider
    older than ``recheck_seconds`` is checked against it and rebuilt if they changed, so that
    every process of a fleet takes up rotated credentials. A replaced provider is closed
    ``retire_seconds`` later, not at once: another thread may be in the middle of a call with it.
    """

    def __init__(
        self,
        connect: ProviderFor,
        *,
        revision: Callable[[int, sa.Connection | None], object] | None = None,
        recheck_seconds: float = 30.0,
        retire_seconds: float = 2 * DEFAULT_DEADLINE,
    ) -> None:
        self._connect, self._revision, self._recheck = connect, revision, recheck_seconds
        self._retire_after = retire_seconds
        self._providers: dict[int, _Pooled] = {}
        self._retired: dict[int, threading.Timer] = {}  # by id(provider)
        self._lock = threading.Lock()

    def __call__(self, integration_id: int, conn: sa.Connection | None = None) -> Provider:
        with self._lock:
            pooled = self._providers.get(integration_id)
        if pooled is not None and self._still_current(pooled, integration_id, conn):
            return pooled.provider
        # Built outside the lock: connecting may read the host's database.
        revision = self._revision(integration_id, conn) if self._revision else None
        built = _Pooled(self._connect(integration_id, conn), revision, time.monotonic())
        with self._lock:
            current = self._providers.get(integration_id)
            if current is pooled:  # nobody replaced it meanwhile
                self._providers[integration_id] = built
                if pooled is not None:
                    self._retire(pooled.provider)
                return built.provider
        built.provider.close()
        return self(integration_id, conn)

    def _still_current(
        self, pooled: _Pooled, integration_id: int, conn: sa.Connection | None
    ) -> bool:
        if self._revision is None or time.monotonic() - pooled.checked < self._recheck:
            return True
        if self._revision(integration_id, conn) != pooled.revision:
            return False
        with self._lock:
            pooled.checked = time.monotonic()
        return True

    def forget(self, integration_id: int) -> None:
        """Build the integration's provider afresh on next use (its settings changed)."""
        with self._lock:
            pooled = self._providers.pop(integration_id, None)
            if pooled is not None:
                self._retire(pooled.provider)

    def close(self) -> None:
        with self._lock:
            providers = [p.provider for p in self._providers.values()]
            self._providers = {}
            retired, self._retired = self._retired, {}
        for timer in retired.values():
            timer.cancel()
            timer.function()  # close it now
        for provider in providers:
            provider.close()

    def _retire(self, provider: Provider) -> None:
        """Close ``provider`` once calls begun with it are over (the caller holds the lock)."""

        def close() -> None:
            with self._lock:
                self._retired.pop(id(provider), None)
            provider.close()

        timer = threading.Timer(self._retire_after, close)
        timer.daemon = True
        self._retired[id(provider)] = timer
        timer.start()


@attrs.define
class _Pooled:
    provider: Provider
    revision: object
    checked: float
