"""Injected time. Nothing in bpsync reads the wall clock or sleeps except through a Clock.

Tests of windows, retries and cursors use :class:`FakeClock`, whose ``sleep`` advances
time instead of waiting.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Source of time: ``now()`` is an aware UTC datetime."""

    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class FakeClock:
    """A clock that moves only when told to (or when something sleeps on it)."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        if self._now.tzinfo is None:
            raise ValueError("FakeClock needs an aware datetime")
        self._mono = 0.0

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)
        self._mono += seconds

    def set(self, when: datetime) -> None:
        delta = (when - self._now).total_seconds()
        self._now = when
        self._mono += max(0.0, delta)

    async def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)


def epoch_s(when: datetime) -> int:
    """Whole epoch seconds of an aware datetime (BigPanda's unit)."""
    return int(when.timestamp())


def from_epoch_s(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
