"""UtcDateTime on SQLite: its one-step processors store and read exactly what
SQLAlchemy's own two steps (the decorator, then SQLite's ``DATETIME``) did, so a
database written before reads the same and text comparisons in SQL still order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import DateTime
from sqlalchemy.dialects import postgresql, sqlite

from sync.store.tables import UtcDateTime

DIALECT = sqlite.dialect()
FAST = UtcDateTime().dialect_impl(DIALECT)
#: SQLAlchemy's own SQLite processors, as the decorator used them before
SLOW_BIND = DateTime(timezone=True).dialect_impl(DIALECT).bind_processor(DIALECT)
SLOW_READ = DateTime(timezone=True).dialect_impl(DIALECT).result_processor(DIALECT, None)
OFFSETS = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda m: timezone(timedelta(minutes=m))
)
AWARE = st.datetimes(
    min_value=datetime(1000, 1, 2), max_value=datetime(9999, 12, 30), timezones=OFFSETS
)


def old_bind(value: datetime) -> str:
    assert SLOW_BIND is not None
    return str(SLOW_BIND(value.astimezone(UTC).replace(tzinfo=None)))


@given(AWARE)
def test_bind_is_the_text_sqlalchemy_stored(value: datetime) -> None:
    bind = FAST.bind_processor(DIALECT)
    assert bind is not None
    assert bind(value) == old_bind(value)


@given(AWARE)
def test_read_back_is_the_same_instant_in_utc(value: datetime) -> None:
    bind, read = FAST.bind_processor(DIALECT), FAST.result_processor(DIALECT, None)
    assert bind is not None and read is not None and SLOW_READ is not None
    back = read(bind(value))
    assert back == value
    assert back.tzinfo is UTC
    assert back == SLOW_READ(bind(value)).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        ("2026-12-01 06:05:07", datetime(2026, 12, 1, 6, 5, 7, tzinfo=UTC)),  # CURRENT_TIMESTAMP
        ("2026-12-01 06:05:07.5", datetime(2026, 12, 1, 6, 5, 7, 500000, tzinfo=UTC)),
        ("2026-12-01 08:05:07+02:00", datetime(2026, 12, 1, 6, 5, 7, tzinfo=UTC)),
        (None, None),
    ],
)
def test_other_stored_forms(stored: str | None, expected: datetime | None) -> None:
    read = FAST.result_processor(DIALECT, None)
    assert read is not None
    assert read(stored) == expected


def test_naive_is_refused_and_none_passes() -> None:
    bind = FAST.bind_processor(DIALECT)
    assert bind is not None
    with pytest.raises(ValueError, match="naive datetime"):
        bind(datetime(2026, 12, 1))
    assert bind(None) is None


def test_postgres_keeps_sqlalchemys_processors() -> None:
    pg = postgresql.asyncpg.dialect()
    value = datetime(2026, 12, 1, 8, tzinfo=timezone(timedelta(hours=2)))
    bind = UtcDateTime().dialect_impl(pg).bind_processor(pg)
    out = bind(value) if bind is not None else UtcDateTime().process_bind_param(value, pg)
    assert out == value and out is not None and out.tzinfo is UTC
