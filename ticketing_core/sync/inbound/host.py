"""What a host gives inbound sync: its anomalies, each integration's inbound policy; and what
it is told back (when the instance was last heard from)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Protocol

import attrs
import sqlalchemy as sa

from ticketing_core.policies import InboundPolicy


class Anomalies(Protocol):
    """The host's side: comments on anomalies and their status, in the caller's transaction."""

    def comment(self, anomaly_id: int, text: str, origin: str, conn: sa.Connection) -> None:
        """Add a comment: ``origin`` INTEGRATION (what the integration says) or TICKET (copied
        from a ticket)."""

    def set_status(self, anomaly_id: int, status: str, conn: sa.Connection) -> bool:
        """Set the anomaly's status; whether it changed."""


InboundPolicyFor = Callable[[int, sa.Connection | None], InboundPolicy | None]
"""An integration's inbound policy, or None when inbound sync is off for it."""


@attrs.frozen
class Heard:
    """When an integration's inbound sync last heard from the service."""

    notified_at: datetime | None
    polled_at: datetime | None
