"""``ticketing demo`` and ``ticketing serve``, reached through the ``ticketing`` command line."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from ticketing_core.cli import cli
from ticketing_core.sync.database import Database

# The console script installed beside this interpreter, as an operator would run it.
from ..conftest import SECRET_KEY

TICKETING = str(Path(sys.executable).parent / "ticketing")
# A worker never makes a key of its own: it uses serve's (here, for databases no serve opened).
WITH_KEY = os.environ | {"TICKETING_SECRET_KEY": SECRET_KEY}
TOKEN_LINE = "Generated API token (shown once, only its hash is stored): "


def test_demo_runs_every_flow_offline_and_shows_the_work_notes() -> None:
    result = CliRunner().invoke(cli, ["demo"])

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "Ticket INC0010001 created and linked to anomaly 12345" in lines
    assert "Ticket INC0010002 linked to anomaly 12345" in lines
    assert "Background sync: 5 work notes delivered, 0 failed" in lines
    assert any(line.startswith("Pulled INC0010002: In Progress") for line in lines)
    assert "  [integration] Ticket INC0010002 status changed from New to In Progress" in lines
    notes = lines[lines.index("Work notes on INC0010002 in ServiceNow:") :]
    assert (
        notes[1]
        == "  Linked to Qualytics anomaly 12345: https://qualytics.example.com/anomalies/12345"
    )
    assert notes[2].endswith("] Qualytics Anomaly Status: Acknowledged")
    assert notes[3].startswith("  Comment from Qualytics: Investigating with data team.")
    heard = lines[lines.index("Anomaly 12345 heard, without a pull:") + 1 :]
    assert heard == [
        "  [integration] Ticket INC0010001 status changed from New to Resolved by beth.anglin",
        "  [ticket] Work note on INC0010001 by beth.anglin: Backfill done; job fixed.",
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, process: subprocess.Popen[str], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"ticketing serve did not listen on {port}") from None
            time.sleep(0.05)


@contextmanager
def serving(
    database: Path, port: int, api_token: str | None = None
) -> Iterator[subprocess.Popen[str]]:
    """``ticketing serve`` on ``port``, with TICKETING_API_TOKEN only if given, until the block ends."""
    env = {k: v for k, v in os.environ.items() if k != "TICKETING_API_TOKEN"}
    if api_token is not None:
        env["TICKETING_API_TOKEN"] = api_token
    command = [TICKETING, "serve", "--port", str(port), "--database", str(database)]
    with subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True) as process:  # fmt: skip
        try:
            wait_for_port(port, process)
            yield process
        finally:
            process.terminate()


def stop(process: subprocess.Popen[str]) -> str:
    """Terminate the server; returns everything it wrote on stderr since the last read."""
    process.terminate()
    return process.communicate(timeout=20)[1]


def statuses(port: int, *tokens: str) -> list[int]:
    """The status of ``GET /api/integrations`` with each bearer token."""
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        return [
            client.get(
                "/api/integrations", headers={"Authorization": f"Bearer {token}"}
            ).status_code
            for token in tokens
        ]


def test_serve_generates_a_token_once_and_accepts_it(tmp_path: Path) -> None:
    database, port = tmp_path / "serve.db", free_port()

    with serving(database, port) as first:
        # Printed before the server starts, so the lines are there once the port is open.
        key_line = first.stderr.readline() if first.stderr else ""
        line = first.stderr.readline() if first.stderr else ""
        token = line.strip().removeprefix(TOKEN_LINE)
        with_generated = statuses(port, token, "guess")
        stop(first)
    with serving(database, port) as second:
        again = stop(second)
    with serving(database, port, api_token="from-the-environment") as third:
        with_environment = statuses(port, "from-the-environment", token)
        configured = stop(third)

    key_file = tmp_path / "serve.db.key"
    assert key_line.startswith(f"Generated the encryption key for stored credentials in {key_file}")
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert "encryption key" not in again  # said once, when it was made
    assert line.startswith(TOKEN_LINE)
    assert len(token) > 30
    assert with_generated == [200, 401]
    assert "generated earlier is in use" in again
    assert token not in again
    assert with_environment == [200, 401]
    assert "taken from TICKETING_API_TOKEN" in configured
    assert "from-the-environment" not in configured


def existing_database(folder: Path) -> str:
    """A database as serve leaves it: a worker opens an existing one only."""
    path = str(folder / "w.db")
    Database(path).dispose()
    return path


def test_worker_refuses_a_metrics_port_already_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))  # noqa: S104 - as the metrics server would
        taken.listen()
        port = taken.getsockname()[1]

        result = subprocess.run(
            [TICKETING, "worker", "--database", existing_database(tmp_path), "--broker",
             "redis://127.0.0.1:6379/11", "--metrics-port", str(port)],
            capture_output=True, text=True, timeout=60, check=False, env=WITH_KEY,
        )  # fmt: skip

    assert result.returncode == 1
    assert f"--metrics-port {port} is taken" in result.stderr


@pytest.mark.parametrize(
    ("arguments", "code", "said"),
    [
        (["--broker", "bogus://x"], 1, "--broker must be a redis:// or amqp:// URL"),
        (["--broker", "redis://:s3cret@127.0.0.1:1/0"], 1,
         "cannot reach the broker at redis://:***@127.0.0.1:1/0: ConnectionError"),
        (["--broker", "redis://127.0.0.1:6379/11", "--lease-seconds", "2",
          "--delivery-deadline", "3"], 2, "must be more than 4/3 of --delivery-deadline"),
    ],
)  # fmt: skip
def test_worker_refuses_bad_settings_in_one_line_before_starting_anything(
    tmp_path: Path, arguments: list[str], code: int, said: str
) -> None:
    result = subprocess.run(
        [TICKETING, "worker", "--database", existing_database(tmp_path), *arguments],
        capture_output=True, text=True, timeout=60, check=False, env=WITH_KEY,
    )  # fmt: skip

    assert result.returncode == code, result.stderr
    assert said in result.stderr
    assert "Traceback" not in result.stderr
    assert "s3cret" not in result.stderr


def test_settings_never_show_a_database_or_broker_password() -> None:
    from ticketing_host.settings import Settings

    settings = Settings(
        database="postgresql://ticketing:db-pass@db/ticketing", public_url="https://q.example",
        broker="amqp://guest:broker-pass@rabbit:5672/%2F", api_token="api-token",
    )  # fmt: skip

    shown = repr(settings)

    assert "postgresql://ticketing:***@db/ticketing" in shown
    assert "amqp://guest:***@rabbit:5672/%2F" in shown
    assert not {"db-pass", "broker-pass", "api-token"} & set(shown.replace("'", " ").split())
    assert "pass" not in shown.replace("***", "")


WITHOUT_DATABASE = {k: v for k, v in WITH_KEY.items() if k != "TICKETING_DATABASE"}


def run_refused(
    command: list[str], env: dict[str, str], cwd: Path | None = None
) -> tuple[int, str]:
    """Run a command that must refuse to start: its exit code and stderr. One that starts all the
    same is stopped, its processes too, after 20 s, and fails the test."""
    with subprocess.Popen(
        command,
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            return process.wait(20), process.communicate()[1]
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise AssertionError(f"{command[1]} started: {process.communicate()[1]}") from None


def test_worker_without_a_database_refuses_in_one_line_and_makes_none(tmp_path: Path) -> None:
    """Without --database a worker would make an empty ticketing.db here and idle on it."""
    code, stderr = run_refused(
        [TICKETING, "worker", "--broker", "redis://127.0.0.1:6379/11"], WITHOUT_DATABASE, tmp_path
    )

    assert code == 2, stderr
    [line] = stderr.strip().splitlines()
    assert "--database" in line
    assert "TICKETING_DATABASE" in line
    assert list(tmp_path.iterdir()) == []


def test_worker_opens_an_existing_database_only(tmp_path: Path) -> None:
    missing = tmp_path / "mistyped.db"

    code, stderr = run_refused(
        [TICKETING, "worker", "--database", str(missing), "--broker", "redis://127.0.0.1:6379/11"],
        WITHOUT_DATABASE,
    )

    assert code == 2, stderr
    [line] = stderr.strip().splitlines()
    assert f"cannot open the database sqlite:///{missing}: there is no such file" in line
    assert "--database or TICKETING_DATABASE" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("broker", "shown"),
    [
        ("redis://:s3cret@127.0.0.1:1/0", "redis://:***@127.0.0.1:1/0"),
        ("amqp://guest:s3cret@127.0.0.1:1/%2F", "amqp://guest:***@127.0.0.1:1/%2F"),
    ],
)
def test_serve_refuses_a_broker_nothing_listens_on(tmp_path: Path, broker: str, shown: str) -> None:
    """As a worker does: rather than start and fail every wake-up, one line and an exit."""
    command = [TICKETING, "serve", "--port", str(free_port()), "--database",
               str(tmp_path / "serve.db"), "--broker", broker]  # fmt: skip

    code, stderr = run_refused(command, WITH_KEY)

    assert code != 0
    [line] = stderr.strip().splitlines()
    assert f"cannot reach the broker at {shown}" in line
    assert "s3cret" not in stderr
