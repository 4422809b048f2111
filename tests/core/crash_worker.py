"""A delivery worker process for the crash test: ``python -m tests.core.crash_worker DB URL``."""

from __future__ import annotations

import sys
import threading

from ticketing_core.policies import WorkNotesOnly
from ticketing_core.sync.database import Database
from ticketing_core.sync.dispatch import ThreadedDispatcher
from ticketing_core.sync.outbox import Outbox
from ticketing_core.sync.service import SyncService
from ticketing_servicenow import ServiceNowProvider

from ..conftest import ADMIN_TOKEN


def main(database_url: str, api_url: str) -> None:
    database = Database(database_url)
    provider = ServiceNowProvider(api_url=api_url, api_access_token=ADMIN_TOKEN, max_attempts=1)
    service = SyncService(
        database,
        provider_for=lambda _id, _conn: provider,
        policy_for=lambda _id, _conn: WorkNotesOnly(),
        comment_on_anomaly=lambda *_: None,
        # The emulator answers within 2 s: after 2.5 s an attempt has landed or never will.
        outbox=Outbox(
            database,
            lease_seconds=3.0,  # above 4/3 of the delivery deadline
            doubt_seconds=2.5,
            backoff_initial=0.05,
            backoff_max=0.2,
        ),
        delivery_deadline=2.2,  # the emulator's 2 s of latency, then its answer
    )
    service.dispatcher = ThreadedDispatcher(service.outbox, service.delivery, poll_interval=0.05)
    service.start()
    print("worker started", flush=True)
    threading.Event().wait()  # deliver until killed


if __name__ == "__main__":
    main(*sys.argv[1:3])
