"""The generated Business Rules, played: a signed notification for every change an agent makes.

What ``ticketing servicenow business-rule`` prints installs two *async* Business Rules: one on
``incident`` (insert, update) and one on ``sys_journal_field`` (insert of a work note or comment
of an incident). Each skips changes made by the integration user and POSTs::

    X-Ticketing-Timestamp: <unix seconds>
    X-Ticketing-Signature: v1=<base64 of HMAC-SHA256(secret, "<timestamp>.<raw body>")>
    {"table", "sys_id", "sys_mod_count", "sys_updated_on", "sys_updated_by", "event"}

As an async Business Rule runs after the transaction, on a scheduler thread, so do these: a
change puts its notification on a queue and one background thread sends them. A POST that fails
is dropped (a Business Rule has no retry) and counted. The signing is written here on its own,
as the instance's: the emulator stands for ServiceNow and imports nothing of the client's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import queue
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

EVENTS = ("update", "journal")
_SEND_TIMEOUT = 10.0  # seconds; a rule's outbound call waits about this long
# Proxies from the environment would take notifications for local receivers elsewhere.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class NotifyTarget:
    """Where the rules post, the secret they sign with, and whose changes they skip."""

    url: str
    secret: str = field(repr=False)
    integration_user: str | None = None


def signed_headers(secret: str, body: bytes, timestamp: int) -> dict[str, str]:
    """The headers the rule's script sends with ``body`` at ``timestamp`` (unix seconds)."""
    message = f"{timestamp}.".encode() + body
    mac = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return {
        "Content-Type": "application/json",
        "X-Ticketing-Timestamp": str(timestamp),
        "X-Ticketing-Signature": "v1=" + base64.b64encode(mac).decode(),
    }


def encode(notification: Mapping[str, str]) -> bytes:
    """A notification's body as the rule's ``JSON.stringify`` writes it."""
    return json.dumps(notification, separators=(",", ":")).encode()


class Notifier:
    """The queue of notifications and the thread draining it; ``now`` is the instance's clock
    (unix seconds), which stamps each notification as it is sent."""

    def __init__(self, now: Callable[[], float], target: NotifyTarget | None = None) -> None:
        self._now = now
        self.target = target
        self._queue: queue.SimpleQueue[tuple[NotifyTarget, bytes]] = queue.SimpleQueue()
        self._settled = threading.Condition()
        self._pending = self._sent = self._failed = 0
        self._thread: threading.Thread | None = None

    def offer(self, notification: Mapping[str, str]) -> None:
        """Queue ``notification`` unless no target is set or the integration user made it."""
        target = self.target
        if target is None or notification["sys_updated_by"] == target.integration_user:
            return
        with self._settled:
            self._pending += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._drain, name="business-rules")
                self._thread.daemon = True
                self._thread.start()
        self._queue.put((target, encode(notification)))

    def wait(self, timeout: float) -> None:
        """Return once every queued notification was sent or dropped; TimeoutError if not
        within ``timeout`` seconds."""
        with self._settled:
            if not self._settled.wait_for(lambda: self._pending == 0, timeout):
                raise TimeoutError(f"{self._pending} notifications still queued after {timeout} s")

    def forget_counts(self) -> None:
        with self._settled:
            self._sent = self._failed = 0

    def stats(self) -> dict[str, Any]:
        target = self.target
        with self._settled:
            return {
                "url": target.url if target else None,
                "integration_user": target.integration_user if target else None,
                "pending": self._pending,
                "sent": self._sent,
                "failed": self._failed,
            }

    def _drain(self) -> None:
        while True:
            target, body = self._queue.get()
            delivered = self._post(target, body)
            with self._settled:
                self._pending -= 1
                self._sent += delivered
                self._failed += not delivered
                self._settled.notify_all()

    def _post(self, target: NotifyTarget, body: bytes) -> bool:
        headers = signed_headers(target.secret, body, int(self._now()))
        request = urllib.request.Request(target.url, body, headers, method="POST")  # noqa: S310
        try:
            with _OPENER.open(request, timeout=_SEND_TIMEOUT) as response:
                status: int = response.status
        except (OSError, ValueError):  # refused, timed out, an HTTP error status, a bad URL
            return False
        return 200 <= status < 300
