"""Changes flowing back from tickets to anomalies: :class:`Inbound` applies them (see
:mod:`~ticketing_core.sync.inbound.engine` for the exactly-once rule), :class:`InboundWorker`
runs it after notifications and on each integration's poll."""

from ticketing_core.sync.inbound.engine import Anomalies, Heard, Inbound, InboundPolicyFor
from ticketing_core.sync.inbound.worker import InboundWorker

__all__ = ["Anomalies", "Heard", "Inbound", "InboundPolicyFor", "InboundWorker"]
