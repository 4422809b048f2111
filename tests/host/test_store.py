"""The host's tables on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from ticketing_host.db import DuplicateRecord, HostStore, UnknownRecord, token_hash
from ticketing_host.keys import Keyring

from ticketing_core.models import Anomaly, FailedCheck
from ticketing_core.sync.database import Database
from ticketing_core.sync.links import LinkStore
from ticketing_core.sync.service import INTEGRATION

from ..conftest import SECRET_KEY

ANOMALY = Anomaly(
    id=12345,
    type="Record",
    status="Active",
    failed_checks=(FailedCheck("not_null", "customer_email"),),
)
CHANGED_AT = datetime(2024, 1, 15, 10, 30, tzinfo=UTC)
KEYRING = Keyring.parse(SECRET_KEY, "the tests' key")


def test_anomalies_keep_caller_ids_and_number_the_rest(database: Database) -> None:
    store = HostStore(database, KEYRING)

    given = store.add_anomaly(ANOMALY, assign_id=False)
    assigned = store.add_anomaly(ANOMALY, assign_id=True)

    assert given.anomaly == ANOMALY
    assert assigned.anomaly.id == 12346
    assert store.anomaly(12346).anomaly.failed_checks == ANOMALY.failed_checks
    with pytest.raises(DuplicateRecord, match="anomaly 12345 already exists"):
        store.add_anomaly(ANOMALY, assign_id=False)


def test_comments_and_status_changes(database: Database) -> None:
    store = HostStore(database, KEYRING)
    store.add_anomaly(ANOMALY, assign_id=False)

    with database.begin() as conn:
        previous = store.set_status(12345, "Resolved", CHANGED_AT, conn)
    comment = store.add_comment(12345, "status pulled", origin=INTEGRATION)

    entry = store.anomaly(12345)
    assert previous == "Active"
    assert (entry.anomaly.status, entry.updated) == ("Resolved", CHANGED_AT)
    assert entry.comments == (comment,)
    with pytest.raises(UnknownRecord):
        store.add_comment(999, "nobody")


def test_an_integration_keeps_its_token_out_of_repr_and_takes_its_links_along(
    database: Database,
) -> None:
    store = HostStore(database, KEYRING)
    integration = store.add_integration(
        type="servicenow",
        api_url="https://x",
        api_access_token="u:s3cret",
        sync_policy="work-notes",
        options={},
    )
    links = LinkStore(database)
    links.add(anomaly_id=1, integration_id=integration.id, ticket_id="abc", ticket_number="INC1",
              ticket_url=None, status="New")  # fmt: skip

    assert "s3cret" not in repr(integration)
    assert store.integrations() == [integration]
    store.delete_integration(integration.id)
    assert links.for_anomaly(1) == []
    with pytest.raises(UnknownRecord):
        store.integration(integration.id)


def test_only_token_hashes_are_stored(database: Database) -> None:
    store = HostStore(database, KEYRING)

    store.add_token_hash(token_hash("the-token"))

    assert store.token_hashes() == [token_hash("the-token")]
    assert "the-token" not in store.token_hashes()[0]
