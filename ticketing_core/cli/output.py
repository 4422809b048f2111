"""How the commands print: a ticket, a table, the canonical JSON shape, a progress bar."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import click

from ticketing_core.converters import unstructure
from ticketing_core.models import Ticket


def emit(data: Any, as_json: bool, render: Callable[[Any], str]) -> None:
    click.echo(json.dumps(unstructure(data), indent=2) if as_json else render(data))


def render_ticket(ticket: Ticket) -> str:
    rows = {
        "Number": ticket.number,
        "Id": ticket.id,
        "Title": ticket.title,
        "Status": ticket.status,
        "Priority": ticket.priority,
        "Urgency": ticket.urgency,
        "Impact": ticket.impact,
        "Category": ticket.category,
        "Subcategory": ticket.subcategory,
        "Assigned to": ticket.assigned_to,
        "Group": ticket.assignment_group,
        "Created": ticket.created_at and ticket.created_at.strftime("%Y-%m-%d %H:%M UTC"),
        "Updated": ticket.updated_at and ticket.updated_at.strftime("%Y-%m-%d %H:%M UTC"),
        "URL": ticket.url,
    }
    lines = [f"{label + ':':<13}{value}" for label, value in rows.items() if value]
    if ticket.description:
        lines += ["", ticket.description]
    return "\n".join(lines)


def render_table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    )


@contextmanager
def progress_bar(what: str) -> Iterator[Callable[[int, int], None]]:
    """``advance(done, total)``, drawn on stderr when it is a terminal, and silent otherwise."""
    from rich.console import Console
    from rich.progress import Progress

    terminal = Console(stderr=True)
    with Progress(console=terminal, transient=True, disable=not terminal.is_terminal) as bar:
        task = bar.add_task(what, total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, advance=done, total=total)

        yield advance
