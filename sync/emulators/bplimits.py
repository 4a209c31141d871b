"""Rate limiters of the BigPanda emulator (docs/bigpanda-api.md section 3.3).

BigPanda documents its limits (5 requests/s per v2 endpoint, 1 call/s for batch resolve,
150 requests/min for the v1 API) but neither the algorithm nor what one counter covers,
and its 429 is bare (no ``Retry-After``, no ``X-RateLimit-*``). The emulator can play
every plausible reading, so that a chaos test can pick the most hostile one. None of
this is BigPanda code; the names are the emulator's.

Shapes (``rate_limit_shape``); ``rate`` is per second, ``window`` is 1 s for the v2 limits
and 60 s for v1 (150 per minute), so ``limit = rate * window`` requests per window:

- ``token_bucket`` (default): ``burst`` tokens (option ``rate_limit_burst``, default the
  rate; v1: 150), refilled at ``rate`` per second on the monotonic clock;
- ``sliding_window``: at most ``limit`` accepted requests in ANY trailing ``window``.
  A request accepted at monotonic time ``t`` counts while ``now - t < window``; a
  refused request is not counted;
- ``fixed_window``: at most ``limit`` accepted requests per calendar window: windows are
  aligned to whole multiples of ``window`` seconds of the wall clock (``clock.now()``
  since the Unix epoch), i.e. calendar seconds for v2 and calendar minutes for v1. So
  ``2 * limit`` requests straddling a boundary pass within milliseconds.

A window shape with ``rate * window < 1`` allows one request per ``1 / rate`` seconds;
with ``rate <= 0`` it refuses everything.

Scopes (``rate_limit_scope``): what one counter covers.

- ``token_method_route`` (default): token, HTTP method and route template;
- ``token_route``: token and route template (GET and POST of one path share it);
- ``org_route``: the route template only: every API key of the organisation shares it
  (the emulator serves one organisation).

The v1 budget covers all v1 routes and methods: one per org token, or one for the whole
organisation under ``org_route``.
"""

from __future__ import annotations

import math
from collections import deque
from datetime import UTC, datetime, timedelta

from sync.clock import Clock

RATE_LIMIT_SHAPES = ("token_bucket", "sliding_window", "fixed_window")
RATE_LIMIT_SCOPES = ("token_method_route", "token_route", "org_route")
DEFAULT_RATE_LIMIT_SHAPE = "token_bucket"
DEFAULT_RATE_LIMIT_SCOPE = "token_method_route"

Key = tuple[str, ...]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``; ValueError with a one-line message."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)} (got {value!r})")
    return value


class RateLimiter:
    """Counters per key, in the configured shape and scope (module docstring).

    Changing :attr:`shape` or :attr:`scope` forgets every counter.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        shape: str = DEFAULT_RATE_LIMIT_SHAPE,
        scope: str = DEFAULT_RATE_LIMIT_SCOPE,
    ) -> None:
        self._clock = clock
        self._shape = check_choice("rate_limit_shape", shape, RATE_LIMIT_SHAPES)
        self._scope = check_choice("rate_limit_scope", scope, RATE_LIMIT_SCOPES)
        self._buckets: dict[Key, tuple[float, float]] = {}
        """token_bucket: key -> (tokens, monotonic time of the last update)."""
        self._accepted: dict[Key, deque[float]] = {}
        """sliding_window: key -> monotonic times of the accepted requests in the window."""
        self._windows: dict[Key, tuple[int, int]] = {}
        """fixed_window: key -> (window index, requests accepted in it)."""

    @property
    def shape(self) -> str:
        return self._shape

    @shape.setter
    def shape(self, value: str) -> None:
        value = check_choice("rate_limit_shape", value, RATE_LIMIT_SHAPES)
        if value != self._shape:
            self._shape = value
            self.clear()

    @property
    def scope(self) -> str:
        return self._scope

    @scope.setter
    def scope(self, value: str) -> None:
        value = check_choice("rate_limit_scope", value, RATE_LIMIT_SCOPES)
        if value != self._scope:
            self._scope = value
            self.clear()

    def key(self, token: str, method: str, route: str) -> Key:
        """The counter of a v2 request (``route`` is the route template)."""
        if self._scope == "org_route":
            return (route,)
        if self._scope == "token_route":
            return (token, route)
        return (token, method, route)

    def v1_key(self, token: str) -> Key:
        """The counter of a v1 request (all v1 routes and methods share it)."""
        return ("v1",) if self._scope == "org_route" else ("v1", token)

    def allow(
        self, key: Key, rate: float, *, burst: float | None = None, window: float = 1.0
    ) -> bool:
        """Count one request against ``key``; False means answer 429."""
        if self._shape == "token_bucket":
            return self._token_bucket(key, rate, max(1.0, rate) if burst is None else burst)
        if rate <= 0:
            return False
        limit = rate * window
        if limit < 1.0:
            limit, window = 1.0, 1.0 / rate
        if self._shape == "sliding_window":
            return self._sliding_window(key, math.floor(limit + 1e-9), window)
        return self._fixed_window(key, math.floor(limit + 1e-9), window)

    def clear(self) -> None:
        self._buckets.clear()
        self._accepted.clear()
        self._windows.clear()

    def _token_bucket(self, key: Key, rate: float, burst: float) -> bool:
        now = self._clock.monotonic()
        tokens, last = self._buckets.get(key, (burst, now))
        tokens = min(burst, tokens + (now - last) * rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return True
        self._buckets[key] = (tokens, now)
        return False

    def _sliding_window(self, key: Key, limit: int, window: float) -> bool:
        now = self._clock.monotonic()
        accepted = self._accepted.setdefault(key, deque())
        while accepted and now - accepted[0] >= window:
            accepted.popleft()
        if len(accepted) >= limit:
            return False
        accepted.append(now)
        return True

    def _fixed_window(self, key: Key, limit: int, window: float) -> bool:
        micros = (self._clock.now() - _EPOCH) // _MICROSECOND
        index = micros // max(1, round(window * 1_000_000))
        current, count = self._windows.get(key, (index, 0))
        if current != index:
            count = 0
        if count >= limit:
            return False
        self._windows[key] = (index, count + 1)
        return True


__all__ = [
    "DEFAULT_RATE_LIMIT_SCOPE",
    "DEFAULT_RATE_LIMIT_SHAPE",
    "RATE_LIMIT_SCOPES",
    "RATE_LIMIT_SHAPES",
    "RateLimiter",
    "check_choice",
]
