"""Webhook delivery as Jira Cloud does it: signed JSON POSTs, sent after the change, off the
request path.

A registered webhook with a secret signs each body with ``X-Hub-Signature: sha256=<hex of
HMAC-SHA256(secret, body)>`` (the WebSub form Jira Cloud's secure admin webhooks use). Deliveries
go through one background thread draining a queue, so a slow or dead receiver never holds the
site's lock or a client's request; a delivery that fails is dropped and counted, never retried.
"""

from __future__ import annotations

import hashlib
import hmac
import queue
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

SIGNATURE_HEADER = "X-Hub-Signature"
IDENTIFIER_HEADER = "X-Atlassian-Webhook-Identifier"


def hub_signature(secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature`` value for ``body`` under ``secret``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Webhook:
    """An admin webhook: where to post which events, for the issues its JQL filter matches."""

    id: int
    name: str
    url: str
    events: tuple[str, ...]
    jql: str  # empty: every issue
    secret: str | None = field(default=None, repr=False)
    exclude_body: bool = False
    registered_by: str = ""  # account id
    registered_at: int = 0  # epoch milliseconds


@dataclass(frozen=True)
class Delivery:
    url: str
    body: bytes
    secret: str | None = field(repr=False)


class WebhookSender:
    """Posts deliveries one by one from a daemon thread; counts what was sent and what failed."""

    def __init__(self, *, timeout: float = 5.0, transport: httpx.BaseTransport | None = None):
        self._queue: queue.Queue[Delivery] = queue.Queue()
        self._idle = threading.Condition()
        self._pending = 0
        self._counts = {"sent": 0, "failed": 0}
        self._client = httpx.Client(timeout=timeout, transport=transport)
        self._thread: threading.Thread | None = None

    def send(self, delivery: Delivery) -> None:
        """Queue ``delivery``; returns at once (safe to call while holding any lock)."""
        with self._idle:
            self._pending += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._drain, name="jira-webhooks", daemon=True
                )
                self._thread.start()
        self._queue.put(delivery)

    def wait(self, timeout: float = 5.0) -> bool:
        """Block until every queued delivery has been attempted; False if ``timeout`` ran out."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def counts(self) -> dict[str, Any]:
        with self._idle:
            return {**self._counts, "pending": self._pending}

    def reset(self) -> None:
        """Forget queued deliveries and the counts (one already being posted still goes)."""
        with self._idle:
            while True:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
                self._pending -= 1
            self._counts = dict.fromkeys(self._counts, 0)
            self._idle.notify_all()

    def _drain(self) -> None:
        while True:
            delivery = self._queue.get()
            outcome = "sent" if self._post(delivery) else "failed"
            with self._idle:
                self._counts[outcome] += 1
                self._pending -= 1
                self._idle.notify_all()

    def _post(self, delivery: Delivery) -> bool:
        headers = {"Content-Type": "application/json", IDENTIFIER_HEADER: str(uuid.uuid4())}
        if delivery.secret:
            headers[SIGNATURE_HEADER] = hub_signature(delivery.secret, delivery.body)
        try:
            response = self._client.post(delivery.url, content=delivery.body, headers=headers)
        except httpx.HTTPError:
            return False
        return response.is_success
