"""``python -m jira_emulator``: serve an emulated Jira Cloud site in the foreground."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ticketing_localserver import serve_forever

from .app import DEFAULT_API_TOKEN, DEFAULT_EMAIL, JiraEmulator
from .server import make_config


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    emulator = JiraEmulator(latency_ms=args.latency_ms)
    if args.seed:
        emulator.seed_issues(args.seed)
    # The default credential is emulator-only, so printing it is a convenience, not a leak.
    announce = f"Jira emulator at {{url}} - Basic auth {DEFAULT_EMAIL}:{DEFAULT_API_TOKEN}"
    serve_forever(make_config(emulator), args.host, args.port, announce)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jira-emulator", description="Serve an emulated Jira Cloud REST API (v3)."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=int, default=0, help="added to every /rest request")
    parser.add_argument("--seed", type=int, default=0, help="create N issues in DQ at start")
    return parser


if __name__ == "__main__":
    main()
