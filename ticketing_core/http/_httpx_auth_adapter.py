"""Every use of httpx-auth beyond its documented API, in one place.

httpx-auth documents its grants as ``httpx.Auth`` objects and its token cache as a store it runs
itself. :class:`~ticketing_core.http.oauth.OAuth` needs three things it does not offer:

- a cache key of our own for a grant (httpx-auth's is a digest of the credentials, and its debug
  log shows it): :func:`rekey`, through the grant's ``state`` attribute, which its token requests
  return and the cache stores under;
- form fields named like its own parameters (``client_id``, ``client_secret``): :func:`add_form`,
  through the grant's ``data`` attribute, the form it posts;
- expiring one cached token after the service refused it: :func:`expire`, through the cache's
  ``tokens`` mapping of key to ``(token, expiry, refresh_token)``.

``tests/core/test_http_adapters.py`` asserts each of these assumptions, so a release of httpx-auth
that changes them fails there first.
"""

from __future__ import annotations

from typing import Protocol

from httpx_auth import OAuth2


class Grant(Protocol):
    """What the functions below touch of httpx-auth's grants (both grants we use have it)."""

    state: str
    data: dict[str, str]


def rekey(grant: Grant, key: str) -> None:
    """Cache ``grant``'s tokens under ``key``."""
    grant.state = key


def add_form(grant: Grant, **fields: str) -> None:
    """Send ``fields`` in the form of ``grant``'s token requests (not its refresh requests)."""
    grant.data.update(fields)


def expire(key: str, token: str) -> None:
    """Mark the token cached under ``key`` expired if it is still ``token`` (another thread may have
    renewed it already); its refresh token, if any, stays for the renewal.

    The caller holds the lock that serialises every token request for ``key``; httpx-auth's own
    lock is not needed for one key's entry (a dict's item operations are atomic).
    """
    tokens = OAuth2.token_cache.tokens
    cached = tokens.get(key)
    if cached is not None and cached[0] == token:
        tokens[key] = (cached[0], 0.0, *cached[2:])
