"""Outbound deliveries of the emulators (BigPanda's webhook, ServiceNow's business rule)
and their fault switches: what a lossy network and a vendor's retry logic do to them.

Not vendor behaviour: test switches, so that push mode can be tested against the
failures other sync tools meet (events that never arrive, arrive twice, late, or out of
order). Every switch is off by default.

- ``drop`` (fraction 0..1): the delivery is never sent (recorded as ``dropped``).
- ``duplicate`` (fraction 0..1): sent twice.
- ``delay_s`` (seconds >= 0): every delivery waits this long before it is sent.
- ``reorder`` (fraction 0..1): the delivery waits ``reorder_delay_s`` more, so that
  later ones overtake it.

Which deliveries are hit is drawn from a generator seeded by ``seed`` (None: 0), so a
run is repeatable. Waits are on the emulator's injected clock.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

FAULT_KEYS = ("drop", "duplicate", "delay_s", "reorder", "reorder_delay_s", "seed")


def _fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name} is a fraction between 0 and 1, got {value!r}")
    return float(value)


def _seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
    return float(value)


@dataclass
class DeliveryFaults:
    """The fault switches of one emulator's deliveries (see the module docstring)."""

    drop: float = 0.0
    duplicate: float = 0.0
    delay_s: float = 0.0
    reorder: float = 0.0
    reorder_delay_s: float = 1.0
    seed: int | None = None
    _rng: random.Random = field(default_factory=lambda: random.Random(0), repr=False)

    def update(self, data: Mapping[str, Any]) -> None:
        """Apply a partial JSON object (all or nothing); ValueError names a bad key."""
        if not isinstance(data, Mapping):
            raise TypeError("faults must be a JSON object")
        unknown = set(data) - set(FAULT_KEYS)
        if unknown:
            raise ValueError(f"unknown fault keys: {sorted(unknown)} (known: {list(FAULT_KEYS)})")
        values: dict[str, Any] = {}
        for name in ("drop", "duplicate", "reorder"):
            if name in data:
                values[name] = _fraction(name, data[name])
        for name in ("delay_s", "reorder_delay_s"):
            if name in data:
                values[name] = _seconds(name, data[name])
        if "seed" in data:
            seed = data["seed"]
            if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
                raise ValueError(f"seed must be an integer or null, got {seed!r}")
            values["seed"] = seed
        for name, value in values.items():
            setattr(self, name, value)
        if "seed" in values:
            self._rng = random.Random(self.seed or 0)

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in FAULT_KEYS}

    def plan(self) -> list[float]:
        """The waits (seconds) of the copies to send of one delivery: ``[]`` when it is
        dropped, two entries when it is duplicated."""
        rng = self._rng
        if self.drop and rng.random() < self.drop:
            return []
        copies = 2 if self.duplicate and rng.random() < self.duplicate else 1
        wait = self.delay_s
        if self.reorder and rng.random() < self.reorder:
            wait += self.reorder_delay_s
        return [wait] * copies


__all__ = ["FAULT_KEYS", "DeliveryFaults"]
