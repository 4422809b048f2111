"""One client per service, the single place a provider's requests go through.

:class:`ServiceClient` holds a reused ``httpx.Client`` with the provider's auth
(:mod:`ticketing_core.http.auth`), retries decided by what the request is, one deadline over all of
its attempts and reads (:mod:`ticketing_core.http.budget`), and every failure mapped to
:mod:`ticketing_core.errors` (:mod:`ticketing_core.http.responses`). A provider supplies only how to
read its service's error body, as a :class:`~ticketing_core.http.responses.ServiceDialect`.

Retry policy, by request kind:

- a refusal that proves nothing happened (429, or a connection that could not be made) is retried
  for every request;
- reads and idempotent writes (GET, PUT, DELETE, or a write the provider marks ``idempotent``) are
  also retried after 502/503/504, timeouts and dropped connections;
- any other write (a POST, a journal PATCH) is never re-sent after a failure that may have come after
  the service acted: it raises, with ``may_have_landed`` set, and whoever holds its idempotency key
  looks before trying again (:func:`create_once`, the outbox).

How hard to try is the call site's choice, through
:func:`~ticketing_core.http.budget.call_budget`.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import httpx
import stamina
from stamina.instrumentation import RetryDetails

from ticketing_core.errors import (
    InvalidInput,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
)
from ticketing_core.http.auth import auth_for
from ticketing_core.http.budget import (
    DEFAULT_ATTEMPTS,
    DEFAULT_DEADLINE,
    Budget,
    call_budget,
    current_budget,
    remaining_seconds,
)
from ticketing_core.http.limits import ACCEPT_ENCODING, BoundedTransport, within
from ticketing_core.http.network import tls_context
from ticketing_core.http.oauth import OAuth, OAuthClient
from ticketing_core.http.responses import ServiceDialect, raise_for_status

log = logging.getLogger(__name__)
T = TypeVar("T")

# Hosted services cancel long transactions (ServiceNow at 60 s): give up well before.
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
# A page of 100 incidents, or an incident's long journal, fits; parsed, 8 MiB of JSON can take
# some hundreds of MB, so the cap stays well below what a host can afford a few times at once.
DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024
# Answers after which a read or an idempotent write is worth sending again.
RETRIED_STATUSES = frozenset({429, 502, 503, 504})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})

# The service the current request goes to, for retry_notice.
_service: contextvars.ContextVar[str] = contextvars.ContextVar("service", default="the service")


class ServiceClient:
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
            remaining=remaining_seconds,
        )
        self._auth = auth_for(
            api_access_token, oauth, transport=transport, timeout=self._timeout.read or 30.0
        )
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
        return f"ServiceClient({self.dialect.name}, base_url={self.base_url!r})"

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

    def _retry_wait(self, exc: BaseException, repeatable: bool, budget: Budget) -> bool | float:
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
    budget = current_budget()
    attempt = f"{retry.retry_num + 1}/{budget.attempts}" if budget else f"{retry.retry_num + 1}"
    wait = f"{retry.wait_for:.1f}".removesuffix(".0")
    return f"{why}; retrying in {wait} s ({attempt})"


def _worth_repeating(exc: BaseException, repeatable: bool) -> bool:
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
