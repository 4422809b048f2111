"""ticketing: a provider-agnostic ticketing integration framework.

Host applications use :func:`connect` to get a ready provider and :func:`providers` to list what is
installed. Provider authors start at :mod:`ticketing_core.hookspecs`.
"""

from __future__ import annotations

from typing import Any

from ticketing_core import errors
from ticketing_core._markers import hookimpl
from ticketing_core.hookspecs import Provider, ProviderFactory
from ticketing_core.models import (
    Capabilities,
    Page,
    ProviderInfo,
    SearchQuery,
    Ticket,
    TicketChanges,
    TicketDraft,
    TicketStatus,
)
from ticketing_core.plugins import default_registry


def connect(
    provider: str, *, api_url: str, api_access_token: str, allow_http: bool = False, **options: Any
) -> Provider:
    """A ready provider for one instance, e.g. ``connect("servicenow", api_url=..., api_access_token=...)``.

    ``api_url`` must be ``https://`` unless ``allow_http`` (local emulators, labs). No network I/O
    happens here; call ``validate()`` on the result to check the credentials.
    """
    return default_registry().connect(
        provider,
        api_url=api_url,
        api_access_token=api_access_token,
        allow_http=allow_http,
        **options,
    )


def providers() -> list[ProviderInfo]:
    """Installed providers: name, distribution and version."""
    return default_registry().providers()


__all__ = [
    "Capabilities",
    "Page",
    "Provider",
    "ProviderFactory",
    "ProviderInfo",
    "SearchQuery",
    "Ticket",
    "TicketChanges",
    "TicketDraft",
    "TicketStatus",
    "connect",
    "errors",
    "hookimpl",
    "providers",
]
