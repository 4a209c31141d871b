"""Pacing and throttling, shared by both clients: when may the next request go.

Throttling is not failure. A 429 (or a 503, or a reset or timeout of a request that is
safe to send again) means "not now"; the clients delay the request and send it again
within the cycle, and only an outage that lasts stops anything (SPEC B13, the storm
issue). This module decides *when*; the clients decide *whether* an answer is a
throttle (see each client's ``_request``); the executor still owns retries of writes
that failed (a write is never re-sent here after a reset or a timeout: it may have
been applied).

- :class:`RatePacer` (BigPanda): requests per second per endpoint family. Each family is
  paced at ``headroom`` x its documented ceiling (``bigpanda.rate_limit_per_s``, or a
  family's own lower limit given in ``ceilings``, e.g. SCIM's 2 req/s) (GCRA with a
  capacity of one: requests
  of a family are ``1 / rate`` apart, so no limiter shape, token bucket, sliding window
  or fixed window, ever sees more than the ceiling in any second). After a 429 the
  family's rate is multiplied by ``backoff_factor`` (never below ``min_fraction`` of
  the ceiling) and the family waits ``hold_s`` (one limiter window: BigPanda's 429
  carries no Retry-After), doubling with each consecutive 429 up to ``hold_max_s``.
  After ``recover_after_s`` without a 429 the rate grows by ``recover_step`` x the
  target every such period, back up to the target, never above it.
- :class:`ConcurrencyPacer` (ServiceNow): requests in flight. ServiceNow limits by
  integration semaphores (a few requests at once per node, a bounded queue, then a 429
  without headers) and by hourly rate rules (429 with ``Retry-After``). The limit starts
  at two and grows by one per quiet period up to ``servicenow.max_concurrency``; a 429
  halves it, and past the level that met the 429 it grows twelve times more slowly (a
  pool has a fixed size); a ``Retry-After`` holds every request until it has passed.
- Holds are the one answer to "when may this family send next" (``held_for``): a
  request waits out its family's hold up to ``outage_after_s``; a longer one (a
  Retry-After handed to the caller is held too) is refused at once, not sent
  (:func:`held_error`), and the executor asks the same hold before it sends a write, so
  a write is deferred only by its own family's hold (ServiceNow has one, the instance).
- :class:`SideHealth`: per side, since when every request has been failing (the outage
  clock: ``outage_after_s`` of nothing but failures is an outage and the error goes to
  the caller), and per family whether it is throttled: one INFO line when throttling
  starts, one when it ends (``quiet_s`` without a 429), and the
  ``bpsync_throttled_total{side,family}`` counter through the observer.

Everything runs on the injected clock, so tests of backoff and recovery do not sleep.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp

from sync.clock import Clock
from sync.errors import ConfigError, TransientError

log = logging.getLogger(__name__)

ThrottleObserver = Callable[[str, str], None]
"""Called with (side, family) for every throttled answer (the metrics counter)."""
SkipObserver = Callable[[str, str], None]
"""Called with (side, reason) once per polled record skipped as malformed."""


def resendable(outcome: object, method: str) -> bool:
    """May a request that met this transient outcome be sent again by the client?

    A 429 always: the server did not process it (a limiter or a full queue). For a GET
    (which changes nothing): a 5xx, an answer that is not what was asked for (a proxy
    page, a 202), a timeout, or a connection cut off mid-request. Never a write that
    failed otherwise (it may have been applied: the executor re-reads and decides), and
    never a server that cannot be reached at all (refused, DNS, TLS): that is down, not
    busy, and the caller hears of it at once.
    """
    status = getattr(outcome, "status", None)
    if status == 429:
        return True
    if method != "GET":
        return False
    if status is not None:
        return True
    return isinstance(
        outcome,
        (
            TimeoutError,
            ConnectionResetError,
            aiohttp.ServerDisconnectedError,
            aiohttp.ClientPayloadError,
            aiohttp.ServerTimeoutError,
        ),
    ) or (isinstance(outcome, aiohttp.ClientOSError) and outcome.errno == errno.ECONNRESET)


#: ServiceNow requests at once when a client starts (then one more per quiet period)
SLOW_START = 2
#: past the level that met the last 429, ServiceNow's requests at once grow this many
#: times more slowly (one probe a minute with the default 5 s quiet period)
PROBE_PERIODS = 12


@dataclass(frozen=True, slots=True)
class PacingPolicy:
    """How hard to push and how to back off (``[pacing]`` in the settings)."""

    headroom: float = 0.9
    """Share of the documented ceiling a family is paced at."""
    backoff_factor: float = 0.5
    """The rate (BigPanda) or concurrency (ServiceNow) is multiplied by this after a 429."""
    min_fraction: float = 0.1
    """A family is never paced below this share of its ceiling."""
    recover_after_s: float = 5.0
    """A quiet period: after this long without a 429 the pace grows one step."""
    recover_step: float = 0.1
    """Share of the target rate added per quiet period."""
    hold_s: float = 1.0
    """Wait after a 429 that names no Retry-After (doubles per consecutive 429)."""
    hold_max_s: float = 30.0
    outage_after_s: float = 60.0
    """Every request of a side failing this long is an outage: the error reaches the caller."""
    quiet_s: float = 30.0
    """Throttling of a family has ended after this long without a 429 (for the log line)."""

    def hold_for(self, consecutive: int, retry_after_s: float | None = None) -> float:
        """How long to wait after the ``consecutive``-th failure in a row: the server's
        Retry-After when it gave one, else ``hold_s`` doubled per failure up to
        ``hold_max_s``."""
        if retry_after_s is not None and retry_after_s > 0:
            return retry_after_s
        exponent = min(max(consecutive, 1) - 1, 16)
        return min(self.hold_max_s, self.hold_s * float(2**exponent))

    def refuses(self, held_s: float) -> bool:
        """Is a hold this long past what a request waits out? Longer than
        ``outage_after_s`` (a Retry-After of an hour), the request is not sent: the client
        refuses it at once (:func:`held_error`) and the executor defers a write whose
        family is held so long."""
        return held_s > self.outage_after_s

    def __post_init__(self) -> None:
        if not 0 < self.headroom <= 1:
            raise ConfigError("pacing.headroom must be in (0, 1]")
        if not 0 < self.backoff_factor < 1:
            raise ConfigError("pacing.backoff_factor must be in (0, 1)")
        if not 0 < self.min_fraction <= self.headroom:
            raise ConfigError("pacing.min_fraction must be in (0, headroom]")


def held_error(
    side: str, family: str, held_s: float, policy: PacingPolicy, *, method: str, url: str
) -> TransientError | None:
    """The error for a request whose family is held past what a request waits out
    (:meth:`PacingPolicy.refuses`), not sent; None when it may wait for its turn."""
    if not policy.refuses(held_s):
        return None
    return TransientError(
        side,
        f"{family} held for {held_s:.0f} s more (a Retry-After or throttling): not sent",
        retry_after_s=held_s,
        method=method,
        url=url,
    )


@dataclass(slots=True)
class _Family:
    rate: float
    target: float
    """The family's pace when nothing is refused: headroom x its ceiling."""
    ceiling: float
    next_at: float = 0.0
    hold_until: float = 0.0
    consecutive: int = 0
    last_429: float | None = None
    last_step: float = 0.0


class RatePacer:
    """Requests per second per family, adaptive (see the module docstring)."""

    def __init__(
        self,
        clock: Clock,
        ceiling_per_s: float,
        policy: PacingPolicy,
        *,
        ceilings: Mapping[str, float] | None = None,
    ) -> None:
        if ceiling_per_s <= 0:
            raise ConfigError("bigpanda.rate_limit_per_s must be positive")
        self._clock = clock
        self._policy = policy
        self.ceiling_per_s = float(ceiling_per_s)
        self.target_per_s = ceiling_per_s * policy.headroom
        self._ceilings = dict(ceilings or {})
        """families with a lower documented limit (e.g. SCIM's 2 req/s): never above it"""
        self._families: dict[str, _Family] = {}

    def ceiling_of(self, family: str) -> float:
        """The family's ceiling: ``ceiling_per_s``, or its own documented limit if lower."""
        return min(self.ceiling_per_s, self._ceilings.get(family, self.ceiling_per_s))

    def _family(self, name: str) -> _Family:
        fam = self._families.get(name)
        if fam is None:
            ceiling = self.ceiling_of(name)
            target = ceiling * self._policy.headroom
            fam = self._families[name] = _Family(rate=target, target=target, ceiling=ceiling)
        return fam

    def rate_of(self, family: str) -> float:
        """The family's current pace in requests per second (after recovery so far)."""
        fam = self._family(family)
        self._recover(fam, self._clock.monotonic())
        return fam.rate

    def _recover(self, fam: _Family, now: float) -> None:
        if fam.last_429 is None or fam.rate >= fam.target:
            return
        period = self._policy.recover_after_s
        since = max(fam.last_429, fam.last_step)
        steps = int((now - since) // period) if period > 0 else 1
        if steps <= 0:
            return
        fam.rate = min(fam.target, fam.rate + steps * self._policy.recover_step * fam.target)
        fam.last_step = since + steps * period

    async def acquire(self, family: str) -> float:
        """Wait for the family's next slot (reserved without an await: callers get
        distinct slots in call order). A hold that starts while a caller waits (a 429)
        moves it past the hold, to a new slot. Returns when the slot it leaves with was
        booked (``clock.monotonic()``): a 429 for a request booked before the family's
        last 429 is an echo of that one (see :meth:`throttled`)."""
        fam = self._family(family)
        while True:
            now = self._clock.monotonic()
            self._recover(fam, now)
            slot = max(now, fam.next_at, fam.hold_until)
            fam.next_at = slot + 1.0 / fam.rate
            if slot > now:
                await self._clock.sleep(slot - now)
            if self._clock.monotonic() >= fam.hold_until:
                return now

    def throttled(
        self, family: str, retry_after_s: float | None = None, *, sent_at: float | None = None
    ) -> float:
        """A 429 for ``family``: slow down, hold the family; returns the hold in seconds.

        ``sent_at`` (what :meth:`acquire` returned): a request sent before the family's
        last 429 was known is an echo of that same overload (requests already in
        flight): it waits out the current hold but slows the family no further, so
        ten concurrent requests make one back-off step, not ten."""
        now = self._clock.monotonic()
        fam = self._family(family)
        if sent_at is not None and fam.last_429 is not None and sent_at < fam.last_429:
            return max(0.0, fam.hold_until - now)
        fam.consecutive += 1
        fam.last_429 = now
        fam.last_step = now
        floor = fam.ceiling * self._policy.min_fraction
        fam.rate = max(floor, fam.rate * self._policy.backoff_factor)
        hold = self._policy.hold_for(fam.consecutive, retry_after_s)
        fam.hold_until = max(fam.hold_until, now + hold)
        return hold

    def succeeded(self, family: str) -> None:
        fam = self._families.get(family)
        if fam is not None:
            fam.consecutive = 0

    def hold(self, family: str, seconds: float) -> None:
        """No request of ``family`` before ``seconds`` from now."""
        fam = self._family(family)
        fam.hold_until = max(fam.hold_until, self._clock.monotonic() + seconds)

    def held_for(self, family: str) -> float:
        """Seconds before the next request of ``family`` may go (its hold after a 429 or
        a failure; 0: now). Families are held one by one: another family's hold is not
        this one's."""
        fam = self._families.get(family)
        if fam is None:
            return 0.0
        return max(0.0, fam.hold_until - self._clock.monotonic())


class ConcurrencyPacer:
    """Requests in flight, adaptive (see the module docstring)."""

    def __init__(self, clock: Clock, max_concurrency: int, policy: PacingPolicy) -> None:
        if max_concurrency < 1:
            raise ConfigError("servicenow.max_concurrency must be at least 1")
        self._clock = clock
        self._policy = policy
        self.max_concurrency = max_concurrency
        # a slow start: a few requests at once, one more per quiet period up to
        # max_concurrency; a pool smaller than that then costs no burst of 429s
        self._limit = float(min(max_concurrency, SLOW_START))
        self._ceiling = float(max_concurrency)
        """Just below the requests at once that met the last 429."""
        self._growing_since = clock.monotonic()
        self._in_flight = 0
        self._changed = asyncio.Condition()
        self._not_before = 0.0
        self._consecutive = 0
        self._last_429: float | None = None
        self._last_step = 0.0

    @property
    def limit(self) -> int:
        self._recover(self._clock.monotonic())
        return max(1, int(self._limit))

    def _recover(self, now: float) -> None:
        """One more request at once per quiet period up to just below where the last 429
        came; past that, one per ``PROBE_PERIODS`` quiet periods (a semaphore pool has
        a fixed size: probing it as fast as the climb back would meet a 429 each time)."""
        while self._limit < self.max_concurrency:
            period = self._policy.recover_after_s
            if self._limit >= self._ceiling:
                period *= PROBE_PERIODS
            since = max(self._last_429 or self._growing_since, self._last_step)
            if period > 0 and now - since < period:
                return
            self._limit = min(float(self.max_concurrency), self._limit + 1)
            self._last_step = since + period

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[float]:
        """Hold one of the side's request slots for the body of the ``async with``; gives
        the time the request is sent (``clock.monotonic()``)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._in_flight < self.limit)
            self._in_flight += 1
        try:
            # (a 429 that arrives while this request waits moves it past the new hold)
            while (wait_s := self._not_before - self._clock.monotonic()) > 0:
                await self._clock.sleep(wait_s)
            yield self._clock.monotonic()
        finally:
            async with self._changed:
                self._in_flight -= 1
                self._changed.notify_all()

    def throttled(
        self, retry_after_s: float | None = None, *, sent_at: float | None = None
    ) -> float:
        """A 429: fewer requests at once, and none before the hold has passed. A request
        sent before the last 429 was known only waits (see :meth:`RatePacer.throttled`)."""
        now = self._clock.monotonic()
        if sent_at is not None and self._last_429 is not None and sent_at < self._last_429:
            if retry_after_s is not None and retry_after_s > 0:
                self._not_before = max(self._not_before, now + retry_after_s)
            return max(0.0, self._not_before - now)
        self._consecutive += 1
        self._last_429 = now
        self._last_step = now
        self._ceiling = max(1.0, float(int(self._limit)) - 1)
        self._limit = max(1.0, self._limit * self._policy.backoff_factor)
        hold = self._policy.hold_for(self._consecutive, retry_after_s)
        self._not_before = max(self._not_before, now + hold)
        return hold

    def succeeded(self) -> None:
        self._consecutive = 0

    def hold(self, seconds: float) -> None:
        """No request before ``seconds`` from now (a failure, or a Retry-After handed to
        the caller)."""
        self._not_before = max(self._not_before, self._clock.monotonic() + seconds)

    def held_for(self) -> float:
        """Seconds before the next request may go (a 429's hold, a Retry-After; 0: now).
        ServiceNow limits the instance, not a route: one hold for the side."""
        return max(0.0, self._not_before - self._clock.monotonic())


@dataclass(slots=True)
class _Episode:
    started: float
    last: float
    count: int = 1


@dataclass(slots=True)
class SideHealth:
    """One side's outage clock and throttling episodes (see the module docstring)."""

    side: str
    clock: Clock
    policy: PacingPolicy
    observer: ThrottleObserver | None = None
    failing_since: float | None = None
    """``clock.monotonic()`` of the first failure since the last success, or None."""
    _episodes: dict[str, _Episode] = field(default_factory=dict)

    def succeeded(self) -> None:
        self.failing_since = None
        self._end_quiet_episodes()

    def failed(self) -> None:
        if self.failing_since is None:
            self.failing_since = self.clock.monotonic()

    def in_outage(self) -> bool:
        """Every request has failed for longer than ``outage_after_s``."""
        return (
            self.failing_since is not None
            and self.clock.monotonic() - self.failing_since >= self.policy.outage_after_s
        )

    def throttled(self, family: str, pace: str) -> None:
        """Count a throttled answer; log when the family's throttling starts."""
        now = self.clock.monotonic()
        if self.observer is not None:
            self.observer(self.side, family)
        episode = self._episodes.get(family)
        if episode is None:
            self._episodes[family] = _Episode(started=now, last=now)
            log.info(
                "%s is throttling %s requests; pacing down to %s",
                self.side,
                family,
                pace,
                extra={"side": self.side, "family": family},
            )
            return
        episode.last = now
        episode.count += 1

    def _end_quiet_episodes(self) -> None:
        now = self.clock.monotonic()
        for family, episode in list(self._episodes.items()):
            if now - episode.last >= self.policy.quiet_s:
                del self._episodes[family]
                log.info(
                    "%s stopped throttling %s requests (%d throttled answers over %.0f s)",
                    self.side,
                    family,
                    episode.count,
                    episode.last - episode.started,
                    extra={"side": self.side, "family": family},
                )

    def throttled_families(self) -> list[str]:
        """The families throttled within the last ``quiet_s`` (for /readyz and status)."""
        self._end_quiet_episodes()
        return sorted(self._episodes)
