"""Claims: the one way the engine lets a single worker act on a row that several may reach.

A worker *claims* a row by writing a fresh *claim token* and a *lease* (``lease_until``, on the
database's clock). Everything it then writes about the row is *fenced*: the write matches the
token, so a worker whose lease ran out, and whose row another worker claimed since, changes
nothing. A claim that may have sent something before it ended leaves the row *in doubt*: whoever
claims it next looks for what the earlier attempt did before doing it again.

Both tables of claimed work use these words and these helpers: the outbox's events
(:mod:`ticketing_core.sync.outbox`) and the keyed requests (:mod:`ticketing_core.sync.once`).
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa


def new_token() -> str:
    """A fencing token: unique to one claim."""
    return secrets.token_hex(16)


def held(
    table: sa.Table, token: str | None, *where: sa.ColumnElement[bool]
) -> sa.ColumnElement[bool]:
    """The rows matching ``where`` while the claim with ``token`` holds them."""
    return sa.and_(*where, table.c.claim_token == token)


def fenced(table: sa.Table, token: str | None, *where: sa.ColumnElement[bool]) -> sa.Update:
    """An update of the rows matching ``where`` that changes nothing once the claim with
    ``token`` no longer holds them."""
    return table.update().where(held(table, token, *where))
