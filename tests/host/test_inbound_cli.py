"""``ticketing inbound``, ``ticketing servicenow business-rule`` and ``ticketing sync-log`` on the
database a running host uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from ticketing_core.cli import cli

from ..conftest import SECRET_KEY
from .conftest import Host, ok

ACCESS = ["--allow-http", "--allow-private-hosts"]


def run(tmp_path: Path, *arguments: str) -> Result:
    database = str(tmp_path / "host.db")  # the start_host fixture's
    return CliRunner().invoke(
        cli,
        [*arguments, "--database", database, *ACCESS],
        env={"TICKETING_SECRET_KEY": SECRET_KEY, "TICKETING_PUBLIC_URL": "https://q.example"},
    )


def test_enable_prints_the_secret_and_the_rules_and_the_api_shows_it_on(
    host: Host, integration: dict[str, Any], tmp_path: Path
) -> None:
    enabled = run(tmp_path, "inbound", "enable", "--integration", "1", "--map", "Resolved=Resolved")
    shown = ok(host.api.get("/api/integrations/1"))["inbound"]
    rule = run(tmp_path, "servicenow", "business-rule", "--integration", "1")
    log = run(tmp_path, "sync-log", "--integration", "1")

    assert enabled.exit_code == 0, enabled.output
    assert "endpoint: https://q.example/api/inbound/1" in enabled.output
    assert "secret (shown once): " in enabled.output
    assert "generateMac" in enabled.output
    assert (shown["enabled"], shown["status_map"]) == (True, {"Resolved": "Resolved"})
    assert rule.exit_code == 0, rule.output
    assert "the previous secret stays valid until" in rule.output
    assert log.exit_code == 0, log.output


def test_mistakes_exit_with_one_line(
    host: Host, integration: dict[str, Any], tmp_path: Path
) -> None:
    bad_map = run(tmp_path, "inbound", "enable", "--integration", "1", "--map", "Resolved")
    unknown_state = run(
        tmp_path, "inbound", "enable", "--integration", "1", "--map", "Fixed=Resolved"
    )
    unknown = run(tmp_path, "inbound", "secret", "--integration", "9")
    off = run(tmp_path, "inbound", "secret", "--integration", "1")

    assert bad_map.exit_code == 2
    assert "give TICKET_STATUS=ANOMALY_STATUS" in bad_map.output
    for result, says in (
        (unknown_state, "no state 'Fixed'"),
        (unknown, "integration 9 does not exist"),
        (off, "inbound sync is off for integration 1"),
    ):
        assert result.exit_code == 1, result.output
        assert says in result.output
        assert "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1
