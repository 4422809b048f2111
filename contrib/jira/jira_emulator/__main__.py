"""``python -m jira_emulator``: serve an emulated Jira Cloud site in the foreground."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .app import DEFAULT_API_TOKEN, DEFAULT_EMAIL, JiraEmulator
from .server import SERVER


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    emulator = JiraEmulator(latency_ms=args.latency_ms)
    if args.seed:
        emulator.seed_issues(args.seed)
    # The default credential is emulator-only, so printing it is a convenience, not a leak.
    SERVER.serve_forever(emulator, args, f"Basic auth {DEFAULT_EMAIL}:{DEFAULT_API_TOKEN}")


def _parser() -> argparse.ArgumentParser:
    parser = SERVER.parser(
        "Serve an emulated Jira Cloud REST API (v3).", port=8090, api_path="/rest"
    )
    parser.add_argument("--seed", type=int, default=0, help="create N issues in DQ at start")
    return parser


if __name__ == "__main__":
    main()
