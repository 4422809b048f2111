"""``ticketing``: the operator's command line, against any installed provider.

Exit codes: 0 success, 2 usage or invalid input, 3 authentication failed, 4 not found,
5 provider unavailable (down, timed out, rate limited), 6 permission denied, 1 any other provider error.
Errors are one line on stderr; secrets are never printed.

:mod:`.group` is the ``ticketing`` group and its entry point; :mod:`.provider_commands` and
:mod:`.outbox_commands` hold the commands, :mod:`.connection` the options and connection the
provider commands share, :mod:`.exit_codes` the error reporting and :mod:`.output` the printing.
Plugins that add commands import what they share from here. The console script,
:mod:`ticketing_core.console`, stays outside: it must run when click is missing.
"""

from ticketing_core.cli.connection import connected, connection_options
from ticketing_core.cli.exit_codes import EXIT_USAGE, reported_errors
from ticketing_core.cli.group import cli, main
from ticketing_core.cli.outbox_commands import database_option, open_outbox
from ticketing_core.cli.output import emit, progress_bar, render_table, render_ticket
from ticketing_core.cli.provider_commands import on_ticket

__all__ = [
    "EXIT_USAGE",
    "cli",
    "connected",
    "connection_options",
    "database_option",
    "emit",
    "main",
    "on_ticket",
    "open_outbox",
    "progress_bar",
    "render_table",
    "render_ticket",
    "reported_errors",
]
