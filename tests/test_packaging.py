"""What ``pip install ticketing-framework`` gets: the library alone, small, with the command line optional."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).parent.parent
CONTRIB = ("localserver", "servicenow-emulator", "host", "jira")

# Names on PyPI that belong to somebody else. A distribution of ours by one of these names, or a
# dependency on one, makes pip fetch the stranger's package wherever ours is not installed first.
TAKEN_ON_PYPI = frozenset({"ticketing"})  # "Distributed ticket lock client"
# What our distributions may depend on besides each other: every third-party name, on purpose.
THIRD_PARTY = frozenset({
    "attrs", "cattrs", "click", "cryptography", "dramatiq", "fastapi", "hatchling", "httptools",
    "httpx", "httpx-auth", "hypothesis", "mypy", "pluggy", "prometheus-client", "psycopg", "pytest",
    "pytest-recording", "pytest-xdist", "rich", "ruff", "schemathesis", "sqlalchemy", "stamina", "starlette",
    "uvicorn", "uvloop", "vcrpy", "websockets",
})  # fmt: skip


def pyprojects() -> dict[Path, dict[str, Any]]:
    paths = [ROOT / "pyproject.toml", *sorted((ROOT / "contrib").glob("*/pyproject.toml"))]
    return {path.parent: tomllib.loads(path.read_text()) for path in paths}


def requirements(pyproject: dict[str, Any]) -> list[Requirement]:
    project = pyproject["project"]
    listed = [
        *pyproject["build-system"]["requires"],
        *project.get("dependencies", []),
        *(r for extra in project.get("optional-dependencies", {}).values() for r in extra),
        *(r for group in pyproject.get("dependency-groups", {}).values() for r in group),
    ]
    return [Requirement(r) for r in listed]


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

    assert top_level == {
        "ticketing_core",
        "ticketing_servicenow",
        "ticketing_framework-0.1.0.dist-info",
    }
    assert sorted(r.split(">")[0] for r in required) == [
        "attrs", "cattrs", "httpx", "httpx-auth", "pluggy", "stamina",
    ]  # fmt: skip
    assert set(metadata.get_all("Provides-Extra") or []) == {"cli", "sync", "postgres", "testing"}
    entry_points = dist_info(wheel, "entry_points.txt")
    assert "servicenow = ticketing_servicenow.plugin" in entry_points
    assert "ticketing = ticketing_core.console:main" in entry_points
    assert "ticketing_host" not in entry_points


def test_no_distribution_of_ours_is_named_or_depends_on_a_strangers_name() -> None:
    projects = pyprojects()
    ours = {canonicalize_name(p["project"]["name"]) for p in projects.values()}
    depended_on = {
        (directory.relative_to(ROOT).as_posix(), canonicalize_name(r.name))
        for directory, pyproject in projects.items()
        for r in requirements(pyproject)
    }

    assert {d.name for d in projects if d != ROOT} == set(CONTRIB)
    assert not ours & TAKEN_ON_PYPI
    assert not ours & THIRD_PARTY
    assert {(where, name) for where, name in depended_on if name not in ours | THIRD_PARTY} == set()


@pytest.mark.parametrize("directory", CONTRIB)
def test_each_contrib_distribution_builds_on_its_own(tmp_path: Path, directory: str) -> None:
    wheel = build_wheel(ROOT / "contrib" / directory, tmp_path)

    top_level = {name.split("/")[0] for name in wheel.namelist() if "dist-info" not in name}
    metadata = Parser().parsestr(dist_info(wheel, "METADATA"))
    ours = {canonicalize_name(p["project"]["name"]) for p in pyprojects().values()}
    required = {canonicalize_name(Requirement(r).name) for r in metadata.get_all("Requires-Dist")}

    assert top_level
    assert not top_level & {"ticketing_core", "ticketing_servicenow"}
    assert required <= ours | THIRD_PARTY
    assert not required & TAKEN_ON_PYPI


def test_without_click_the_command_says_which_extra_to_install() -> None:
    hide_click = (
        "import sys; sys.modules['click'] = None; from ticketing_core.console import main; main()"
    )

    result = subprocess.run(
        [sys.executable, "-c", hide_click], capture_output=True, text=True, check=False
    )

    assert result.returncode == 1
    assert result.stderr == (
        "error: the ticketing command needs click: pip install 'ticketing-framework[cli]'\n"
    )


def test_the_library_imports_without_the_command_line_extras() -> None:
    hide = "import sys; sys.modules['click'] = sys.modules['rich'] = None; import ticketing_core"

    subprocess.run([sys.executable, "-c", hide + ", ticketing_servicenow"], check=True)


def test_the_command_reports_the_librarys_version() -> None:
    command = str(Path(sys.executable).parent / "ticketing")

    result = subprocess.run([command, "--version"], capture_output=True, text=True, check=False)

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"ticketing, version {version('ticketing-framework')}\n"
