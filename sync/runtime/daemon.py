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
   standby replica, or left by a kill). A pass waits for a cycle until the cycle has
   polled and paired, then runs beside it for the incidents the cycle is not writing
   to (``CycleRun.open_to_guests``); the rest wait for the cycle's end, so per-incident
   work stays serial; only the leader works events.

Sync pairs (``[[pairs]]``, :mod:`sync.pairconfig`): steps 2-4 and 6-7 run per pair, in
a :class:`~sync.runtime.pairrun.PairRunner` each (own database or schema, clients,
leadership, scheduler job, push loop); the HTTP server, the signals and systemd are the
process's. ``/readyz`` is ready while any pair is (a pair that is down is named in the
reasons; with one pair this is that pair's readiness, as before). With push on, pair
``NAME``'s receivers are ``/webhooks/NAME/bigpanda`` and ``/webhooks/NAME/servicenow``
(the ``default`` pair's also the plain ``/webhooks/bigpanda`` and ``/webhooks/servicenow``).
On Postgres with several pairs, replicas spread the pairs between them
(:mod:`sync.runtime.share`): each pair's tick asks whether this replica is above or
below its share before it leads.

Stop (SIGTERM or SIGINT): no new cycle starts; the cycle in flight finishes its writes
(bounded by ``DRAIN_TIMEOUT_S``, then cancelled: every write is in the outbox, so a
cancelled write is sent again after the restart); the server, sessions, store and lock
are closed; exit 0 well within 10 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from sync.clock import Clock, SystemClock
from sync.coordinator import CycleReport
from sync.engine import Engine
from sync.errors import ConfigError, StoreError
from sync.pairconfig import expand_pairs, overlaps
from sync.runtime.health import Readiness
from sync.runtime.leader import shared_session
from sync.runtime.pairrun import PairRunner, cycle_interval, prepare_database
from sync.runtime.share import LeadershipShare, deployment_group
from sync.runtime.status import (
    PairStatus,
    PairStatusReader,
    StatusSource,
    pairs_source,
    unavailable,
)
from sync.settings import Settings, redact_url
from sync.store.engines import is_postgres

log = logging.getLogger(__name__)

#: how long a stop waits for the in-flight cycle before cancelling it (SPEC B17: < 10 s)
DRAIN_TIMEOUT_S = 8.0
#: how often the push loop looks for events nobody woke it for
PUSH_LOOK_S = 2.0


@dataclass
class DaemonOptions:
    force: bool = False
    once: bool = False
    freeze_start_up: bool = False
    """Once started, move every object start-up made out of the cyclic garbage
    collector's sight (``gc.freeze``): modules, settings, engines and compiled
    statements live as long as the process, and a full collection walked all of them
    (tens of ms each time, on the event loop). The process's own choice (``bpsync
    run``), not an embedding program's."""


class ProcessHealth:
    """``/readyz`` over every pair: ready while any pair is; the reasons name the pairs
    that are not (one pair: exactly that pair's readiness)."""

    def __init__(self, runners: list[PairRunner]) -> None:
        self.runners = runners

    def readiness(self, db_error: str | None = None) -> Readiness:
        if len(self.runners) == 1:
            return self.runners[0].health.readiness(db_error)
        each = {r.name: r.health.readiness(db_error) for r in self.runners}
        reasons = [f"{name}: {why}" for name, rd in each.items() for why in rd.reasons]
        throttled = {
            f"{name}/{side}": fams
            for name, rd in each.items()
            for side, fams in rd.throttled.items()
        }
        return Readiness(
            ready=any(rd.ready for rd in each.values()),
            leader=any(rd.leader for rd in each.values()),
            reasons=reasons,
            throttled=throttled,
        )


class Daemon:
    """The process around one :class:`PairRunner` per sync pair: signals, the HTTP
    server, the scheduler, systemd and a graceful stop."""

    def __init__(
        self,
        settings: Settings,
        options: DaemonOptions,
        *,
        clock: Clock | None = None,
        engine: Engine | None = None,
    ) -> None:
        from sync.metrics import Metrics

        self.settings = settings
        self.options = options
        self.clock = clock or SystemClock()
        self.metrics_registry = Metrics()
        self._holder = f"{socket.gethostname()}:{os.getpid()}"
        pairs = expand_pairs(settings)
        problems = overlaps(pairs)
        if problems:  # two tickets for one incident: refused, as by ``config check``
            raise ConfigError(problems[0], setting="pairs")
        if engine is not None and len(pairs) != 1:
            raise ConfigError("an engine can be handed to a daemon of one pair only")
        self.runners = [
            PairRunner(
                pair.name,
                pair.settings,
                clock=self.clock,
                metrics=self.metrics_registry.for_pair(pair.name),
                holder=self._holder,
                force=options.force,
                engine=engine,
            )
            for pair in pairs
        ]
        migrations = asyncio.Lock()
        for runner in self.runners:
            runner.migrations = migrations
        if len(self.runners) > 1:  # N replicas spread the pairs (sync.runtime.share)
            share = LeadershipShare(self.runners, self._holder)
            # named by the pairs' databases (schemas): replicas of one deployment agree,
            # another deployment in the same database (other schemas) is not counted
            group = deployment_group(
                redact_url(r.settings.effective_database_url) for r in self.runners
            )
            first_url = self.runners[0].settings.effective_database_url
            session = (
                shared_session(first_url, self._holder, group) if is_postgres(first_url) else None
            )
            for runner in self.runners:
                runner.share, runner.group = share, group
                runner.election_session = session
        self.health = ProcessHealth(self.runners)
        self._server: Any = None
        self._notifier: Any = None
        self._scheduler: Any = None
        self._stop = asyncio.Event()
        self._push_tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------- the first pair (one-pair callers)

    @property
    def first(self) -> PairRunner:
        return self.runners[0]

    @property
    def engine(self) -> Engine | None:
        return self.first.engine

    @property
    def leader(self) -> bool:
        return self.first.leader

    @property
    def metrics(self) -> Any:
        return self.first.metrics

    @property
    def push(self) -> Any:
        return self.first.push

    @property
    def cycle_interval(self) -> float:
        return cycle_interval(self.first.settings)

    async def tick(self) -> CycleReport | None:
        """One cycle of the first pair (``bpsync run --once``, tests)."""
        return await self.first.tick()

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Everything up to (not including) the first cycle; raises on a start-up error
        (several pairs: only when no pair can start; the others are tried again)."""
        serve = not self.options.once
        if len(self.runners) == 1:
            await self.first.start(serve=serve)
        else:
            # at once: fifty pairs' credential checks and tag definitions in parallel
            started = await asyncio.gather(*(r.ensure_started() for r in self.runners))
            if not any(started):
                raise ConfigError(
                    "no pair could start: "
                    + "; ".join(f"{r.name}: {r.health.not_started}" for r in self.runners)
                )
        if self.options.once:
            return
        from sync.runtime.server import start_http_server

        self._server = await start_http_server(
            self.settings.http_host,
            self.settings.http_port,
            health=self.health,
            metrics=self.metrics_registry,
            db_ping=self._ping,
            push=self._receivers(),
            status=self._status_source(),
            status_token=self.settings.status_token,
        )

    def _status_source(self) -> StatusSource:
        return pairs_source(self._status_pairs)

    def _status_pairs(self) -> Iterator[PairStatusReader | PairStatus]:
        """The status page's pairs, in their order; a pair that could not start shows
        why (nothing of its store can be read)."""
        for runner in self.runners:
            if not runner.started or runner.engine is None:  # (a start may be retrying)
                yield unavailable(runner.name, runner.health, self.clock, self._holder)
                continue
            yield PairStatusReader(
                runner.name,
                runner.engine.store,
                runner.health,
                self.clock,
                attempts=runner.settings.retry.attempts,
                this_replica=self._holder,
                leads=functools.partial(_leads, runner),
            )

    def _receivers(self) -> Any:
        from sync.runtime.receiver import PairReceivers

        routes = PairReceivers()
        for runner in self.runners:
            if runner.settings.push.enabled:
                routes.add(runner.name, runner.receiver, default=len(self.runners) == 1)
        return routes if routes else None

    async def _ping(self) -> None:
        """Every started pair's database answers (the first failure, named)."""
        for runner in self.runners:
            if runner.engine is None:
                continue
            try:
                await runner.engine.store.ping()
            except Exception as exc:
                if len(self.runners) == 1:
                    raise
                raise StoreError(f"pair {runner.name}: {exc}") from exc

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
        if self.options.freeze_start_up:
            gc.collect()
            gc.freeze()
        self._notifier = SystemdNotifier.from_env()
        self._scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop())
        for runner in self.runners:
            if runner.settings.push.enabled:
                self._push_tasks.append(asyncio.create_task(runner.push_loop(PUSH_LOOK_S)))
            self._scheduler.add_job(
                runner.tick,
                "interval",
                seconds=runner.cycle_interval,
                max_instances=1,
                coalesce=True,
                next_run_time=self.clock.now(),
                id=f"sync-cycle-{runner.name}",
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
                "pairs": [r.name for r in self.runners],
                "poll_interval_s": self.cycle_interval,
                "push": any(r.push is not None for r in self.runners),
                "http_port": getattr(self._server, "port", None),
                "leader": self.leader,
            },
        )
        await self._stop.wait()
        log.info("stopping: finishing the cycle in flight")
        for runner in self.runners:
            runner.request_stop()
        self._notifier.stopping()
        # pause first, drain, then shut down: APScheduler's AsyncIOExecutor.shutdown()
        # cancels the running job's task whatever ``wait`` says
        self._scheduler.pause()
        await self._drain()
        self._scheduler.shutdown(wait=False)

    def request_stop(self) -> None:
        self._stop.set()

    async def _drain(self) -> None:
        busy = [r.current for r in self.runners if r.current is not None]
        busy += self._push_tasks
        busy = [t for t in busy if not t.done()]
        if not busy:
            return
        _, late = await asyncio.wait(busy, timeout=DRAIN_TIMEOUT_S)
        for task in late:
            log.warning("the cycle in flight did not finish in %.0fs: cancelled", DRAIN_TIMEOUT_S)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def close(self) -> None:
        if self._server is not None:
            await self._server.close()
            self._server = None
        for runner in self.runners:
            await runner.close()


def _leads(runner: PairRunner) -> bool:
    return runner.leader


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
            reports = [await runner.tick() for runner in daemon.runners]
            return 0 if all(r is not None and r.ok for r in reports) else 1
        await daemon.serve()
        return 0
    finally:
        await daemon.close()


__all__ = [
    "DRAIN_TIMEOUT_S",
    "Daemon",
    "DaemonOptions",
    "ProcessHealth",
    "prepare_database",
    "run_daemon",
]
