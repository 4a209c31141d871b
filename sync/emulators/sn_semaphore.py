"""The integration semaphore pool of a ServiceNow node (docs/servicenow-api.md 1.6, KB0635398).

A node runs at most ``size`` integration (``API_INT``) transactions at once; up to
``queue`` more wait for a free semaphore, in arrival order; a request that finds every
semaphore busy and the queue full is refused at once. The emulator answers that refusal
with 429 and *no* rate-limit headers (no ``Retry-After``, no ``X-RateLimit-*``), unlike a
rate-limit rule's 429.

``size=None`` turns the pool off (every request runs at once; the counters still move).
Both numbers can change at run time (``/_emulator/config``): growing the pool or the
queue admits waiting requests at once; shrinking it lets running requests finish.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

DEFAULT_QUEUE = 50


class PoolFullError(Exception):
    """Every semaphore is busy and the queue is full."""


class SemaphorePool:
    """Bounded concurrency with a bounded FIFO queue (see the module docstring)."""

    def __init__(self, size: int | None = None, queue: int = DEFAULT_QUEUE) -> None:
        self.size = size
        self.queue_limit = queue
        self.in_flight = 0
        self.rejected = 0
        self.peak_in_flight = 0
        self.peak_queued = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    def _has_room(self) -> bool:
        return self.size is None or self.in_flight < self.size

    def _enter(self) -> None:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    async def acquire(self) -> None:
        """Take a semaphore, queueing if needed; :class:`PoolFullError` when the queue is full."""
        if self._has_room() and not self._waiters:
            self._enter()
            return
        if self.queued >= self.queue_limit:
            self.rejected += 1
            raise PoolFullError
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.peak_queued = max(self.peak_queued, self.queued)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot was handed over just before the cancellation
            else:
                self._discard(waiter)
            raise

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def resize(self, size: int | None, queue: int) -> None:
        """Change the pool at run time; waiting requests are admitted when room appears."""
        self.size = size
        self.queue_limit = queue
        self._wake()

    def reset_counters(self) -> None:
        """Forget the rejection count and the peaks (``POST /_emulator/reset``)."""
        self.rejected = 0
        self.peak_in_flight = self.in_flight
        self.peak_queued = self.queued

    def _discard(self, waiter: asyncio.Future[None]) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    def _wake(self) -> None:
        while self._waiters and self._has_room():
            waiter = self._waiters.popleft()
            if waiter.done():
                continue
            self._enter()  # handed over: the woken request already holds it
            waiter.set_result(None)

    def to_json(self) -> dict[str, Any]:
        return {
            "in_flight": self.in_flight,
            "queued": self.queued,
            "rejected": self.rejected,
            "peak_in_flight": self.peak_in_flight,
            "peak_queued": self.peak_queued,
        }
