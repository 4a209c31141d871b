"""Field sizes: how long a value each side keeps, and the cut that says so (pure).

A value longer than its target keeps is cut by bpsync, ending in :data:`MARKER`, before
it is sent, and the cut value is what is remembered as synced: never refused with a
400 (an instance that rejects overlong values), never silently truncated by the target
and then found "changed" and rewritten every cycle.

- ServiceNow: the dictionary's ``max_length`` of each field (``sys_dictionary``, read
  once at start-up by :meth:`~sync.clients.servicenow.ServiceNowClient.field_dictionary`);
  where the dictionary cannot be read, the documented defaults
  (:data:`SN_DEFAULT_SIZES`: short_description 160, description 4,000, ...).
- BigPanda: one limit for every incident tag value (:data:`BP_TAG_VALUE_MAX`, 512
  characters: the documented limit of an alert tag value, which incident tags are
  built from; BigPanda documents none for incident tags).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

__all__ = [
    "BP_TAG_VALUE_MAX",
    "DEFAULT_SIZES",
    "MARKER",
    "SN_DEFAULT_SIZES",
    "FieldSizes",
    "fit",
]

#: what ends a value bpsync cut to fit
MARKER: Final = " ... [truncated by bpsync]"

#: ServiceNow's documented sizes of the incident fields bpsync writes (docs 3.1)
SN_DEFAULT_SIZES: Mapping[str, int] = MappingProxyType(
    {
        "short_description": 160,
        "description": 4000,
        "close_notes": 4000,
        "work_notes": 4000,
        "comments": 4000,
        "correlation_id": 100,
        "correlation_display": 100,
    }
)

#: longest incident tag value bpsync writes (docs 5.2: 512 characters per tag value)
BP_TAG_VALUE_MAX: Final = 512


def fit(text: str, limit: int | None) -> str:
    """``text`` within ``limit`` characters, ending in :data:`MARKER` when cut."""
    if limit is None or len(text) <= limit:
        return text
    if limit <= len(MARKER):
        return text[:limit]
    return text[: limit - len(MARKER)].rstrip() + MARKER


@dataclass(frozen=True, slots=True)
class FieldSizes:
    """The sizes in force: ServiceNow field -> max length, and the tag value limit."""

    servicenow: Mapping[str, int] = field(default_factory=lambda: SN_DEFAULT_SIZES)
    bigpanda_tag: int = BP_TAG_VALUE_MAX

    def sn(self, name: str) -> int | None:
        """The size of ServiceNow field ``name`` (None: no limit known)."""
        size = self.servicenow.get(name)
        if size is None:
            return SN_DEFAULT_SIZES.get(name)
        return size

    @classmethod
    def from_dictionary(cls, sizes: Mapping[str, int]) -> FieldSizes:
        """What the dictionary says, the documented defaults for what it does not."""
        merged = dict(SN_DEFAULT_SIZES)
        merged.update({name: size for name, size in sizes.items() if size > 0})
        return cls(servicenow=MappingProxyType(merged))


DEFAULT_SIZES: Final = FieldSizes()
