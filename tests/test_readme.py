"""The README's examples run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from servicenow_emulator import Emulator

README = (Path(__file__).parents[1] / "README.md").read_text()
EMULATOR_IN_README = "http://127.0.0.1:8080"


def section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def test_the_python_example_runs_against_the_emulator(
    emulator_url: str, emulator: Emulator
) -> None:
    [code] = re.findall(r"```python\n(.*?)```", section("Using it from Python"), re.DOTALL)

    result = subprocess.run(
        [sys.executable, "-c", code.replace(EMULATOR_IN_README, emulator_url)],
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    providers, created = result.stdout.splitlines()
    assert "ProviderInfo(name='servicenow', distribution='ticketing-framework'" in providers
    [incident] = emulator.incidents
    assert created == f"{incident['number']} 1"
    assert [entry["value"] for entry in emulator.journal(incident["sys_id"])] == ["Investigating"]


def test_the_python_example_run_twice_makes_one_incident(
    emulator_url: str, emulator: Emulator
) -> None:
    """The snippet's idempotency key means what it says: running it again finds its incident."""
    [code] = re.findall(r"```python\n(.*?)```", section("Using it from Python"), re.DOTALL)
    runs = [
        subprocess.run(
            [sys.executable, "-c", code.replace(EMULATOR_IN_README, emulator_url)],
            capture_output=True,
            text=True,
            check=False,
        )
        for _ in range(2)
    ]

    assert [run.returncode for run in runs] == [0, 0], [run.stderr for run in runs]
    [incident] = emulator.incidents
    assert [run.stdout.splitlines()[1] for run in runs] == [f"{incident['number']} 1"] * 2


def test_the_demo_output_shown_is_the_demos_own() -> None:
    [shown] = re.findall(r"```\n(.*?)```", section("The demo"), re.DOTALL)

    result = subprocess.run(
        [str(Path(sys.executable).parent / "ticketing"), "demo"],
        capture_output=True,
        text=True,
        check=True,
    )

    actual = iter(result.stdout.splitlines())
    for line in shown.splitlines():
        if line == "...":
            continue
        pattern = re.escape(line)
        pattern = re.sub(r"127\\\.0\\\.0\\\.1:\d+", r"127\.0\.0\.1:\\d+", pattern)
        pattern = re.sub(r"2026\\-12\\-01[T\\ ]+10:59:54", r"[-\\d]+[T ][:\\d]+", pattern)
        # Each shown line appears, in this order, in the demo's output.
        assert any(re.fullmatch(pattern, got) for got in actual), (
            f"not in the demo's output: {line}"
        )


def test_every_flag_running_at_scale_names_is_a_flag_of_its_command() -> None:
    text = section("Running at scale")
    helps = {
        command: subprocess.run(
            [str(Path(sys.executable).parent / "ticketing"), command, "--help"],
            capture_output=True, text=True, check=True,
        ).stdout
        for command in ("serve", "worker")
    }  # fmt: skip
    named = set(re.findall(r"`(?:serve |worker )?(--[a-z-]+)", text))

    assert {"--broker", "--processes", "--instance-concurrency", "--metrics-port"} <= named
    for flag in named:
        assert any(flag in help_text for help_text in helps.values()), flag
