"""The ``ticketing`` command line against the emulator."""

from __future__ import annotations

import json
import os
import pty
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from servicenow_emulator import Emulator

from ticketing_core.cli import cli

from .conftest import ADMIN_TOKEN

# The console script installed beside this interpreter, as an operator would run it.
TICKETING = str(Path(sys.executable).parent / "ticketing")


@pytest.fixture
def run(emulator_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("TICKETING_PROVIDER", "servicenow")
    monkeypatch.setenv("TICKETING_URL", emulator_url)
    monkeypatch.setenv("TICKETING_TOKEN", ADMIN_TOKEN)
    runner = CliRunner()

    def invoke(*args: str) -> Any:
        return runner.invoke(cli, ["--help"] if not args else [args[0], "--allow-http", *args[1:]])

    return invoke


def create_args(**overrides: str) -> list[str]:
    fields = {"title": "Nulls in customer_email", "description": "150 nulls", "priority": "2",
              "urgency": "2", "impact": "2"} | overrides  # fmt: skip
    return [part for name, value in fields.items() for part in (f"--{name}", value)]


def test_several_providers_need_an_explicit_choice(emulator_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TICKETING_PROVIDER"}
    env |= {"TICKETING_URL": emulator_url, "TICKETING_TOKEN": ADMIN_TOKEN}

    result = subprocess.run([TICKETING, "check", "--allow-http"], capture_output=True, text=True,
                            env=env, check=False)  # fmt: skip

    assert result.returncode == 2
    assert "several providers are installed (jira, servicenow): pass --provider" in result.stderr


def test_providers_lists_servicenow_from_its_entry_point() -> None:
    result = subprocess.run([TICKETING, "providers", "--json"], capture_output=True, text=True,
                            check=True)  # fmt: skip

    assert json.loads(result.stdout) == [
        {"name": "jira", "distribution": "ticketing-jira", "version": "0.1.0"},
        {"name": "servicenow", "distribution": "ticketing-framework", "version": "0.1.0"},
    ]


def test_check_succeeds(run: Any) -> None:
    result = run("check")

    assert result.exit_code == 0, result.output
    assert "Connected to http://127.0.0.1" in result.output


def test_wrong_password_exits_3_with_one_line(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICKETING_TOKEN", "admin:not-the-password")

    result = run("check")

    assert result.exit_code == 3
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: ServiceNow rejected the credentials: User Not Auth")
    assert "not-the-password" not in result.output


def test_http_url_is_refused_without_allow_http(emulator_url: str) -> None:
    result = CliRunner().invoke(
        cli, ["check", "--provider", "servicenow", "--url", emulator_url, "--token", ADMIN_TOKEN]
    )

    assert result.exit_code == 2
    assert "refusing plain-HTTP" in result.stderr


def test_missing_url_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TICKETING_URL", raising=False)

    result = CliRunner().invoke(cli, ["check", "--provider", "servicenow", "--token", ADMIN_TOKEN])

    assert result.exit_code == 2
    assert "--url" in result.stderr


def test_create_get_update_note_status_round_trip(run: Any, emulator: Emulator) -> None:
    created = run("create", "--json", *create_args(category="Data"), "--assigned-to", "john.doe")
    assert created.exit_code == 0, created.output
    ticket = json.loads(created.output)
    assert ticket["ticket_number"].startswith("INC")
    assert ticket["assigned_to"] == "John Doe"
    assert ticket["status"] == "New"

    by_number = run("get", "--json", ticket["ticket_number"])
    assert json.loads(by_number.output)["ticket_id"] == ticket["ticket_id"]

    updated = run("update", "--json", ticket["ticket_id"], "--field", "status=In Progress",
                  "--field", "title=Renamed")  # fmt: skip
    assert (json.loads(updated.output)["status"], json.loads(updated.output)["title"]) == (
        "In Progress", "Renamed"
    )  # fmt: skip

    noted = run("note", ticket["ticket_number"], "Investigating with the data team")
    assert noted.exit_code == 0, noted.output
    assert [e["value"] for e in emulator.journal(ticket["ticket_id"])] == [
        "Investigating with the data team"
    ]

    status = run("status", ticket["ticket_id"])
    assert status.output.strip() == "In Progress (2)"


def test_update_passes_provider_fields_through(run: Any) -> None:
    ticket = json.loads(run("create", "--json", *create_args()).output)

    result = run("update", ticket["ticket_id"], "-f", "status=Resolved",
                 "-f", "close_code=Solved (Permanently)", "-f", "close_notes=done")  # fmt: skip

    assert result.exit_code == 0, result.output
    assert "Status:      Resolved" in result.output


def test_custom_fields_go_through_their_own_option(run: Any, emulator: Emulator) -> None:
    ticket = json.loads(run("create", "--json", *create_args()).output)

    result = run("update", ticket["ticket_id"], "--custom-field", "u_data_team=Quality")

    assert result.exit_code == 0, result.output
    [row] = emulator.incidents
    assert row["u_data_team"] == "Quality"


def test_bad_field_syntax_is_a_usage_error(run: Any) -> None:
    result = run("update", "x", "--field", "no-equals-sign")

    assert result.exit_code == 2
    assert "is not name=value" in result.stderr


def test_create_with_the_same_key_makes_one_incident(run: Any, emulator: Emulator) -> None:
    first = run("create", "--json", *create_args(), "--idempotency-key", "op-42")
    second = run("create", "--json", *create_args(), "--idempotency-key", "op-42")

    assert json.loads(first.output)["ticket_id"] == json.loads(second.output)["ticket_id"]
    assert len(emulator.incidents) == 1


def test_each_create_without_a_key_makes_a_new_incident(run: Any, emulator: Emulator) -> None:
    run("create", *create_args())
    run("create", *create_args())

    keys = {row["correlation_id"] for row in emulator.incidents}
    assert len(keys) == 2


def test_a_given_key_is_looked_up_first_and_a_fresh_one_is_not(
    run: Any, emulator: Emulator
) -> None:
    # The same meaning as the Python API's: a key that made a ticket returns it. The CLI's own
    # fresh key cannot have made one, so that create skips the lookup.
    assert run("create", *create_args(), "--idempotency-key", "op-43").exit_code == 0
    given = [r["method"] for r in emulator.requests]
    assert run("create", *create_args()).exit_code == 0

    assert given == ["GET", "POST"]
    assert [r["method"] for r in emulator.requests][len(given) :] == ["POST"]


def test_search_table_and_json(run: Any, emulator: Emulator) -> None:
    emulator.seed_incidents(3, short_description="data quality {i}")
    emulator.seed_incidents(2, short_description="printer")

    table = run("search", "--query", "quality", "--size", "2")
    page = json.loads(run("search", "--json", "--query", "quality", "--size", "2", "--page",
                          "2").output)  # fmt: skip

    assert table.exit_code == 0
    assert table.output.splitlines()[0].split() == ["NUMBER", "STATUS", "PRIORITY", "ASSIGNED",
                                                    "TO", "TITLE"]  # fmt: skip
    assert "page 1 of 2, 3 tickets in all" in table.output
    assert (page["total"], page["page"], page["size"], page["pages"]) == (3, 2, 2, 2)
    assert len(page["items"]) == 1


def test_search_size_out_of_range_is_a_usage_error(run: Any) -> None:
    result = run("search", "--size", "500")

    assert result.exit_code == 2
    assert "size must be between 1 and 100" in result.stderr


def test_missing_ticket_exits_4(run: Any) -> None:
    result = run("get", "INC9999999")

    assert result.exit_code == 4
    assert result.stderr.startswith("error: ServiceNow has no incident numbered")


def test_instance_down_exits_5(run: Any, emulator: Emulator) -> None:
    emulator.add_fault("500", count=1)

    result = run("check")

    assert result.exit_code == 5
    assert "ServiceNow is unavailable" in result.stderr


def test_rate_limited_check_waits_and_succeeds(run: Any, emulator: Emulator) -> None:
    emulator.add_fault("429", count=1, retry_after=1)

    result = run("check")

    assert result.exit_code == 0
    assert [r["status"] for r in emulator.requests] == [429, 200]


def test_unknown_provider_is_a_usage_error(emulator_url: str) -> None:
    env = os.environ | {"TICKETING_URL": emulator_url, "TICKETING_TOKEN": ADMIN_TOKEN}
    result = subprocess.run(
        [TICKETING, "check", "--provider", "nope", "--allow-http"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip

    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: no ticketing provider named 'nope' is installed (installed: jira, servicenow)"
    )


def test_an_empty_note_is_a_usage_error(run: Any) -> None:
    result = run("note", "INC0010001", "   ")

    assert result.exit_code == 2
    assert "a work note must not be empty" in result.stderr


def test_an_invalid_operation_on_an_id_reports_the_refusal_not_not_found() -> None:
    from ticketing_core import errors
    from ticketing_core.cli import on_ticket

    class Tracker:
        def find(self, number: str) -> Any:
            raise errors.NotFound(f"no ticket numbered {number!r}")

    def update(ticket_id: str) -> None:
        raise errors.InvalidInput("no transition to status 'Nonexistent'")

    with pytest.raises(errors.InvalidInput, match="no transition"):
        on_ticket(Tracker(), "10000", update)  # type: ignore[arg-type]


@pytest.mark.parametrize("fault", ["503_after_commit", "close_after_commit"])
def test_a_create_committed_then_failed_makes_one_incident(
    run: Any, emulator: Emulator, fault: str
) -> None:
    emulator.add_fault(fault, method="POST")

    result = run("create", "--json", *create_args())

    assert result.exit_code == 0, result.output
    [row] = emulator.incidents
    assert json.loads(result.output)["ticket_id"] == row["sys_id"]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["create", *create_args(priority="9")], "--priority '9' is not one of: 1, 2, 3, 4, 5"),
        (["create", *create_args(priority="High")], "--priority 'High' is not one of"),
        (["create", *create_args(urgency="4")], "--urgency '4' is not one of: 1, 2, 3"),
        (["search", "--status", "Bogus"], "--status 'Bogus' is not one of"),
        (["search", "--priority", "0"], "--priority '0' is not one of"),
        (["update", "INC0010001", "--field", "status=Bogus"], "--field status 'Bogus' is not"),
        (["update", "INC0010001", "--field", "priority=9"], "--field priority '9' is not"),
        (["update", "INC0010001", "--field", "title="], "would blank the title"),
        (["update", "INC0010001", "--field", "nosuchfield=1"], "--field nosuchfield: not a field"),
        (["update", "INC0010001", "--field", "sys_id=abc"], "--field sys_id: not a field"),
        (["update", "INC0010001", "--field", "u_team=dq"], "u_... fields go in --custom-field"),
        (["update", "INC0010001", "--custom-field", "sys_id=a"], "custom fields are 'u_' and"),
        (["update", "INC0010001", "--custom-field", "u_=a"], "--custom-field 'u_': custom"),
        (["update", "INC0010001", "--custom-field", "u_a b=a"], "--custom-field 'u_a b': custom"),
        (["update", "INC0010001", "--field", "severity=9"], "--field severity '9' is not one of"),
        (["update", "INC0010001", "--field", "notify=banana"], "--field notify 'banana' is not"),
    ],
)
def test_values_outside_the_providers_choices_are_refused_before_anything_is_sent(
    run: Any, emulator: Emulator, args: list[str], named: str
) -> None:
    result = run(*args)

    assert result.exit_code == 2, result.output
    assert named in result.stderr
    assert result.stderr.count("\n") == 1
    assert emulator.requests == []


def test_resolving_takes_a_resolution_and_a_close_code(run: Any, emulator: Emulator) -> None:
    created = json.loads(run("create", "--json", *create_args()).output)

    refused = run("update", created["ticket_number"], "--field", "status=Resolved")
    resolved = run("update", created["ticket_number"], "--field", "status=Resolved",
                   "--resolution", "Fixed the ETL job", "--close-code", "Workaround provided")  # fmt: skip

    # The instance's data policy refuses it (instances differ, so the CLI does not guess): one
    # line, saying which option to pass.
    assert refused.exit_code == 6
    assert refused.stderr.count("\n") == 1
    assert "mandatory" in refused.stderr
    assert refused.stderr.endswith("pass --resolution TEXT (and --close-code CODE)\n")
    assert resolved.exit_code == 0, resolved.output
    [row] = emulator.incidents
    assert (row["state"], row["close_notes"], row["close_code"]) == (
        "6", "Fixed the ETL job", "Workaround provided",
    )  # fmt: skip


def test_allow_http_can_come_from_the_environment(
    emulator_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TICKETING_ALLOW_HTTP", "1")

    result = CliRunner().invoke(
        cli, ["check", "--provider", "servicenow", "--url", emulator_url, "--token", ADMIN_TOKEN]
    )

    assert result.exit_code == 0, result.output


def test_the_plain_http_refusal_names_the_way_out(emulator_url: str, emulator: Emulator) -> None:
    result = CliRunner().invoke(
        cli, ["check", "--provider", "servicenow", "--url", emulator_url, "--token", ADMIN_TOKEN]
    )

    assert result.exit_code == 2
    assert "pass --allow-http (or set TICKETING_ALLOW_HTTP=1)" in result.stderr
    assert emulator.requests == []


def test_an_argument_that_is_not_utf8_is_one_line(emulator_url: str, emulator: Emulator) -> None:
    env = os.environ | {"TICKETING_PROVIDER": "servicenow", "TICKETING_URL": emulator_url,
                        "TICKETING_TOKEN": ADMIN_TOKEN, "TICKETING_ALLOW_HTTP": "1"}  # fmt: skip

    result = subprocess.run([TICKETING.encode(), b"note", b"INC0010001", b"\xff"],
                            capture_output=True, env=env, check=False)  # fmt: skip

    assert result.returncode == 2
    assert result.stderr == b"error: argument 3 is not valid UTF-8 text\n"
    assert emulator.requests == []


def test_retries_are_told_in_one_human_line_each(run: Any, emulator: Emulator) -> None:
    emulator.add_fault("429", count=2, retry_after=1)

    result = run("check")

    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        "note: ServiceNow asked us to slow down; retrying in 1 s (2/4)",
        "note: ServiceNow asked us to slow down; retrying in 1 s (3/4)",
    ]


def test_a_port_that_never_answers_is_not_a_silent_wait() -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"

        result = subprocess.run(
            [TICKETING, "check", "--provider", "servicenow", "--url", url, "--token", "a:b",
             "--allow-http", "--timeout", "4"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip

    assert result.returncode == 5
    notice, error = result.stderr.splitlines()
    waiting = re.fullmatch(
        r"note: still waiting for 127\.0\.0\.1:\d+ to answer GET \(giving up (\d+) s from now\)",
        notice,
    )
    assert waiting is not None, notice
    assert int(waiting[1]) == 1  # said 3 s into a 4 s budget
    assert (
        error
        == "error: ServiceNow did not answer GET /api/now/table/incident in time (ReadTimeout)"
    )


def test_search_all_streams_every_page_as_json_lines_without_a_bar_when_piped(
    run: Any, emulator: Emulator
) -> None:
    emulator.seed_incidents(230)

    result = run("search", "--all", "--json")

    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert len(lines) == 230
    assert len({line["ticket_id"] for line in lines}) == 230
    assert result.stderr == ""  # no progress bar: stderr is not a terminal
    pages = [r["query"] for r in emulator.requests]
    assert len(pages) == 3
    assert all("sysparm_limit=100" in query for query in pages)


def test_search_all_prints_a_header_then_one_tab_separated_row_per_ticket(
    run: Any, emulator: Emulator
) -> None:
    emulator.seed_incidents(3)

    result = run("search", "--all", "--status", "New")

    header, *rows = result.output.splitlines()
    assert header.split("\t") == ["NUMBER", "STATUS", "PRIORITY", "ASSIGNED TO", "TITLE"]
    assert sorted(row.split("\t")[0] for row in rows) == ["INC0010001", "INC0010002", "INC0010003"]


def test_search_all_draws_a_progress_bar_on_a_terminal(
    emulator_url: str, emulator: Emulator
) -> None:
    emulator.seed_incidents(150)
    controller, terminal = pty.openpty()
    env = os.environ | {"TERM": "xterm-256color", "COLUMNS": "100", "TICKETING_URL": emulator_url,
                        "TICKETING_TOKEN": ADMIN_TOKEN, "TICKETING_PROVIDER": "servicenow"}  # fmt: skip

    with os.fdopen(controller, "rb", buffering=0) as screen:
        result = subprocess.run([TICKETING, "search", "--all", "--json", "--allow-http"],
                                stdout=subprocess.PIPE, stderr=terminal, env=env, check=False)  # fmt: skip
        os.close(terminal)
        drawn = screen.read(65536).decode(errors="replace")

    assert result.returncode == 0
    assert len(result.stdout.splitlines()) == 150
    assert "Searching" in drawn


def test_search_all_refuses_a_page_of_its_own(run: Any, emulator: Emulator) -> None:
    result = run("search", "--all", "--page", "2")

    assert result.exit_code == 2
    assert "--all goes through every page: drop --page and --size" in result.stderr
    assert emulator.requests == []
