"""The one builder of ServiceNow encoded queries (``sysparm_query``).

Every query bpsync sends is built here, never concatenated (docs/servicenow-api.md
sections 0 and 2.5, SPEC B20). The contract:

- Field names must match ``^[a-z_][a-z0-9_.]*$`` (dot-walking allowed). ServiceNow silently
  drops conditions on unknown fields, which *widens* a query, so a typo must fail here.
- Every value is escaped: a literal ``^`` is doubled (``^^``), which is ServiceNow's own
  escape (``GlideStringUtil.escapeQueryTermSeparator``) and which the emulator honours.
  A value can therefore never introduce ``^OR``, ``^NQ`` or ``^ORDERBY`` terms.
- ``,`` is refused inside ``IN``/``NOT IN`` lists (the platform has no escape for it).
- A value starting with ``javascript:`` (case-insensitive, after stripping blanks) is
  refused: ServiceNow would evaluate it server-side.
- Comparison values may not be empty (ServiceNow's handling of ``field=`` is undefined;
  use :meth:`EncodedQuery.is_empty`), and a ``>``/``<`` value may not start with ``=``
  (it would turn the operator into ``>=``/``<=``).
- Ids bpsync generates or echoes back (sys_ids, correlation ids, table names, UTC
  timestamps) are checked against strict patterns by the ``check_*`` helpers.

Violations raise :class:`QueryError`, a :class:`~sync.errors.PermanentError`: the item
that carried the bad value is skipped, the daemon goes on.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from sync.constants import SN_DATETIME_FORMAT, SN_SYS_ID_PATTERN
from sync.errors import PermanentError

FIELD_RE = re.compile(r"^[a-z_][a-z0-9_.]*$")
TABLE_RE = re.compile(r"^[a-z_][a-z0-9_]*$")
SYS_ID_RE = re.compile(SN_SYS_ID_PATTERN)
#: correlation ids bpsync writes (BigPanda incident ids); the docs' whitelist (section 2.5)
CORRELATION_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")
#: ServiceNow's raw date-time format, UTC, second precision
SN_DATETIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")


class QueryError(PermanentError):
    """A query could not be built safely; the message names the field and the problem."""

    def __init__(self, message: str) -> None:
        super().__init__("servicenow", message)


class Op(StrEnum):
    """Encoded-query operators bpsync uses (docs/servicenow-api.md 2.2)."""

    EQ = "="
    NE = "!="
    GT = ">"
    GE = ">="
    LT = "<"
    LE = "<="
    LIKE = "LIKE"
    NOT_LIKE = "NOT LIKE"
    STARTSWITH = "STARTSWITH"
    ENDSWITH = "ENDSWITH"
    IN = "IN"
    NOT_IN = "NOT IN"
    ISEMPTY = "ISEMPTY"
    ISNOTEMPTY = "ISNOTEMPTY"


_UNARY = frozenset({Op.ISEMPTY, Op.ISNOTEMPTY})
_LISTS = frozenset({Op.IN, Op.NOT_IN})


def check_field(name: str) -> str:
    """Return ``name`` if it is a valid (possibly dot-walked) field name."""
    if not isinstance(name, str) or not FIELD_RE.fullmatch(name):
        raise QueryError(f"invalid ServiceNow field name {name!r} (expected [a-z_][a-z0-9_.]*)")
    return name


def check_table(name: str) -> str:
    """Return ``name`` if it is a valid table name (also used in URL paths)."""
    if not isinstance(name, str) or not TABLE_RE.fullmatch(name):
        raise QueryError(f"invalid ServiceNow table name {name!r} (expected [a-z_][a-z0-9_]*)")
    return name


def check_sys_id(value: str) -> str:
    """Return ``value`` if it is a 32-hex sys_id (also used in URL paths)."""
    if not isinstance(value, str) or not SYS_ID_RE.fullmatch(value):
        raise QueryError(f"invalid sys_id {value!r} (expected 32 lower-case hex digits)")
    return value


def check_correlation_id(value: str) -> str:
    """Return ``value`` if it is a correlation id bpsync could have written."""
    if not isinstance(value, str) or not CORRELATION_ID_RE.fullmatch(value):
        raise QueryError(
            f"invalid correlation_id {value!r} (expected 1-100 of A-Z a-z 0-9 . _ : -)"
        )
    return value


def check_sn_datetime(value: str) -> str:
    """Return ``value`` if it is a raw ServiceNow date-time ``YYYY-MM-DD HH:MM:SS``."""
    if not isinstance(value, str) or not SN_DATETIME_RE.fullmatch(value):
        raise QueryError(f"invalid ServiceNow date-time {value!r} (expected YYYY-MM-DD HH:MM:SS)")
    return value


def sn_datetime(when: datetime) -> str:
    """An aware datetime as ServiceNow's UTC literal, truncated to the second."""
    if when.tzinfo is None:
        raise QueryError("naive datetime in a ServiceNow query (bpsync works in aware UTC)")
    return when.astimezone(UTC).strftime(SN_DATETIME_FORMAT)


def escape_value(field: str, value: str) -> str:
    """Escape one value: refuse ``javascript:``, double every ``^``."""
    if not isinstance(value, str):
        raise QueryError(f"value for {field} must be a string, not {type(value).__name__}")
    if value.strip().lower().startswith("javascript:"):
        raise QueryError(f"value for {field} starts with 'javascript:' (refused: server-side code)")
    return value.replace("^", "^^")


@dataclass(frozen=True, slots=True)
class _Term:
    text: str
    or_with_previous: bool


class EncodedQuery:
    """An encoded query under construction; methods return ``self`` for chaining.

    ``where`` adds a condition AND-ed to the current group, ``or_where`` one OR-ed with the
    condition just before it (``^OR``), ``new_group`` starts a new OR-ed group (``^NQ``),
    ``order_by`` adds a sort term. Sort terms are emitted once, at the end of the query,
    whatever the number of groups.
    """

    def __init__(self) -> None:
        self._groups: list[list[_Term]] = [[]]
        self._order: list[str] = []

    # --- conditions
    def where(
        self, field: str, op: Op | str, value: str | Iterable[str] | None = None
    ) -> EncodedQuery:
        self._groups[-1].append(_Term(self._condition(field, Op(op), value), False))
        return self

    def or_where(
        self, field: str, op: Op | str, value: str | Iterable[str] | None = None
    ) -> EncodedQuery:
        if not self._groups[-1]:
            raise QueryError("or_where needs a condition before it in the same group")
        self._groups[-1].append(_Term(self._condition(field, Op(op), value), True))
        return self

    def eq(self, field: str, value: str) -> EncodedQuery:
        return self.where(field, Op.EQ, value)

    def is_empty(self, field: str) -> EncodedQuery:
        return self.where(field, Op.ISEMPTY)

    def is_not_empty(self, field: str) -> EncodedQuery:
        return self.where(field, Op.ISNOTEMPTY)

    def in_(self, field: str, values: Iterable[str]) -> EncodedQuery:
        return self.where(field, Op.IN, values)

    def new_group(self) -> EncodedQuery:
        if not self._groups[-1]:
            raise QueryError("new_group after an empty group")
        self._groups.append([])
        return self

    def order_by(self, field: str, *, descending: bool = False) -> EncodedQuery:
        prefix = "ORDERBYDESC" if descending else "ORDERBY"
        self._order.append(prefix + check_field(field))
        return self

    # --- output
    def build(self) -> str:
        groups: list[str] = []
        for group in self._groups:
            if not group:
                continue
            parts = [group[0].text]
            for term in group[1:]:
                parts.append(("^OR" if term.or_with_previous else "^") + term.text)
            groups.append("".join(parts))
        return "^".join(filter(None, ["^NQ".join(groups), *self._order]))

    def __str__(self) -> str:
        return self.build()

    @staticmethod
    def _condition(field: str, op: Op, value: str | Iterable[str] | None) -> str:
        check_field(field)
        if op in _UNARY:
            if value is not None:
                raise QueryError(f"{op.value} on {field} takes no value")
            return f"{field}{op.value}"
        if value is None:
            raise QueryError(f"{op.value} on {field} needs a value")
        if op in _LISTS:
            if isinstance(value, str):
                raise QueryError(f"{op.value} on {field} needs a list of values, not a string")
            items = list(value)
            if not items:
                raise QueryError(f"{op.value} on {field} needs at least one value")
            escaped = []
            for item in items:
                if "," in item:
                    raise QueryError(
                        f"value {item!r} for {field} {op.value} contains ',' "
                        "(ServiceNow cannot escape it in a list)"
                    )
                if item == "":
                    raise QueryError(f"empty value in {field} {op.value} list")
                escaped.append(escape_value(field, item))
            return f"{field}{op.value}{','.join(escaped)}"
        if not isinstance(value, str):
            raise QueryError(f"value for {field} must be a string, not {type(value).__name__}")
        if value == "":
            raise QueryError(f"empty value for {field}{op.value} (use ISEMPTY for empty fields)")
        if op in (Op.GT, Op.LT) and value.startswith("="):
            raise QueryError(f"value for {field}{op.value} may not start with '='")
        return f"{field}{op.value}{escape_value(field, value)}"


def equality_query(conditions: Mapping[str, str] | Iterable[tuple[str, str]]) -> EncodedQuery:
    """AND of ``field=value`` conditions (look-ups by e-mail, name, ...)."""
    pairs = conditions.items() if isinstance(conditions, Mapping) else conditions
    query = EncodedQuery()
    for field, value in pairs:
        query.eq(field, value)
    return query
