"""Meta-tests: every hook and provider method is documented and tested (datasette's test_docs style)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from ticketing_core import hookspecs
from ticketing_core.hookspecs import Provider

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
    assert HOOKS == ["register_providers", "register_sync_policies"]


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
