"""Backfill's time window: ``--since``/``--until`` as people write them (pure)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

__all__ = ["parse_time", "resolve_window"]

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$", re.IGNORECASE)
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, now: datetime, *, option: str = "--since") -> datetime:
    """ISO 8601 (``2026-11-01``, ``2026-11-01T08:00``, ``...Z``, ``...+02:00``; no zone
    means UTC), a duration before now (``90s``, ``30m``, ``24h``, ``7d``, ``2w``), or
    ``now``. ValueError names the option and the accepted forms."""
    value = text.strip()
    if value.lower() == "now":
        return now
    match = _RELATIVE.match(value)
    if match:
        amount = float(match.group(1)) * _UNIT_S[match.group(2).lower()]
        try:
            return now - timedelta(seconds=amount)
        except OverflowError:
            raise ValueError(f"{option} {text!r} reaches too far back") from None
    try:
        when = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise ValueError(
            f"{option} {text!r} is not a time: use ISO 8601 (2026-11-01, "
            "2026-11-01T08:00:00Z) or a duration before now (30m, 24h, 7d)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def resolve_window(since: str, until: str | None, now: datetime) -> tuple[datetime, datetime]:
    """The window ``[since, until]`` (until defaults to now and is capped at now)."""
    start = parse_time(since, now, option="--since")
    end = now if until is None else parse_time(until, now, option="--until")
    end = min(end, now)
    if start >= end:
        raise ValueError(
            f"--since ({start:%Y-%m-%d %H:%M:%SZ}) must be before --until "
            f"({end:%Y-%m-%d %H:%M:%SZ})"
        )
    return start, end
