"""``ticketing outbox list|retry`` on a real database file."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from ticketing_core import errors
from ticketing_core.cli import cli
from ticketing_core.policies import AddWorkNote
from ticketing_core.sync.database import Database, engine_url
from ticketing_core.sync.outbox import DEAD, PENDING, NewEvent, Outbox
from ticketing_core.sync.schema import SCHEMA_VERSION


def outbox_with_one_dead_event(path: Path) -> Outbox:
    outbox = Outbox(Database(str(path)))
    outbox.enqueue([NewEvent(1, "ticket-a", AddWorkNote("note a"), anomaly_id=7),
                    NewEvent(1, "ticket-b", AddWorkNote("note b"), anomaly_id=7)])  # fmt: skip
    dead = outbox.claim(1)[0]
    outbox.settle_failed(dead, errors.AuthenticationFailed("ServiceNow rejected the credentials"))
    return outbox


def test_list_shows_events_and_their_errors(tmp_path: Path) -> None:
    outbox_with_one_dead_event(tmp_path / "t.db")

    table = CliRunner().invoke(cli, ["outbox", "list", "--database", str(tmp_path / "t.db")])
    dead = CliRunner().invoke(
        cli, ["outbox", "list", "--database", str(tmp_path / "t.db"), "--status", "dead", "--json"]
    )

    assert table.exit_code == 0, table.output
    assert table.output.splitlines()[0].split()[:4] == ["ID", "STATUS", "ATTEMPTS", "TICKET"]
    assert "work note: note b" in table.output
    assert [(e["ticket_id"], e["status"], e["attempts"]) for e in json.loads(dead.output)] == [
        ("ticket-a", "dead", 1)
    ]
    assert json.loads(dead.output)[0]["last_error"].startswith("AuthenticationFailed:")


def test_retry_puts_dead_events_back_in_line(tmp_path: Path) -> None:
    outbox = outbox_with_one_dead_event(tmp_path / "t.db")
    (dead,) = outbox.entries(status=DEAD)

    result = CliRunner().invoke(
        cli, ["outbox", "retry", "--database", str(tmp_path / "t.db"), str(dead.id)]
    )

    assert result.exit_code == 0, result.output
    assert result.output.strip() == "1 dead event(s) queued for delivery again"
    assert outbox.counts()[PENDING] == 2


def test_retry_needs_ids_or_all(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["outbox", "retry", "--database", str(tmp_path / "t.db")])

    assert result.exit_code == 2
    assert "give event ids or --all" in result.stderr


@pytest.mark.parametrize("spelling", ["{}", "sqlite:///{}"])
@pytest.mark.parametrize("command", [["list"], ["retry", "--all"]])
def test_a_missing_database_file_is_a_usage_error_and_not_created(
    tmp_path: Path, spelling: str, command: list[str]
) -> None:
    missing = tmp_path / "typo.db"

    result = CliRunner().invoke(cli, ["outbox", *command, "--database", spelling.format(missing)])

    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: cannot open the database sqlite:///{missing}: there is no such file: give the "
        "database ticketing serve uses (--database or TICKETING_DATABASE)"
    )
    assert not missing.exists()


def test_listing_changes_nothing_in_another_applications_database(tmp_path: Path) -> None:
    foreign = tmp_path / "other.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE things (id INTEGER)")
    before = foreign.read_bytes()

    result = CliRunner().invoke(cli, ["outbox", "list", "--database", str(foreign)])

    assert result.exit_code == 2
    assert "it holds no ticketing tables" in result.stderr
    assert foreign.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]  # no -wal, no -shm
    with sqlite3.connect(foreign) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)


def test_an_in_memory_database_url_is_one_line() -> None:
    result = CliRunner().invoke(cli, ["outbox", "list", "--database", "sqlite://"])

    assert result.exit_code == 2
    assert result.stderr == (
        "error: cannot open the database sqlite://: it holds no ticketing tables: give the "
        "database ticketing serve uses\n"
    )


def test_an_unreachable_database_is_one_line_not_a_traceback() -> None:
    result = CliRunner().invoke(
        cli, ["outbox", "list", "--database", "postgresql://nobody@127.0.0.1:1/none"]
    )

    assert result.exit_code == 2
    assert result.stderr.startswith("error: cannot open the database postgresql+psycopg://nobody@")
    assert ": OperationalError: connection failed" in result.stderr
    assert result.stderr.count("\n") == 1


def test_database_errors_hide_the_password() -> None:
    result = CliRunner().invoke(
        cli, ["outbox", "list", "--database", "postgresql://postgres:S3cretPW@127.0.0.1:1/x"]
    )

    assert result.exit_code == 2
    assert "S3cretPW" not in result.output
    assert "postgres:***@127.0.0.1:1/x" in result.stderr


def test_discarding_a_dead_event_unblocks_its_ticket(tmp_path: Path) -> None:
    outbox = Outbox(Database(str(tmp_path / "t.db")))
    outbox.enqueue(
        [NewEvent(1, "gone", AddWorkNote("first")), NewEvent(1, "gone", AddWorkNote("next"))]
    )
    (dead,) = outbox.claim(5)
    outbox.settle_failed(dead, errors.NotFound("No Record found"))
    assert outbox.claim(5) == []

    result = CliRunner().invoke(
        cli, ["outbox", "discard", "--database", str(tmp_path / "t.db"), str(dead.id)]
    )

    assert result.output.strip() == "1 dead event(s) discarded"
    assert [e.action for e in outbox.claim(5)] == [AddWorkNote("next")]


def test_retrying_or_discarding_an_unknown_event_says_so_and_changes_nothing(
    tmp_path: Path,
) -> None:
    outbox = outbox_with_one_dead_event(tmp_path / "t.db")
    [dead] = outbox.entries(status=DEAD)
    database = ["--database", str(tmp_path / "t.db")]

    retried = CliRunner().invoke(cli, ["outbox", "retry", *database, str(dead.id), "999"])
    discarded = CliRunner().invoke(cli, ["outbox", "discard", *database, "999"])

    assert retried.exit_code == discarded.exit_code == 4
    assert (
        retried.stderr
        == "error: no dead event with id 999: see ticketing outbox list --status dead\n"
    )
    assert outbox.counts()[DEAD] == 1


def test_retry_all_goes_through_every_dead_event_in_batches(tmp_path: Path) -> None:
    outbox = Outbox(Database(str(tmp_path / "t.db")))
    outbox.enqueue([NewEvent(1, f"ticket-{n}", AddWorkNote("note")) for n in range(1_200)])
    while claimed := outbox.claim(100):
        for event in claimed:
            outbox.settle_failed(event, errors.AuthenticationFailed("rejected"))

    result = CliRunner().invoke(
        cli, ["outbox", "retry", "--all", "--database", str(tmp_path / "t.db")]
    )

    assert result.exit_code == 0, result.output
    assert result.output == "1200 dead event(s) queued for delivery again\n"
    assert outbox.counts() == {PENDING: 1_200, DEAD: 0, "delivered": 0}


def tables_of(url: str) -> list[str]:
    engine = sa.create_engine(engine_url(url))
    try:
        return sorted(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.mark.parametrize("command", [["list"], ["retry", "--all"], ["discard", "1"]])
def test_outbox_commands_never_create_tables_in_an_empty_database(
    database_url: str, command: list[str]
) -> None:
    if "://" not in database_url:
        sqlite3.connect(database_url).close()  # an existing, empty file

    result = CliRunner().invoke(cli, ["outbox", *command, "--database", database_url])

    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1
    assert "it holds no ticketing tables" in result.stderr
    assert tables_of(database_url) == []


def test_outbox_list_never_migrates_an_older_schema(database_url: str) -> None:
    engine = sa.create_engine(engine_url(database_url))
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE schema_version (component VARCHAR(64), version INT)"))
        conn.execute(sa.text("INSERT INTO schema_version VALUES ('ticketing_core', 1)"))
    engine.dispose()

    result = CliRunner().invoke(cli, ["outbox", "list", "--database", database_url])

    assert result.exit_code == 2, result.output
    expected = (
        f"ticketing_core schema 1 and this code reads {SCHEMA_VERSION}: start ticketing serve"
    )
    assert expected in result.stderr
    assert tables_of(database_url) == ["schema_version"]


def test_retry_takes_ids_or_all_not_both(tmp_path: Path) -> None:
    outbox = outbox_with_one_dead_event(tmp_path / "t.db")
    (dead,) = outbox.entries(status=DEAD)

    result = CliRunner().invoke(
        cli, ["outbox", "retry", "--all", str(dead.id), "--database", str(tmp_path / "t.db")]
    )

    assert result.exit_code == 2
    assert "give event ids or --all, not both" in result.stderr
    assert outbox.counts()[DEAD] == 1


def test_stats_count_each_integrations_events_as_a_table_and_as_json(
    database_url: str,
) -> None:
    outbox = Outbox(Database(database_url))
    outbox.enqueue([NewEvent(1, "a", AddWorkNote("x")), NewEvent(1, "b", AddWorkNote("y")),
                    NewEvent(2, "c", AddWorkNote("z"))])  # fmt: skip
    [claimed] = outbox.claim_next(prefer="1:a", instance_limit=8)
    outbox.settle_failed(claimed, errors.AuthenticationFailed("rejected"))
    outbox.claim_next(prefer="1:b", instance_limit=8)
    outbox.database.dispose()

    table = CliRunner().invoke(cli, ["outbox", "stats", "--database", database_url])
    as_json = CliRunner().invoke(cli, ["outbox", "stats", "--json", "--database", database_url])

    assert table.exit_code == 0, table.output
    header, one, two = table.output.splitlines()
    assert header.split("  ")[0] == "INTEGRATION"
    assert one.split()[:5] == ["1", "1", "1", "1", "0"]
    assert two.split()[:5] == ["2", "1", "0", "0", "0"]
    rows = json.loads(as_json.output)
    assert [(r["integration_id"], r["pending"], r["in_flight"], r["dead"]) for r in rows] == [
        (1, 1, 1, 1), (2, 1, 0, 0),
    ]  # fmt: skip
