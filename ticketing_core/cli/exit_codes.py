"""Framework errors as one line on stderr and the exit code of their kind."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import click

from ticketing_core import errors

EXIT_USAGE = 2
EXIT_CODES: tuple[tuple[type[errors.TicketingError], int], ...] = (
    (errors.InvalidInput, EXIT_USAGE),
    (errors.PluginError, EXIT_USAGE),
    (errors.AuthenticationFailed, 3),
    (errors.NotFound, 4),
    (errors.ProviderUnavailable, 5),
    (errors.RateLimited, 5),
    (errors.UnexpectedResponse, 5),
    (errors.PermissionDenied, 6),
    (errors.TicketingError, 1),
)


def exit_code_for(error: errors.TicketingError) -> int:
    return next(code for kind, code in EXIT_CODES if isinstance(error, kind))


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn framework errors into one stderr line and the matching exit code."""
    try:
        yield
    except errors.TicketingError as exc:
        one_line = " ".join(str(exc).split())  # services' messages may span lines
        click.echo(f"error: {one_line}", err=True)
        sys.exit(exit_code_for(exc))
