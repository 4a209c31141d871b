"""The emulator's incident search results, kept up to date one incident at a time.

A search is asked page by page; working every incident out again for each page would
make the emulator, not the client, the limit of a large backfill (each link-tag write
between two pages changes one incident). So a search's result (its parameters: the
environment, query, window, sort and folder) is kept, and every change of an incident
is logged (:meth:`SearchIndex.touched`, from the state's one place that stamps a
change, and from a loaded fixture); the next time the same search is asked, only the
incidents changed since are worked out again and moved to their place. The answer is
the one a full pass would give (the same filters, the same order: sort key, then id,
newest first).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass

SortKey = tuple[int, ...]
#: where an incident goes in a search's result (its sort key), or None: not in it
Matcher = Callable[[str], SortKey | None]

#: searches whose results are kept (the least recently computed is dropped first)
MAX_RESULTS = 32
#: changes remembered; a result older than the oldest one is worked out again whole
MAX_LOG = 100_000


@dataclass(slots=True)
class _Result:
    version: int
    rows: list[tuple[SortKey, str]]
    """(sort key, id), ascending."""
    keys: dict[str, SortKey]
    ids: list[str]
    """The answer: ids, newest first (``rows`` reversed)."""


class SearchIndex:
    """Kept search results and the log of changed incidents (see the module docstring)."""

    def __init__(self) -> None:
        self.version = 0
        self._log: list[str] = []
        self._base = 0
        """The version of the log's first entry."""
        self._results: dict[Hashable, _Result] = {}

    def touched(self, incident_id: str) -> None:
        """An incident was created or changed (anything a search may filter or sort on)."""
        self.version += 1
        self._log.append(incident_id)
        if len(self._log) > MAX_LOG:
            half = len(self._log) // 2
            del self._log[:half]
            self._base += half

    def search(
        self, params: Hashable, matches: Matcher, incident_ids: Callable[[], Iterable[str]]
    ) -> list[str]:
        """The ids ``params`` finds, newest first: worked out whole the first time (over
        ``incident_ids()``), then only for the incidents changed since."""
        result = self._results.get(params)
        if result is None or result.version < self._base:
            rows = sorted(
                (key, inc_id) for inc_id in incident_ids() if (key := matches(inc_id)) is not None
            )
            result = _Result(
                self.version, rows, {inc_id: key for key, inc_id in rows}, _newest_first(rows)
            )
            self._results.pop(params, None)
            if len(self._results) >= MAX_RESULTS:
                del self._results[next(iter(self._results))]
            self._results[params] = result
            return result.ids
        if result.version == self.version:
            return result.ids
        changed = set(self._log[result.version - self._base :])
        for inc_id in changed:
            old = result.keys.pop(inc_id, None)
            if old is not None:
                del result.rows[bisect_left(result.rows, (old, inc_id))]
            key = matches(inc_id)
            if key is not None:
                insort(result.rows, (key, inc_id))
                result.keys[inc_id] = key
        result.ids = _newest_first(result.rows)
        result.version = self.version
        return result.ids


def _newest_first(rows: list[tuple[SortKey, str]]) -> list[str]:
    return [inc_id for _, inc_id in reversed(rows)]
