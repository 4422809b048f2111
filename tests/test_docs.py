"""Meta-tests: every hook and provider method is documented and tested (datasette's test_docs style)."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from ticketing_core import hookspecs
from ticketing_core.hookspecs import Provider
from ticketing_core.plugins import ENTRY_POINT_GROUP

ROOT = Path(__file__).parents[1]
GUIDE = (ROOT / "docs" / "writing-a-provider.md").read_text()
TEST_SOURCES = "\n".join(path.read_text() for path in (ROOT / "tests").rglob("test_*.py"))
HOOKS = sorted(
    name
    for name, value in vars(hookspecs).items()
    if inspect.isfunction(value) and hasattr(value, "ticketing_spec")
)
PROVIDER_METHODS = sorted(
    name for name, value in vars(Provider).items() if inspect.isfunction(value) and name[0] != "_"
)


def test_hooks_are_found() -> None:
    # Every hook found is held to the tests below; this only proves that finding them works.
    assert {"register_providers", "register_sync_policies"} <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_docstring(hook: str) -> None:
    assert inspect.getdoc(getattr(hookspecs, hook)), f"{hook} needs a docstring in hookspecs.py"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_in_the_guide_with_its_exact_signature(hook: str) -> None:
    signature = inspect.signature(getattr(hookspecs, hook))  # annotations are strings here
    parameters = ", ".join(f"{p.name}: {p.annotation}" for p in signature.parameters.values())
    documented = f"def {hook}({parameters}) -> None"

    assert documented in GUIDE, f"docs/writing-a-provider.md must show `{documented}`"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook: str) -> None:
    assert re.search(rf"def test_hook_{hook}\b", TEST_SOURCES), f"write test_hook_{hook}"


@pytest.mark.parametrize("method", PROVIDER_METHODS)
def test_every_provider_method_is_documented(method: str) -> None:
    assert inspect.getdoc(getattr(Provider, method)), f"Provider.{method} needs a docstring"
    assert f"`{method}(" in GUIDE, f"docs/writing-a-provider.md must describe Provider.{method}"


@pytest.mark.parametrize("method", ["on_status_change", "on_comment"])
def test_sync_policy_methods_are_in_the_guide_with_their_exact_signatures(method: str) -> None:
    from ticketing_core.policies import SyncPolicy

    signature = inspect.signature(getattr(SyncPolicy, method))
    parameters = ", ".join(
        "self" if p.name == "self" else f"{p.name}: {p.annotation}"
        for p in signature.parameters.values()
    )
    documented = f"def {method}({parameters}) -> {signature.return_annotation}"

    assert documented in GUIDE, f"docs/writing-a-provider.md must show `{documented}`"


# ---- the guide's example distribution, followed literally --------------------------------------
# A fenced block whose first line is a comment naming a file (`# tests/acme_fake.py`) is that file.
FILE_BLOCK = re.compile(
    r"^```(?:python|toml)\n# (?P<path>[\w./-]+\.(?:py|toml))\n(?P<body>.*?)^```$", re.M | re.S
)
GUIDE_FILES = {m["path"]: m["body"] for m in FILE_BLOCK.finditer(GUIDE)}
# The error reader the guide once showed: JSON read from any error body, a gateway's page included.
NAIVE_DIALECT = (
    'DIALECT = ServiceDialect("Acme", lambda response: '
    'response.json().get("error") or status_line(response))'
)


def guide_pyproject() -> dict:
    return tomllib.loads(GUIDE_FILES["pyproject.toml"])


def write_guide_distribution(root: Path, replace: dict[str, tuple[str, str]] | None = None) -> None:
    """The guide's files under ``root``, "installed" there: ``root`` on ``sys.path`` holds the
    package and the ``.dist-info`` (metadata and entry points) an installer writes from its
    ``pyproject.toml``. ``replace`` maps a path to an (old, new) text edit, for mutants."""
    for path, body in GUIDE_FILES.items():
        if path in (replace or {}):
            old, new = replace[path]  # type: ignore[index]
            assert old in body, f"{path} no longer contains {old!r}"
            body = body.replace(old, new)
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(body)
    project = guide_pyproject()["project"]
    dist_info = root / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    (dist_info / "entry_points.txt").write_text(
        "".join(
            f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in table.items())
            for group, table in project["entry-points"].items()
        )
    )


def run_pytest(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "pytest", "tests", "-q", "-p", "no:cacheprovider", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_guide_shows_every_file_of_its_example() -> None:
    layout = GUIDE[GUIDE.index("ticketing-acme/\n") :].split("```")[0]
    listed = re.findall(r"^  (\S+)", layout, re.M)

    assert sorted(GUIDE_FILES) == sorted(listed)
    for path, body in GUIDE_FILES.items():
        assert not re.search(r"^\s*\.\.\.\s*(#.*)?$", body, re.M), f"{path} has a placeholder"
        if path.endswith(".py"):
            compile(body, path, "exec")


def test_the_guide_and_hookspecs_spell_the_entry_point_alike() -> None:
    docstring = inspect.getdoc(hookspecs) or ""
    shown = re.search(r"\[project\.entry-points\.(\w+)\]\n\s*(\w+) = \"([\w.]+)\"", docstring)
    assert shown, "hookspecs.py's docstring must show the entry-point table"

    assert guide_pyproject()["project"]["entry-points"] == {shown[1]: {shown[2]: shown[3]}}
    assert shown[1] == ENTRY_POINT_GROUP
    assert "[project.entry-points.ticketing]" in GUIDE


def test_the_guide_names_the_kits_extra() -> None:
    assert "pip install 'ticketing-framework[testing]'" in GUIDE
    assert (
        "ticketing-framework[testing]"
        in guide_pyproject()["project"]["optional-dependencies"]["test"]
    )


def test_the_guides_example_passes_the_conformance_kit(tmp_path: Path) -> None:
    write_guide_distribution(tmp_path)

    result = run_pytest(tmp_path, "-rA")

    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.fullmatch(r"\d+ passed in .*", summary), summary  # nothing skipped, nothing failed
    assert "test_error_pages_that_are_not_json_map_to_the_error_tree[502-html]" in result.stdout


def test_the_kit_fails_the_guides_old_error_reader(tmp_path: Path) -> None:
    provider = GUIDE_FILES["ticketing_acme/provider.py"]
    current = re.search(r"^DIALECT = .*$", provider, re.M)
    assert current
    write_guide_distribution(tmp_path, {"ticketing_acme/provider.py": (current[0], NAIVE_DIALECT)})

    result = run_pytest(tmp_path, "-k", "not_json")

    assert result.returncode == 1, result.stdout + result.stderr
    assert "2 failed" in result.stdout
    assert "must raise ProviderUnavailable, not JSONDecodeError" in result.stdout
    assert "must raise NotFound, not JSONDecodeError" in result.stdout
