"""ServiceNow encoded queries (``sysparm_query``): parse once, then filter and order records.

Grammar, as the Table API reads it: conditions joined by ``^`` (AND) or ``^OR`` (OR, binding
tighter than AND), whole groups joined by ``^NQ`` (OR of groups), ``ORDERBY<field>`` /
``ORDERBYDESC<field>`` anywhere, ``^^`` an escaped literal ``^``. Parts that cannot be read, and
conditions on fields the table does not have, are dropped silently, as ServiceNow does.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

TEXT_QUERY = "123TEXTQUERY321"

# Longest operators first so "NOT LIKE" is not read as a field ending in "NOT".
_OPERATORS = (
    "NOT LIKE", "NOT IN", "ISNOTEMPTY", "ISEMPTY", "STARTSWITH", "ENDSWITH",
    "LIKE", "IN", "!=", "<=", ">=", "=", "<", ">",
)  # fmt: skip
_OPERATOR_PATTERN = "|".join(re.escape(op) for op in _OPERATORS)
_CONDITION = re.compile(
    rf"(?P<field>[a-z0-9_.]+)(?P<op>{_OPERATOR_PATTERN})(?P<value>.*)", re.DOTALL
)
# Clients send date bounds as gs.dateGenerate('2024-01-31','10:00:00'); compare the literal instead.
_DATE_GENERATE = re.compile(r"javascript:gs\.dateGenerate\('([^']*)',\s*'([^']*)'\)")
_ESCAPED_CARET = "\x00"
# The one script value the emulator evaluates: the session user's name, as in
# ``sys_user?sysparm_query=user_name=javascript:gs.getUserName()``.
USER_NAME_SCRIPT = "javascript:gs.getUserName()"
# What ServiceNow compares as numbers: plain decimals (not "1e5", "inf" or "nan", which are text).
_DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?")

_STRING_TESTS: dict[str, Callable[[str, str], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "LIKE": lambda have, want: want in have,
    "NOT LIKE": lambda have, want: want not in have,
    "STARTSWITH": str.startswith,
    "ENDSWITH": str.endswith,
    "IN": lambda have, want: have in _split_list(want),
    "NOT IN": lambda have, want: have not in _split_list(want),
    "ISEMPTY": lambda have, _: have == "",
    "ISNOTEMPTY": lambda have, _: have != "",
}
_ORDERING: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}

Record = Mapping[str, str]
R = TypeVar("R", bound=Record)
# Returns a field's raw value (dot-walks included), or None when the table has no such field.
Resolver = Callable[[Record, str], "str | None"]


@dataclass(frozen=True)
class Condition:
    field: str
    op: str
    value: str


@dataclass(frozen=True)
class EncodedQuery:
    # OR of groups (^NQ); each group is an AND of clauses; each clause an OR of conditions.
    groups: tuple[tuple[tuple[Condition, ...], ...], ...] = ()
    order_by: tuple[tuple[str, bool], ...] = ()  # (field, descending), primary key first

    def matches(self, record: Record, resolve: Resolver) -> bool:
        return not self.groups or any(
            all(_clause_matches(clause, record, resolve) for clause in group)
            for group in self.groups
        )

    def apply(self, records: Iterable[R], resolve: Resolver) -> list[R]:
        """Matching records, ordered by the ORDERBY keys (stable: ties keep insertion order)."""
        rows = [record for record in records if self.matches(record, resolve)]
        # Sorting by the last key first makes the first ORDERBY the primary key.
        for field, descending in reversed(self.order_by):
            if rows and resolve(rows[0], field) is not None:  # unknown fields are ignored
                _sort(rows, field, descending, resolve)
        return rows


def parse(text: str, *, user_name: str | None = None) -> EncodedQuery:
    """The query ``text``; ``user_name`` is what :data:`USER_NAME_SCRIPT` stands for."""
    conditions = functools.partial(_parse_condition, user_name=user_name)
    groups: list[list[list[Condition]]] = [[]]
    order_by: list[tuple[str, bool]] = []
    for raw in text.replace("^^", _ESCAPED_CARET).split("^"):
        part = raw.replace(_ESCAPED_CARET, "^")
        if part.startswith("ORDERBYDESC"):
            order_by.append((part.removeprefix("ORDERBYDESC"), True))
        elif part.startswith("ORDERBY"):
            order_by.append((part.removeprefix("ORDERBY"), False))
        elif part.startswith("NQ"):
            groups.append([])
            _add(groups[-1], conditions(part.removeprefix("NQ")), alternative=False)
        elif part.startswith("OR"):
            _add(groups[-1], conditions(part.removeprefix("OR")), alternative=True)
        else:
            _add(groups[-1], conditions(part), alternative=False)
    return EncodedQuery(
        groups=tuple(tuple(tuple(clause) for clause in group) for group in groups if group),
        order_by=tuple(order_by),
    )


def _add(group: list[list[Condition]], condition: Condition | None, *, alternative: bool) -> None:
    if condition is None:
        return
    if alternative and group:
        group[-1].append(condition)
    else:
        group.append([condition])


def _parse_condition(part: str, *, user_name: str | None) -> Condition | None:
    if part.startswith(TEXT_QUERY + "="):
        return Condition(TEXT_QUERY, "=", part.removeprefix(TEXT_QUERY + "="))
    found = _CONDITION.fullmatch(part)
    if found is None:
        return None  # EQ markers, unsupported operators, garbage: ignored like ServiceNow does
    value = _DATE_GENERATE.sub(r"\1 \2", found["value"])
    if value == USER_NAME_SCRIPT and user_name is not None:
        value = user_name
    return Condition(found["field"], found["op"], value)


def _clause_matches(clause: Sequence[Condition], record: Record, resolve: Resolver) -> bool:
    known = [(c, value) for c in clause if (value := resolve(record, c.field)) is not None]
    # A clause whose every condition names an unknown field was dropped: it matches everything.
    return not known or any(_test(c, value) for c, value in known)


def _test(condition: Condition, actual: str) -> bool:
    if condition.field == TEXT_QUERY:
        text = actual.casefold()
        return all(term.casefold() in text for term in condition.value.split())
    if condition.op in _ORDERING:
        return _compare(_ORDERING[condition.op], actual, condition.value)
    # Real instances compare case-insensitively (database collation); so does the emulator.
    return _STRING_TESTS[condition.op](actual.casefold(), condition.value.casefold())


def _compare(test: Callable[[Any, Any], bool], actual: str, wanted: str) -> bool:
    if actual == "":
        return False  # SQL: an empty (NULL) column is neither less nor greater than anything
    left, right = _number(actual), _number(wanted)
    if left is not None and right is not None:
        return test(left, right)
    return test(actual.casefold(), wanted.casefold())


def _split_list(value: str) -> set[str]:
    return {item.strip() for item in value.split(",")}


def _number(value: str) -> float | None:
    return float(value) if _DECIMAL.fullmatch(value) else None


def _sort(rows: list[R], field: str, descending: bool, resolve: Resolver) -> None:
    rows.sort(key=lambda row: _sort_key(resolve(row, field)), reverse=descending)


def _sort_key(value: str | None) -> tuple[int, float, str]:
    # Empty first (as NULLs sort in ascending SQL), then numbers numerically, then text.
    if not value:
        return (0, 0.0, "")
    number = _number(value)
    if number is not None:
        return (1, number, "")
    return (2, 0.0, value.casefold())
