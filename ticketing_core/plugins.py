"""Plugin loading: one pluggy manager, entry points of group ``ticketing``, provider registry.

Installed plugins are loaded through the same path as any third party's, so the ServiceNow provider gets
no special treatment. A plugin that fails to import is reported (name and error) and the rest still load.
``TICKETING_LOAD_PLUGINS`` (comma-separated entry-point names) restricts which are loaded.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Iterable
from importlib.metadata import EntryPoint, PackageNotFoundError, entry_points, version
from typing import Any
from urllib.parse import urlsplit

import attrs
import pluggy

from ticketing_core import hookspecs, policies
from ticketing_core._markers import PROJECT_NAME
from ticketing_core.errors import InvalidInput, PluginError
from ticketing_core.hookspecs import Provider, ProviderFactory
from ticketing_core.models import ProviderInfo
from ticketing_core.policies import SyncPolicy

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "ticketing"
# The library's distribution name. Not "ticketing": that name on PyPI is somebody else's package.
DISTRIBUTION = "ticketing-framework"


def _own_version() -> str:
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"


@attrs.frozen
class PluginFailure:
    """A plugin that could not be loaded or registered, and why."""

    name: str
    error: str


@attrs.frozen
class _Registration:
    value: Any
    plugin: str
    distribution: tuple[str, str]


class PluginRegistry:
    """A plugin manager plus what its plugins registered: providers and sync policies.

    Core's built-in sync policies are registered as a plugin too, through the same path as any other.
    """

    def __init__(self) -> None:
        self.manager = pluggy.PluginManager(PROJECT_NAME)
        self.manager.add_hookspecs(hookspecs)
        self.failures: list[PluginFailure] = []
        self._distributions: dict[str, tuple[str, str]] = {}
        self._registered: dict[str, dict[str, _Registration]] = {}
        self.register(policies, "ticketing-policies", (DISTRIBUTION, _own_version()))

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
        except Exception as exc:
            self._fail(entry_point.name, f"{type(exc).__name__}: {exc}")
            return
        dist = entry_point.dist
        distribution = (dist.name, dist.version) if dist is not None else ("unknown", "unknown")
        try:
            self.register(plugin, entry_point.name, distribution)
        except (pluggy.PluginValidationError, ValueError) as exc:
            self._fail(entry_point.name, f"{type(exc).__name__}: {exc}")

    def register(self, plugin: object, name: str, distribution: tuple[str, str]) -> None:
        """Register a plugin object directly (tests, embedded hosts); ``distribution`` is (name, version)."""
        self.manager.register(plugin, name=name)
        self._distributions[name] = distribution
        self._registered.clear()

    def unregister(self, name: str) -> None:
        self.manager.unregister(name=name)
        self._distributions.pop(name, None)
        self._registered.clear()

    def _fail(self, name: str, error: str) -> None:
        log.warning("ticketing plugin %r failed to load: %s", name, error)
        self.failures.append(PluginFailure(name, error))

    def check_pending(self) -> None:
        """Raise ``PluginError`` if a plugin implements a hook that no spec declares (a typo)."""
        try:
            self.manager.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginError(str(exc)) from exc

    def _collect(self, hook_name: str) -> dict[str, _Registration]:
        """Call a registration hook plugin by plugin, remembering who registered each name."""
        if hook_name in self._registered:
            return self._registered[hook_name]
        found: dict[str, _Registration] = {}
        for impl in getattr(self.manager.hook, hook_name).get_hookimpls():
            plugin = self.manager.get_name(impl.plugin) or "?"
            distribution = self._distributions.get(plugin, ("unknown", "unknown"))

            def register(
                *args: Any, _plugin: str = plugin, _dist: tuple[str, str] = distribution
            ) -> None:
                # register(name, factory) for providers; register(policy) for policies (named by .name)
                name, value = args if len(args) == 2 else (args[0].name, args[0])
                if name in found:
                    self._fail(
                        _plugin, f"name {name!r} is already registered by {found[name].plugin}"
                    )
                    return
                found[name] = _Registration(value, _plugin, _dist)

            try:
                impl.function(register=register)
            except Exception as exc:
                self._fail(plugin, f"{hook_name} raised {type(exc).__name__}: {exc}")
        self._registered[hook_name] = found
        return found

    def add_commands(self, cli: Any) -> None:
        """Let each plugin add its commands to the ``cli`` click group; a failing one is reported."""
        for impl in self.manager.hook.register_commands.get_hookimpls():
            try:
                impl.function(cli=cli)
            except Exception as exc:
                plugin = self.manager.get_name(impl.plugin) or "?"
                self._fail(plugin, f"register_commands raised {type(exc).__name__}: {exc}")

    def providers(self) -> list[ProviderInfo]:
        """The installed providers, sorted by name."""
        return [
            ProviderInfo(name, *registration.distribution)
            for name, registration in sorted(self._collect("register_providers").items())
        ]

    def factory(self, name: str) -> ProviderFactory:
        return self._lookup("register_providers", "ticketing provider", name)  # type: ignore[no-any-return]

    def policy(self, name: str) -> SyncPolicy:
        return self._lookup("register_sync_policies", "sync policy", name)  # type: ignore[no-any-return]

    def policy_names(self) -> list[str]:
        return sorted(self._collect("register_sync_policies"))

    def _lookup(self, hook_name: str, kind: str, name: str) -> Any:
        registrations = self._collect(hook_name)
        if name not in registrations:
            known = ", ".join(sorted(registrations)) or "none"
            raise PluginError(f"no {kind} named {name!r} is installed (installed: {known})")
        return registrations[name].value

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
        factory = self.factory(name)
        accepted = _options_of(factory)
        if accepted is not None and (unknown := sorted(set(options) - set(accepted))):
            raise InvalidInput(
                f"{name} has no option {', '.join(map(repr, unknown))}; its options are "
                f"{', '.join(sorted(accepted)) or 'none'}"
            )
        return factory(
            api_url=check_api_url(api_url, allow_http=allow_http),
            api_access_token=api_access_token,
            **options,
        )


def _options_of(factory: ProviderFactory) -> tuple[str, ...] | None:
    """The options a factory declares, else those its signature names; None if it takes any."""
    declared = getattr(factory, "options", None)
    if declared is not None:
        return tuple(declared)
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    named = (p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
    return tuple(n for n in named if n not in ("api_url", "api_access_token"))


def check_api_url(api_url: str, *, allow_http: bool) -> str:
    """Return the URL without a trailing slash, refusing plain HTTP unless allowed."""
    if invisible := next((char for char in api_url.strip() if not char.isprintable()), None):
        # httpx would refuse some of them and silently drop others (U+0085).
        raise InvalidInput(
            "api_url must not contain control or invisible characters: "
            f"found U+{ord(invisible):04X}",
            field="api_url",
        )
    try:
        parts = urlsplit(api_url.strip())
        port_ok = parts.port is None or parts.port > 0
    except ValueError:  # a bad port or bracket; urlsplit says which
        parts, port_ok = None, False
    if parts is None or not port_ok or parts.scheme not in ("https", "http") or not parts.hostname:
        raise InvalidInput(
            "api_url must be an absolute https:// URL with a host name (and a valid port, if any)"
        )
    if parts.username or parts.password:
        raise InvalidInput("api_url must not contain credentials; pass them as the access token")
    if not isinstance(allow_http, bool):
        raise InvalidInput(f"allow_http must be True or False, not {allow_http!r}")
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
