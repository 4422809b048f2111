"""The ``ticketing`` group: the commands of this package and those plugins register, and the
entry point."""

from __future__ import annotations

import sys

import click
from stamina.instrumentation import set_on_retry_hooks

from ticketing_core.cli.exit_codes import EXIT_USAGE
from ticketing_core.cli.outbox_commands import outbox
from ticketing_core.cli.provider_commands import (
    check,
    create,
    get,
    note,
    providers,
    search,
    status,
    update,
)
from ticketing_core.http.client import retry_notice
from ticketing_core.plugins import DISTRIBUTION, default_registry


class PluginCommands(click.Group):
    """A group that adds the commands other distributions register (the ``register_commands``
    hook) when first asked for its commands, not at import: importing this module loads no
    plugin, so a plugin may import from it. A plugin whose hook fails is logged and listed by
    ``ticketing providers``."""

    _plugins_added = False

    def _add_plugin_commands(self) -> None:
        if not self._plugins_added:
            self._plugins_added = True
            default_registry().add_commands(self)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._add_plugin_commands()
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._add_plugin_commands()
        return super().list_commands(ctx)


@click.group(cls=PluginCommands)
@click.version_option(package_name=DISTRIBUTION)
@click.pass_context
def cli(context: click.Context) -> None:
    """Operate ticketing providers (ServiceNow, ...) from the command line."""
    # Retries are told as one line each, instead of stamina's log events.
    set_on_retry_hooks([lambda retry: click.echo(f"note: {retry_notice(retry)}", err=True)])
    context.call_on_close(lambda: set_on_retry_hooks(None))


for command in (providers, check, search, get, create, update, note, status, outbox):
    cli.add_command(command)


def main() -> None:
    for position, argument in enumerate(sys.argv[1:], start=1):
        try:
            argument.encode()
        except UnicodeEncodeError:  # bytes the terminal's encoding could not decode
            click.echo(f"error: argument {position} is not valid UTF-8 text", err=True)
            sys.exit(EXIT_USAGE)
    cli(prog_name="ticketing")
