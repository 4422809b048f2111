"""The seed's REST API as a FastAPI app over :class:`~ticketing_host.runtime.HostRuntime`.

Routes stay thin: they resolve ids, convert bodies to core records and call the store or the sync
service. Every failure becomes a status code in one place, :data:`ERROR_STATUS`.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from importlib.metadata import version
from typing import Annotated, cast
from urllib.parse import urlsplit

import sqlalchemy as sa
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from ticketing_core.errors import (
    AuthenticationFailed,
    Conflict,
    IntegrationUnusable,
    InvalidInput,
    NotFound,
    PermissionDenied,
    TicketingError,
)
from ticketing_core.hookspecs import Provider
from ticketing_core.http.network import BlockedAddress
from ticketing_core.models import MAX_PAGE_SIZE, SearchQuery
from ticketing_core.plugins import DISTRIBUTION, check_api_url
from ticketing_core.sync.database import TRANSIENT, unavailable_reason
from ticketing_core.sync.schema import utcnow

from . import inbound, metrics
from .compose import runtime_for
from .db import (
    MAX_ANOMALY_ID,
    MAX_INTEGRATION_ID,
    DuplicateRecord,
    HostStore,
    IntegrationRecord,
    UnknownRecord,
    token_hash,
)
from .middleware import BodyLimit, LockWait
from .runtime import HostRuntime
from .schemas import (
    ERROR_RESPONSES,
    AnomalyIn,
    AnomalyOut,
    CommentIn,
    CommentOut,
    IntegrationChange,
    IntegrationIn,
    IntegrationOut,
    IntegrationStateOut,
    LinkRequest,
    PageOut,
    StatusIn,
    TicketLinkOut,
    TicketRequest,
    TicketResult,
)
from .settings import Settings

MAX_BODY_BYTES = 1024 * 1024
RETRY_AFTER_SECONDS = 5  # a 503 for a locked or unreachable database: when to try again
log = logging.getLogger(__name__)


class Rejected(ValueError):
    """The request is well-formed but cannot be served as asked (HTTP 400)."""


# First match wins, so subclasses come before their bases.
ERROR_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (Rejected, 400),
    (UnknownRecord, 404),
    (DuplicateRecord, 409),
    (Conflict, 409),  # an Idempotency-Key reused for another request, or still in progress
    (BlockedAddress, 422),  # before InvalidInput: never a 400 "unusable connection"
    (IntegrationUnusable, 503),  # the host's key configuration, not the caller's request
    (InvalidInput, 422),
    (sa.exc.DataError, 422),  # a value the database cannot store (PostgreSQL: a NUL character)
    (UnicodeEncodeError, 422),  # text with an unpaired surrogate cannot be stored or sent
    (NotFound, 404),
    (TicketingError, 502),  # the provider failed or refused; its reason is the detail
)
# Errors that mean the user's URL or credentials are wrong, not that the service failed.
UNUSABLE_CONNECTION = (InvalidInput, AuthenticationFailed, PermissionDenied, NotFound)


def create_app(settings: Settings) -> FastAPI:
    """The host API; its lifespan starts and stops the background delivery of syncs."""
    runtime = runtime_for(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runtime.start()
        try:
            yield
        finally:
            runtime.stop()

    app = FastAPI(title="ticketing host", version=version(DISTRIBUTION), lifespan=lifespan)
    app.state.runtime = runtime
    app.state.receiver_limits = inbound.ReceiverLimits()
    app.include_router(api)
    app.include_router(inbound.admin, dependencies=[Depends(require_token)])
    app.include_router(inbound.receiver)
    registry = metrics.registry_for(runtime.service.outbox)

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        """Delivery metrics and the outbox's counts, in Prometheus' text format (no token)."""
        return Response(metrics.exposition(registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    app.add_middleware(LockWait, seconds=settings.request_lock_wait)
    for error, _status in ERROR_STATUS:
        app.add_exception_handler(error, error_response)
    # After DataError's own (a more specific class): a locked or read-only database is a 503.
    app.add_exception_handler(sa.exc.DBAPIError, database_error_response)
    app.add_exception_handler(RequestValidationError, validation_error_response)
    app.add_exception_handler(StarletteHTTPException, http_error_response)
    return app


def runtime_of(app: FastAPI) -> HostRuntime:
    return cast(HostRuntime, app.state.runtime)


# -- errors ----------------------------------------------------------------------------------------


async def error_response(_: Request, exc: Exception) -> JSONResponse:
    status = next(code for kind, code in ERROR_STATUS if isinstance(exc, kind))
    # A database error's text carries the SQL and its parameters; the driver's reason alone does not.
    detail = str(exc.orig) if isinstance(exc, sa.exc.DBAPIError) else str(exc)
    return JSONResponse({"detail": detail}, status_code=status)


async def database_error_response(_: Request, exc: Exception) -> JSONResponse:
    """503 with a one-line reason when the database cannot take the request now (locked by
    another process, read-only, full, unreachable): nothing was changed, so it may be sent again.
    Any other database error stays an internal error."""
    reason = unavailable_reason(exc)
    if reason is None:
        raise exc
    log.warning("answered 503: %s (%s)", reason, " ".join(str(getattr(exc, "orig", exc)).split()))
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if reason in TRANSIENT else None
    return JSONResponse({"detail": reason}, status_code=503, headers=headers)


async def http_error_response(request: Request, exc: Exception) -> Response:
    """FastAPI's answer, but a 405 lists every method of the path (RFC 9110), not only those of
    the one route that matched it: FastAPI routes each method of a path on its own."""
    error = cast(StarletteHTTPException, exc)
    if error.status_code == 405:
        allowed = sorted(
            {method for route in api.routes
             if isinstance(route, APIRoute) and route.matches(request.scope)[0] is not Match.NONE
             for method in route.methods or ()}
        )  # fmt: skip
        error.headers = {**(error.headers or {}), "Allow": ", ".join(allowed)}
    return await http_exception_handler(request, error)


async def validation_error_response(_: Request, exc: Exception) -> JSONResponse:
    errors = cast(RequestValidationError, exc).errors()
    # FastAPI echoes each rejected input; a rejected body may hold an access token, so keep only these.
    details = [{key: error[key] for key in ("type", "loc", "msg")} for error in errors]
    return JSONResponse({"detail": jsonable_encoder(details)}, status_code=422)


def invalid_fields(
    problems: dict[str, str], where: str | tuple[str, ...] = "body"
) -> RequestValidationError:
    """A 422 in FastAPI's own shape, for fields checked against what is installed; ``where``
    is the location of the fields (``"query"``, or ``("body", "options")`` for nested ones)."""
    prefix = (where,) if isinstance(where, str) else where
    return RequestValidationError(
        [
            {"type": "value_error", "loc": (*prefix, name), "msg": msg}
            for name, msg in problems.items()
        ]
    )


def check_choice(name: str, value: str, allowed: Iterable[str]) -> None:
    choices = sorted(allowed)
    if value not in choices:
        raise invalid_fields({name: f"{value!r} is not one of: {', '.join(choices) or 'none'}"})


def check_field_choices(
    provider: Provider, values: Mapping[str, str | None], where: str = "body"
) -> None:
    """Enumerated fields the provider has must be given, and be one of its choices."""
    if problems := provider.capabilities.choice_problems(values):
        raise invalid_fields(problems, where)


# -- dependencies ----------------------------------------------------------------------------------


def get_runtime(request: Request) -> HostRuntime:
    return runtime_of(request.app)


Runtime = Annotated[HostRuntime, Depends(get_runtime)]
AnomalyId = Annotated[int, Path(ge=1, le=MAX_ANOMALY_ID)]
IntegrationId = Annotated[int, Path(ge=1, le=MAX_INTEGRATION_ID)]
bearer = HTTPBearer(auto_error=False, description="The host's API token.")


def require_token(
    runtime: Runtime,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    presented = token_hash(credentials.credentials) if credentials is not None else ""
    # Hashes of equal length compared in constant time: no timing hint about the token.
    if not any(hmac.compare_digest(presented, known) for known in runtime.accepted_token_hashes()):
        raise HTTPException(
            401, "missing or invalid API token", headers={"WWW-Authenticate": "Bearer"}
        )


def resolve_integration(store: HostStore, integration_id: int | None) -> IntegrationRecord:
    """The given integration, else the only one there is."""
    if integration_id is not None:
        return store.integration(integration_id)
    found = store.integrations()
    if not found:
        raise UnknownRecord(
            "no ticketing integration exists: create one with POST /api/integrations"
        )
    if len(found) > 1:
        raise Rejected("several integrations: pass integration_id")
    return found[0]


api = APIRouter(prefix="/api", dependencies=[Depends(require_token)], responses=ERROR_RESPONSES)

# -- integrations ----------------------------------------------------------------------------------


@api.post("/integrations", status_code=201, response_model_exclude_none=True)
def create_integration(body: IntegrationIn, runtime: Runtime) -> IntegrationOut:
    """Connect a ticketing instance; the URL and credentials are checked before anything is
    stored, and the credentials (token, secret options) are stored encrypted."""
    check_choice("type", body.type, (info.name for info in runtime.registry.providers()))
    check_choice("sync_policy", body.sync_policy, runtime.registry.policy_names())
    token = body.api_access_token.get_secret_value()
    api_url = checked_connection(runtime, body.type, body.api_url, token, body.options)
    integration = runtime.store.add_integration(
        type=body.type,
        api_url=api_url,
        api_access_token=token,
        sync_policy=body.sync_policy,
        options=body.options,
        secret_names=runtime.capabilities(body.type).secret_options,
    )
    runtime.pool(integration.id)  # connected now, outside any transaction (see HostRuntime.start)
    return IntegrationOut.of(integration)


@api.patch("/integrations/{integration_id}", response_model_exclude_none=True)
def change_integration(
    integration_id: IntegrationId, body: IntegrationChange, runtime: Runtime
) -> IntegrationStateOut:
    """Rotate credentials or move the instance: what is given replaces what is stored (all the
    options at once) once checked like a new integration; links and queued events stay."""
    stored = runtime.store.integration(integration_id)
    given = body.model_dump(exclude_unset=True)
    secret_names = runtime.capabilities(stored.type).secret_options
    if body.api_url is not None and _origin(body.api_url) != _origin(stored.api_url):
        needed = ["api_access_token"] + (
            ["options"] if set(stored.options) & set(secret_names) else []
        )
        if missing := [name for name in needed if name not in given]:
            raise InvalidInput(
                f"moving integration {integration_id} to another host needs its credentials "
                f"again ({', '.join(missing)}): stored credentials are never sent to a new host"
            )
    if "api_access_token" not in given or "options" not in given:
        stored.checked()  # what is kept must be readable, to be stored again
    token = (
        body.api_access_token.get_secret_value()
        if body.api_access_token is not None
        else stored.api_access_token
    )
    options = body.options if body.options is not None else dict(stored.options)
    api_url = checked_connection(
        runtime, stored.type, body.api_url or stored.api_url, token, options
    )
    integration = runtime.store.update_integration(
        integration_id,
        api_url=api_url,
        api_access_token=token,
        options=options,
        secret_names=secret_names,
    )
    runtime.pool.forget(integration_id)
    return with_state(runtime, [integration])[0]


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url.strip())
    try:
        port = parts.port
    except ValueError:
        port = -1  # malformed: check_api_url refuses it
    return parts.scheme.lower(), (parts.hostname or "").lower().rstrip("."), port


def checked_connection(
    runtime: HostRuntime, type: str, api_url: str, token: str, options: Mapping[str, str]
) -> str:
    """The URL, normalised, once the address rule allows it (422) and the instance accepts the
    credentials (400 when it does not); nothing is stored."""
    try:
        api_url = check_api_url(api_url, allow_http=runtime.settings.allow_http)
    except InvalidInput as exc:
        if exc.field is not None:  # a character no URL may hold: the field's fault
            raise invalid_fields({exc.field: str(exc)}, where=("body",)) from None
        raise Rejected(str(exc)) from None
    runtime.network.check_url(api_url)
    try:
        with runtime.connect(type, api_url, token, options) as provider:
            provider.validate()
    except BlockedAddress:
        raise
    except UNUSABLE_CONNECTION as exc:
        if isinstance(exc, InvalidInput) and exc.field is not None:
            # A credential the provider refused to send (a control character): the field's fault.
            where = ("options",) if exc.field in options else ()
            raise invalid_fields({exc.field: str(exc)}, where=("body", *where)) from None
        raise Rejected(str(exc)) from None
    return api_url


def with_state(
    runtime: HostRuntime, integrations: list[IntegrationRecord]
) -> list[IntegrationStateOut]:
    """The integrations with how their deliveries stand, read from the outbox."""
    states = runtime.service.outbox.delivery_states([each.id for each in integrations])
    return [
        IntegrationStateOut.of(each, states.get(each.id), runtime.inbound.heard(each.id))
        for each in integrations
    ]


@api.get("/integrations", response_model_exclude_none=True)
def list_integrations(runtime: Runtime) -> list[IntegrationStateOut]:
    """Every integration, with how its deliveries stand."""
    return with_state(runtime, runtime.store.integrations())


@api.get("/integrations/ticketing/tickets/search")
def search_tickets(
    runtime: Runtime,
    query: str | None = None,
    status: str | None = None,
    priority: str | None = None,
    size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 20,
    page: Annotated[int, Query(ge=1)] = 1,
    integration_id: Annotated[int | None, Query(ge=1, le=MAX_INTEGRATION_ID)] = None,
) -> PageOut:
    """Search the tickets of an integration (the only one when ``integration_id`` is omitted)."""
    integration = resolve_integration(runtime.store, integration_id)
    provider = runtime.pool(integration.id)
    filters = {name: value for name, value in (("status", status), ("priority", priority)) if value}
    check_field_choices(provider, filters, where="query")
    search = SearchQuery(text=query, status=status, priority=priority, page=page, size=size)
    found = provider.search(search)
    return PageOut.of(found)


@api.get("/integrations/{integration_id}", response_model_exclude_none=True)
def get_integration(integration_id: IntegrationId, runtime: Runtime) -> IntegrationStateOut:
    """The integration and how its deliveries stand: paused until when and why, failing,
    delivering or idle; its pending and dead events; its last delivery."""
    return with_state(runtime, [runtime.store.integration(integration_id)])[0]


@api.delete("/integrations/{integration_id}", status_code=204)
def delete_integration(integration_id: IntegrationId, runtime: Runtime) -> None:
    """Delete an integration and its ticket links; the tickets themselves stay."""
    runtime.store.delete_integration(integration_id)
    runtime.pool.forget(integration_id)


# -- tickets of anomalies --------------------------------------------------------------------------


@api.post("/integrations/ticketing/anomalies/{anomaly_id}/tickets")
def create_ticket(
    anomaly_id: AnomalyId,
    body: TicketRequest,
    runtime: Runtime,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
) -> TicketResult:
    """Create a ticket describing the anomaly and link it; a retried request makes no second one."""
    anomaly = runtime.store.anomaly(anomaly_id).anomaly
    integration = resolve_integration(runtime.store, body.integration_id)
    check_field_choices(runtime.pool(integration.id), body.choice_fields())
    ticket, link, existing = runtime.service.create_ticket(
        anomaly, integration.id, body.to_draft(), idempotency_key=idempotency_key
    )
    done = "already linked" if existing else "created and linked"
    return TicketResult.of(ticket, link, f"Ticket {ticket.number} {done} to anomaly {anomaly_id}")


@api.post("/integrations/ticketing/anomalies/{anomaly_id}/links")
def link_ticket(anomaly_id: AnomalyId, body: LinkRequest, runtime: Runtime) -> TicketResult:
    """Link an existing ticket, by id or number, to the anomaly."""
    anomaly = runtime.store.anomaly(anomaly_id).anomaly
    integration = resolve_integration(runtime.store, body.integration_id)
    ticket, link = runtime.service.link_ticket(
        anomaly, integration.id, ticket_id=body.ticket_id, ticket_number=body.ticket_number
    )
    return TicketResult.of(ticket, link, f"Ticket {ticket.number} linked to anomaly {anomaly_id}")


@api.get("/anomalies/{anomaly_id}/ticket-links")
def ticket_links(anomaly_id: AnomalyId, runtime: Runtime) -> list[TicketLinkOut]:
    """The anomaly's links as last recorded (no call to any provider)."""
    runtime.store.anomaly(anomaly_id)
    return TicketLinkOut.of_all(runtime.service.links.for_anomaly(anomaly_id))


@api.post("/anomalies/{anomaly_id}/ticket-links/sync")
def sync_ticket_links(anomaly_id: AnomalyId, runtime: Runtime) -> list[TicketLinkOut]:
    """Read each linked ticket's status now; a changed one is noted as an anomaly comment."""
    runtime.store.anomaly(anomaly_id)
    return TicketLinkOut.of_all(runtime.service.pull_status(anomaly_id))


# -- anomalies -------------------------------------------------------------------------------------


@api.post("/anomalies", status_code=201)
def create_anomaly(body: AnomalyIn, runtime: Runtime) -> AnomalyOut:
    entry = runtime.store.add_anomaly(body.to_anomaly(), assign_id=body.id is None)
    return AnomalyOut.of(entry)


@api.get("/anomalies/{anomaly_id}")
def get_anomaly(anomaly_id: AnomalyId, runtime: Runtime) -> AnomalyOut:
    return AnomalyOut.of(runtime.store.anomaly(anomaly_id))


@api.put("/anomalies/{anomaly_id}")
def change_anomaly_status(anomaly_id: AnomalyId, body: StatusIn, runtime: Runtime) -> AnomalyOut:
    """Change the status; linked tickets get a work note in the background (not their state)."""
    now = utcnow()
    with runtime.database.begin() as conn:
        previous = runtime.store.set_status(anomaly_id, body.status, now, conn)
        if previous != body.status:
            runtime.service.anomaly_status_changed(
                anomaly_id, body.status, changed_at=now, conn=conn
            )
        entry = runtime.store.anomaly(anomaly_id, conn)
    return AnomalyOut.of(entry)


@api.post("/anomalies/{anomaly_id}/comments", status_code=201)
def add_comment(anomaly_id: AnomalyId, body: CommentIn, runtime: Runtime) -> CommentOut:
    """Comment on the anomaly; linked tickets get it as a work note in the background."""
    with runtime.database.begin() as conn:
        comment = runtime.store.add_comment(anomaly_id, body.message, conn=conn)
        runtime.service.anomaly_commented(anomaly_id, body.message, conn=conn)
    return CommentOut.of(comment)
