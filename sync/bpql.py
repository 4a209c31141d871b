"""BPQL, the subset bpsync and its emulator understand (pure).

The share filter (``[share] filter``) and the emulator's environment filters and
incident search use it. A compiled query is a predicate over a look-up of a field's
values: ``predicate(values)`` where ``values(name)`` gives the values the record has
for ``name`` (an incident's status, severity, a tag; none when it has none).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable

_TOKEN_RE = re.compile(
    r"""\s*(?:(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(?P<op>!=|=|\(|\)|,)"""
    r"""|(?P<word>[^\s=!(),"']+))"""
)

#: a field's values on the record being tested
Values = Callable[[str], Iterable[str]]
#: a compiled query
Predicate = Callable[[Values], bool]

__all__ = ["Predicate", "Values", "compile_bpql"]


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None or m.end() == pos:
            raise ValueError(f"BPQL: unexpected character at {pos}")
        pos = m.end()
        if m.group("str") is not None:
            raw = m.group("str")[1:-1]
            tokens.append(("str", re.sub(r"\\(.)", r"\1", raw)))
        elif m.group("op") is not None:
            tokens.append(("op", m.group("op")))
        else:
            tokens.append(("word", m.group("word")))
    return tokens


def _value_matcher(pattern: str) -> Callable[[str], bool]:
    wanted = pattern.casefold()
    if "*" not in wanted:
        return lambda value: value.casefold() == wanted
    regex = re.compile(".*".join(re.escape(p) for p in wanted.split("*")) + r"\Z", re.DOTALL)
    return lambda value: regex.match(value.casefold()) is not None


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise ValueError("BPQL: unexpected end of query")
        self.pos += 1
        return tok

    def keyword(self, word: str) -> bool:
        tok = self.peek()
        if tok is not None and tok[0] == "word" and tok[1].upper() == word:
            self.pos += 1
            return True
        return False

    def expect_op(self, op: str) -> None:
        tok = self.take()
        if tok != ("op", op):
            raise ValueError(f"BPQL: expected {op!r}, got {tok[1]!r}")

    def parse(self) -> Predicate:
        pred = self.or_expr()
        if self.peek() is not None:
            raise ValueError(f"BPQL: unexpected {self.peek()!r}")
        return pred

    def or_expr(self) -> Predicate:
        parts = [self.and_expr()]
        while self.keyword("OR"):
            parts.append(self.and_expr())
        if len(parts) == 1:
            return parts[0]
        return lambda values: any(p(values) for p in parts)

    def and_expr(self) -> Predicate:
        parts = [self.unary()]
        while self.keyword("AND"):
            parts.append(self.unary())
        if len(parts) == 1:
            return parts[0]
        return lambda values: all(p(values) for p in parts)

    def unary(self) -> Predicate:
        if self.keyword("NOT"):
            inner = self.unary()
            return lambda values: not inner(values)
        if self.peek() == ("op", "("):
            self.take()
            inner = self.or_expr()
            self.expect_op(")")
            return inner
        return self.comparison()

    def value(self) -> str:
        kind, text = self.take()
        if kind == "op":
            raise ValueError(f"BPQL: expected a value, got {text!r}")
        return text

    def comparison(self) -> Predicate:
        kind, name = self.take()
        if kind != "word":
            raise ValueError(f"BPQL: expected a field name, got {name!r}")
        negate = False
        if self.keyword("NOT"):
            negate = True
            if not self.keyword("IN"):
                raise ValueError("BPQL: expected IN after NOT")
            values = self.in_list()
        elif self.keyword("IN"):
            values = self.in_list()
        else:
            kind, op = self.take()
            if kind != "op" or op not in {"=", "!="}:
                raise ValueError(f"BPQL: expected = or != after {name!r}")
            negate = op == "!="
            values = [self.value()]
        matchers = [_value_matcher(v) for v in values]
        field_name = name

        def pred(values: Values) -> bool:
            found = any(m(v) for v in values(field_name) for m in matchers)
            return found != negate

        return pred

    def in_list(self) -> list[str]:
        self.expect_op("(")
        values = [self.value()]
        while self.peek() == ("op", ","):
            self.take()
            values.append(self.value())
        self.expect_op(")")
        return values


@functools.lru_cache(maxsize=64)
def compile_bpql(query: str | None) -> Predicate:
    """A BPQL subset: ``=``, ``!=``, ``IN``/``NOT IN``, ``AND``/``OR``/``NOT``, parentheses,
    quoted or bare values, ``*`` wildcards; ``*`` or empty alone matches everything.
    Values compare case-insensitively. Raises ValueError."""
    text = (query or "").strip()
    if text in {"", "*"}:
        return lambda values: True
    return _Parser(_tokenize(text)).parse()
