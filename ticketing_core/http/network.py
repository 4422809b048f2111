"""Which network addresses a host's outbound calls may reach, enforced before and at connect time.

A host that connects to URLs its users give must not become a way into its own network (SSRF).
:class:`NetworkPolicy` refuses hosts that are, or resolve to, loopback, private, link-local,
multicast, reserved or unspecified addresses (IPv4 and IPv6, and every spelling the resolver
accepts: ``localhost``, ``2130706433``, ``0x7f000001``, ``127.1``, ``::ffff:127.0.0.1``), and
optionally names outside an allow-list such as ``*.service-now.com``.

It checks twice: :meth:`NetworkPolicy.check_url` when a URL is given (no connection is opened),
and :meth:`NetworkPolicy.transport`'s connections at connect time, which resolve the name once,
check every address and connect to the checked address itself, so a name that resolves
differently the second time (DNS rebinding) cannot slip through.
"""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
import socket
import ssl
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import attrs
import httpcore
import httpx

from ticketing_core.errors import IntegrationUnusable, InvalidInput
from ticketing_core.http.pool import DEFAULT_LIMITS, PoolTransport

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# In the order they are named: the first that applies is the rule a refusal names.
_RULES: tuple[tuple[str, str], ...] = (
    ("is_unspecified", "unspecified"),
    ("is_loopback", "loopback"),
    ("is_link_local", "link-local"),
    ("is_multicast", "multicast"),
    ("is_private", "private"),
    ("is_reserved", "reserved"),
)


class BlockedAddress(InvalidInput, IntegrationUnusable):
    """A URL whose host the network policy refuses; nothing was sent to it. Invalid input where
    a user gives the URL; where a stored integration's name now resolves to a refused address,
    or a worker runs with a stricter rule than the host, its events wait.

    ``reason`` is the refusal alone ("127.0.0.1 is a loopback address"), without the advice."""

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


# Refused whatever this Python's tables say (they change between patch releases): IPv6 site-local,
# documentation and benchmarking ranges, and the translation prefixes checked by what they embed.
_NOT_PUBLIC_V6 = tuple(
    ipaddress.ip_network(n) for n in ("fec0::/10", "2001:db8::/32", "3fff::/20", "2001:2::/48")
)
_NAT64 = tuple(ipaddress.ip_network(n) for n in ("64:ff9b::/96", "64:ff9b:1::/48"))


def refused_kind(address: Address) -> str | None:
    """Why ``address`` is not a public one ("loopback", "private", ...), or None if it is.

    An IPv6 address that carries an IPv4 one (mapped, 6to4, Teredo, NAT64, IPv4-compatible) is
    judged by the IPv4 address too, since that is where a translating network would send it.
    """
    for embedded in _embedded_ipv4(address):
        if (kind := refused_kind(embedded)) is not None:
            return kind
    for attribute, kind in _RULES:
        if getattr(address, attribute):
            return kind
    if isinstance(address, ipaddress.IPv6Address) and any(address in n for n in _NOT_PUBLIC_V6):
        return "reserved"
    return None if address.is_global else "not globally routable"


def _embedded_ipv4(address: Address) -> list[ipaddress.IPv4Address]:
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    found = [address.ipv4_mapped, address.sixtofour, *(address.teredo or ())]
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    compatible = int(address) >> 32 == 0 and int(address) > 1  # ::a.b.c.d, but not :: or ::1
    if compatible or any(address in n for n in _NAT64):
        found.append(low32)
    return [a for a in found if a is not None]


def patterns(values: Iterable[str]) -> tuple[str, ...]:
    """Host patterns as the policy compares them: lowercase, a tuple."""
    return tuple(value.lower() for value in values)


def resolve(host: str, port: int) -> list[Address]:
    """Every address ``host`` resolves to (numeric spellings included); empty if none."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    # The scope of a link-local IPv6 address (fe80::1%eth0) is not part of the address.
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in found]


@attrs.frozen
class NetworkPolicy:
    """Where outbound calls may go. The default refuses every non-public address.

    ``allow_private`` lifts the address rule (labs, local emulators); ``allowed_hosts`` are
    shell-style patterns (``*.service-now.com``) a host name must match, when any are given.
    """

    allow_private: bool = False
    allowed_hosts: tuple[str, ...] = attrs.field(default=(), converter=patterns)

    @classmethod
    def from_patterns(cls, patterns: str | None, *, allow_private: bool = False) -> NetworkPolicy:
        """From a comma-separated list such as ``TICKETING_ALLOWED_HOSTS``."""
        names = [p.strip().lower() for p in (patterns or "").split(",") if p.strip()]
        return cls(allow_private=allow_private, allowed_hosts=tuple(names))

    def check_url(self, url: str) -> None:
        """Refuse ``url`` if its host breaks the policy, naming the rule; opens no connection.

        A name that does not resolve passes here: connecting to it fails anyway, and the
        connect-time check sees whatever it resolves to then.
        """
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if self.allow_private:
            self.check_name(host)  # no address to check: no need to resolve
        else:
            self.addresses(host, parts.port or (443 if parts.scheme == "https" else 80))

    def addresses(self, host: str, port: int) -> list[Address]:
        """Every address ``host`` resolves to, once the name and each address pass the policy
        (raises ``BlockedAddress`` naming the rule otherwise)."""
        self.check_name(host)
        found = resolve(host, port)
        self.check_addresses(host, found)
        return found

    def check_name(self, host: str) -> None:
        if self.allowed_hosts and not any(
            fnmatch.fnmatchcase(host.lower(), pattern) for pattern in self.allowed_hosts
        ):
            raise BlockedAddress(
                f"{host!r} is not an allowed host (TICKETING_ALLOWED_HOSTS: "
                f"{', '.join(self.allowed_hosts)})",
                reason=f"{host!r} is not an allowed host",
            )

    def check_addresses(self, host: str, addresses: Iterable[Address]) -> None:
        if self.allow_private:
            return
        for address in addresses:
            if (kind := refused_kind(address)) is not None:
                shown = host if host == str(address) else f"{host} ({address})"
                raise BlockedAddress(
                    f"refusing {shown}: a {kind} address; this host only connects to public "
                    "addresses (serve --allow-private-hosts lifts the rule for labs)",
                    reason=f"{shown} is a {kind} address",
                )

    def transport(
        self,
        *,
        verify: ssl.SSLContext | None = None,
        limits: httpx.Limits = DEFAULT_LIMITS,
    ) -> PoolTransport:
        """An httpx transport whose every connection obeys this policy at connect time.

        ``verify`` replaces the shared verifying :func:`tls_context`; ``limits`` is the pool's
        size, by default ``httpx.HTTPTransport``'s. It speaks HTTP/1.1 and takes no proxy: a
        client given this transport uses no environment proxy either, which would connect
        unchecked.
        """
        pool = httpcore.ConnectionPool(
            ssl_context=tls_context() if verify is None else verify,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_CheckedBackend(self),
        )
        return PoolTransport(pool)


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The verifying TLS context every transport of this process shares: making one (loading the
    CA bundle) costs about 15 ms of CPU, and one context serves any number of connections."""
    return httpx.create_ssl_context()


class _CheckedBackend(httpcore.SyncBackend):
    """Resolves once, checks every address, then connects to the checked address itself."""

    def __init__(self, policy: NetworkPolicy) -> None:
        self._policy = policy

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = self._policy.addresses(host, port)
        if not addresses:
            raise httpcore.ConnectError(f"cannot resolve {host}")
        # TLS still verifies and sends the name (httpcore takes it from the request, not here).
        *others, last = addresses
        for address in others:
            try:
                return super().connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError:
                continue  # a dual-stack name: the next checked address may answer
        return super().connect_tcp(str(last), port, timeout, local_address, socket_options)
