"""The retry and pause policy: how long a failed event waits, and when an integration pauses.

Pure functions of the failure, the event and the integration's last pause; the outbox writes what
they decide (:mod:`~ticketing_core.sync.outbox.settle`). Change retries or the pause here.

- A retryable failure backs off exponentially with jitter (or by the service's ``Retry-After``);
  after ``max_attempts`` counted failures, or at once for one retrying cannot fix, the event is
  parked as dead.
- An outage (``ProviderError.outage``: the service unreachable, not answering in time, a 502/503/504,
  a 429, a page in place of its API, while nothing sent to it is delivered) is not counted: it
  pauses every claim of the integration instead, ``backoff_initial`` at first, doubled up to
  ``backoff_max`` each time the calls claimed after a pause fail too, until a delivery succeeds
  (or for the ``Retry-After`` asked, up to an hour). A 429 is always waited out; a call failing so
  while others are delivered is counted.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

from ticketing_core.errors import MAX_RETRY_AFTER, ProviderError, RateLimited
from ticketing_core.sync.outbox.schema import OutboxEvent


def backoff(attempts: int, error: BaseException, initial: float, most: float) -> timedelta:
    """How long an event waits after its ``attempts``-th counted failure."""
    exponential = min(most, initial * 2 ** (attempts - 1))
    jittered = exponential * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not security
    asked = getattr(error, "retry_after", None) or 0.0
    return timedelta(seconds=max(jittered, min(float(asked), most)))


def waits_out(event: OutboxEvent, error: BaseException, last: Any) -> bool:
    """Whether ``error`` is waited out rather than counted against ``event``: a 429 (the
    service asks for room), or an outage while nothing sent to the integration has been
    delivered since this call was claimed (``last``: its ``pauses`` row). A service that
    delivered other calls meanwhile is up, so this call's 504 or timeout is its own."""
    if isinstance(error, RateLimited):
        return True
    if not (isinstance(error, ProviderError) and error.outage):
        return False
    delivered = None if last is None else last.delivered_at
    return delivered is None or event.claimed_at is None or delivered <= event.claimed_at


def outage_pause(
    event: OutboxEvent, now: datetime, error: BaseException, last: Any, initial: float, most: float
) -> tuple[datetime, float]:
    """Until when the integration's claims pause after ``event`` failed in an outage, and the
    pause's length in seconds, given its ``last`` pause (a ``pauses`` row, or None).

    The outage's first failure pauses for ``initial``. A call claimed after the last pause ended
    (within ``most`` of its end, with no delivery since) that fails too says the service is still
    down: the pause doubles, up to ``most``. A call claimed before the pause ended was on its way
    already and changes nothing. When the service said how long to wait (``Retry-After``), that is
    the pause.
    """
    claimed = event.claimed_at or now
    in_flight = last is not None and claimed < last.until
    if in_flight:
        until, seconds = last.until, last.seconds
    else:
        seconds = initial
        if last is not None and last.seconds and claimed <= last.until + timedelta(seconds=most):
            seconds = max(seconds, 2 * last.seconds)
        seconds = min(most, seconds)
        until = now + timedelta(seconds=seconds)
    if (asked := getattr(error, "retry_after", None)) is not None:
        wanted = now + timedelta(seconds=min(float(asked), MAX_RETRY_AFTER))
        until = max(until, wanted) if in_flight else wanted
    return until, seconds
