"""What ``/readyz`` decides from: the daemon's leadership and its recent cycles.

Readiness rule (SPEC section 2, ``/readyz``):

- the database is reachable (the server pings it on each request), and
- the leader: a cycle succeeded within ``READY_INTERVALS`` poll intervals, or one is in
  flight and within ``cycle_budget`` plus that allowance, at least
  :data:`OVERRUN_ALLOWANCE_S` (a storm worked through at the
  APIs' pace is progress); a throttled side is reported (``throttled``) but does not
  make it unready: throttled is not down;
- a standby replica (Postgres HA, not leading): the database alone; it reports
  ``leader: 0`` so a load balancer or an operator can tell it apart.

``/healthz`` (alive) does not use this state: a process that answers is alive.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from sync.clock import Clock

#: a leader is ready when a cycle succeeded within this many poll intervals
READY_INTERVALS = 3
#: the least a cycle in flight may run past its budget and still count as working: it
#: finishes the pairs it started and the new incidents whose search page it read
#: (``sync.execution.runs_after``): at most ``pair_concurrency`` pairs and one page, a
#: few seconds at BigPanda's pace, more than 3 intervals of a 1 s poll
OVERRUN_ALLOWANCE_S = 30.0


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    leader: bool
    reasons: list[str] = field(default_factory=list)
    throttled: dict[str, list[str]] = field(default_factory=dict)
    """Side -> endpoint families throttled lately: slower, not down (ready stays true)."""

    def as_json(self) -> dict[str, object]:
        return {
            "status": "ready" if self.ready else "not ready",
            "leader": 1 if self.leader else 0,
            "reasons": list(self.reasons),
            "throttled": {side: list(fams) for side, fams in self.throttled.items()},
        }


class ReadinessSource(Protocol):
    """What ``/readyz`` asks: a pair's :class:`HealthState`, or the daemon's view over
    every pair (:class:`sync.runtime.daemon.ProcessHealth`)."""

    def readiness(self, db_error: str | None = None) -> Readiness: ...


class HealthState:
    """Updated by the daemon after every cycle; read by the HTTP server."""

    def __init__(
        self,
        clock: Clock,
        poll_interval: float,
        *,
        cycle_budget: float = 0.0,
        throttled: Callable[[], Mapping[str, list[str]]] | None = None,
    ) -> None:
        self.clock = clock
        self.poll_interval = float(poll_interval)
        self.cycle_budget = float(cycle_budget)
        self._throttled = throttled
        self.cycle_started: float | None = None
        """``clock.monotonic()`` when the cycle in flight started (None: none runs)."""
        self.leader = False
        self.last_success: float | None = None
        """``clock.monotonic()`` when the last good cycle ended (None: none yet)."""
        self.last_error: str | None = None
        self.not_started: str | None = None
        """why this pair could not start (several pairs: the others run; None: started)"""
        self.last_success_at: datetime | None = None
        """``clock.now()`` when the last good cycle ended (the status page shows it)."""

    @property
    def max_age_s(self) -> float:
        return READY_INTERVALS * self.poll_interval

    def cycle_succeeded(self) -> None:
        self.last_success = self.clock.monotonic()
        self.last_success_at = self.clock.now()
        self.last_error = None

    def cycle_failed(self, error: BaseException | str | None) -> None:
        if error is None:
            self.last_error = "cycle failed"
        elif isinstance(error, BaseException):
            self.last_error = str(error) or type(error).__name__
        else:
            self.last_error = error

    def readiness(self, db_error: str | None = None) -> Readiness:
        """Ready or not, with the reasons; ``db_error`` is None when the ping succeeded."""
        reasons: list[str] = []
        if db_error is not None:
            reasons.append(f"database unreachable: {db_error}")
        if self.not_started is not None:
            reasons.append(self.not_started)
        if self.leader:
            if self.last_success is None:
                reasons.append("no sync cycle has succeeded yet")
            elif not self._working():
                age = self.clock.monotonic() - self.last_success
                if age > self.max_age_s:
                    reasons.append(
                        f"last successful cycle {age:.1f}s ago "
                        f"(more than {READY_INTERVALS} poll intervals, {self.max_age_s:g}s)"
                    )
            if reasons and self.last_error and db_error is None:
                reasons.append(f"last cycle error: {self.last_error}")
        return Readiness(
            ready=not reasons, leader=self.leader, reasons=reasons, throttled=self.throttled()
        )

    def throttled(self) -> dict[str, list[str]]:
        """Side -> the endpoint families it throttles lately (sides without any left out)."""
        found = self._throttled() if self._throttled else {}
        return {side: list(fams) for side, fams in found.items() if fams}

    def _working(self) -> bool:
        """A cycle is in flight and within its budget (plus the usual allowance): a storm
        worked through at the APIs' pace is progress, not a stall."""
        if self.cycle_started is None or self.last_success is None:
            return False
        running_s = self.clock.monotonic() - self.cycle_started
        return running_s <= self.cycle_budget + max(self.max_age_s, OVERRUN_ALLOWANCE_S)


__all__ = [
    "OVERRUN_ALLOWANCE_S",
    "READY_INTERVALS",
    "HealthState",
    "Readiness",
    "ReadinessSource",
]
