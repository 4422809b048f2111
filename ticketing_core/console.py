"""The ``ticketing`` console script: a clear message, not a traceback, when click is missing."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from ticketing_core.cli import main as run
    except ModuleNotFoundError as missing:
        if missing.name not in ("click", "rich"):
            raise
        sys.exit(
            f"error: the ticketing command needs {missing.name}: pip install 'ticketing-framework[cli]'"
        )
    run()
