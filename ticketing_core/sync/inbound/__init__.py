"""Changes flowing back from tickets to anomalies: :class:`Inbound` applies them (see
:mod:`~ticketing_core.sync.inbound.engine` for the exactly-once rule), :class:`InboundWorker`
runs it after notifications and on each integration's poll."""

from ticketing_core.sync.inbound.engine import Inbound
from ticketing_core.sync.inbound.host import Anomalies, Heard, InboundPolicyFor
from ticketing_core.sync.inbound.worker import InboundWorker

__all__ = ["Anomalies", "Heard", "Inbound", "InboundPolicyFor", "InboundWorker"]
