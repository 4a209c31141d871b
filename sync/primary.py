"""The primary alert of a BigPanda incident (SPEC B11), chosen by the seed's criteria.

Pure: no I/O. The criteria string is a comma-separated list, preferred left to right:

- ``name=pattern`` (equality): alerts matching it come before alerts that do not.
  ``*`` in the pattern matches any run of characters (``status=crit*``,
  ``host=db-*``). Matching ignores case (BigPanda mixes ``Critical``/``critical``).
- ``name`` or ``+name`` (sort, ascending: oldest / smallest first) and ``-name``
  (descending: newest / largest first).

``name`` is an alert attribute or, failing that, an alert tag:

==========================  ==================================  =========
criteria name (any case)    alert field                         compared
==========================  ==================================  =========
``status``                  ``status``                          text
``startedOn``, ``start``    ``start`` (epoch s)                 number
``updatedOn``, ``updated``  ``updated_at`` (epoch s)            number
``primary_property``        ``primary_property``                text
``secondary_property``      ``secondary_property``              text
``source_system``           ``source_system``                   text
``incident_key``            ``incident_key``                    text
``description``             ``description``                     text
anything else               alert tag (exact name, else any     text
                            case)
==========================  ==================================  =========

Sorting puts alerts that lack the value last, whatever the direction. Alerts that tie on
every criterion keep their input order (the first one wins), so the choice is
deterministic. The default ``status=critical, startedOn`` is "the oldest critical alert,
or the oldest alert when none is critical"; ``status=critical, status=warning,
-startedOn`` is "the newest critical, else the newest warning, else the newest".

An empty criteria string means "no preference": the first alert. A malformed string
raises :class:`ValueError` with a message naming the bad term (``bpsync config check``
shows it).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from sync.model import BPAlert

__all__ = [
    "Criterion",
    "parse_criteria",
    "pick_primary_alert",
    "sort_alerts",
]

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")

#: criteria names (lower-cased, ``_`` removed) of numeric alert attributes
_NUMERIC: dict[str, Callable[[BPAlert], int | None]] = {
    "startedon": lambda a: a.start,
    "start": lambda a: a.start,
    "updatedon": lambda a: a.updated_at,
    "updated": lambda a: a.updated_at,
    "updatedat": lambda a: a.updated_at,
}
#: criteria names (lower-cased, ``_`` removed) of text alert attributes
_TEXT: dict[str, Callable[[BPAlert], str | None]] = {
    "status": lambda a: a.status,
    "primaryproperty": lambda a: a.primary_property,
    "secondaryproperty": lambda a: a.secondary_property,
    "sourcesystem": lambda a: a.source_system,
    "incidentkey": lambda a: a.incident_key,
    "description": lambda a: a.description,
}


@dataclass(frozen=True, slots=True)
class Criterion:
    """One parsed term: an equality (``pattern`` set) or a sort (``descending``)."""

    name: str
    kind: Literal["equals", "sort"]
    pattern: str | None = None
    descending: bool = False

    def matches(self, alert: BPAlert) -> bool:
        """Equality criterion: does the alert's value match the pattern (any case)?"""
        assert self.pattern is not None
        value = _value(alert, self.name)
        if value is None:
            return False
        return _compile_pattern(self.pattern).fullmatch(str(value)) is not None


@functools.lru_cache(maxsize=256)
def _compile_pattern(pattern: str) -> re.Pattern[str]:
    # only ``*`` is special; everything else (dots, brackets, ...) is literal
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.IGNORECASE)


def _norm_name(name: str) -> str:
    return name.lower().replace("_", "")


def _value(alert: BPAlert, name: str) -> str | int | None:
    key = _norm_name(name)
    if key in _NUMERIC:
        return _NUMERIC[key](alert)
    if key in _TEXT:
        return _TEXT[key](alert)
    if name in alert.tags:
        return alert.tags[name]
    lowered = name.lower()
    for tag, value in alert.tags.items():
        if tag.lower() == lowered:
            return value
    return None


def parse_criteria(text: str) -> tuple[Criterion, ...]:
    """Parse ``"status=critical, status=warning, -startedOn"``; ValueError when malformed."""
    if not text.strip():
        return ()
    out: list[Criterion] = []
    for position, raw in enumerate(text.split(","), start=1):
        term = raw.strip()
        where = f"primary_alert term {position} ({raw.strip()!r})"
        if not term:
            raise ValueError(f"primary_alert term {position} is empty (a stray comma?)")
        if "=" in term:
            name, _, pattern = term.partition("=")
            name, pattern = name.strip(), pattern.strip()
            if not _NAME_RE.match(name):
                raise ValueError(f"{where}: {name!r} is not a field or tag name")
            if not pattern or "=" in pattern:
                raise ValueError(f"{where}: expected name=value, e.g. status=critical")
            out.append(Criterion(name=name, kind="equals", pattern=pattern))
            continue
        descending = term.startswith("-")
        name = term[1:].strip() if term[:1] in "+-" else term
        if not _NAME_RE.match(name):
            raise ValueError(
                f"{where}: expected name=value, name, -name or +name (e.g. -startedOn)"
            )
        out.append(Criterion(name=name, kind="sort", descending=descending))
    return tuple(out)


def _compare(a: BPAlert, b: BPAlert, criteria: Sequence[Criterion]) -> int:
    """<0 when ``a`` is preferred, >0 when ``b`` is, 0 on a tie."""
    for crit in criteria:
        if crit.kind == "equals":
            ma, mb = crit.matches(a), crit.matches(b)
            if ma != mb:
                return -1 if ma else 1
            continue
        va, vb = _value(a, crit.name), _value(b, crit.name)
        if va is None or vb is None:
            if va is None and vb is None:
                continue
            return 1 if va is None else -1  # a missing value is never preferred
        if isinstance(va, int) and isinstance(vb, int):
            if va == vb:
                continue
            a_first = va < vb
        else:
            sa, sb = str(va).casefold(), str(vb).casefold()
            if sa == sb:
                continue
            a_first = sa < sb
        if crit.descending:
            a_first = not a_first
        return -1 if a_first else 1
    return 0


def _as_criteria(criteria: str | Sequence[Criterion]) -> Sequence[Criterion]:
    return parse_criteria(criteria) if isinstance(criteria, str) else criteria


def sort_alerts(alerts: Sequence[BPAlert], criteria: str | Sequence[Criterion]) -> list[BPAlert]:
    """All alerts, most preferred first (a stable sort: ties keep the input order)."""
    crits = _as_criteria(criteria)

    def cmp(a: BPAlert, b: BPAlert) -> int:
        return _compare(a, b, crits)

    return sorted(alerts, key=functools.cmp_to_key(cmp))


def pick_primary_alert(
    alerts: Sequence[BPAlert], criteria: str | Sequence[Criterion]
) -> BPAlert | None:
    """The most preferred alert, or None when there are no alerts."""
    crits = _as_criteria(criteria)
    best: BPAlert | None = None
    for alert in alerts:
        if best is None or _compare(alert, best, crits) < 0:
            best = alert
    return best
