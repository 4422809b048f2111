"""How delivery runs: every default in one place, and the rule that ties the lease to the deadline.

The host, its workers and its command line build :class:`DeliverySettings`; the outbox, the
delivery and the dispatchers take their values from it (or these defaults).
"""

from __future__ import annotations

from datetime import timedelta

import attrs

from ticketing_core.errors import InvalidInput
from ticketing_core.http.budget import DEFAULT_DEADLINE

DEFAULT_MAX_ATTEMPTS = 15
DEFAULT_LEASE_SECONDS = 30.0
DEFAULT_DOUBT_SECONDS = 60.0
"""ServiceNow's transaction quota: by then it has finished or cancelled a request."""
DEFAULT_DELIVERY_DEADLINE = DEFAULT_DEADLINE
DEFAULT_BACKOFF_INITIAL = 1.0
DEFAULT_BACKOFF_MAX = 60.0
DEFAULT_RETENTION = timedelta(days=7)
DEFAULT_CONCURRENCY = 8
DEFAULT_POLL_INTERVAL = 0.5
DEFAULT_PRUNE_INTERVAL = 600.0
LEASE_OVER_DEADLINE = 4 / 3
"""A run's claims are renewed at least every quarter lease plus one delivery, so a lease above
4/3 of the delivery deadline never lapses while its worker delivers."""


def check_lease(lease_seconds: float, delivery_deadline: float) -> None:
    """Refuse a lease that could lapse while a delivery is still running: another worker would
    take the event over and send it again."""
    if lease_seconds <= delivery_deadline * LEASE_OVER_DEADLINE:
        raise InvalidInput(
            f"the lease ({lease_seconds:g} s) must be more than 4/3 of the delivery deadline "
            f"({delivery_deadline:g} s): raise the lease or lower the deadline",
            field="lease_seconds",
        )


@attrs.frozen
class DeliverySettings:
    """How events are delivered: attempts, lease, doubt window, backoff, retention."""

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    doubt_seconds: float = DEFAULT_DOUBT_SECONDS
    delivery_deadline: float = DEFAULT_DELIVERY_DEADLINE
    backoff_initial: float = DEFAULT_BACKOFF_INITIAL
    backoff_max: float = DEFAULT_BACKOFF_MAX
    retention: timedelta = DEFAULT_RETENTION

    def __attrs_post_init__(self) -> None:
        check_lease(self.lease_seconds, self.delivery_deadline)
