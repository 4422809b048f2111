"""The link store on SQLite and PostgreSQL."""

from datetime import UTC, datetime, timedelta

import attrs
import sqlalchemy as sa

from ticketing_core.sync.database import Database, engine_url
from ticketing_core.sync.links import LinkStore, links
from ticketing_core.sync.schema import SCHEMA_VERSION


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


def test_several_processes_opening_a_fresh_database_at_once_migrate_it_once(
    database_url: str,
) -> None:
    import subprocess
    import sys

    from ticketing_core.sync.schema import installation, schema_version

    opener = (
        "import sys; from ticketing_core.sync.database import Database; "
        "print(Database(sys.argv[1]).installation_id)"
    )
    hosts = [
        subprocess.Popen(
            [sys.executable, "-c", opener, database_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [host.communicate(timeout=60) for host in hosts]

    assert [host.returncode for host in hosts] == [0] * 4, [err for _, err in outputs]
    assert len({out for out, _ in outputs}) == 1
    reopened = Database(database_url)
    with reopened.read() as conn:
        installations = conn.execute(sa.select(sa.func.count()).select_from(installation)).scalar()
        versions = conn.execute(sa.select(schema_version)).all()
    reopened.dispose()
    assert installations == 1
    assert [tuple(row) for row in versions] == [("ticketing_core", SCHEMA_VERSION)]


def test_a_schema_1_outbox_is_upgraded_keeping_its_events(database_url: str) -> None:

    from ticketing_core.sync.outbox import Outbox

    old = sa.MetaData()
    now = datetime(2026, 1, 1, tzinfo=UTC).replace(tzinfo=None)
    outbox_v1 = sa.Table(
        "sync_outbox", old,
        sa.Column("id", sa.Integer, primary_key=True), sa.Column("integration_id", sa.Integer),
        sa.Column("ticket_id", sa.String(128)), sa.Column("ordering_key", sa.String(200)),
        sa.Column("anomaly_id", sa.BigInteger), sa.Column("action", sa.JSON),
        sa.Column("status", sa.String(16)), sa.Column("attempts", sa.Integer),
        sa.Column("claims", sa.Integer), sa.Column("ambiguous", sa.Boolean),
        sa.Column("first_claimed_at", sa.DateTime), sa.Column("next_attempt_at", sa.DateTime),
        sa.Column("lease_until", sa.DateTime), sa.Column("last_error", sa.Text),
        sa.Column("created", sa.DateTime), sa.Column("delivered_at", sa.DateTime),
    )  # fmt: skip
    versions = sa.Table(
        "schema_version", old, sa.Column("component", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer),
    )  # fmt: skip
    engine = sa.create_engine(engine_url(database_url))
    old.create_all(engine)
    note = {"type": "AddWorkNote", "text": "x"}
    common = {"integration_id": 1, "ticket_id": "t", "ordering_key": "1:t", "action": note,
              "ambiguous": False, "next_attempt_at": now, "created": now}  # fmt: skip
    with engine.begin() as conn:
        conn.execute(versions.insert().values(component="ticketing_core", version=1))
        conn.execute(outbox_v1.insert(), [
            common | {"id": 1, "status": "delivered", "attempts": 0, "claims": 1},
            # Claimed twice, failed once: a worker died holding it.
            common | {"id": 2, "status": "pending", "attempts": 1, "claims": 2},
        ])  # fmt: skip
    engine.dispose()

    database = Database(database_url)
    try:
        delivered, cut_short = Outbox(database).entries()[::-1]
    finally:
        database.dispose()

    assert (delivered.status, delivered.in_doubt) == ("delivered", False)
    assert (cut_short.status, cut_short.attempts, cut_short.in_doubt) == ("pending", 1, True)


def test_a_schema_3_database_is_upgraded_keeping_its_pauses_and_attempts(database_url: str) -> None:
    from ticketing_core import errors
    from ticketing_core.policies import AddWorkNote
    from ticketing_core.sync.outbox import NewEvent, Outbox

    database = Database(database_url)
    outbox = Outbox(database, backoff_initial=30)
    outbox.enqueue([NewEvent(1, "t", AddWorkNote("x")), NewEvent(1, "u", AddWorkNote("y"))])
    [event] = outbox.claim(1)
    outbox.settle_failed(event, errors.RateLimited("slow down"))  # a pause, and one attempt
    database.dispose()
    engine = sa.create_engine(engine_url(database_url))
    with engine.begin() as conn:  # back to schema 3: none of these columns existed
        back_to_schema_4(conn)
        conn.execute(sa.text("ALTER TABLE sync_outbox DROP COLUMN outage_attempts"))
        conn.execute(sa.text("ALTER TABLE sync_throttle DROP COLUMN seconds"))
        conn.execute(sa.text("ALTER TABLE sync_throttle DROP COLUMN delivered_at"))
        conn.execute(sa.text("UPDATE schema_version SET version = 3"))
    engine.dispose()

    database = Database(database_url)
    try:
        outbox = Outbox(database)
        waiting = {e.ticket_id: e for e in outbox.entries()}
        assert (waiting["t"].attempts, waiting["t"].outage_attempts) == (1, 0)
        assert outbox.claim(2) == []  # the pause survived the upgrade
    finally:
        database.dispose()


def test_a_schema_4_database_is_upgraded_keeping_notes_in_doubt_out_of_their_window(
    database_url: str,
) -> None:
    from ticketing_core import errors
    from ticketing_core.policies import AddWorkNote
    from ticketing_core.sync.outbox import NewEvent, Outbox, events, note_tally

    database = Database(database_url)
    outbox = Outbox(database)
    outbox.enqueue([NewEvent(1, "t", AddWorkNote("x"))])
    [event] = outbox.claim(1)
    outbox.settle_failed(event, errors.ProviderTimeout("no answer"))  # in doubt
    database.dispose()
    engine = sa.create_engine(engine_url(database_url))
    with engine.begin() as conn:  # back to schema 4, whose window was the next attempt's time
        back_to_schema_4(conn)
        later = datetime.now(UTC) + timedelta(seconds=60)
        conn.execute(events.update().values(next_attempt_at=later))
        conn.execute(  # notes to ticket "u", pruned from two integrations' events
            sa.text(
                "INSERT INTO sync_note_tally (ordering_key, digest, delivered) "
                "VALUES ('1:u', 'd', 1), ('2:u', 'd', 2), ('2:v', 'd', 1)"
            )
        )
        conn.execute(sa.text("UPDATE schema_version SET version = 4"))
    engine.dispose()

    database = Database(database_url)
    try:
        outbox = Outbox(database)
        [waiting] = outbox.entries()
        assert waiting.in_doubt
        assert outbox.claim(1) == []  # its window survived the upgrade
        with database.read() as conn:
            tally = conn.execute(sa.select(note_tally).order_by(note_tally.c.ticket_id)).all()
        assert [tuple(row) for row in tally] == [("u", "d", 3), ("v", "d", 1)]  # per ticket
    finally:
        database.dispose()


def test_a_schema_6_database_is_upgraded_to_record_the_revisions_deliveries_told(
    database_url: str,
) -> None:
    from ticketing_core.policies import AddWorkNote
    from ticketing_core.sync.outbox import DELIVERED, NewEvent, Outbox

    database = Database(database_url)
    Outbox(database).enqueue([NewEvent(1, "t", AddWorkNote("x"))])
    database.dispose()
    engine = sa.create_engine(engine_url(database_url))
    with engine.begin() as conn:
        back_to_schema_6(conn)
        conn.execute(sa.text("UPDATE schema_version SET version = 6"))
    engine.dispose()

    database = Database(database_url)
    try:
        outbox = Outbox(database)
        [event] = outbox.claim(1)
        outbox.settle_delivered(attrs.evolve(event, revision=7))
        [delivered] = outbox.entries(DELIVERED)
        assert delivered.revision == 7
    finally:
        database.dispose()


def back_to_schema_6(conn: sa.Connection) -> None:
    """Undo schema 7: no revision told by a delivery."""
    conn.execute(sa.text("ALTER TABLE sync_outbox DROP COLUMN revision"))


def back_to_schema_4(conn: sa.Connection) -> None:
    """Undo schemas 7 and 5: no doubt_until, and the note tally per integration and ticket
    (schema 6 only added tables, which the upgrade makes when missing)."""
    back_to_schema_6(conn)
    conn.execute(sa.text("ALTER TABLE sync_outbox DROP COLUMN doubt_until"))
    conn.execute(sa.text("DROP TABLE sync_note_tally"))
    conn.execute(
        sa.text(
            "CREATE TABLE sync_note_tally (ordering_key VARCHAR(200) NOT NULL, "
            "digest VARCHAR(64) NOT NULL, delivered INTEGER NOT NULL, "
            "PRIMARY KEY (ordering_key, digest))"
        )
    )
