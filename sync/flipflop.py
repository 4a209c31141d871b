"""Loops broken, not fought (pure): a field that flips is frozen for its pair.

A ServiceNow business rule or a BigPanda enrichment that rewrites a value bpsync just
wrote makes bpsync write it again, and so on forever: the field flips between the same
values. bpsync remembers, per pair and mapped ServiceNow field, what it wrote and when
(a field state ``$flips:<field>``: ``<epoch s>:<digest of the value>`` within
``guard.flip_flop_window``). A write of a value it already wrote in the window is a
flip; a write that would be flip ``guard.flip_flop_changes`` + 1 is not made: the field
is frozen for the pair instead (``$frozen:<field>``), once, with a WARNING, a metric
and one BigPanda comment. A field that only moves forward (new values each time) is
never frozen. A frozen field is left alone in both directions until ``bpsync links
release ID``; then what changed meanwhile syncs as usual. The memory rides on the
write (recorded when it succeeds) and is not part of its idempotency key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING

from sync.constants import Side
from sync.model import FieldState

if TYPE_CHECKING:
    from sync.settings import GuardSettings

__all__ = ["FLIPS", "FROZEN", "Flips", "frozen_fields", "released"]

#: field state name prefixes (ServiceNow side) of the guard's memory
FROZEN = "$frozen:"
FLIPS = "$flips:"


def frozen_fields(synced: Mapping[tuple[Side, str], FieldState]) -> set[str]:
    """The pair's frozen ServiceNow fields."""
    return {
        name[len(FROZEN) :]
        for (side, name), state in synced.items()
        if side is Side.SERVICENOW and name.startswith(FROZEN) and state.value
    }


def released(fields: Iterable[str]) -> dict[str, str | None]:
    """The field states that unfreeze ``fields`` (and forget their history)."""
    out: dict[str, str | None] = {}
    for name in fields:
        out[FROZEN + name] = None
        out[FLIPS + name] = None
    return out


class Flips:
    """The guard's count for one plan: which written fields stay, which freeze."""

    def __init__(
        self,
        synced: Mapping[tuple[Side, str], FieldState],
        guard: GuardSettings,
        now: datetime,
    ) -> None:
        self._synced = synced
        self._limit = guard.flip_flop_changes
        self._now_s = int(now.timestamp())
        self._floor_s = self._now_s - int(guard.flip_flop_window)

    def history(self, field: str) -> list[tuple[int, str]]:
        """(epoch s, value digest) of the field's writes within the window."""
        state = self._synced.get((Side.SERVICENOW, FLIPS + field))
        if state is None or not state.value:
            return []
        out: list[tuple[int, str]] = []
        for entry in state.value.split():
            at, _, digest = entry.partition(":")
            if at.isdigit() and int(at) > self._floor_s:
                out.append((int(at), digest))
        return out

    def count(self, field: str, value: str | None) -> tuple[int, str]:
        """(flips in the window with this write, the memory to keep): a flip is a write
        of a value already written in the window."""
        entries = [*self.history(field), (self._now_s, _digest(value))]
        seen: set[str] = set()
        flips = 0
        for _, digest in entries:
            flips += digest in seen
            seen.add(digest)
        return flips, " ".join(f"{at}:{digest}" for at, digest in entries)

    def too_many(self, flips: int) -> bool:
        return flips > self._limit


def _digest(value: str | None) -> str:
    return hashlib.sha256((value or "").encode()).hexdigest()[:8]
