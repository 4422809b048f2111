"""Building blocks for providers that speak HTTP: auth from a token, and one retrying transport.

:class:`HttpTransport` is the single place a provider's requests go through: a reused ``httpx.Client``,
retries decided by what the request is, one deadline over all of its attempts and reads, and every
failure mapped to :mod:`ticketing_core.errors` by :func:`raise_for_status`. A provider supplies only
how to read its service's error body.

Retry policy, by request kind:

- a refusal that proves nothing happened (429, or a connection that could not be made) is retried
  for every request;
- reads and idempotent writes (GET, PUT, DELETE, or a write the provider marks ``idempotent``) are
  also retried after 502/503/504, timeouts and dropped connections;
- any other write (a POST, a journal PATCH) is never re-sent after a failure that may have come after
  the service acted: it raises, with ``may_have_landed`` set, and whoever holds its idempotency key
  looks before trying again (:func:`create_once`, the outbox).

How hard to try is the call site's choice, through :func:`call_budget`: interactive calls (the host
API, the CLI) get one total deadline (default 20 s) across all retries; background delivery makes a
single attempt and lets the outbox back off.
"""

from __future__ import annotations

import contextvars
import logging
import math
import re
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import attrs
import httpx
import stamina
from stamina.instrumentation import RetryDetails

from ticketing_core.errors import (
    MAX_RETRY_AFTER,
    AuthenticationFailed,
    InvalidInput,
    NotFound,
    PermissionDenied,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    UnexpectedResponse,
)
from ticketing_core.http.limits import ACCEPT_ENCODING, BoundedTransport, within
from ticketing_core.http.network import tls_context
from ticketing_core.http.oauth import OAuth, OAuthClient

log = logging.getLogger(__name__)
T = TypeVar("T")

# Hosted services cancel long transactions (ServiceNow at 60 s): give up well before.
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
DEFAULT_DEADLINE = 20.0  # seconds for one interactive call, all attempts and reads included
DEFAULT_ATTEMPTS = 4
MAX_REASON = 300  # characters of a service's own error message kept in ours
# A page of 100 incidents, or an incident's long journal, fits; parsed, 8 MiB of JSON can take
# some hundreds of MB, so the cap stays well below what a host can afford a few times at once.
DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024
# Answers after which a read or an idempotent write is worth sending again.
RETRIED_STATUSES = frozenset({429, 502, 503, 504})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


@attrs.frozen
class Budget:
    """How hard the calls in a :func:`call_budget` block try: attempts per request, and a
    deadline (``time.monotonic()`` value) shared by every request in the block."""

    attempts: int
    deadline: float

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


_budget: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("budget", default=None)
# The service the current request goes to, for retry_notice.
_service: contextvars.ContextVar[str] = contextvars.ContextVar("service", default="the service")


def current_budget() -> Budget | None:
    """The budget of the enclosing :func:`call_budget` block (inside a request: the request's)."""
    return _budget.get()


def _remaining() -> float | None:
    budget = _budget.get()
    return None if budget is None else budget.remaining()


@contextmanager
def call_budget(*, deadline: float | None = None, attempts: int | None = None) -> Iterator[Budget]:
    """Bound the provider calls made inside the block: at most ``attempts`` sends per request and
    ``deadline`` seconds for all of them together.

    Blocks nest: an inner block can only tighten the outer one, and one that names nothing joins
    it (or starts one with the defaults when there is none).
    """
    outer = _budget.get()
    if outer is None:
        outer = Budget(DEFAULT_ATTEMPTS, time.monotonic() + (deadline or DEFAULT_DEADLINE))
    budget = Budget(
        min(outer.attempts, attempts or outer.attempts),
        min(outer.deadline, time.monotonic() + deadline) if deadline else outer.deadline,
    )
    token = _budget.set(budget)
    try:
        yield budget
    finally:
        _budget.reset(token)


class BearerAuth(httpx.Auth):
    """OAuth or API bearer token; the token stays out of ``repr``."""

    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request

    def __repr__(self) -> str:
        return "BearerAuth(<redacted>)"


def _auth(
    api_access_token: str, oauth: OAuthClient | None, transport: httpx.BaseTransport, timeout: float
) -> httpx.Auth:
    if oauth is None:
        return auth_from_token(api_access_token)
    check_credential("api_access_token", api_access_token, "the access token")
    check_credential("client_id", oauth.client_id, "the OAuth client_id")
    check_credential("client_secret", oauth.client_secret, "the OAuth client_secret")
    if api_access_token and ":" not in api_access_token:
        raise InvalidInput(
            "with an OAuth client the access token is user:password (password grant) or empty "
            "(client-credentials grant)",
            field="api_access_token",
        )
    return OAuth(oauth, api_access_token, transport, timeout, _remaining)


# C0 and C1 controls, DEL: NUL, CR and LF would end or break a header line; none belongs in one.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def check_credential(field: str, value: str, name: str) -> None:
    """Refuse a credential that cannot travel as given, as :class:`InvalidInput` naming ``field``
    (the message calls it ``name``): a control character (NUL, CR, LF, ...), which no header
    carries and no service issues, or text that is not UTF-8. The value is never quoted."""
    if found := _CONTROL.search(value):
        raise InvalidInput(
            f"{name} must not contain control characters (NUL, CR, LF, ...): "
            f"found U+{ord(found[0]):04X}",
            field=field,
        )
    try:
        value.encode()
    except UnicodeEncodeError:  # e.g. undecodable bytes from a command line
        raise InvalidInput(f"{name} is not valid text (UTF-8)", field=field) from None


def auth_from_token(api_access_token: str) -> httpx.Auth:
    """``user:secret`` means Basic auth; anything else is a Bearer token.

    Refused as :class:`InvalidInput` (``field="api_access_token"``), before any request: an
    empty token, white space, and what :func:`check_credential` refuses.
    """
    if not api_access_token or any(char.isspace() for char in api_access_token):
        # Checked here, not by httpx, whose header error would quote the token.
        raise InvalidInput(
            "the access token must not be empty or contain spaces or line breaks",
            field="api_access_token",
        )
    check_credential("api_access_token", api_access_token, "the access token")
    username, sep, password = api_access_token.partition(":")
    if sep and username:
        return httpx.BasicAuth(username, password)
    return BearerAuth(api_access_token)


@attrs.frozen
class ServiceDialect:
    """How one service words things: its name in messages and how to read its error bodies."""

    name: str
    error_reason: Callable[[httpx.Response], str]
    """The service's own explanation from an error response (may fall back to the status line)."""
    non_json_hint: str = ""
    """Appended when a success answer is not JSON (e.g. a hibernating instance's HTML page)."""


class HttpTransport:
    """An ``httpx.Client`` bound to one service, reused across calls and thread-safe.

    Retries follow the module's policy, with exponential backoff honouring ``Retry-After`` up to
    ``max_retry_wait`` seconds; ``deadline`` and ``max_attempts`` apply where no
    :func:`call_budget` is active. ``timeout`` bounds each connect and read; the deadline bounds
    the whole call, a slowly dribbling answer included. An answer larger than
    ``max_response_bytes``, as sent or once decompressed, is cut off. With ``oauth`` the calls
    carry OAuth tokens (see :mod:`ticketing_core.http.oauth`) instead of ``api_access_token``'s
    Basic or Bearer credentials. Redirects are not followed.
    """

    def __init__(
        self,
        base_url: str,
        api_access_token: str,
        dialect: ServiceDialect,
        *,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        deadline: float = DEFAULT_DEADLINE,
        max_attempts: int = DEFAULT_ATTEMPTS,
        max_retry_wait: float = 30.0,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        oauth: OAuthClient | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        _check_number("deadline", deadline, minimum=0.001)
        _check_number("max_response_bytes", max_response_bytes, minimum=1, integer=True)
        _check_number("max_attempts", max_attempts, minimum=1, integer=True)
        _check_number("max_retry_wait", max_retry_wait, minimum=0)
        if not isinstance(timeout, httpx.Timeout):
            _check_number("timeout", timeout, minimum=0.001)
        self.base_url = base_url.rstrip("/")
        self.dialect = dialect
        self.deadline = deadline
        self.max_attempts = max_attempts
        self.max_retry_wait = max_retry_wait
        self.max_response_bytes = max_response_bytes
        self._timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        transport = BoundedTransport(
            transport or httpx.HTTPTransport(verify=tls_context()),
            max_bytes=max_response_bytes,
            service=dialect.name,
            remaining=_remaining,
        )
        self._auth = _auth(api_access_token, oauth, transport, self._timeout.read or 30.0)
        self._http = httpx.Client(
            base_url=self.base_url,
            auth=self._auth,
            timeout=self._timeout,
            headers={
                "Accept": "application/json",
                "Accept-Encoding": ACCEPT_ENCODING,  # those BoundedTransport inflates
                "User-Agent": "ticketing",
            },
            transport=transport,
            follow_redirects=False,  # a redirect could lead anywhere, credentials and all
        )

    def __repr__(self) -> str:
        return f"HttpTransport({self.dialect.name}, base_url={self.base_url!r})"

    OPTIONS = (
        "timeout",
        "deadline",
        "max_attempts",
        "max_retry_wait",
        "max_response_bytes",
        "transport",
    )
    """The keyword options above, for a provider's ``options`` (see ``ProviderFactory``)."""

    def close(self) -> None:
        self._http.close()
        if isinstance(self._auth, OAuth):
            self._auth.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json: Any = None,
        idempotent: bool | None = None,
    ) -> httpx.Response:
        """Send one request under the retry policy; return a readable 2xx or raise a ProviderError.

        ``idempotent`` marks a write that may be repeated safely (a PATCH setting fields); by
        default only GET, HEAD, OPTIONS, PUT and DELETE are.
        """
        repeatable = method in IDEMPOTENT_METHODS if idempotent is None else idempotent
        service = _service.set(self.dialect.name)
        try:
            with call_budget(deadline=self.deadline, attempts=self.max_attempts) as budget:
                for attempt in stamina.retry_context(
                    on=lambda exc: self._retry_wait(exc, repeatable, budget),
                    attempts=budget.attempts,
                    timeout=None,  # the budget's deadline bounds waits and sends together
                    wait_initial=0.5,
                    wait_max=self.max_retry_wait,
                ):
                    with attempt:
                        return self._send(method, path, params, json, budget)
        finally:
            _service.reset(service)
        raise AssertionError("unreachable: stamina re-raises the last error")  # pragma: no cover

    def _retry_wait(self, exc: Exception, repeatable: bool, budget: Budget) -> bool | float:
        """Whether (and after how long) to send again: False, True (backoff) or seconds."""
        if not _worth_repeating(exc, repeatable):
            return False
        wait = min(getattr(exc, "retry_after", None) or 0.0, self.max_retry_wait)
        if wait >= budget.remaining():
            return False  # the service asks us to wait past the deadline: give up now
        return wait or True

    def _send(
        self,
        method: str,
        path: str,
        params: Mapping[str, str | int] | None,
        json: Any,
        budget: Budget,
    ) -> httpx.Response:
        name = self.dialect.name
        remaining = budget.remaining()
        if remaining <= 0:
            raise ProviderTimeout(f"{name} did not answer {method} {path} before the deadline")
        request = self._http.build_request(
            method, path, params=params, json=json, timeout=within(self._timeout, remaining)
        )
        try:
            response = self._read(self._http.send(request, stream=True))
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise ProviderUnavailable(
                f"cannot reach {name} at {self.base_url}: {type(exc).__name__}", sent=False
            ) from None
        except httpx.TimeoutException as exc:
            raise ProviderTimeout(
                f"{name} did not answer {method} {path} in time ({type(exc).__name__})"
            ) from None
        except httpx.TransportError as exc:
            # Only the exception's type: a protocol error's text can quote request headers.
            raise ProviderUnavailable(
                f"lost the connection to {name} at {self.base_url}: {type(exc).__name__}"
            ) from None
        log.debug("%s %s -> %s", method, path, response.status_code)
        raise_for_status(response, self.dialect)
        return response

    @staticmethod
    def _read(response: httpx.Response) -> httpx.Response:
        """The whole response, read through :class:`~ticketing_core.http.limits.BoundedTransport`:
        within the size cap and before the deadline."""
        try:
            response.read()
        finally:
            response.close()
        return response


def _check_number(name: str, value: object, *, minimum: float, integer: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value < minimum:
        kind = "a whole number" if integer else "a number"
        raise InvalidInput(f"option {name} must be {kind} of at least {minimum:g}, not {value!r}")


def retry_notice(retry: RetryDetails) -> str:
    """One line for a person about a retry stamina scheduled, e.g. "ServiceNow asked us to slow
    down; retrying in 1 s (2/4)". For a stamina on-retry hook (the command line installs one)."""
    service, exc = _service.get(), retry.caused_by
    if isinstance(exc, RateLimited):
        why = f"{service} asked us to slow down"
    elif isinstance(exc, ProviderTimeout):
        why = f"{service} did not answer in time"
    elif isinstance(exc, ProviderUnavailable) and not exc.may_have_landed:
        why = f"cannot reach {service}"
    elif isinstance(exc, ProviderUnavailable) and exc.status_code:
        why = f"{service} is unavailable ({exc.status_code})"
    else:
        why = f"lost the connection to {service}"
    budget = _budget.get()
    attempt = f"{retry.retry_num + 1}/{budget.attempts}" if budget else f"{retry.retry_num + 1}"
    wait = f"{retry.wait_for:.1f}".removesuffix(".0")
    return f"{why}; retrying in {wait} s ({attempt})"


def _worth_repeating(exc: Exception, repeatable: bool) -> bool:
    if isinstance(exc, RateLimited):
        return True  # a refusal: nothing happened
    if not isinstance(exc, ProviderUnavailable):
        return False
    if not exc.may_have_landed:
        return True  # the request never left
    # A 500 is a bug on the other side, not a passing state.
    return repeatable and (exc.status_code is None or exc.status_code in RETRIED_STATUSES)


RETRYING_DEPRECATED = (
    "create(retrying=...) is deprecated and changes nothing: a create with a key always looks the "
    "key up first (pass key_is_fresh=True to skip that for a key no earlier call sent)"
)
"""The warning of a provider that still accepts ``create``'s former ``retrying`` argument."""


def create_once(
    find_existing: Callable[[], T | None], post: Callable[[], T], *, key_is_fresh: bool = False
) -> T:
    """Create through ``post`` at most once per key, as ``find_existing`` looks the key up.

    A key that already made a ticket returns that ticket instead of making another: the key is
    looked up first, and ``post`` is sent only if it is absent. ``key_is_fresh=True`` skips that
    first lookup, for a caller that knows no earlier call sent this key (the host knows it from its
    request store): then the happy path is one ``post``.

    After a failure that may have landed the key is looked up again. If the service itself answered
    (a 5xx in its own error format), it has finished with the request, so an absent key means
    nothing was made and ``post`` is sent again, as often as the active :func:`call_budget` allows.
    Otherwise (a timeout, a dropped connection, a gateway's page) the request may still be running
    there and a lookup proves nothing yet: the failure is raised, and a later call with the key
    looks it up first. If that lookup fails, the create's failure is raised (from the lookup's), so
    the caller still learns that the create may have landed.
    """
    with call_budget() as budget:
        if not key_is_fresh and (existing := find_existing()) is not None:
            return existing
        for round_left in reversed(range(budget.attempts)):
            try:
                return post()
            except ProviderError as exc:
                if not exc.may_have_landed or round_left == 0 or budget.remaining() <= 0:
                    raise
                log.info("create may have landed (%s); looking for its key", exc)
                try:
                    existing = find_existing()
                except ProviderError as lookup_failed:
                    raise exc from lookup_failed
                if existing is not None:
                    return existing
                if not getattr(exc, "answered", False):
                    raise
    raise AssertionError("unreachable: the last round re-raises")  # pragma: no cover


def raise_for_status(response: httpx.Response, dialect: ServiceDialect) -> None:
    """Map a response to the error tree; return quietly for a readable 2xx."""
    status, name = response.status_code, dialect.name
    if status < 300:
        if status != 204 and response.content and not is_json(response):
            hint = f"; {dialect.non_json_hint}" if dialect.non_json_hint else ""
            raise UnexpectedResponse(
                f"{name} answered HTTP {status} with {content_type(response)!r} instead of JSON"
                + hint,
                status_code=status,
                outage=True,
            )
        return
    try:
        reason = dialect.error_reason(response)
    except (UndecodableBody, RecursionError) as exc:  # the status still says what happened
        reason = f"{status_line(response)} (its error body is unreadable: {_unreadable(exc)})"
    if len(reason) > MAX_REASON:  # parsed, yet possibly a long text from an unknown server
        reason = reason[: MAX_REASON - 1] + "…"
    retry_after = retry_after_seconds(response)
    if status == 401:
        raise AuthenticationFailed(f"{name} rejected the credentials: {reason}", status_code=401)
    if status == 403:
        raise PermissionDenied(f"{name} refused the operation: {reason}", status_code=403)
    if status == 404:
        raise NotFound(f"{name} found no such record: {reason}", status_code=404)
    if status == 429:
        raise RateLimited(f"{name} rate limit: {reason}", retry_after=retry_after)
    if status >= 500:
        raise ProviderUnavailable(
            f"{name} is unavailable: {reason}",
            retry_after=retry_after,
            status_code=status,
            answered=is_json(response),
        )
    raise ProviderError(f"{name} rejected the request: {reason}", status_code=status)


class UndecodableBody(UnexpectedResponse):
    """A body that is not JSON, not text, or JSON nested deeper than the parser recurses (a
    hostile server's ``[[[[...``); ``why`` says which, in a few words."""

    def __init__(self, message: str, *, why: str, status_code: int) -> None:
        super().__init__(message, status_code=status_code)
        self.why = why


def json_body(response: httpx.Response, service: str) -> Any:
    """The answer's JSON, or :class:`UndecodableBody` (an :class:`UnexpectedResponse`): every
    decoding failure of every provider's answers becomes that one error here."""
    status = response.status_code
    try:
        return response.json()
    except RecursionError:
        raise UndecodableBody(
            f"{service} sent JSON nested too deeply to read (HTTP {status})",
            why="JSON nested too deeply",
            status_code=status,
        ) from None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        raise UndecodableBody(
            f"{service} sent a body that is not JSON (HTTP {status})",
            why="not JSON",
            status_code=status,
        ) from None


def _unreadable(error: Exception) -> str:
    """Why an error body could not be read, in a few words (never its text)."""
    return error.why if isinstance(error, UndecodableBody) else "nested too deeply"


def status_line(response: httpx.Response) -> str:
    return f"HTTP {response.status_code} {response.reason_phrase}".strip()


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The service's ``Retry-After`` in seconds, at most an hour (ServiceNow's rate limits are
    hourly); None when absent or not a number."""
    try:
        seconds = float(response.headers["Retry-After"])
    except (KeyError, ValueError):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER) if math.isfinite(seconds) else None


def content_type(response: httpx.Response) -> str:
    value: str = response.headers.get("Content-Type", "")
    return value.split(";")[0].strip()


def is_json(response: httpx.Response) -> bool:
    return content_type(response).endswith("json")
