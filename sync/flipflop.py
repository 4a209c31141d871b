"""Loops broken, not fought (pure): a field that flips is frozen for its pair.

A ServiceNow business rule or a BigPanda enrichment that rewrites a value bpsync just
wrote makes bpsync write it again, and so on forever. bpsync remembers, per pair and
mapped ServiceNow field, when it wrote that field or a tag mapped to it (a field
state ``$flips:<field>``: the epoch seconds within ``guard.flip_flop_window``); a write
that would be the ``guard.flip_flop_changes`` + 1st in the window is not made: the
field is frozen for the pair instead (``$frozen:<field>``), once, with a WARNING, a
metric and one BigPanda comment. A frozen field is left alone in both directions
until ``bpsync links release ID``; then what changed meanwhile syncs as usual.
"""

from __future__ import annotations

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

    def history(self, field: str) -> list[int]:
        state = self._synced.get((Side.SERVICENOW, FLIPS + field))
        if state is None or not state.value:
            return []
        return [int(t) for t in state.value.split() if t.isdigit() and int(t) > self._floor_s]

    def count(self, field: str) -> tuple[int, str]:
        """(writes in the window with this one, the history to remember)."""
        times = [*self.history(field), self._now_s]
        return len(times), " ".join(str(t) for t in times)

    def too_many(self, writes: int) -> bool:
        return writes > self._limit
