"""A JQL subset: parse a query, bind it to the site's vocabulary, then filter and order issues.

Grammar: clauses joined by ``AND`` / ``OR`` (AND binds tighter), ``NOT`` and parentheses,
then an optional ``ORDER BY field [ASC|DESC], ...``. Operators: ``=``, ``!=``, ``~``, ``!~``,
``>``, ``>=``, ``<``, ``<=``, ``IN``, ``NOT IN``, ``IS [NOT] EMPTY``. Keywords, field names and
values match case-insensitively. Unlike ServiceNow, Jira refuses what it cannot read: syntax
errors, unknown fields, unknown values and unsupported operators all raise :class:`JqlError`,
whose text is the message Jira puts in ``errorMessages``.

Issues are seen as rows (see :data:`Row`): per field, a set of canonical casefolded values for
term fields, a string for text fields, a datetime for dates and an int for ``id``.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

Row = Mapping[str, Any]
Predicate = Callable[[Row], bool]


class JqlError(ValueError):
    """A query Jira would refuse with 400; ``str(error)`` is Jira's message."""


# ---- syntax ---------------------------------------------------------------------------------

_SCANNER = re.compile(
    r"""(?P<space>\s+)
    |(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    |(?P<op>!=|!~|>=|<=|=|~|>|<)
    |(?P<punct>[(),])
    |(?P<word>[\w\-.:/@]+)""",
    re.VERBOSE | re.DOTALL,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r"}
_RESERVED_WORDS = frozenset({"and", "or", "not", "in", "is", "order", "by"})
_EMPTY_WORDS = frozenset({"empty", "null"})
_OPERATORS = "'=', '!=', '<', '>', '<=', '>=', '~', '!~', 'IN', 'NOT IN', 'IS' and 'IS NOT'"


@dataclass(frozen=True)
class Token:
    kind: str  # "string", "word", "op", "punct" or "eof"
    text: str  # the value, unescaped for strings
    offset: int

    def is_keyword(self, *words: str) -> bool:
        return self.kind == "word" and self.text.lower() in words

    def shown(self) -> str:
        return "EOF" if self.kind == "eof" else self.text


@dataclass(frozen=True)
class Function:
    name: str
    args: tuple[str, ...]


# A clause's value: a literal, a function call, or None for EMPTY / NULL.
Operand = str | Function | None


@dataclass(frozen=True)
class Clause:
    field: str
    op: str  # "=", "!=", "~", "!~", ">", ">=", "<", "<=", "in", "not in", "is", "is not"
    operands: tuple[Operand, ...]


@dataclass(frozen=True)
class And:
    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    part: Node


Node = Clause | And | Or | Not


@dataclass(frozen=True)
class SortKey:
    field: str
    descending: bool


@dataclass(frozen=True)
class Query:
    where: Node | None
    order_by: tuple[SortKey, ...]


def parse(text: str) -> Query:
    """The syntax tree of ``text``; raises :class:`JqlError` where Jira's parser would."""
    return _Parser(text).query()


def _tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    offset = 0
    while offset < len(text):
        match = _SCANNER.match(text, offset)
        if match is None:
            raise _syntax_error(text, offset, _unreadable(text, offset))
        kind = match.lastgroup or ""
        if kind != "space":
            value = match.group()
            if kind == "string":
                value = re.sub(r"\\(.)", lambda m: _ESCAPES.get(m[1], m[1]), value[1:-1])
            tokens.append(Token(kind, value, offset))
        offset = match.end()
    return [*tokens, Token("eof", "", len(text))]


def _unreadable(text: str, offset: int) -> str:
    char = text[offset]
    if char in "\"'":
        return f"The quoted string '{text[offset + 1 :]}' has not been completed."
    return (
        f"The character '{char}' is a reserved JQL character. You must enclose it in a string "
        f"or use the escape '\\u{ord(char):04x}' instead."
    )


def _syntax_error(text: str, offset: int, message: str) -> JqlError:
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return JqlError(f"Error in the JQL Query: {message} (line {line}, character {column})")


class _Parser:
    """Recursive descent over the tokens: or -> and -> not -> clause."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.position = 0

    def peek(self) -> Token:
        return self.tokens[self.position]

    def take(self) -> Token:
        token = self.tokens[self.position]
        self.position = min(self.position + 1, len(self.tokens) - 1)
        return token

    def fail(self, message: str, token: Token | None = None) -> JqlError:
        return _syntax_error(self.text, (token or self.peek()).offset, message)

    def expect_punct(self, char: str) -> None:
        token = self.take()
        if token.kind != "punct" or token.text != char:
            raise self.fail(f"Expecting '{char}' but got '{token.shown()}'.", token)

    def query(self) -> Query:
        where = None
        if not (self.peek().kind == "eof" or self.peek().is_keyword("order")):
            where = self.or_expr()
        order_by = self.order_by() if self.peek().is_keyword("order") else ()
        if self.peek().kind != "eof":
            raise self.fail(f"Expecting either 'OR' or 'AND' but got '{self.peek().shown()}'.")
        return Query(where, order_by)

    def or_expr(self) -> Node:
        parts = [self.and_expr()]
        while self.peek().is_keyword("or"):
            self.take()
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else Or(tuple(parts))

    def and_expr(self) -> Node:
        parts = [self.not_expr()]
        while self.peek().is_keyword("and"):
            self.take()
            parts.append(self.not_expr())
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def not_expr(self) -> Node:
        token = self.peek()
        if token.is_keyword("not"):
            self.take()
            return Not(self.not_expr())
        if token.kind == "punct" and token.text == "(":
            self.take()
            node = self.or_expr()
            self.expect_punct(")")
            return node
        return self.clause()

    def clause(self) -> Clause:
        field = self.take()
        if field.kind not in ("word", "string") or field.is_keyword(*_RESERVED_WORDS):
            raise self.fail(f"Expecting a field name but got '{field.shown()}'.", field)
        op = self.operator()
        if op in ("is", "is not"):
            if not self.take().is_keyword(*_EMPTY_WORDS):
                raise self.fail("Expecting 'EMPTY' or 'NULL'.", self.tokens[self.position - 1])
            return Clause(field.text, op, (None,))
        if op in ("in", "not in"):
            return Clause(field.text, op, self.operand_list())
        return Clause(field.text, op, (self.operand(),))

    def operator(self) -> str:
        token = self.take()
        if token.kind == "op":
            return token.text
        if token.is_keyword("in"):
            return "in"
        if token.is_keyword("not") and self.peek().is_keyword("in"):
            self.take()
            return "not in"
        if token.is_keyword("is"):
            if self.peek().is_keyword("not"):
                self.take()
                return "is not"
            return "is"
        message = (
            f"Expecting operator but got '{token.shown()}'. The valid operators are {_OPERATORS}."
        )
        raise self.fail(message, token)

    def operand_list(self) -> tuple[Operand, ...]:
        self.expect_punct("(")
        operands = [self.operand()]
        while self.peek().kind == "punct" and self.peek().text == ",":
            self.take()
            operands.append(self.operand())
        self.expect_punct(")")
        return tuple(operands)

    def operand(self) -> Operand:
        token = self.take()
        if token.kind == "string":
            return token.text
        if token.kind != "word" or token.is_keyword(*_RESERVED_WORDS):
            raise self.fail(
                f"Expecting either a value, list or function but got '{token.shown()}'.", token
            )
        if token.is_keyword(*_EMPTY_WORDS):
            return None
        if self.peek().kind == "punct" and self.peek().text == "(":
            return Function(token.text, self.arguments())
        return token.text

    def arguments(self) -> tuple[str, ...]:
        self.expect_punct("(")
        args: list[str] = []
        while not (self.peek().kind == "punct" and self.peek().text == ")"):
            if args:
                self.expect_punct(",")
            token = self.take()
            if token.kind not in ("word", "string"):
                raise self.fail(f"Expecting a function argument but got '{token.shown()}'.", token)
            args.append(token.text)
        self.take()
        return tuple(args)

    def order_by(self) -> tuple[SortKey, ...]:
        self.take()
        if not self.take().is_keyword("by"):
            raise self.fail("Expecting 'by' after 'order'.", self.tokens[self.position - 1])
        keys = [self.sort_key()]
        while self.peek().kind == "punct" and self.peek().text == ",":
            self.take()
            keys.append(self.sort_key())
        return tuple(keys)

    def sort_key(self) -> SortKey:
        field = self.take()
        if field.kind not in ("word", "string"):
            raise self.fail(f"Expecting a field name but got '{field.shown()}'.", field)
        descending = False
        if self.peek().is_keyword("asc", "desc"):
            descending = self.take().text.lower() == "desc"
        return SortKey(field.text, descending)


# ---- meaning ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Schema:
    """What binding needs to know of the site."""

    # field -> casefolded spelling -> canonical value, for fields with a closed set of values
    vocabulary: Mapping[str, Mapping[str, str]]
    ranks: Mapping[str, int]  # canonical priority -> rank; higher is more urgent
    current_user: str  # the caller's account id, for currentUser()
    now: datetime
    # The caller's profile time zone: Jira reads date literals and startOfDay() in it.
    zone: tzinfo = UTC


_EQUALITY = frozenset({"=", "!=", "in", "not in"})
_EMPTINESS = frozenset({"is", "is not"})
_ORDERING = frozenset({">", ">=", "<", "<="})
_CONTAINS = frozenset({"~", "!~"})
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}
_DATE_FORMATS = ("%Y/%m/%d %H:%M", "%Y-%m-%d %H:%M", "%Y/%m/%d", "%Y-%m-%d")
_PERIOD = re.compile(r"([-+]?)\s*((?:\d+\s*[wdhm]\s*)+)")
_PERIOD_UNITS = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes"}


@dataclass(frozen=True)
class _Field:
    name: str  # the row key
    kind: str  # "terms", "text", "date" or "number"
    operators: frozenset[str]


_FIELDS = {
    field.name.lower(): field
    for field in (
        _Field("project", "terms", _EQUALITY | _EMPTINESS),
        _Field("key", "terms", _EQUALITY),
        _Field("id", "number", _EQUALITY | _ORDERING),
        _Field("summary", "text", _CONTAINS | _EMPTINESS),
        _Field("description", "text", _CONTAINS | _EMPTINESS),
        _Field("comment", "text", _CONTAINS | _EMPTINESS),
        _Field("text", "text", _CONTAINS),
        _Field("status", "terms", _EQUALITY | _EMPTINESS),
        _Field("statusCategory", "terms", _EQUALITY),
        _Field("priority", "terms", _EQUALITY | _EMPTINESS | _ORDERING),
        _Field("labels", "terms", _EQUALITY | _EMPTINESS),
        _Field("assignee", "terms", _EQUALITY | _EMPTINESS),
        _Field("reporter", "terms", _EQUALITY | _EMPTINESS),
        _Field("issuetype", "terms", _EQUALITY | _EMPTINESS),
        _Field("created", "date", _EQUALITY | _EMPTINESS | _ORDERING),
        _Field("updated", "date", _EQUALITY | _EMPTINESS | _ORDERING),
    )
}
_ALIASES = {
    "issuekey": "key",
    "type": "issuetype",
    "createddate": "created",
    "updateddate": "updated",
}
_SORTABLE = frozenset({"created", "updated", "key", "priority", "id"})
_USER_FIELDS = frozenset({"assignee", "reporter"})


def compile_query(text: str, schema: Schema) -> Search:
    """Parse and bind ``text``; raises :class:`JqlError` for anything Jira would refuse."""
    query = parse(text)
    predicate = None if query.where is None else _bind(query.where, schema)
    return Search(predicate, tuple(_sorter(key, schema) for key in query.order_by))


@dataclass(frozen=True)
class Search:
    """A bound query: ``select`` filters and orders rows."""

    predicate: Predicate | None  # None: the query has no restriction (is unbounded)
    order_by: tuple[tuple[Callable[[Row], Any], bool], ...]  # (sort key, descending)

    @property
    def bounded(self) -> bool:
        return self.predicate is not None

    def select(self, rows: Iterable[Row]) -> list[Row]:
        """Matching rows, ordered; ties (and queries without ORDER BY) go newest first."""
        matched = [row for row in rows if self.predicate is None or self.predicate(row)]
        matched.sort(key=lambda row: row["id"], reverse=True)
        for key, descending in reversed(self.order_by):  # stable sorts, last key first
            matched.sort(key=key, reverse=descending)
        return matched


def _lookup_field(name: str) -> _Field:
    folded = name.lower()
    field = _FIELDS.get(_ALIASES.get(folded, folded))
    if field is None:
        raise JqlError(f"Field '{name}' does not exist or you do not have permission to view it.")
    return field


def _bind(node: Node, schema: Schema) -> Predicate:
    if isinstance(node, And):
        parts = [_bind(part, schema) for part in node.parts]
        return lambda row: all(part(row) for part in parts)
    if isinstance(node, Or):
        parts = [_bind(part, schema) for part in node.parts]
        return lambda row: any(part(row) for part in parts)
    if isinstance(node, Not):
        inner = _bind(node.part, schema)
        return lambda row: not inner(row)
    return _bind_clause(node, schema)


def _bind_clause(clause: Clause, schema: Schema) -> Predicate:
    field = _lookup_field(clause.field)
    if clause.op not in field.operators:
        raise JqlError(
            f"The operator '{clause.op}' is not supported by the '{clause.field}' field."
        )
    if clause.op in _EMPTINESS:
        wants_empty = clause.op == "is"
        return lambda row: _is_empty(row[field.name]) == wants_empty
    if clause.op in _CONTAINS:
        matches = _text_matcher(clause)
        negate = clause.op == "!~"
        return lambda row: matches(row[field.name]) != negate
    values = [_bind_value(field, clause.field, operand, schema) for operand in clause.operands]
    if clause.op in _ORDERING:
        return _ordering(field, clause.op, values[0], schema)
    return _equality(field, clause.op in ("=", "in"), values)


def _is_empty(value: Any) -> bool:
    return value is None or value == "" or value == frozenset()


def _values(row: Row, field: _Field) -> frozenset[Any]:
    """A row's value(s) of ``field`` as a set: term fields are sets already, others one value."""
    value = row[field.name]
    if isinstance(value, frozenset):
        return value
    return frozenset() if value is None else frozenset({value})


def _equality(field: _Field, positive: bool, values: Sequence[Any]) -> Predicate:
    wanted = frozenset(value for value in values if value is not None)
    wants_empty = None in values

    def test(row: Row) -> bool:
        have = _values(row, field)
        if positive:
            return bool(have & wanted) or (wants_empty and not have)
        # Jira's != and NOT IN never match an empty field.
        return bool(have) and not have & wanted

    return test


def _ordering(field: _Field, op: str, value: Any, schema: Schema) -> Predicate:
    if value is None:
        raise JqlError(f"The operator '{op}' is not supported with EMPTY for '{field.name}'.")
    compare = _COMPARE[op]
    if field.name == "priority":
        # Priorities order by urgency: "priority > Medium" means more urgent than Medium.
        bound = schema.ranks[value]
        return lambda row: any(compare(schema.ranks[p], bound) for p in _values(row, field))
    return lambda row: any(compare(have, value) for have in _values(row, field))


def _bind_value(field: _Field, typed: str, operand: Operand, schema: Schema) -> Any:
    """The canonical value ``operand`` stands for in ``field``; None stands for EMPTY."""
    if operand is None:
        return None
    if isinstance(operand, Function):
        return _call(field, operand, schema)
    if field.kind == "date":
        return _parse_date(typed, operand, schema.now, schema.zone)
    if field.kind == "number":
        if not operand.isdigit():
            raise JqlError(f"The value '{operand}' does not exist for the field '{typed}'.")
        return int(operand)
    folded = operand.casefold()
    vocabulary = schema.vocabulary.get(field.name)
    if vocabulary is None:
        return folded
    if folded not in vocabulary:
        if field.name == "key":
            raise JqlError(f"An issue with key '{operand}' does not exist for field '{typed}'.")
        raise JqlError(f"The value '{operand}' does not exist for the field '{typed}'.")
    return vocabulary[folded]


def _call(field: _Field, function: Function, schema: Schema) -> Any:
    name = function.name.lower()
    if name == "currentuser" and field.name in _USER_FIELDS:
        return schema.current_user.casefold()
    if name in ("now", "startofday", "endofday") and field.kind == "date":
        local = schema.now.astimezone(schema.zone)
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        return {
            "now": schema.now,
            "startofday": midnight,
            "endofday": midnight + timedelta(days=1, milliseconds=-1),
        }[name]
    if name in ("currentuser", "now", "startofday", "endofday"):
        raise JqlError(
            f"A value provided by the function '{function.name}' is invalid for the field "
            f"'{field.name}'."
        )
    raise JqlError(f"Unable to find JQL function '{function.name}()'.")


def _parse_date(typed: str, literal: str, now: datetime, zone: tzinfo) -> datetime:
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(literal, fmt).replace(tzinfo=zone)
        except ValueError:
            continue
    period = _PERIOD.fullmatch(literal.strip())
    if period is None:
        raise JqlError(
            f"Date value '{literal}' for field '{typed}' is invalid. Valid formats include: "
            "'yyyy/MM/dd HH:mm', 'yyyy-MM-dd HH:mm', 'yyyy/MM/dd', 'yyyy-MM-dd', or a period "
            "format e.g. '-5d', '4w 2d'."
        )
    amounts = re.findall(r"(\d+)\s*([wdhm])", period[2])
    delta = timedelta(**{_PERIOD_UNITS[unit]: int(n) for n, unit in amounts})
    return now - delta if period[1] == "-" else now + delta


def _text_matcher(clause: Clause) -> Callable[[str], bool]:
    """Jira's ``~``, simplified: case-insensitive containment; ``*`` and ``?`` as wildcards."""
    term = clause.operands[0]
    if not isinstance(term, str) or not term.strip():
        raise JqlError(f"The field '{clause.field}' requires a text value for '{clause.op}'.")
    pieces = re.split(r"([*?])", term.strip().casefold())
    pattern = re.compile(
        "".join({"*": r"\S*", "?": r"\S"}.get(piece, re.escape(piece)) for piece in pieces)
    )
    return lambda text: bool(text) and pattern.search(text.casefold()) is not None


def _sorter(key: SortKey, schema: Schema) -> tuple[Callable[[Row], Any], bool]:
    field = _lookup_field(key.field)
    if field.name not in _SORTABLE:
        raise JqlError(f"Not able to sort using field '{key.field}'.")
    if field.name == "priority":
        return (lambda row: max(schema.ranks[p] for p in row["priority"])), key.descending
    if field.name == "key":
        return _key_order, key.descending
    return (lambda row: row[field.name]), key.descending


def _key_order(row: Row) -> tuple[str, int]:
    """Keys order by project, then numerically: DQ-9 before DQ-10."""
    project, _, number = next(iter(row["key"])).rpartition("-")
    return project, int(number)
