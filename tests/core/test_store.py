"""The link store on SQLite and PostgreSQL."""

from datetime import UTC, datetime

import sqlalchemy as sa

from ticketing_core.store import Database, LinkStore, links


def add(store: LinkStore, anomaly_id: int = 12345, ticket_id: str = "abc", **extra: object):  # type: ignore[no-untyped-def]
    return store.add(
        anomaly_id=anomaly_id,
        integration_id=34,
        ticket_id=ticket_id,
        ticket_number=f"INC-{ticket_id}",
        ticket_url=f"https://x/incident.do?sys_id={ticket_id}",
        status="New",
        **extra,  # type: ignore[arg-type]
    )


def test_a_link_is_stored_with_every_seed_column(database: Database) -> None:
    store = LinkStore(database)

    link = add(store, ticket_metadata={"source": "test"})

    assert link.id >= 1
    assert (link.anomaly_id, link.integration_id, link.ticket_number) == (12345, 34, "INC-abc")
    assert link.status == "New"
    assert link.ticket_metadata == {"source": "test"}
    assert link.created.tzinfo is UTC
    assert store.for_anomaly(12345) == [link]


def test_adding_the_same_link_twice_returns_the_first(database: Database) -> None:
    store = LinkStore(database)

    first = add(store)
    again = add(store)

    assert again == first
    assert len(store.for_anomaly(12345)) == 1


def test_links_are_listed_per_anomaly_in_creation_order(database: Database) -> None:
    store = LinkStore(database)
    a = add(store, ticket_id="a")
    b = add(store, ticket_id="b")
    add(store, anomaly_id=99, ticket_id="c")

    assert [link.id for link in store.for_anomaly(12345)] == [a.id, b.id]


def test_record_status_updates_status_and_sync_time(database: Database) -> None:
    store = LinkStore(database)
    link = add(store)
    synced = datetime(2024, 1, 15, 15, 0, tzinfo=UTC)

    store.record_status(link.id, "In Progress", synced)

    (updated,) = store.for_anomaly(12345)
    assert (updated.status, updated.last_synced) == ("In Progress", synced)


def test_schema_is_created_once_and_survives_reopening(database_url: str) -> None:
    first = Database(database_url)
    add(LinkStore(first))
    first.dispose()

    reopened = Database(database_url)
    with reopened.begin() as conn:
        count = conn.execute(sa.select(sa.func.count()).select_from(links)).scalar()
    reopened.dispose()

    assert count == 1


def test_a_failed_transaction_keeps_what_was_stored(database: Database) -> None:
    store = LinkStore(database)
    kept = add(store)

    try:
        with database.begin() as conn:
            add(store, ticket_id="doomed", conn=conn)
            raise RuntimeError("host failed after writing")
    except RuntimeError:
        pass

    assert store.for_anomaly(12345) == [kept]


def test_racing_adds_of_one_link_all_return_it(database: Database) -> None:
    from concurrent.futures import ThreadPoolExecutor

    store = LinkStore(database)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: add(store, ticket_id="raced"), range(16)))

    assert len({link.id for link in results}) == 1
    assert len(store.for_anomaly(12345)) == 1
