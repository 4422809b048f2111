"""The contract layer (the modules at the root of ticketing_core) stands alone: it imports neither
the sync engine, nor the command line, nor SQLAlchemy, so a provider needs no ``sync`` extra."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import ticketing_core

ROOT = Path(ticketing_core.__file__).parent
CONTRACT = ("ticketing_core", "ticketing_core.hookspecs", "ticketing_core.models",
            "ticketing_core.errors", "ticketing_core.converters", "ticketing_core.plugins",
            "ticketing_core.policies")  # fmt: skip
FORBIDDEN = ("ticketing_core.sync", "ticketing_core.cli", "sqlalchemy")
# The console script keeps its installed path (ticketing_core.console:main); it imports the
# command line only when run, so that it can say in one line that click is missing.
ALLOWED = {("console.py", "ticketing_core.cli")}

WITHOUT_SQLALCHEMY = f"""
import sys


class NoSQLAlchemy:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "sqlalchemy":
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, NoSQLAlchemy())
import {", ".join(CONTRACT)}

try:
    import sqlalchemy
except ModuleNotFoundError:
    pass
else:
    sys.exit("sqlalchemy was importable: the check proves nothing")
forbidden = {FORBIDDEN!r}
print(sorted(name for name in sys.modules if name.partition(".")[0] == "sqlalchemy"
             or any(name == f or name.startswith(f + ".") for f in forbidden)))
"""


def test_the_contract_imports_without_sqlalchemy_and_loads_no_engine_module() -> None:
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_SQLALCHEMY], capture_output=True, text=True, check=False
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == "[]\n"


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function, relative ones resolved."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            package = "ticketing_core" if node.level else ""  # only ``from .x``: one level
            base = ".".join(part for part in (package, node.module) if part)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("path", sorted(ROOT.glob("*.py")), ids=lambda path: path.name)
def test_no_root_module_imports_the_engine_the_command_line_or_sqlalchemy(path: Path) -> None:
    imported = imported_modules(path)

    reached = {
        (path.name, forbidden)
        for forbidden in FORBIDDEN
        for name in imported
        if name == forbidden or name.startswith(forbidden + ".")
    }

    assert reached <= ALLOWED


REPOSITORY = ROOT.parent
# What each layer above the contract must never import (docs/architecture.md draws them).
LAYER_RULES = {
    "ticketing_core/http": ("ticketing_core.sync", "ticketing_core.cli", "ticketing_core.testing",
                            "sqlalchemy"),
    "ticketing_core/sync": ("ticketing_core.cli", "ticketing_core.testing"),
    "ticketing_core/testing": ("ticketing_core.sync", "ticketing_core.cli", "sqlalchemy"),
    "ticketing_servicenow": ("ticketing_core.sync", "ticketing_core.cli", "sqlalchemy"),
    "contrib/jira/ticketing_jira": ("ticketing_core.sync", "ticketing_core.cli", "sqlalchemy"),
}  # fmt: skip
LAYER_FILES = [
    (layer, path) for layer in LAYER_RULES for path in sorted((REPOSITORY / layer).rglob("*.py"))
]


@pytest.mark.parametrize(
    ("layer", "path"), LAYER_FILES, ids=[str(p.relative_to(REPOSITORY)) for _, p in LAYER_FILES]
)
def test_each_layer_imports_only_what_lies_below_it(layer: str, path: Path) -> None:
    imported = imported_modules(path)

    reached = sorted(
        name
        for forbidden in LAYER_RULES[layer]
        for name in imported
        if name == forbidden or name.startswith(forbidden + ".")
    )

    assert reached == [], f"{layer} must not import {reached}"
