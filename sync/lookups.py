"""Reference look-ups (SPEC B12): an e-mail or a name -> the ServiceNow ``sys_id``.

Contract:

- :meth:`Lookups.resolve` asks ``ServiceNowAPI.query(table, {column: value},
  fields=["sys_id"], limit=2)``: exactly one row is a match; zero rows (not found) or two
  (ambiguous) mean the field is left out, with ONE warning per (table, column, value)
  for the life of the process, and the incident is still synced.
- Results, misses included, are cached for ``ttl_s`` (by the injected clock), so a
  cycle that creates 50 incidents for one caller asks ServiceNow once.
- A :class:`~sync.errors.PermanentError` of the query itself (e.g. the table is not
  readable by the integration user) counts as "not found": it never fails the incident.
  Transient and fatal errors propagate: the write is retried by the executor, the same
  as the write itself would be.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sync.actions import RefLookup
from sync.clients.base import ServiceNowAPI
from sync.clock import Clock
from sync.errors import PermanentError
from sync.mapping import display_column

log = logging.getLogger(__name__)

#: how long a look-up answer (hit or miss) is trusted
DEFAULT_LOOKUP_TTL_S = 600.0


@dataclass(frozen=True, slots=True)
class _Cached:
    sys_id: str | None
    expires_at_mono_s: float


class Lookups:
    """Cached ``RefLookup`` resolution against ServiceNow."""

    def __init__(
        self,
        servicenow: ServiceNowAPI,
        clock: Clock,
        *,
        ttl_s: float = DEFAULT_LOOKUP_TTL_S,
        on_miss: Callable[[str], None] | None = None,
    ) -> None:
        self._sn = servicenow
        self._clock = clock
        self._ttl_s = ttl_s
        self._on_miss = on_miss
        """called with the table of every look-up that found no single record (a metric)"""
        self._cache: dict[RefLookup, _Cached] = {}
        self._names: dict[tuple[str, str, str], _Cached] = {}
        self._warned: set[RefLookup] = set()
        """How many queries were sent (tests check the cache with it)."""

    async def resolve(self, ref: RefLookup) -> str | None:
        """The matching record's sys_id, or None (not found / ambiguous: one warning)."""
        now_mono = self._clock.monotonic()
        cached = self._cache.get(ref)
        if cached is not None and cached.expires_at_mono_s > now_mono:
            return cached.sys_id
        problem: str | None = None
        try:
            rows = await self._sn.query(
                ref.table, {ref.column: ref.value}, fields=["sys_id"], limit=2
            )
        except PermanentError as exc:
            rows = []
            problem = f"look-up failed: {exc}"
        sys_id: str | None = None
        if len(rows) == 1 and str(rows[0].get("sys_id", "")):
            sys_id = str(rows[0]["sys_id"])
        elif problem is None:
            problem = "no record matches" if not rows else "several records match"
        if sys_id is None and self._on_miss is not None:
            self._on_miss(ref.table)
        if sys_id is None and ref not in self._warned:
            self._warned.add(ref)
            log.warning(
                "%s.%s=%r: %s; the field is not written (left as it is)",
                ref.table,
                ref.column,
                ref.value,
                problem,
                extra={"table": ref.table, "column": ref.column, "value": ref.value},
            )
        self._cache[ref] = _Cached(sys_id, now_mono + self._ttl_s)
        return sys_id

    async def display(self, table: str, sys_id: str) -> str | None:
        """The display value (:func:`sync.mapping.display_column`) of ``table`` record
        ``sys_id``, or None when it cannot be read (one warning; cached like
        :meth:`resolve`): a reference field shows people a name, never a sys_id."""
        return await self.value_of(table, sys_id, display_column(table))

    async def value_of(self, table: str, sys_id: str, column: str) -> str | None:
        """``column`` of ``table`` record ``sys_id`` (a user's e-mail), or None when it
        cannot be read or is empty (one warning; cached like :meth:`resolve`)."""
        key = (table, sys_id, column)
        now_mono = self._clock.monotonic()
        cached = self._names.get(key)
        if cached is not None and cached.expires_at_mono_s > now_mono:
            return cached.sys_id
        try:
            rows = await self._sn.query(table, {"sys_id": sys_id}, fields=[column], limit=1)
        except PermanentError as exc:
            rows = []
            log.debug("%s %s not readable: %s", table, sys_id, exc)
        name = str(rows[0].get(column) or "") if rows else ""
        if not name:
            if self._on_miss is not None:
                self._on_miss(table)
            ref = RefLookup(table, "sys_id", sys_id)
            if ref not in self._warned:
                self._warned.add(ref)
                log.warning(
                    "%s %s: no %s to show for it; the mapped value is left as it was",
                    table,
                    sys_id,
                    column,
                    extra={"table": table, "value": sys_id},
                )
        self._names[key] = _Cached(name or None, now_mono + self._ttl_s)
        return name or None

    async def resolve_fields(self, lookups: Mapping[str, RefLookup]) -> dict[str, str]:
        """field -> sys_id for every look-up that matched; the others are left out."""
        out: dict[str, str] = {}
        for name, ref in lookups.items():
            sys_id = await self.resolve(ref)
            if sys_id is not None:
                out[name] = sys_id
        return out
