"""One sync pair inside the daemon: its engine, its one-writer guard, its health, its
cycles and push passes (:class:`PairRunner`).

Each pair (``[[pairs]]``, or the one pair ``default``) has its own database or schema,
its own API clients (so its own pacing budget: BigPanda limits per token, ServiceNow per
user), its own leadership and its own lock between a cycle and a push pass: one pair's
outage, throttling or refused credentials never slows or stops another. Every line
logged while a pair works carries ``pair`` (:func:`sync.logs.pair_context`).

Start-up failures: with one pair they stop the process (one line, exit 1, as always);
with several, a pair that cannot start (refused credentials, an API or its database
unreachable) is reported (ERROR, ``/readyz`` reasons) and tried again every interval
while the others run (:meth:`PairRunner.ensure_started`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from sync.clients.pacing import SideHealth
from sync.clock import Clock
from sync.coordinator import CycleReport
from sync.engine import Engine, build_engine
from sync.errors import ApiError, StoreError
from sync.logs import pair_context
from sync.metrics import Metrics
from sync.runtime.health import HealthState
from sync.runtime.share import LeadershipShare
from sync.settings import Settings
from sync.store.base import FencedError
from sync.store.engines import is_postgres

#: how often a push pass waiting for the cycle in flight looks whether it may run beside it (s)
GUEST_LOOK_S = 0.05

log = logging.getLogger(__name__)


def _sqlite_path(url: str) -> str:
    return url.split(":///", 1)[1] if ":///" in url else url


async def prepare_database(settings: Settings) -> str:
    """Upgrade the embedded default SQLite; check any configured database's schema."""
    from sync.store import check_schema, upgrade_database

    url = settings.effective_database_url
    embedded = settings.database_url is None or not settings.database_url.get_secret_value()
    if embedded:
        before, after = await upgrade_database(url)
        if before != after:
            log.info("embedded database upgraded", extra={"before": before, "after": after})
    else:
        await check_schema(url)
    return url


def cycle_interval(settings: Settings) -> float:
    """Seconds between cycles: ``push.reconcile_interval`` with push on (default
    ``poll_interval``), else ``poll_interval``; /readyz judges cycles by it."""
    push = settings.push
    if push.enabled and push.reconcile_interval:
        return push.reconcile_interval
    return settings.poll_interval


class PairRunner:
    """Leadership, cycles, push passes and health of one pair (module docstring)."""

    def __init__(
        self,
        name: str,
        settings: Settings,
        *,
        clock: Clock,
        metrics: Metrics,
        holder: str,
        force: bool = False,
        engine: Engine | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.clock = clock
        self.metrics = metrics
        self.force = force
        self.engine = engine
        self.holder = holder
        self.health = HealthState(
            clock,
            self.cycle_interval,
            cycle_budget=settings.cycle_budget,
            throttled=self._throttled,
        )
        self.leader = False
        self.started = False
        self.stopping = False
        self.push: Any = None
        """the push pass (:class:`sync.push.passes.PushPass`), with push on"""
        self.receiver: Any = None
        """the webhook receivers (:class:`sync.runtime.receiver.PushReceiver`), with push on"""
        self._elector: Any = None
        self._lock: Any = None
        self.current: asyncio.Task[Any] | None = None
        """the tick in flight (the stop drains it)"""
        self._work = asyncio.Lock()
        """held by a cycle and by a push pass; a pass runs beside a cycle only as its
        guest (``CycleRun.open_to_guests``), for the incidents the cycle leaves it"""
        self.wake_event = asyncio.Event()
        self.migrations = asyncio.Lock()
        """held while this pair's database is upgraded: the daemon gives every pair the
        same lock (pairs start at once, Alembic upgrades cannot)"""
        self._start_error: str | None = None
        self.share: LeadershipShare | None = None
        """several pairs on Postgres: this replica's share of them (:mod:`sync.runtime.share`)"""
        self.group = ""
        """the deployment's fingerprint naming its election sessions (several pairs)"""
        self.election_session: Any = None
        """several pairs on Postgres: the replica's one election session
        (:class:`sync.runtime.leader.ElectionSession`), shared by the pairs' locks"""

    @property
    def cycle_interval(self) -> float:
        return cycle_interval(self.settings)

    # ------------------------------------------------------------------ start

    async def start(self, *, serve: bool) -> None:
        """Database, one-writer guard, engine, credentials; raises on a start-up error.
        ``serve``: the daemon will run (push receivers are made), not one cycle."""
        with pair_context(self.name):
            async with self.migrations:  # Alembic's context is global: one at a time
                url = await prepare_database(self.settings)
            if self._elector is None and self._lock is None:
                await self._take_single_writer(url)
            if self.engine is None:
                self.engine = await build_engine(
                    self.settings, clock=self.clock, metrics=self.metrics, force=self.force
                )
            # a refused credential (FatalError) or an unreachable API stops this pair
            await self.engine.check_credentials()
            await self.engine.prepare()
            self.leader = self._elector is None
            self.health.leader = self.leader
            self.metrics.set_leader(self.leader)
            if serve and self.settings.push.enabled:
                from sync.push.passes import PushPass
                from sync.runtime.receiver import PushReceiver

                self.push = PushPass(self.engine.coordinator)
                self.receiver = PushReceiver(
                    self.settings, self.engine.store, self.clock, self.wake, metrics=self.metrics
                )
            self.started = True

    async def ensure_started(self) -> bool:
        """Start a pair whose start failed (several pairs): True once it runs."""
        if self.started:
            return True
        try:
            await self.start(serve=True)
        except Exception as exc:  # noqa: BLE001 - any failure: said once, tried again
            why = f"cannot start: {str(exc) or type(exc).__name__}"
            self.health.not_started = why
            if why != self._start_error:  # one line per distinct reason, not per interval
                with pair_context(self.name):
                    log.error("pair %s, trying again every interval", why)  # noqa: TRY400
            self._start_error = why
            await self._drop_engine()
            return False
        self.health.not_started = None
        with pair_context(self.name):
            log.info("pair started")
        return True

    async def _drop_engine(self) -> None:
        if self.engine is not None:
            with contextlib.suppress(Exception):
                await self.engine.close()
            self.engine = None

    async def _take_single_writer(self, url: str) -> None:
        if is_postgres(url):
            from sync.runtime.leader import PostgresLeaderElector

            self._elector = PostgresLeaderElector(
                url,
                holder=self.holder,
                clock=self.clock,
                group=self.group,
                session=self.election_session,
            )
        else:
            from sync.runtime.leader import SqliteSingleInstanceLock

            self._lock = SqliteSingleInstanceLock(_sqlite_path(url))
            self._lock.acquire()

    # ------------------------------------------------------------------ cycles

    async def tick(self) -> CycleReport | None:
        """One scheduled run: leadership first, then a cycle (never raises)."""
        with pair_context(self.name):
            return await self._tick()

    async def _tick(self) -> CycleReport | None:
        self.current = asyncio.current_task()
        try:
            if not await self.ensure_started() or not await self._lead():
                return None
            assert self.engine is not None
            async with self._work:
                self.health.cycle_started = self.clock.monotonic()
                try:
                    report = await self.engine.coordinator.run_cycle()
                finally:
                    self.health.cycle_started = None
            self.wake_event.set()  # push deliveries left for after the cycle
            if isinstance(report.error, FencedError):
                await self.step_down(f"fenced: {report.error}")
            if report.ok:
                self.health.cycle_succeeded()
            else:
                self.health.cycle_failed(report.error)
            return report
        except asyncio.CancelledError:
            if not self.stopping:
                raise
            # the stop's drain timed out: the outbox sends the rest after the restart
            log.warning("cycle cancelled by the stop; its pending writes resume on restart")
            return None
        finally:
            self.current = None

    def _throttled(self) -> dict[str, list[str]]:
        """Side -> families throttled lately (the clients' own health, when they have it)."""
        out: dict[str, list[str]] = {}
        if self.engine is None:
            return out
        for client in (self.engine.servicenow, self.engine.bigpanda):
            health = getattr(client, "health", None)
            if isinstance(health, SideHealth):
                out[health.side] = health.throttled_families()
        return out

    async def _lead(self) -> bool:
        """True when this process may write this pair now (Postgres: leader election)."""
        if self._elector is None:
            return True
        assert self.engine is not None
        try:
            if self.leader:
                if not await self._elector.still_leader():
                    await self.step_down("lost the leader lock")
                    return False
                if self.share is not None:
                    replicas = await self._elector.replicas()
                    if self.share.should_hand_over(self.name, replicas):
                        async with self._work:  # the pair's push pass in flight ends first
                            await self.step_down(
                                f"handing over: {replicas} replicas share the pairs"
                            )
                        return False
                return True
            if self.share is None:
                if not await self._elector.try_acquire():
                    return False
                epoch = await self.engine.store.take_epoch(self.holder, self.clock.now())
            else:
                # a pair another replica leads is not worth a place in this one's share
                if not await self._elector.lock_free():
                    return False
                if not self.share.reserve(await self._elector.replicas()):
                    return False  # at its share, or taking its last place already
                try:
                    if not await self._elector.try_acquire():
                        return False
                    epoch = await self.engine.store.take_epoch(self.holder, self.clock.now())
                    self._set_leader(True)
                finally:
                    self.share.unreserve()
        except (StoreError, ApiError, OSError) as exc:
            log.warning("leader election failed: %s", exc)
            await self.step_down(str(exc))
            return False
        self._set_leader(True)
        log.info("this replica leads", extra={"epoch": epoch, "holder": self.holder})
        return True

    async def step_down(self, why: str) -> None:
        if self._elector is None or not self.leader:
            return
        self._set_leader(False)
        log.warning("stepping down to standby: %s", why)
        with contextlib.suppress(Exception):
            await self._elector.release()

    def _set_leader(self, leader: bool) -> None:
        self.leader = leader
        self.health.leader = leader
        self.metrics.set_leader(leader)

    def request_stop(self) -> None:
        """No new cycle: the pairs in flight finish, no new one starts."""
        self.stopping = True
        if self.engine is not None:
            self.engine.coordinator.request_stop()
        self.wake_event.set()  # the push loop sees the stop

    # ------------------------------------------------------------------ push mode

    def wake(self, side: object = None) -> None:
        """A delivery was recorded (the receivers call this): work it now."""
        self.wake_event.set()

    async def push_loop(self, look_s: float) -> None:
        """Push passes until the stop (see :mod:`sync.runtime.daemon`, step 7)."""
        with pair_context(self.name):
            while not self.stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake_event.wait(), timeout=look_s)
                self.wake_event.clear()
                if self.stopping or not self.leader:
                    continue
                try:
                    if await self.push_pass():
                        self.wake_event.set()  # more may wait: look again at once
                except (StoreError, ApiError) as exc:
                    log.warning("push pass failed: %s", exc)
                except Exception:  # the loop must outlive a bug
                    log.exception("push pass failed unexpectedly")

    async def push_pass(self) -> bool:
        """One pass (or a tick for a burst); True when it worked events (look again)."""
        events = await self.push.take()
        if not events:
            return False
        if self.push.wants_cycle(events):
            report = await self._tick()
            if report is not None and report.ok:
                await self.push.ack(events)
            return report is not None and report.ok
        if self._work.locked():  # a cycle in flight: beside it, for its other incidents
            guest = await self._guest_pass(events)
            if guest is not None:
                # only the cycle's incidents left: the cycle's end wakes the loop
                return guest.events > guest.deferred and not guest.kept
        async with self._work:
            if self.stopping:
                return False
            result = await self.push.work(events)
        return not result.kept

    async def _guest_pass(self, events: Sequence[Any]) -> Any:
        """A push pass beside the cycle in flight, once it is open to guests
        (``CycleRun.open_to_guests``: polled and paired); None when it ends first."""
        assert self.engine is not None
        coordinator = self.engine.coordinator
        while self._work.locked() and not self.stopping:
            host = coordinator.host
            if host is not None:
                async with coordinator.guests:
                    if coordinator.host is host:
                        return await self.push.work(events, host=host)
            await self.clock.sleep(GUEST_LOOK_S)
        return None

    # ------------------------------------------------------------------ stop

    async def close(self) -> None:
        if self._elector is not None:  # a standby holds a connection too
            with contextlib.suppress(Exception):
                await self._elector.close()
        await self._drop_engine()
        if self._lock is not None:
            self._lock.release()
            self._lock = None


__all__ = ["PairRunner", "cycle_interval", "prepare_database"]
