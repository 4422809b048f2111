"""Entry point of the host: adds ``serve``, ``worker``, ``demo``, ``keys``, ``inbound``,
``servicenow`` and ``sync-log`` to ``ticketing``."""

from __future__ import annotations

import click

from ticketing_core import hookimpl

from .commands import demo, keys, serve, worker
from .inbound_commands import inbound, servicenow, sync_log


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(serve)
    cli.add_command(worker)
    cli.add_command(demo)
    cli.add_command(keys)
    cli.add_command(inbound)
    cli.add_command(servicenow)
    cli.add_command(sync_log)
