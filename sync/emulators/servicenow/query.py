"""Encoded queries (``sysparm_query``): the parser, and the compiler into row predicates.

Syntax and operators: docs/servicenow-api.md 2.1-2.2 (see the package docstring).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sync.constants import SN_DATETIME_FORMAT
from sync.emulators.servicenow.schema import compare_key, utc_str
from sync.emulators.servicenow.state import InstanceState, User

_FIELD_RE = re.compile(r"[a-z0-9_.]+")

OPERATORS = (  # longest first where one is a prefix of another (docs 2.2)
    "ISNOTEMPTY",
    "ISEMPTY",
    "EMPTYSTRING",
    "ANYTHING",
    "NOT LIKE",
    "NOT IN",
    "NSAMEAS",
    "SAMEAS",
    "STARTSWITH",
    "ENDSWITH",
    "BETWEEN",
    "LIKE",
    "IN",
    "!=",
    ">=",
    "<=",
    "!*",
    "=",
    ">",
    "<",
    "*",
    "%",
)
_ALIASES = {"*": "LIKE", "!*": "NOT LIKE", "%": "ENDSWITH"}
_UNARY_OPS = frozenset({"ISNOTEMPTY", "ISEMPTY", "EMPTYSTRING", "ANYTHING"})


@dataclass(frozen=True, slots=True)
class Condition:
    field: str
    op: str
    value: str


@dataclass(slots=True)
class ParsedQuery:
    """``groups`` are OR-ed (``^NQ``); a group is an AND of OR-clauses (lists of conditions)."""

    groups: list[list[list[Condition]]] = field(default_factory=list)
    order: list[tuple[str, bool]] = field(default_factory=list)
    """(field, descending)"""
    invalid: list[str] = field(default_factory=list)
    """terms that could not be parsed"""


def split_terms(query: str) -> list[tuple[str, str]]:
    """Split on ``^`` joiners honouring ``^^`` (a literal caret).

    Returns ``(joiner, text)`` pairs: joiner ``""`` for the first term, ``"^"`` (AND),
    ``"^OR"``, ``"^NQ"``; ``ORDERBY`` terms keep their prefix in the text.
    """
    raw: list[str] = []
    current: list[str] = []
    i, n = 0, len(query)
    while i < n:
        ch = query[i]
        if ch == "^":
            if i + 1 < n and query[i + 1] == "^":
                current.append("^")
                i += 2
                continue
            raw.append("".join(current))
            current = []
            i += 1
            continue
        current.append(ch)
        i += 1
    raw.append("".join(current))
    terms: list[tuple[str, str]] = []
    for index, text in enumerate(raw):
        if index == 0:
            terms.append(("", text))
        elif text.startswith("ORDERBY"):
            terms.append(("^", text))
        elif text.startswith("OR"):
            terms.append(("^OR", text[2:]))
        elif text.startswith("NQ"):
            terms.append(("^NQ", text[2:]))
        else:
            terms.append(("^", text))
    return terms


def parse_condition(text: str) -> Condition | None:
    """``<field><OP><value>``; None when no field or operator can be read."""
    match = _FIELD_RE.match(text)
    if match is None:
        return None
    name = match.group(0)
    rest = text[match.end() :]
    for op in OPERATORS:
        if rest.startswith(op):
            value = rest[len(op) :]
            op_name = _ALIASES.get(op, op)
            if op_name in _UNARY_OPS and value:
                return None
            return Condition(name, op_name, value)
    return None


def parse_query(query: str) -> ParsedQuery:
    """Parse ``sysparm_query`` (field validity is checked later, against a table)."""
    parsed = ParsedQuery(groups=[[]])
    for joiner, text in split_terms(query):
        if text.startswith("ORDERBYDESC"):
            parsed.order.append((text[len("ORDERBYDESC") :], True))
            continue
        if text.startswith("ORDERBY"):
            parsed.order.append((text[len("ORDERBY") :], False))
            continue
        if joiner == "^NQ":
            parsed.groups.append([])
        if text in {"", "EQ"}:
            continue
        condition = parse_condition(text)
        if condition is None:
            parsed.invalid.append(text)
            continue
        group = parsed.groups[-1]
        if joiner == "^OR" and group:
            group[-1].append(condition)
        else:
            group.append([condition])
    return parsed


# --------------------------------------------------------------------------- compiling

_COMPARATORS: dict[str, Callable[[Any, Any], bool]] = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
}


def compile_query(
    state: InstanceState, table: str, parsed: ParsedQuery, user: User
) -> tuple[Callable[[Mapping[str, str]], bool] | None, list[tuple[str, bool]], bool]:
    """(predicate or None for all, valid sort terms, whether something was invalid)."""
    invalid = bool(parsed.invalid)
    groups: list[list[list[Callable[[Mapping[str, str]], bool]]]] = []
    for group in parsed.groups:
        clauses = []
        for clause in group:
            tests = []
            for condition in clause:
                test = _condition_test(state, table, condition, user)
                if test is None:
                    invalid = True
                else:
                    tests.append(test)
            if tests:
                clauses.append(tests)
        groups.append(clauses)
    order = [(f, d) for f, d in parsed.order if state.valid_path(table, f)]
    if len(order) != len(parsed.order):
        invalid = True
    if any(not g for g in groups):
        return None, order, invalid  # an empty group matches everything

    def predicate(row: Mapping[str, str]) -> bool:
        for group in groups:  # plain loops: this runs once per row of a 10k-row table
            for clause in group:
                for test in clause:
                    if test(row):
                        break
                else:
                    break
            else:
                return True
        return False

    return predicate, order, invalid


def _condition_test(
    state: InstanceState, table: str, cond: Condition, user: User
) -> Callable[[Mapping[str, str]], bool] | None:
    if not state.valid_path(table, cond.field):
        return None
    path = cond.field
    _, fdef, _ = state.resolve(table, {}, path)
    numeric = fdef.kind == "integer"
    if "." in path:

        def get(row: Mapping[str, str]) -> str:
            return state.resolve(table, row, path)[0]
    else:

        def get(row: Mapping[str, str]) -> str:
            return row.get(path, "")

    op = cond.op
    if op == "ANYTHING":
        return lambda row: True
    if op in {"ISEMPTY", "EMPTYSTRING"}:
        return lambda row: get(row) == ""
    if op == "ISNOTEMPTY":
        return lambda row: get(row) != ""
    if op in {"SAMEAS", "NSAMEAS"}:
        other = cond.value
        if not state.valid_path(table, other):
            return None
        same = op == "SAMEAS"
        return lambda row: (get(row) == state.resolve(table, row, other)[0]) is same
    if op in {"IN", "NOT IN"}:
        resolved = [_js(state, v, user) for v in cond.value.split(",")]
        if any(v is None for v in resolved):
            return None
        members = {v for v in resolved if v is not None}
        if op == "IN":
            return lambda row: get(row) in members
        return lambda row: get(row) not in members
    if op == "BETWEEN":
        ends = cond.value.split("@")
        if len(ends) != 2:
            return None
        low, high = _js(state, ends[0], user), _js(state, ends[1], user)
        if low is None or high is None:
            return None
        lo_key, hi_key = compare_key(low, numeric), compare_key(high, numeric)
        return lambda row: (v := get(row)) != "" and lo_key <= compare_key(v, numeric) <= hi_key
    value = _js(state, cond.value, user)
    if value is None:
        return None
    if op == "=":
        return lambda row: get(row) == value
    if op == "!=":
        return lambda row: get(row) != value
    if op == "LIKE":
        return lambda row: value in get(row)
    if op == "NOT LIKE":
        return lambda row: value not in get(row)
    if op == "STARTSWITH":
        return lambda row: get(row).startswith(value)
    if op == "ENDSWITH":
        return lambda row: get(row).endswith(value)
    compare = _COMPARATORS.get(op)
    if compare is None:
        return None
    ref = compare_key(value, numeric)
    return lambda row: (v := get(row)) != "" and compare(compare_key(v, numeric), ref)


def _js(state: InstanceState, value: str, user: User) -> str | None:
    """Evaluate the few ``javascript:`` helpers (None = unknown: the condition is dropped)."""
    if not value.strip().lower().startswith("javascript:"):
        return value
    expr = value.strip()[len("javascript:") :].strip().rstrip(";").strip()
    zone = state.user_zone(user)
    if expr == "gs.getUserID()":
        return user.sys_id
    if expr == "gs.getUserName()":
        return user.user_name
    local_today = state.now().astimezone(zone).date()
    match = re.fullmatch(
        r"gs\.dateGenerate\(\s*['\"]([^'\"]+)['\"]\s*,\s*['\"]([^'\"]+)['\"]\s*\)", expr
    )
    if match:
        day, time_part = match.groups()
        time_part = {"start": "00:00:00", "end": "23:59:59"}.get(time_part, time_part)
        try:
            local = datetime.strptime(f"{day} {time_part}", SN_DATETIME_FORMAT)
        except ValueError:
            return None
        return utc_str(local.replace(tzinfo=zone))
    match = re.fullmatch(r"gs\.daysAgo(Start|End)\(\s*(-?\d+)\s*\)", expr)
    if match:
        which, days = match.group(1), int(match.group(2))
        return _day_edge(local_today - timedelta(days=days), zone, end=which == "End")
    if expr == "gs.beginningOfToday()":
        return _day_edge(local_today, zone, end=False)
    if expr == "gs.endOfToday()":
        return _day_edge(local_today, zone, end=True)
    return None


def _day_edge(day: Any, zone: ZoneInfo, *, end: bool) -> str:
    clock_time = "23:59:59" if end else "00:00:00"
    local = datetime.strptime(f"{day.isoformat()} {clock_time}", SN_DATETIME_FORMAT)
    return utc_str(local.replace(tzinfo=zone))
