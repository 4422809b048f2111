"""What ``pip install ticketing`` gets: the library alone, small, with the command line optional."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
CONTRIB = ("localserver", "servicenow-emulator", "host", "jira")


def build_wheel(project: Path, into: Path) -> zipfile.ZipFile:
    subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(into)],
        cwd=project,
        check=True,
        capture_output=True,
    )
    [wheel] = into.glob("*.whl")
    return zipfile.ZipFile(wheel)


def dist_info(wheel: zipfile.ZipFile, name: str) -> str:
    [path] = [n for n in wheel.namelist() if n.endswith(f".dist-info/{name}")]
    return wheel.read(path).decode()


def test_the_core_wheel_holds_the_library_and_the_servicenow_provider_only(tmp_path: Path) -> None:
    wheel = build_wheel(ROOT, tmp_path)

    top_level = {name.split("/")[0] for name in wheel.namelist()}
    metadata = Parser().parsestr(dist_info(wheel, "METADATA"))
    required = [r for r in metadata.get_all("Requires-Dist") or [] if "extra ==" not in r]

    assert top_level == {"ticketing_core", "ticketing_servicenow", "ticketing-0.1.0.dist-info"}
    assert sorted(r.split(">")[0] for r in required) == [
        "attrs", "cattrs", "httpx", "httpx-auth", "pluggy", "stamina",
    ]  # fmt: skip
    assert set(metadata.get_all("Provides-Extra") or []) == {"cli", "sync", "postgres", "testing"}
    entry_points = dist_info(wheel, "entry_points.txt")
    assert "servicenow = ticketing_servicenow.plugin" in entry_points
    assert "ticketing = ticketing_core.console:main" in entry_points
    assert "ticketing_host" not in entry_points


@pytest.mark.parametrize("directory", CONTRIB)
def test_each_contrib_distribution_builds_on_its_own(tmp_path: Path, directory: str) -> None:
    wheel = build_wheel(ROOT / "contrib" / directory, tmp_path)

    top_level = {name.split("/")[0] for name in wheel.namelist() if "dist-info" not in name}

    assert top_level
    assert not top_level & {"ticketing_core", "ticketing_servicenow"}


def test_without_click_the_command_says_which_extra_to_install() -> None:
    hide_click = (
        "import sys; sys.modules['click'] = None; from ticketing_core.console import main; main()"
    )

    result = subprocess.run(
        [sys.executable, "-c", hide_click], capture_output=True, text=True, check=False
    )

    assert result.returncode == 1
    assert result.stderr == (
        "error: the ticketing command needs click: pip install 'ticketing[cli]'\n"
    )


def test_the_library_imports_without_the_command_line_extras() -> None:
    hide = "import sys; sys.modules['click'] = sys.modules['rich'] = None; import ticketing_core"

    subprocess.run([sys.executable, "-c", hide + ", ticketing_servicenow"], check=True)
