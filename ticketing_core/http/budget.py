"""How hard provider calls try, chosen at the call site: attempts per request and one deadline.

Interactive calls (the host API, the CLI) get one total deadline (default 20 s) across all retries;
background delivery makes a single attempt and lets the outbox back off. A :func:`call_budget` block
sets that for every request made inside it, in this thread or task.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator
from contextlib import contextmanager

import attrs

DEFAULT_DEADLINE = 20.0  # seconds for one interactive call, all attempts and reads included
DEFAULT_ATTEMPTS = 4


@attrs.frozen
class Budget:
    """How hard the calls in a :func:`call_budget` block try: attempts per request, and a
    deadline (``time.monotonic()`` value) shared by every request in the block."""

    attempts: int
    deadline: float

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


_budget: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("budget", default=None)


def current_budget() -> Budget | None:
    """The budget of the enclosing :func:`call_budget` block (inside a request: the request's)."""
    return _budget.get()


def remaining_seconds() -> float | None:
    """Seconds left of the enclosing block's deadline; None outside any block."""
    budget = _budget.get()
    return None if budget is None else budget.remaining()


@contextmanager
def call_budget(*, deadline: float | None = None, attempts: int | None = None) -> Iterator[Budget]:
    """Bound the provider calls made inside the block: at most ``attempts`` sends per request and
    ``deadline`` seconds for all of them together.

    Blocks nest: an inner block can only tighten the outer one, and one that names nothing joins
    it (or starts one with the defaults when there is none).
    """
    outer = _budget.get()
    if outer is None:
        outer = Budget(DEFAULT_ATTEMPTS, time.monotonic() + (deadline or DEFAULT_DEADLINE))
    budget = Budget(
        min(outer.attempts, attempts or outer.attempts),
        min(outer.deadline, time.monotonic() + deadline) if deadline else outer.deadline,
    )
    token = _budget.set(budget)
    try:
        yield budget
    finally:
        _budget.reset(token)
