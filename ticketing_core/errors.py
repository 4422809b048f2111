"""The error tree callers act on.

Every failure a provider reports is one of these, so a host can decide what to do without knowing which
provider it talks to::

    TicketingError
    ├── InvalidInput            the caller's input was wrong; fix it, don't retry
    │   └── BadSignature            a notification whose signature or time does not check out
    ├── PluginError             a provider is not installed or could not be loaded
    ├── IntegrationUnusable     this host cannot use the integration as configured (its key, its rules)
    └── ProviderError           the provider's service refused or failed the call
        ├── AuthenticationFailed    credentials rejected (HTTP 401)
        ├── PermissionDenied        authenticated but not allowed (HTTP 403)
        ├── NotFound                no such ticket, or hidden from this user (HTTP 404)
        ├── RateLimited             slow down; ``retry_after`` seconds when the service said
        ├── ProviderUnavailable     down, overloaded or unreachable (5xx, network); retry later
        │   └── ProviderTimeout         no answer in time; the call may or may not have happened
        └── UnexpectedResponse      an answer we cannot read (e.g. HTML from a hibernating instance)
    Conflict                    the request clashes with an earlier one (a reused idempotency key)

``ProviderError.may_have_landed`` tells whether a failed write may still have taken effect: a
timeout, a dropped connection or a 5xx can come after the service committed; a 4xx (429 included)
or a connection that was never made cannot. Whoever repeats a write must look first when it is true.

``ProviderError.outage`` tells whether the failure says the service as a whole is not taking requests
now (unreachable, no answer in time, a gateway's 502/503/504, a 429, a page in place of its API)
rather than that this request failed (a 500, say): a worker waits an outage out, however long it
lasts, instead of counting it against the request (unless the service delivers other calls meanwhile).

Messages name the cause and never carry a secret: providers build them from status codes and the
service's own error text, never from request headers or URLs with credentials.
"""

from __future__ import annotations


class TicketingError(Exception):
    """Base of every error this framework raises on purpose."""


class InvalidInput(TicketingError):
    """The caller's input is invalid; the message says which field and why.

    ``field`` names the argument or option at fault when the message alone would not tell a
    caller that maps errors to its own names (the host: a body field; the command line: an
    option), e.g. ``"api_access_token"`` or ``"client_secret"``.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class BadSignature(InvalidInput):
    """A change notification whose signature is missing or wrong, or whose time is too far from
    ours: it is dropped unread (a host answers 401)."""


class IntegrationUnusable(TicketingError):
    """This host cannot use the integration as it is configured: it cannot decrypt the stored
    credentials (a key is missing), or its network rule refuses the address. Nothing was sent;
    the outbox keeps the integration's events waiting, without spending their attempts, until
    the configuration is put right."""


class PluginError(TicketingError):
    """A provider is unknown, ambiguous, or its plugin failed to load."""


class Conflict(TicketingError):
    """The request clashes with an earlier one: an idempotency key reused for a different request,
    or the same request still being carried out by another caller (retry shortly)."""


class ProviderError(TicketingError):
    """The provider's service refused or failed the call.

    ``status_code`` is the HTTP status when there was one; ``retryable`` tells a background worker
    whether trying again later can succeed; ``may_have_landed`` whether a failed write may have taken
    effect all the same (see the module docstring).
    """

    retryable = False
    may_have_landed = False
    outage = False

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code


class AuthenticationFailed(ProviderError):
    """The credentials were rejected."""


class PermissionDenied(ProviderError):
    """The credentials are valid but the operation is not allowed (ACL, business rule, data policy)."""


class NotFound(ProviderError):
    """The ticket does not exist, or the user may not see it."""


MAX_RETRY_AFTER = 3600.0
"""Seconds: the longest ``retry_after`` honoured (ServiceNow's rate limits are hourly)."""


class RateLimited(ProviderError):
    """The service asked us to slow down; ``retry_after`` is its wait in seconds, if it gave one."""

    retryable = True
    outage = True

    def __init__(
        self, message: str, *, retry_after: float | None = None, status_code: int | None = 429
    ) -> None:
        super().__init__(message, status_code=status_code)
        self.retry_after = retry_after


class ProviderUnavailable(ProviderError):
    """The service is down, overloaded or unreachable; try again later.

    ``sent=False`` says the request never left (no connection could be made), so nothing happened.
    ``answered`` says the service itself answered, in its own error format: it has finished with the
    request, so a lookup now is decisive. A gateway's page, a timeout or a dropped connection may
    come while the service is still at work.
    """

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        status_code: int | None = None,
        sent: bool = True,
        answered: bool = False,
    ) -> None:
        super().__init__(message, status_code=status_code)
        self.retry_after = retry_after
        self.may_have_landed = sent
        self.answered = answered
        # No status: the network failed or timed out. A 500 is this request's failure.
        self.outage = status_code in (None, 502, 503, 504)


class ProviderTimeout(ProviderUnavailable):
    """No answer in time. A write may or may not have happened."""


class UnexpectedResponse(ProviderError):
    """The service answered with something we cannot read (wrong content type, broken envelope).

    A write answered so may have been stored (a proxy's page after the instance committed).
    ``outage`` when a page came in place of the API (a hibernating instance's, a portal's).
    """

    retryable = True
    may_have_landed = True

    def __init__(
        self, message: str, *, status_code: int | None = None, outage: bool = False
    ) -> None:
        super().__init__(message, status_code=status_code)
        self.outage = outage


def may_have_landed(error: BaseException) -> bool:
    """Whether the service may have acted although the call failed with ``error``.

    A provider says so on its errors; our own refusals (bad input) come before any request; any
    other exception is a bug that may have struck after the request left.
    """
    if isinstance(error, ProviderError):
        return error.may_have_landed
    return not isinstance(error, TicketingError)
