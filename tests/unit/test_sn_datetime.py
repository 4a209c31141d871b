"""sync.model.sn_datetime reads what strptime with SN_DATETIME_FORMAT reads, and
refuses what it refuses."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sync.constants import SN_DATETIME_FORMAT
from sync.model import sn_datetime


def strptime(text: str) -> datetime | None:
    try:
        return datetime.strptime(text, SN_DATETIME_FORMAT)
    except ValueError:
        return None


def fast(text: str) -> datetime | None:
    try:
        return sn_datetime(text)
    except ValueError:
        return None


@given(st.datetimes(min_value=datetime(1000, 1, 1)))
def test_written_by_servicenow(value: datetime) -> None:
    text = value.strftime(SN_DATETIME_FORMAT)
    assert sn_datetime(text) == value.replace(microsecond=0)


@given(st.from_regex(r"\A[0-9]{1,5}-[0-9]{1,3}-[0-9]{1,3}[ T][0-9]{1,3}:[0-9]{1,3}:[0-9]{1,3}\Z"))
def test_near_misses_as_strptime(text: str) -> None:
    assert fast(text) == strptime(text)


@given(st.text(max_size=25))
def test_any_text_as_strptime(text: str) -> None:
    assert fast(text) == strptime(text)


@pytest.mark.parametrize(
    "text", ["2026-12-01T06:05:07", "2026-12-01 23:59:60", "2026-02-30 00:00:00", "", " "]
)
def test_refused(text: str) -> None:
    with pytest.raises(ValueError):
        sn_datetime(text)
