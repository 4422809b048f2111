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
DEFAULT_RUN_LENGTH = 20
"""Events of one ticket claimed and settled together, in-process and in the fleet: fewer
transactions per note (on PostgreSQL, 20 rather than 10 took the outbox's overhead from about 1 to
0.6 ms a note; in-process on SQLite, 20 rather than 1 took a delivery's CPU time from about 4.5 to
2.3 ms). The price: a process killed mid-run leaves up to that many notes in doubt, each checked
alone later."""
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
