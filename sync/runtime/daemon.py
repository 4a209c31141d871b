"""The long-running process behind ``bpsync run``.

Start-up, in order; each failure is ONE line naming the problem and exit code 1:

1. Settings were loaded by the CLI (a bad setting never gets here). ``verify_tls = false``
   on either side logs a WARNING once, when the engine opens that side's HTTP session
   (``sync.clients.http.new_session``).
2. The database: the embedded default SQLite (``database_url`` unset) is created and
   upgraded to the newest migration automatically: nobody else manages that file. Any
   configured URL (an explicit SQLite path or Postgres) is only checked: an old schema
   stops start-up with a line naming ``bpsync db upgrade`` (upgrading a shared database
   is the operator's decision).
3. One writer: SQLite takes a single-instance lock next to the database file (a second
   daemon exits with one line); Postgres runs leader election (advisory lock): a standby
   tries to take the lead every poll interval and reports ``leader 0``; the leader takes
   a new store epoch (``take_epoch``), so a deposed leader's writes are fenced; when
   ``still_leader()`` fails it stops writing and goes back to standby.
4. Credentials of both APIs (``check_auth``) before the first cycle.
5. The HTTP server (``/healthz``, ``/readyz``, ``/metrics``) on ``http_port``; with
   ``[push] enabled`` also the webhook receivers (:mod:`sync.runtime.receiver`).
6. APScheduler (``AsyncIOScheduler``, interval ``poll_interval``, or
   ``push.reconcile_interval`` with push on, ``max_instances=1``, ``coalesce=True``)
   calls one tick: leadership check, then ``coordinator.run_cycle``. systemd gets READY
   once the first tick is scheduled, and watchdog pings.
7. Push mode: a delivery recorded by a receiver wakes the push loop, which runs a push
   pass (:mod:`sync.push.passes`) at once, or a whole tick when a burst is cheaper to
   poll; it also looks for events every :data:`PUSH_LOOK_S` (those recorded by a
   standby replica, or left by a kill). A pass and a cycle never run at once (one
   lock), so per-incident work stays serial; only the leader works events.

Stop (SIGTERM or SIGINT): no new cycle starts; the cycle in flight finishes its writes
(bounded by ``DRAIN_TIMEOUT_S``, then cancelled: every write is in the outbox, so a
cancelled write is sent again after the restart); the server, sessions, store and lock
are closed; exit 0 well within 10 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from dataclasses import dataclass
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from sync.clients.pacing import SideHealth
from sync.clock import Clock, SystemClock
from sync.coordinator import CycleReport
from sync.engine import Engine, build_engine
from sync.errors import ApiError, StoreError
from sync.runtime.status import StatusSource
from sync.settings import Settings
from sync.store.base import FencedError

log = logging.getLogger(__name__)

#: how long a stop waits for the in-flight cycle before cancelling it (SPEC B17: < 10 s)
DRAIN_TIMEOUT_S = 8.0
#: how often the push loop looks for events nobody woke it for
PUSH_LOOK_S = 2.0


@dataclass
class DaemonOptions:
    force: bool = False
    once: bool = False


def _is_postgres(url: str) -> bool:
    return url.startswith("postgresql")


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


class Daemon:
    """Leadership, scheduling, health and a graceful stop around one Engine."""

    def __init__(
        self,
        settings: Settings,
        options: DaemonOptions,
        *,
        clock: Clock | None = None,
        engine: Engine | None = None,
    ) -> None:
        self.settings = settings
        self.options = options
        self.clock = clock or SystemClock()
        self.engine = engine
        self.health: Any = None
        self.metrics: Any = None
        self.leader = False
        self._elector: Any = None
        self._lock: Any = None
        self._server: Any = None
        self._notifier: Any = None
        self._scheduler: Any = None
        self._stop = asyncio.Event()
        self._current: asyncio.Task[Any] | None = None
        self._work = asyncio.Lock()
        """held by a cycle and by a push pass: never both at once"""
        self._wake = asyncio.Event()
        self._push_task: asyncio.Task[None] | None = None
        self.push: Any = None
        """the push pass (:class:`sync.push.passes.PushPass`), with push on"""
        self._holder = f"{socket.gethostname()}:{os.getpid()}"

    @property
    def cycle_interval(self) -> float:
        """Seconds between cycles: ``push.reconcile_interval`` with push on (default
        ``poll_interval``), else ``poll_interval``; /readyz judges cycles by it."""
        push = self.settings.push
        if push.enabled and push.reconcile_interval:
            return push.reconcile_interval
        return self.settings.poll_interval

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Everything up to (not including) the first cycle; raises on a start-up error."""
        from sync.metrics import Metrics
        from sync.runtime.health import HealthState

        url = await prepare_database(self.settings)
        await self._take_single_writer(url)
        self.metrics = Metrics()
        self.health = HealthState(
            self.clock,
            self.cycle_interval,
            cycle_budget=self.settings.cycle_budget,
            throttled=self._throttled,
        )
        if self.engine is None:
            self.engine = await build_engine(
                self.settings, clock=self.clock, metrics=self.metrics, force=self.options.force
            )
        # a refused credential (FatalError) or an unreachable API stops start-up: one line
        await self.engine.check_credentials()
        await self.engine.prepare()
        self.leader = self._elector is None
        self.health.leader = self.leader
        self._set_leader_gauge()
        if self.options.once:
            return
        from sync.runtime.server import start_http_server

        store = self.engine.store
        receiver = None
        if self.settings.push.enabled:
            from sync.push.passes import PushPass
            from sync.runtime.receiver import PushReceiver

            self.push = PushPass(self.engine.coordinator)
            receiver = PushReceiver(
                self.settings, store, self.clock, self.wake, metrics=self.metrics
            )
        self._server = await start_http_server(
            self.settings.http_host,
            self.settings.http_port,
            health=self.health,
            metrics=self.metrics,
            db_ping=store.ping,
            push=receiver,
            status=self._status_source(),
            status_token=self.settings.status_token,
        )

    def _status_source(self) -> StatusSource:
        """The status page's pairs: this daemon's one pair, ``default``."""
        from sync.runtime.status import PairStatusReader, pairs_source

        assert self.engine is not None
        reader = PairStatusReader(
            "default",
            self.engine.store,
            self.health,
            self.clock,
            attempts=self.settings.retry.attempts,
            this_replica=self._holder,
            leads=lambda: self.leader,
        )
        return pairs_source([reader])

    async def _take_single_writer(self, url: str) -> None:
        if _is_postgres(url):
            from sync.runtime.leader import PostgresLeaderElector

            self._elector = PostgresLeaderElector(url, holder=self._holder, clock=self.clock)
        else:
            from sync.runtime.leader import SqliteSingleInstanceLock

            self._lock = SqliteSingleInstanceLock(_sqlite_path(url))
            self._lock.acquire()

    async def tick(self) -> CycleReport | None:
        """One scheduled run: leadership first, then a cycle (never raises)."""
        self._current = asyncio.current_task()
        try:
            if not await self._lead():
                return None
            assert self.engine is not None
            async with self._work:
                self.health.cycle_started = self.clock.monotonic()
                try:
                    report = await self.engine.coordinator.run_cycle()
                finally:
                    self.health.cycle_started = None
            if isinstance(report.error, FencedError):
                await self._step_down(f"fenced: {report.error}")
            if report.ok:
                self.health.cycle_succeeded()
            else:
                self.health.cycle_failed(report.error)
            return report
        except asyncio.CancelledError:
            if not self._stop.is_set():
                raise
            # the stop's drain timed out: the outbox sends the rest after the restart
            log.warning("cycle cancelled by the stop; its pending writes resume on restart")
            return None
        finally:
            self._current = None

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
        """True when this process may write now (Postgres: leader election)."""
        if self._elector is None:
            return True
        assert self.engine is not None
        try:
            if self.leader:
                if await self._elector.still_leader():
                    return True
                await self._step_down("lost the leader lock")
                return False
            if not await self._elector.try_acquire():
                return False
            epoch = await self.engine.store.take_epoch(self._holder, self.clock.now())
        except (StoreError, ApiError, OSError) as exc:
            log.warning("leader election failed: %s", exc)
            await self._step_down(str(exc))
            return False
        self.leader = True
        self.health.leader = True
        self._set_leader_gauge()
        log.info("this replica leads", extra={"epoch": epoch, "holder": self._holder})
        return True

    async def _step_down(self, why: str) -> None:
        if self._elector is None or not self.leader:
            return
        self.leader = False
        self.health.leader = False
        self._set_leader_gauge()
        log.warning("stepping down to standby: %s", why)
        with contextlib.suppress(Exception):
            await self._elector.release()

    def _set_leader_gauge(self) -> None:
        setter = getattr(self.metrics, "set_leader", None)
        if callable(setter):
            setter(self.leader)

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT request a stop (from start-up on: B17 holds then too)."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop.set)

    async def start_unless_stopped(self) -> bool:
        """:meth:`start`, abandoned (False) if a stop is requested first: start-up may
        wait on a database or an API for a whole timeout, a stop must not."""
        starting = asyncio.create_task(self.start())
        stopping = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            return False
        starting.result()  # a start-up error propagates: one line, exit 1
        return True

    async def serve(self) -> None:
        """Schedule cycles until SIGTERM/SIGINT, then drain and return."""
        from sync.runtime.notify import SystemdNotifier

        self.install_signal_handlers()
        self._notifier = SystemdNotifier.from_env()
        self._scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop())
        interval = self.cycle_interval
        if self.push is not None:
            self._push_task = asyncio.create_task(self._push_loop())
        self._scheduler.add_job(
            self.tick,
            "interval",
            seconds=interval,
            max_instances=1,
            coalesce=True,
            next_run_time=self.clock.now(),
            id="sync-cycle",
        )
        watchdog_s = self._notifier.watchdog_interval_s()
        if watchdog_s:
            self._scheduler.add_job(
                self._notifier.watchdog, "interval", seconds=max(0.5, watchdog_s / 2)
            )
        self._scheduler.start()
        self._notifier.ready()
        log.info(
            "bpsync running",
            extra={
                "poll_interval_s": interval,
                "push": self.push is not None,
                "http_port": getattr(self._server, "port", None),
                "leader": self.leader,
            },
        )
        await self._stop.wait()
        log.info("stopping: finishing the cycle in flight")
        if self.engine is not None:  # the pairs in flight finish, no new one starts
            self.engine.coordinator.request_stop()
        self._notifier.stopping()
        # pause first, drain, then shut down: APScheduler's AsyncIOExecutor.shutdown()
        # cancels the running job's task whatever ``wait`` says
        self._scheduler.pause()
        self._wake.set()  # the push loop sees the stop
        await self._drain()
        self._scheduler.shutdown(wait=False)

    def request_stop(self) -> None:
        self._stop.set()

    async def _drain(self) -> None:
        busy = [t for t in (self._current, self._push_task) if t is not None and not t.done()]
        if not busy:
            return
        _, late = await asyncio.wait(busy, timeout=DRAIN_TIMEOUT_S)
        for task in late:
            log.warning("the cycle in flight did not finish in %.0fs: cancelled", DRAIN_TIMEOUT_S)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # ------------------------------------------------------------------ push mode

    def wake(self, side: object = None) -> None:
        """A delivery was recorded (the receivers call this): work it now."""
        self._wake.set()

    async def _push_loop(self) -> None:
        """Push passes until the stop (see the module docstring, step 7)."""
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=PUSH_LOOK_S)
            self._wake.clear()
            if self._stop.is_set() or not self.leader:
                continue
            try:
                if await self._push_pass():
                    self._wake.set()  # more may wait: look again at once
            except (StoreError, ApiError) as exc:
                log.warning("push pass failed: %s", exc)
            except Exception:  # the loop must outlive a bug
                log.exception("push pass failed unexpectedly")

    async def _push_pass(self) -> bool:
        """One pass (or a tick for a burst); True when it worked events (look again)."""
        events = await self.push.take()
        if not events:
            return False
        if self.push.wants_cycle(events):
            report = await self.tick()
            if report is not None and report.ok:
                await self.push.ack(events)
            return report is not None and report.ok
        async with self._work:
            if self._stop.is_set():
                return False
            result = await self.push.work(events)
        return not result.kept

    async def close(self) -> None:
        if self._server is not None:
            await self._server.close()
            self._server = None
        if self._elector is not None:  # a standby holds a connection too
            with contextlib.suppress(Exception):
                await self._elector.release()
        if self.engine is not None:
            await self.engine.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None


async def run_daemon(
    settings: Settings, options: DaemonOptions, *, clock: Clock | None = None
) -> int:
    """The whole process: start, serve (or one cycle with ``once``), close. Exit code."""
    daemon = Daemon(settings, options, clock=clock)
    daemon.install_signal_handlers()
    try:
        if not await daemon.start_unless_stopped():
            log.info("stopped during start-up")
            return 0
        if options.once:
            report = await daemon.tick()
            return 0 if report is not None and report.ok else 1
        await daemon.serve()
        return 0
    finally:
        await daemon.close()


__all__ = ["DRAIN_TIMEOUT_S", "Daemon", "DaemonOptions", "prepare_database", "run_daemon"]
