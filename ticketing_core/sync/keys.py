"""Digests and keys: what the engine hashes, and the idempotency keys a provider stores.

Every key a provider stores starts with this installation's id, so two installations writing to
one instance never share one; the rest is a digest or a number, so any key is safe inside a
provider's query.
"""

from __future__ import annotations

import hashlib
import json


def digest(text: str) -> str:
    """SHA-256 of ``text``, in hex: stored in place of a text that is only ever compared."""
    return hashlib.sha256(text.encode()).hexdigest()


def fingerprint(value: object) -> str:
    """The digest of a JSON value, the same for equal values whatever their keys' order."""
    return digest(json.dumps(value, sort_keys=True, default=str))


def request_key(installation_id: str, scope: str) -> str:
    """The key of a request carried out while the host waits (a create): one per request scope."""
    return f"{installation_id}-{fingerprint(scope)[:32]}"


def event_key(installation_id: str, event_id: int) -> str:
    """The key of an outbox event's writes: the same on every attempt at the event."""
    return f"{installation_id}-outbox-{event_id}"
