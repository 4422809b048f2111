"""The ``ticketing`` command line, as a package: :mod:`.provider_commands` holds it for now."""

from ticketing_core.cli.provider_commands import EXIT_USAGE, cli, database_option, main, on_ticket

__all__ = ["EXIT_USAGE", "cli", "database_option", "main", "on_ticket"]
