"""The command line refuses credentials with control characters in one line, exit code 2."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from servicenow_emulator import Emulator

from ticketing_core.cli import cli


@pytest.mark.parametrize("control", ["\x00", "\x01", "\x1b", "\x7f"])
def test_a_token_with_a_control_character_is_a_usage_error_naming_the_option(
    emulator: Emulator, emulator_url: str, control: str
) -> None:
    token = f"admin:Secret{control}password"

    result = CliRunner().invoke(
        cli, ["check", "--provider", "servicenow", "--url", emulator_url, "--allow-http",
              "--token", token],
    )  # fmt: skip

    assert result.exit_code == 2
    assert result.stderr == (
        "error: --token: the access token must not contain control characters (NUL, CR, LF, "
        f"...): found U+{ord(control):04X}\n"
    )
    assert emulator.requests == []


def test_an_oauth_secret_with_a_control_character_names_its_option(
    emulator: Emulator, emulator_url: str
) -> None:
    result = CliRunner().invoke(
        cli, ["check", "--provider", "servicenow", "--url", emulator_url, "--allow-http",
              "--token", "", "--oauth-client-id", "client", "--oauth-client-secret", "a\x00b"],
    )  # fmt: skip

    assert result.exit_code == 2
    assert result.stderr.startswith("error: --oauth-client-secret: the OAuth client_secret must")
    assert result.stderr.count("\n") == 1
    assert emulator.requests == []
