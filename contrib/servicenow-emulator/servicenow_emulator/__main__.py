"""``servicenow-emulator``: serve an emulated ServiceNow instance in the foreground."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence

from .app import DEFAULT_OAUTH_CLIENT_ID, DEFAULT_PASSWORD, DEFAULT_USERS, Emulator, User
from .server import SERVER


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        emulator = _build_emulator(args)
    except ValueError as error:  # e.g. a token naming an unknown user
        parser.error(str(error))
    SERVER.serve_forever(emulator, args, _credentials_hint(args))


def _build_emulator(args: argparse.Namespace) -> Emulator:
    users = {user.user_name: user for user in DEFAULT_USERS}
    grants = [(credential, True) for credential in args.user]
    grants += [(credential, False) for credential in args.reader]
    for (name, password), can_write in grants:
        known = users.get(name, User(name, name))
        users[name] = dataclasses.replace(known, password=password, can_write=can_write)
    emulator = Emulator(
        users=users.values(),
        tokens=dict(_token(spec) for spec in args.token),
        number_start=args.number_start,
        latency_ms=args.latency_ms,
        token_lifetime=args.token_lifetime,
    )
    emulator.seed_incidents(args.seed)
    return emulator


def _parser() -> argparse.ArgumentParser:
    parser = SERVER.parser("Serve an emulated ServiceNow Table API.", port=8080, api_path="/api")
    parser.add_argument(
        "--user",
        type=_credential,
        action="append",
        default=[],
        metavar="NAME:PASSWORD",
        help="a Basic-auth user with write rights (repeatable; sets an existing user's password)",
    )
    parser.add_argument(
        "--reader",
        type=_credential,
        action="append",
        default=[],
        metavar="NAME:PASSWORD",
        help="a Basic-auth user without write rights: writes answer 403 (repeatable)",
    )
    parser.add_argument(
        "--token",
        action="append",
        default=[],
        metavar="[USER:]TOKEN",
        help="a bearer token, acting as USER (default admin) (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=0, help="create N incidents at start")
    parser.add_argument("--number-start", type=int, default=10001, help="first INC number")
    parser.add_argument(
        "--token-lifetime",
        type=float,
        default=1800.0,
        metavar="SECONDS",
        help="how long an OAuth access token lasts (refresh tokens: 100 times that)",
    )
    return parser


def _credential(value: str) -> tuple[str, str]:
    name, sep, password = value.partition(":")
    if not (name and sep and password):
        raise argparse.ArgumentTypeError("expected NAME:PASSWORD")
    return name, password


def _token(spec: str) -> tuple[str, str]:
    user, sep, token = spec.partition(":")
    return (token, user) if sep else (spec, "admin")


def _credentials_hint(args: argparse.Namespace) -> str:
    overridden = {name for name, _ in [*args.user, *args.reader]}
    # The default credential is emulator-only, so printing it once is a convenience, not a leak.
    admin = "admin/" + DEFAULT_PASSWORD if "admin" not in overridden else "admin"
    others = sorted(overridden - {"admin"})
    users = ", ".join([admin, *others])
    # The client's secret is never printed: it is documented as DEFAULT_OAUTH_CLIENT_SECRET.
    oauth = f"OAuth client: {DEFAULT_OAUTH_CLIENT_ID}"
    return f"Basic auth users: {users}; bearer tokens: {len(args.token)}; {oauth}"


if __name__ == "__main__":
    main()
