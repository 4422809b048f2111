"""Plugin loading: one pluggy manager, entry points of group ``ticketing``, provider registry.

Installed plugins are loaded through the same path as any third party's, so the ServiceNow provider gets
no special treatment. A plugin that fails to import is reported (name and error) and the rest still load.
``TICKETING_LOAD_PLUGINS`` (comma-separated entry-point names) restricts which are loaded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points
from typing import Any
from urllib.parse import urlsplit

import attrs
import pluggy

from ticketing_core import hookspecs
from ticketing_core.errors import InvalidInput, PluginError
from ticketing_core.hookspecs import Provider, ProviderFactory
from ticketing_core.models import ProviderInfo

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "ticketing"


@attrs.frozen
class PluginFailure:
    """A plugin that could not be loaded or registered, and why."""

    name: str
    error: str


@attrs.frozen
class _Registration:
    factory: ProviderFactory
    info: ProviderInfo


class PluginRegistry:
    """A plugin manager plus the providers its plugins registered."""

    def __init__(self) -> None:
        self.manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.manager.add_hookspecs(hookspecs)
        self.failures: list[PluginFailure] = []
        self._distributions: dict[str, tuple[str, str]] = {}
        self._providers: dict[str, _Registration] | None = None

    def load_entry_points(self, only: Iterable[str] | None = None) -> None:
        """Load and register every installed ``ticketing`` entry point (or just those in ``only``)."""
        wanted = set(only) if only is not None else None
        for entry_point in entry_points(group=ENTRY_POINT_GROUP):
            if wanted is None or entry_point.name in wanted:
                self._load(entry_point)

    def _load(self, entry_point: EntryPoint) -> None:
        if self.manager.get_plugin(entry_point.name) is not None:
            return
        try:
            plugin = entry_point.load()
            self.manager.register(plugin, name=entry_point.name)
        except Exception as exc:
            self._fail(entry_point.name, f"{type(exc).__name__}: {exc}")
            return
        dist = entry_point.dist
        self._distributions[entry_point.name] = (
            (dist.name, dist.version) if dist is not None else ("unknown", "unknown")
        )
        self._providers = None

    def register(self, plugin: object, name: str, distribution: tuple[str, str]) -> None:
        """Register a plugin object directly (tests, embedded hosts); ``distribution`` is (name, version)."""
        self.manager.register(plugin, name=name)
        self._distributions[name] = distribution
        self._providers = None

    def unregister(self, name: str) -> None:
        self.manager.unregister(name=name)
        self._distributions.pop(name, None)
        self._providers = None

    def _fail(self, name: str, error: str) -> None:
        log.warning("ticketing plugin %r failed to load: %s", name, error)
        self.failures.append(PluginFailure(name, error))

    def check_pending(self) -> None:
        """Raise ``PluginError`` if a plugin implements a hook that no spec declares (a typo)."""
        try:
            self.manager.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginError(str(exc)) from exc

    def _collect(self) -> dict[str, _Registration]:
        if self._providers is not None:
            return self._providers
        providers: dict[str, _Registration] = {}
        for impl in self.manager.hook.register_providers.get_hookimpls():
            plugin_name = self.manager.get_name(impl.plugin) or "?"
            dist_name, version = self._distributions.get(plugin_name, ("unknown", "unknown"))

            def register(
                name: str,
                factory: ProviderFactory,
                _plugin: str = plugin_name,
                _dist: tuple[str, str] = (dist_name, version),
            ) -> None:
                if name in providers:
                    self._fail(_plugin, f"provider name {name!r} is already registered")
                    return
                providers[name] = _Registration(factory, ProviderInfo(name, *_dist))

            try:
                impl.function(register=register)
            except Exception as exc:
                self._fail(plugin_name, f"register_providers raised {type(exc).__name__}: {exc}")
        self._providers = providers
        return providers

    def providers(self) -> list[ProviderInfo]:
        """The installed providers, sorted by name."""
        return sorted((r.info for r in self._collect().values()), key=lambda info: info.name)

    def factory(self, name: str) -> ProviderFactory:
        registrations = self._collect()
        if name not in registrations:
            known = ", ".join(sorted(registrations)) or "none"
            raise PluginError(
                f"no ticketing provider named {name!r} is installed (installed: {known})"
            )
        return registrations[name].factory

    def connect(
        self,
        name: str,
        *,
        api_url: str,
        api_access_token: str,
        allow_http: bool = False,
        **options: Any,
    ) -> Provider:
        """Build a provider for one instance; see :func:`ticketing_core.connect`."""
        return self.factory(name)(
            api_url=check_api_url(api_url, allow_http=allow_http),
            api_access_token=api_access_token,
            **options,
        )


def check_api_url(api_url: str, *, allow_http: bool) -> str:
    """Return the URL without a trailing slash, refusing plain HTTP unless allowed."""
    parts = urlsplit(api_url.strip())
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise InvalidInput(f"api_url must be an absolute https:// URL, got {api_url!r}")
    if parts.username or parts.password:
        raise InvalidInput("api_url must not contain credentials; pass them as the access token")
    if parts.scheme == "http" and not allow_http:
        raise InvalidInput(
            f"refusing plain-HTTP api_url {api_url!r}: credentials would travel unencrypted "
            "(allow it explicitly for local emulators and labs)"
        )
    return api_url.strip().rstrip("/")


_default: PluginRegistry | None = None


def default_registry() -> PluginRegistry:
    """The process-wide registry, loading installed entry points on first use."""
    global _default
    if _default is None:
        registry = PluginRegistry()
        only = os.environ.get("TICKETING_LOAD_PLUGINS")
        registry.load_entry_points(
            [n.strip() for n in only.split(",") if n.strip()] if only is not None else None
        )
        _default = registry
    return _default
