"""Cursor arithmetic and a cycle's progress: pure, no I/O.

A cycle polls changes on both sides, works them (oldest first, several pairs at once)
and may stop before it has worked them all: its time budget ran out, a stop was
asked for, or a side went down. What it finished stays finished: :func:`next_cursor`
moves a side's cursor so that the next poll reaches back to the oldest change not yet
finished, and puts the finished ones in ``seen`` so that they are neither fetched nor
planned again (SPEC B16 for the overlap and the keys).

A change's key is ``<id>:<version>:<epoch s>``; its time ``at`` is clamped to the
cycle's "now" by the coordinator, so a record stamped in the future cannot carry the
watermark past changes still to come.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sync.clock import epoch_s
from sync.constants import Side
from sync.store.base import Cursor


@dataclass(frozen=True, slots=True)
class Change:
    """One polled change: its de-duplication key and when it happened."""

    key: str
    at: datetime


def key_epoch(key: str) -> int:
    """The epoch seconds at the end of a change key (0 when the key has none)."""
    try:
        return int(key.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return 0


def next_cursor(
    side: Side,
    cursor: Cursor,
    changes: Sequence[Change],
    *,
    open_keys: Collection[str],
    now: datetime,
    overlap: timedelta,
    forget: Collection[str] = (),
) -> Cursor | None:
    """The cursor after this cycle's work, or None when it need not be written.

    ``changes``: every change polled this cycle; ``open_keys``: those not finished
    (failed and to be tried again, or never started); ``forget``: ids of incidents
    bpsync wrote to (their keys leave ``seen``: a person who sets a value back within
    the same second makes a snapshot with the old key, which must count as new).

    The watermark moves up to the newest finished change, but never past the oldest
    open one, and never back. Idle (nothing open), a watermark that lags ``now -
    overlap`` by a whole overlap moves up to it: otherwise every idle poll re-reads
    whatever changed in the overlap before the last change seen. ``seen`` keeps the
    keys at or after ``watermark - overlap``, the window the next poll reads again.
    """
    idle_mark = now - overlap
    lagging = cursor.watermark is None or idle_mark - cursor.watermark >= overlap
    if not changes and not (forget and cursor.seen) and not lagging:
        return None
    held = [c.at for c in changes if c.key in open_keys]
    done = [c for c in changes if c.key not in open_keys]
    watermark = max([c.at for c in done], default=cursor.watermark)
    if cursor.watermark is not None and (watermark is None or watermark < cursor.watermark):
        watermark = cursor.watermark
    if held and watermark is not None:
        watermark = min(watermark, *held)
        if cursor.watermark is not None:
            watermark = max(watermark, cursor.watermark)
    if not held and (watermark is None or idle_mark - watermark >= overlap):
        watermark = idle_mark
    if watermark is None:
        return None
    floor_s = epoch_s(watermark - overlap)
    seen = {k for k in cursor.seen if key_epoch(k) >= floor_s}
    seen |= {c.key for c in done if key_epoch(c.key) >= floor_s}
    seen -= set(open_keys)
    if forget:
        seen = {k for k in seen if k.split(":", 1)[0] not in forget}
    return Cursor(side=side, watermark=watermark, seen=frozenset(seen))


def seen_after_push(
    cursor: Cursor,
    changes: Sequence[Change],
    done: Collection[str],
    *,
    overlap: timedelta,
    forget: Collection[str] = (),
) -> Cursor | None:
    """The cursor after a push pass (:mod:`sync.push`) finished ``done`` of ``changes``,
    or None when it need not be written.

    The finished keys join ``seen``, so the poll drops its copy of each change; the
    watermark does not move: the changes of other incidents before these are still the
    poll's to find. Keys older than the poll's window (``watermark - overlap``) are not
    kept, as :func:`next_cursor` would not keep them; before the first poll (no
    watermark) nothing is written (the first poll plans everything anyway, and the
    field states make a second plan of a synced change write nothing). ``forget`` as
    for :func:`next_cursor`.
    """
    if cursor.watermark is None:
        return None
    floor_s = epoch_s(cursor.watermark - overlap)
    seen = set(cursor.seen)
    seen |= {c.key for c in changes if c.key in done and key_epoch(c.key) >= floor_s}
    if forget:
        seen = {k for k in seen if k.split(":", 1)[0] not in forget}
    if seen == cursor.seen:
        return None
    return Cursor(side=cursor.side, watermark=cursor.watermark, seen=frozenset(seen))


@dataclass(slots=True)
class Progress:
    """What a cycle has finished so far, per change key (both sides' keys together)."""

    polled: dict[Side, list[Change]]
    done: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    wrote_bp: set[str] = field(default_factory=set)
    """BigPanda incident ids bpsync wrote to (their keys leave ``seen``)."""

    def all_keys(self) -> set[str]:
        return {c.key for changes in self.polled.values() for c in changes}

    def finish(self, keys: Iterable[str], *, ok: bool) -> None:
        for key in keys:
            (self.done if ok else self.failed).add(key)

    def open_keys(self, side: Side, given_up: Collection[str] = ()) -> set[str]:
        """The side's keys not finished: failed (unless given up) or never worked."""
        keys = {c.key for c in self.polled[side]}
        return {k for k in keys if k not in self.done and k not in given_up}

    def backlog(self, side: Side) -> int:
        """Changes of the side neither finished nor failed (left for the next cycle)."""
        return sum(
            1 for c in self.polled[side] if c.key not in self.done and c.key not in self.failed
        )
