"""Prepared statements: the store's hot statements run straight on the pysqlite cursor.

On a SQLite file a store call costs SQLite tens of microseconds per statement, and
SQLAlchemy's execution of it (an execution context, parameter processing, a cursor
result with its metadata, events) costs about as much again. The hot statements of
:mod:`sync.store.statements` are module constants, so each is compiled once here, by
SQLAlchemy's own SQLite compiler and with the column types' own bind and result
processors, into a :class:`Prepared`: its SQL, where each parameter goes, and how each
result column is read back. Running it is then one ``cursor.execute`` and the
processors: the same SQL, the same values in and out as through
``Connection.execute``, in the transaction SQLAlchemy opened on the same connection.

- Only the statements listed in :data:`sync.store.statements.PREPARED` run this way;
  any other statement goes through SQLAlchemy as before. An ``IN`` list given at
  execution gets as many places as it has values (an empty one: SQLAlchemy's way).
- A driver error is raised as SQLAlchemy raises it (``IntegrityError`` with the
  driver's error as ``orig``), so the store's handling of unique and foreign-key
  violations and of a busy lock is unchanged.
- Postgres never gets here: its statements run on asyncpg through SQLAlchemy.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, NoResultFound, StatementError
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

_POSTCOMPILE = re.compile(r"__\[POSTCOMPILE_(\w+)\]")
#: a parameter the statement does not carry: the execution must give it
_REQUIRED: Any = object()

#: a parameter's place: (its name, a value when the statement carries it, processor,
#: whether it is an IN list given at execution: as many places as it has values)
_Slot = tuple[str | None, Any, Callable[[Any], Any] | None, bool]


class PreparedRow:
    """A result row: by position, by column name (``row.name``) and ``row._mapping``,
    as SQLAlchemy's ``Row`` is used by the store."""

    __slots__ = ("_keys", "_map", "_values")

    def __init__(self, keys: Sequence[str], values: tuple[Any, ...]) -> None:
        self._keys = keys
        self._values = values
        self._map: dict[str, Any] | None = None

    @property
    def _mapping(self) -> Mapping[str, Any]:
        """By column name, made on first use (a row read by position never needs it)."""
        if self._map is None:
            self._map = dict(zip(self._keys, self._values, strict=True))
        return self._map

    def __getitem__(self, index: int) -> Any:
        return self._values[index]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # (a slot not set yet: copy, pickle)
            raise AttributeError(name)
        try:
            return self._mapping[name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self) -> str:
        return repr(self._values)


class PreparedResult:
    """The rows of one execution (all read at once) and its row count."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[PreparedRow], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def __iter__(self) -> Iterator[PreparedRow]:
        return iter(self._rows)

    def all(self) -> list[PreparedRow]:
        return list(self._rows)

    def first(self) -> PreparedRow | None:
        return self._rows[0] if self._rows else None

    def one(self) -> PreparedRow:
        if len(self._rows) != 1:
            raise NoResultFound(f"expected one row, got {len(self._rows)}")
        return self._rows[0]

    def one_or_none(self) -> PreparedRow | None:
        if len(self._rows) > 1:
            raise NoResultFound(f"expected at most one row, got {len(self._rows)}")
        return self.first()

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None

    def scalar_one(self) -> Any:
        return self.one()[0]

    def scalar_one_or_none(self) -> Any:
        row = self.one_or_none()
        return None if row is None else row[0]


@dataclass(frozen=True, slots=True)
class Prepared:
    """One statement compiled for SQLite: run with :meth:`run` on a pysqlite connection."""

    sql: str
    slots: tuple[_Slot, ...]
    #: whether the statement returns rows (a SELECT, a RETURNING)
    returns_rows: bool
    #: the IN lists given at execution (their places in ``sql`` are filled in then)
    lists: frozenset[str] = frozenset()
    #: the result columns whose type reads them back: (position, reader)
    converted: tuple[tuple[int, Callable[[Any], Any]], ...] = ()

    @classmethod
    def compile(
        cls, statement: ClauseElement, dialect: Dialect, keys: Sequence[str] | None
    ) -> Prepared | None:
        """``statement`` compiled with the parameter names ``keys``; None when it
        cannot run prepared (parameters filled in at execution by SQLAlchemy)."""
        compiled = statement.compile(dialect=dialect, column_keys=list(keys or []) or None)
        if not isinstance(compiled, SQLCompiler) or compiled.positiontup is None:
            return None
        if compiled.insert_prefetch or compiled.update_prefetch:
            return None  # Python-side column defaults: SQLAlchemy computes them
        binds = compiled.binds
        slots: list[_Slot] = []
        lists: set[str] = set()
        for name in compiled.positiontup:
            bind = binds[name]
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            own: list[Any] | None = bind.value if bind.expanding and not bind.required else None
            if bind.expanding and own is None:
                slots.append((name, _REQUIRED, process, True))  # an IN list given then
                lists.add(name)
            elif own is not None:  # an IN list of the statement's own: its values now
                slots.extend((None, v if process is None else process(v), None, False) for v in own)
            else:
                fixed = _REQUIRED if bind.required else bind.effective_value
                slots.append((name, fixed, process, False))

        def placeholders(match: re.Match[str]) -> str:
            if match.group(1) in lists:
                return match.group(0)
            return ", ".join(["?"] * len(binds[match.group(1)].value or ()))

        sql = _POSTCOMPILE.sub(placeholders, compiled.string)
        columns = list(getattr(statement, "exported_columns", ()))
        readers = (c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns)
        converted = tuple((i, read) for i, read in enumerate(readers) if read is not None)
        return cls(sql, tuple(slots), bool(columns), frozenset(lists), converted)

    def _values(self, params: Mapping[str, Any]) -> list[Any]:
        out: list[Any] = []
        for name, fixed, process, many in self.slots:
            value = fixed if name is None else params.get(name, fixed)
            if value is _REQUIRED:
                raise KeyError(f"a value is required for bind parameter {name!r}")
            if many:
                out.extend(value if process is None else [process(v) for v in value])
            else:
                out.append(value if process is None else process(value))
        return out

    def _sql(self, params: Mapping[str, Any]) -> str:
        if not self.lists:
            return self.sql
        return _POSTCOMPILE.sub(lambda m: ", ".join(["?"] * len(params[m.group(1)])), self.sql)

    def run(self, driver: sqlite3.Connection, params: Any) -> PreparedResult:
        """Execute with ``params`` (a mapping, or a list of mappings for a statement
        without rows or IN lists) in the connection's current transaction."""
        sql = self.sql
        try:
            if isinstance(params, (list, tuple)):
                values = [self._values(p) for p in params]
            else:
                sql = self._sql(params or {})
                values = [self._values(params or {})]
        except Exception as exc:  # as SQLAlchemy reports a parameter it cannot bind
            raise StatementError(str(exc), sql, params, exc) from exc
        try:
            if isinstance(params, (list, tuple)):
                cursor = driver.executemany(sql, values)
                return PreparedResult([], cursor.rowcount)
            cursor = driver.execute(sql, values[0])
            raw = cursor.fetchall()
        except sqlite3.Error as exc:
            raise DBAPIError.instance(sql, params, exc, sqlite3.Error) from exc
        if not raw:
            return PreparedResult([], cursor.rowcount)
        # the names the SQL gives its columns (an unnamed one is labelled, as count_1)
        keys = tuple(column[0] for column in cursor.description)
        rows = [PreparedRow(keys, self._read(row)) for row in raw]
        return PreparedResult(rows, cursor.rowcount)

    def _read(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        """The row with each column read back by its type (only those that need it)."""
        if not self.converted:
            return row
        values = list(row)
        for index, read in self.converted:
            values[index] = read(values[index])
        return tuple(values)


class PreparedStatements:
    """The prepared form of some statements for one dialect, compiled on first use."""

    def __init__(self, statements: Sequence[ClauseElement]) -> None:
        self._wanted = {id(s): s for s in statements}
        self._compiled: dict[tuple[int, tuple[str, ...] | None], Prepared | None] = {}

    def __contains__(self, statement: object) -> bool:
        return id(statement) in self._wanted

    def get(self, statement: Any, params: Any, dialect: Dialect) -> Prepared | None:
        """The prepared form of ``statement`` for these parameters, or None: run it
        through SQLAlchemy."""
        if id(statement) not in self._wanted:
            return None
        many = isinstance(params, (list, tuple))
        if many and not params:
            return None
        first: Mapping[str, Any] = (params[0] if many else params) or {}
        # compiled for these parameter names, as SQLAlchemy does (an INSERT without
        # VALUES of its own takes its columns from them)
        cache_key = (id(statement), tuple(sorted(first)) or None)
        try:
            prepared = self._compiled[cache_key]
        except KeyError:
            prepared = Prepared.compile(statement, dialect, cache_key[1])
            self._compiled[cache_key] = prepared
        if prepared is None:
            return None
        if many and (prepared.returns_rows or prepared.lists):
            return None  # rows of several executions, IN lists of several: SQLAlchemy's
        if any(not first.get(name) for name in prepared.lists):
            return None  # an empty IN list: SQLAlchemy's own SQL for it
        return prepared
