"""``next_cursor`` as a table, and ``Progress`` (pure: no store, no clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sync.clock import epoch_s
from sync.constants import Side
from sync.progress import Change, Progress, key_epoch, next_cursor
from sync.store.base import Cursor

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
OVERLAP = timedelta(seconds=30)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def ch(name: str, s: float) -> Change:
    return Change(f"{name}:v:{epoch_s(at(s))}", at(s))


A, B, C = ch("a", 10), ch("b", 20), ch("c", 30)
START = Cursor(Side.BIGPANDA, at(0), frozenset())


@pytest.mark.parametrize(
    ("changes", "open_keys", "now_s", "watermark_s", "seen"),
    [
        # all done: up to the newest; the overlap window's keys kept
        ([A, B, C], set(), 31, 30, {A.key, B.key, C.key}),
        # the oldest open holds the watermark; finished later ones are in seen
        ([A, B, C], {A.key}, 31, 10, {B.key, C.key}),
        # an open change in the middle holds it at that change
        ([A, B, C], {B.key}, 31, 20, {A.key, C.key}),
        # nothing done: the watermark stays where it was
        ([A, B, C], {A.key, B.key, C.key}, 31, 0, set()),
        # idle and lagging by a whole overlap: up to now - overlap
        ([], set(), 120, 90, set()),
    ],
)
def test_next_cursor_table(
    changes: list[Change],
    open_keys: set[str],
    now_s: float,
    watermark_s: float,
    seen: set[str],
) -> None:
    moved = next_cursor(
        Side.BIGPANDA, START, changes, open_keys=open_keys, now=at(now_s), overlap=OVERLAP
    )
    assert moved is not None
    assert moved.watermark == at(watermark_s)
    assert moved.seen == seen


def test_idle_and_recent_needs_no_write() -> None:
    cursor = Cursor(Side.SERVICENOW, at(100), frozenset())
    assert (
        next_cursor(Side.SERVICENOW, cursor, [], open_keys=(), now=at(110), overlap=OVERLAP) is None
    )


def test_never_moves_back_below_the_stored_watermark() -> None:
    cursor = Cursor(Side.BIGPANDA, at(25), frozenset({C.key}))
    moved = next_cursor(Side.BIGPANDA, cursor, [A], open_keys={A.key}, now=at(31), overlap=OVERLAP)
    assert moved is not None
    assert moved.watermark == at(25)
    assert A.key not in moved.seen


def test_forget_drops_the_keys_of_incidents_bpsync_wrote_to() -> None:
    moved = next_cursor(
        Side.BIGPANDA, START, [A, B], open_keys=set(), now=at(31), overlap=OVERLAP, forget={"a"}
    )
    assert moved is not None
    assert moved.seen == {B.key}


def test_keys_older_than_the_overlap_leave_seen() -> None:
    old = Cursor(Side.BIGPANDA, at(0), frozenset({ch("z", -100).key, ch("y", -5).key}))
    moved = next_cursor(Side.BIGPANDA, old, [C], open_keys=set(), now=at(31), overlap=OVERLAP)
    assert moved is not None
    assert moved.seen == {C.key}  # both before the new floor, 30 s - 30 s


def test_progress_open_keys_and_backlog() -> None:
    progress = Progress({Side.BIGPANDA: [A, B, C], Side.SERVICENOW: []})
    progress.finish([A.key], ok=True)
    progress.finish([B.key], ok=False)
    assert progress.open_keys(Side.BIGPANDA) == {B.key, C.key}
    assert progress.open_keys(Side.BIGPANDA, given_up={B.key}) == {C.key}
    assert progress.backlog(Side.BIGPANDA) == 1  # C: never worked (B failed, not waiting)
    assert progress.all_keys() == {A.key, B.key, C.key}


def test_key_epoch() -> None:
    assert key_epoch("id:v:1700000000") == 1700000000
    assert key_epoch("no-epoch") == 0
