"""Entry point of the host: adds ``serve``, ``worker``, ``demo`` and ``keys`` to ``ticketing``."""

from __future__ import annotations

import click

from ticketing_core import hookimpl

from .commands import demo, keys, serve, worker


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(serve)
    cli.add_command(worker)
    cli.add_command(demo)
    cli.add_command(keys)
