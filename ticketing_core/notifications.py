"""Signed change notifications: how a service signs one and how a host checks it.

Two schemes, named in ``Capabilities.notification_signature``:

``ticketing-v1`` (what the generated ServiceNow Business Rules send)::

    X-Ticketing-Timestamp: <unix seconds>
    X-Ticketing-Signature: v1=<base64 of HMAC-SHA256(secret, "<timestamp>.<raw body>")>

A timestamp more than :data:`MAX_SKEW` seconds from the host's clock is refused, so a captured
notification cannot be replayed later.

``hub-sha256`` (Jira Cloud webhooks with a secret)::

    X-Hub-Signature: sha256=<hex of HMAC-SHA256(secret, raw body)>

It carries no time; a replayed one only makes the host read the ticket again, which changes
nothing it has applied already.

Both are checked on the raw bytes, in constant time, against every secret still valid (a rotated
one stays valid for a while), and a notification is never believed beyond the ticket it names.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence

from ticketing_core.errors import BadSignature

TICKETING_V1 = "ticketing-v1"
HUB_SHA256 = "hub-sha256"
SCHEMES = (TICKETING_V1, HUB_SHA256)
MAX_SKEW = 300.0
TIMESTAMP_HEADER = "X-Ticketing-Timestamp"
SIGNATURE_HEADER = "X-Ticketing-Signature"
HUB_HEADER = "X-Hub-Signature"
_UNIX_SECONDS = re.compile(r"[0-9]{1,12}")  # ASCII digits only, and few enough to be a time


def _mac(secret: str, message: bytes) -> bytes:
    return hmac.new(secret.encode(), message, hashlib.sha256).digest()


def sign(scheme: str, secret: str, body: bytes, now: float) -> dict[str, str]:
    """The headers that sign ``body`` under ``scheme`` at unix time ``now``."""
    if scheme == TICKETING_V1:
        timestamp = str(int(now))
        signature = base64.b64encode(_mac(secret, f"{timestamp}.".encode() + body)).decode()
        return {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: f"v1={signature}"}
    if scheme == HUB_SHA256:
        return {HUB_HEADER: f"sha256={_mac(secret, body).hex()}"}
    raise ValueError(f"unknown signature scheme {scheme!r}: one of {', '.join(SCHEMES)}")


def verify(
    scheme: str,
    secrets: Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    *,
    max_skew: float = MAX_SKEW,
) -> None:
    """Raise :class:`BadSignature`, saying why, unless one of ``secrets`` signed ``body``.

    ``headers`` is looked up without regard to case."""
    found = {name.lower(): value for name, value in headers.items()}
    if scheme == TICKETING_V1:
        timestamp = found.get(TIMESTAMP_HEADER.lower(), "")
        given = found.get(SIGNATURE_HEADER.lower(), "")
        if not _UNIX_SECONDS.fullmatch(timestamp) or not given.startswith("v1="):
            raise BadSignature(f"missing {TIMESTAMP_HEADER} or a v1= {SIGNATURE_HEADER}")
        if abs(now - int(timestamp)) > max_skew:
            raise BadSignature(f"{TIMESTAMP_HEADER} is more than {max_skew:.0f} s from ours")
        message = f"{timestamp}.".encode() + body
        expected = [base64.b64encode(_mac(s, message)).decode() for s in secrets]
        _one_matches(given.removeprefix("v1="), expected)
    elif scheme == HUB_SHA256:
        given = found.get(HUB_HEADER.lower(), "")
        if not given.startswith("sha256="):
            raise BadSignature(f"missing a sha256= {HUB_HEADER}")
        _one_matches(given.removeprefix("sha256="), [_mac(s, body).hex() for s in secrets])
    else:
        raise ValueError(f"unknown signature scheme {scheme!r}: one of {', '.join(SCHEMES)}")


def _one_matches(given: str, expected: Sequence[str]) -> None:
    # Every candidate is compared, so the time taken tells nothing about which came close.
    matches = [hmac.compare_digest(given.encode(), want.encode()) for want in expected]
    if not any(matches):
        raise BadSignature("the signature matches no current secret")
