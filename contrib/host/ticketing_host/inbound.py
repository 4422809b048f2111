"""Two-way sync in the host: turning it on, its secrets, the notification receiver, the sync log.

The receiver (``POST /api/inbound/{id}``) takes no API token (ServiceNow cannot hold one): a
notification is believed only once its signature checks out against one of the integration's
secrets, and even then only for the ticket it names, which is read again with the integration's
credentials after the answer (:class:`~ticketing_core.sync.inbound.InboundWorker`). It answers
202 as soon as the notification is stored.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections.abc import Mapping
from datetime import timedelta
from math import ceil
from typing import Annotated, Any

import attrs
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ticketing_core.errors import BadSignature, InvalidInput, ProviderError
from ticketing_core.hookspecs import InboundProvider
from ticketing_core.models import Notice
from ticketing_core.notifications import verify
from ticketing_core.policies import InboundPolicy

from .db import MAX_ANOMALY_ID, MAX_INTEGRATION_ID, IntegrationRecord, UnknownRecord
from .runtime import HostRuntime
from .schemas import ERROR_RESPONSES, InboundIn, InboundOut, SyncLogOut

SECRET_KEPT = timedelta(hours=24)  # a replaced secret stays valid while the service side changes
RATE, BURST = 1000.0, 2000.0  # notifications per second and integration, and the burst allowed
CHECKED_ON_LOOP = (
    16_384  # bytes: a notification is about 200; a larger body is checked off the loop
)
now = time.time  # the host's clock, which a notification's timestamp must be near
IntegrationId = Annotated[int, Path(ge=1, le=MAX_INTEGRATION_ID)]


def inbound_policy(options: Mapping[str, Any] | None) -> InboundPolicy | None:
    return None if options is None else InboundPolicy(**options)


def endpoint(runtime: HostRuntime, integration_id: int) -> str:
    return f"{runtime.settings.public_url.rstrip('/')}/api/inbound/{integration_id}"


def inbound_provider(runtime: HostRuntime, integration: IntegrationRecord) -> InboundProvider:
    provider = runtime.pool(integration.id)
    if not isinstance(provider, InboundProvider) or not provider.capabilities.inbound_sync:
        raise InvalidInput(
            f"integration {integration.id} is a {integration.type} integration, whose provider "
            "cannot sync changes back"
        )
    return provider


def set_inbound(runtime: HostRuntime, integration_id: int, body: InboundIn) -> InboundOut:
    """Turn inbound sync on (making its first secret), change its options, or turn it off."""
    integration = runtime.store.integration(integration_id).checked()
    if not body.enabled:
        runtime.store.set_inbound(integration_id, None)
        return InboundOut(enabled=False)
    provider = inbound_provider(runtime, integration)
    options = body.model_dump(exclude={"enabled"})
    check_status_map(provider, options["status_map"])
    if integration.inbound is not None:
        runtime.store.set_inbound(integration_id, options)
        return InboundOut(enabled=True, endpoint=endpoint(runtime, integration_id))
    secret = new_secret()
    shown = shown_secret(runtime, provider, integration_id, secret)  # may read: before storing
    runtime.store.set_inbound(integration_id, options, secret)
    start_polling(runtime, integration_id)
    return shown


def start_polling(runtime: HostRuntime, integration_id: int) -> None:
    """Set the poll's cursor at the instance's newest change now: later changes are caught
    even if every notification is lost. Left to the worker when the instance cannot answer."""
    try:
        runtime.inbound.reconcile(integration_id)
    except ProviderError as exc:
        runtime.inbound.failed(integration_id, f"the first poll: {exc}; the worker tries again")
        if runtime.inbound_worker is not None:
            runtime.inbound_worker.wake()


def rotate_secret(runtime: HostRuntime, integration_id: int) -> InboundOut:
    """A new notification secret; the previous ones stay valid for :data:`SECRET_KEPT`."""
    integration = runtime.store.integration(integration_id).checked()
    if integration.inbound is None:
        raise InvalidInput(
            f"inbound sync is off for integration {integration_id}: turn it on with "
            f"PUT /api/integrations/{integration_id}/inbound"
        )
    provider = inbound_provider(runtime, integration)
    secret = new_secret()
    shown = shown_secret(runtime, provider, integration_id, secret)  # may read: before storing
    runtime.store.add_inbound_secret(integration_id, secret, SECRET_KEPT)
    until = time.gmtime(time.time() + SECRET_KEPT.total_seconds())
    until_text = time.strftime("%Y-%m-%dT%H:%M:%SZ", until)
    return shown.model_copy(update={"previous_secret_valid_until": until_text})


def shown_secret(
    runtime: HostRuntime, provider: InboundProvider, integration_id: int, secret: str
) -> InboundOut:
    url = endpoint(runtime, integration_id)
    return InboundOut(
        enabled=True,
        endpoint=url,
        secret=secret,
        business_rule=provider.notification_setup(url, secret),
    )


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def check_status_map(provider: InboundProvider, status_map: Mapping[str, str]) -> None:
    """Each ticket status the map names must be one the instance's choice list has."""
    if not status_map:
        return
    known = [state.label for state in provider.states(refresh=True)]
    if unknown := sorted(set(status_map) - set(known)):
        raise InvalidInput(
            f"status_map: the instance has no state {', '.join(map(repr, unknown))}; its "
            f"states are {', '.join(known)}"
        )


# -- the receiver ----------------------------------------------------------------------------------


@attrs.define
class Bucket:
    tokens: float
    at: float


class RateLimit:
    """A token bucket per integration: a flood of notifications, signed or not, cannot hold
    the host down; what is refused is caught up by the reconciling poll."""

    def __init__(self, rate: float = RATE, burst: float = BURST) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[int, Bucket] = {}
        self._lock = threading.Lock()

    def wait_for(self, integration_id: int) -> float:
        """0 when a notification may be taken now, else the seconds until one may."""
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.setdefault(integration_id, Bucket(self.burst, now))
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return 0.0
            return (1 - bucket.tokens) / self.rate


@attrs.frozen
class Receiving:
    """What the receiver needs of an integration: whether it takes notifications, its
    secrets, and its provider (which checks and reads them)."""

    integration: IntegrationRecord | None
    secrets: list[str] = attrs.field(factory=list)
    provider: InboundProvider | None = None
    unusable: str | None = None
    """Why its provider cannot take notifications, when it cannot."""

    @classmethod
    def read(cls, runtime: HostRuntime, integration_id: int) -> Receiving:
        # The integration and its secrets are one row: read in one transaction.
        with runtime.database.read() as conn:
            try:
                integration = runtime.store.integration(integration_id, conn)
            except UnknownRecord:
                return cls(None)
            if integration.inbound is None:
                return cls(integration)
            secrets = runtime.store.inbound_secrets(integration_id, conn)
        try:
            return cls(integration, secrets, inbound_provider(runtime, integration.checked()))
        except InvalidInput as exc:
            return cls(integration, secrets, unusable=str(exc))


class RecentIntegrations:
    """Integrations as the receiver read them in the last second: a burst of notifications
    reads and decrypts them once, and a change takes effect within a second."""

    def __init__(self, seconds: float = 1.0) -> None:
        self.seconds = seconds
        self._read: dict[int, tuple[float, Receiving]] = {}
        self._lock = threading.Lock()

    def cached(self, integration_id: int) -> Receiving | None:
        """What was read less than a second ago; None when it must be read again."""
        with self._lock:
            found = self._read.get(integration_id)
        if found is not None and time.monotonic() - found[0] < self.seconds:
            return found[1]
        return None

    def lookup(self, runtime: HostRuntime, integration_id: int) -> Receiving:
        """Read from the database (a blocking call) unless read less than a second ago."""
        if (found := self.cached(integration_id)) is not None:
            return found
        receiving = Receiving.read(runtime, integration_id)
        with self._lock:
            self._read[integration_id] = (time.monotonic(), receiving)
        return receiving

    def forget(self, integration_id: int) -> None:
        """Read it again next time: this process just changed it."""
        with self._lock:
            self._read.pop(integration_id, None)


@attrs.frozen
class ReceiverLimits:
    """Signed notifications per second and integration; refusals logged per second; the
    integrations read recently."""

    notifications: RateLimit = attrs.Factory(RateLimit)
    refusals_logged: RateLimit = attrs.Factory(lambda: RateLimit(rate=1.0, burst=10.0))
    recent: RecentIntegrations = attrs.Factory(RecentIntegrations)


receiver = APIRouter(prefix="/api")


@receiver.post(
    "/inbound/{integration_id}",
    status_code=202,
    responses={401: {}, 404: {}, 413: {}, 422: {}, 429: {}},
)
async def receive_notification(integration_id: IntegrationId, request: Request) -> JSONResponse:
    """A signed change notification from the service (see the README's "Two-way sync"); 202
    once stored, a duplicate too. No API token: the signature is the credential.

    On the event loop but for the reads and writes of the database: a burst of notifications
    costs no thread hand-off each, only the wait for its batch's commit."""
    body = await request.body()
    runtime: HostRuntime = request.app.state.runtime
    limits: ReceiverLimits = request.app.state.receiver_limits
    receiving = limits.recent.cached(integration_id)
    if receiving is None:
        receiving = await run_in_threadpool(limits.recent.lookup, runtime, integration_id)
    try:
        if len(body) <= CHECKED_ON_LOOP:
            notice = check(limits, receiving, integration_id, request.headers, body)
        else:  # a large body's MAC would hold the loop: hashed in a thread, which frees it
            notice = await run_in_threadpool(
                check, limits, receiving, integration_id, request.headers, body
            )
    except BadSignature as exc:
        # A flood of forgeries is refused without filling the log: a row a second at most.
        if not limits.refusals_logged.wait_for(integration_id):
            await run_in_threadpool(runtime.inbound.refused, integration_id, str(exc))
        raise HTTPException(401, f"notification refused: {exc}") from None
    try:
        async with asyncio.timeout(runtime.inbound.notify_timeout):
            await runtime.inbound.submit(integration_id, notice)
    except TimeoutError:
        raise HTTPException(
            503, "the notification could not be stored in time: retry shortly",
            headers={"Retry-After": "5"},
        ) from None  # fmt: skip
    return JSONResponse({"accepted": True}, status_code=202)


def check(
    limits: ReceiverLimits,
    receiving: Receiving,
    integration_id: int,
    headers: Mapping[str, str],
    body: bytes,
) -> Notice:
    """The notification, checked: raises :class:`BadSignature`, or the HTTPException that
    answers it."""
    if receiving.integration is None or receiving.integration.inbound is None:
        raise HTTPException(404, f"no integration {integration_id} with inbound sync on")
    if receiving.provider is None:
        raise HTTPException(422, receiving.unusable)
    provider = receiving.provider
    verify(
        provider.capabilities.notification_signature or "", receiving.secrets, headers, body, now()
    )
    # Only signed notifications count against the integration's rate: forgeries cannot use it up.
    if wait := limits.notifications.wait_for(integration_id):
        raise HTTPException(
            429, "too many notifications: slow down", headers={"Retry-After": str(ceil(wait))}
        )
    try:
        parsed = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise HTTPException(422, "the notification is not JSON") from None
    if not isinstance(parsed, dict):
        raise HTTPException(422, "the notification is not a JSON object")
    try:
        return provider.read_notification(parsed)
    except InvalidInput as exc:
        raise HTTPException(422, f"the notification names no ticket here: {exc}") from None


# -- the API (behind the API token) ---------------------------------------------------------------


def _runtime(request: Request) -> HostRuntime:
    runtime: HostRuntime = request.app.state.runtime
    return runtime


Runtime = Annotated[HostRuntime, Depends(_runtime)]
admin = APIRouter(prefix="/api/integrations/{integration_id}", responses=ERROR_RESPONSES)


@admin.put("/inbound", response_model_exclude_none=True)
def put_inbound(
    integration_id: IntegrationId, body: InboundIn, runtime: Runtime, request: Request
) -> InboundOut:
    """Turn two-way sync on or off, or change its options. Turning it on makes the
    notification secret and answers it, with what to install on the service: the only time
    the secret is shown."""
    try:
        return set_inbound(runtime, integration_id, body)
    finally:
        request.app.state.receiver_limits.recent.forget(integration_id)


@admin.post("/inbound/secret", response_model_exclude_none=True)
def post_inbound_secret(
    integration_id: IntegrationId, runtime: Runtime, request: Request
) -> InboundOut:
    """A new notification secret, shown once; the previous one stays valid for 24 hours."""
    try:
        return rotate_secret(runtime, integration_id)
    finally:
        request.app.state.receiver_limits.recent.forget(integration_id)


@admin.get("/sync-log")
def get_sync_log(
    integration_id: IntegrationId,
    runtime: Runtime,
    ticket_id: Annotated[str | None, Query(max_length=128)] = None,
    anomaly_id: Annotated[int | None, Query(ge=1, le=MAX_ANOMALY_ID)] = None,
    before: Annotated[int | None, Query(ge=1)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[SyncLogOut]:
    """Every decision about the integration's changes, both ways, newest first: notifications
    received or refused, duplicates, echoes dropped, changes applied, deliveries and failures.
    ``before`` (an entry's id) pages back."""
    runtime.store.integration(integration_id)
    entries = runtime.inbound.log.entries(
        integration_id, ticket_id=ticket_id, anomaly_id=anomaly_id, before=before, limit=limit
    )
    return [SyncLogOut.of(entry) for entry in entries]
