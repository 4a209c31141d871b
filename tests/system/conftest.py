"""The loopback world of the system tests: both emulators, the real clients, a SQLite
store and the engine, in this process, over real HTTP.

Two ways to drive it:

- ``world`` (a :class:`World` on a shared :class:`~sync.clock.FakeClock`): the test calls
  ``await world.cycle()`` to run exactly one sync cycle, and moves time with
  ``world.clock.advance(s)`` (reopen windows, retry intervals) without sleeping. The
  emulators and the engine read the same clock, so the emulators' timestamps and rate
  limiters agree with the engine's cursors.
- ``world.daemon()``: the real :class:`~sync.runtime.daemon.Daemon` (APScheduler, HTTP
  health server) on the real clock with ``poll_interval`` 0.2 s, for the end-to-end runs;
  ``await world.wait_for(predicate)`` polls a condition with a deadline.

Write counts come from the emulators' ``/_emulator/stats`` (what really crossed the
wire), never from the engine's own bookkeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sync.clock import Clock, FakeClock, SystemClock
from sync.coordinator import CycleReport
from sync.emulators import bigpanda as bp_emulator
from sync.emulators import servicenow as sn_emulator
from sync.emulators.control import serve_app
from sync.engine import Engine, build_engine
from sync.settings import Settings, load_settings
from sync.store import open_store, upgrade_database

SN_USER, SN_PASSWORD = "bpsync", "bpsync"
BP_API_KEY, BP_ORG_TOKEN = "BPUbpsync-emulator", "bpsync-org-token"

#: mapping used by the system tests unless a test gives its own: real incident fields
#: (the emulator, like ServiceNow, silently drops fields the table does not have)
DEFAULT_MAPPING: list[dict[str, Any]] = [
    {
        "bigpanda_tag": "impact_level",
        "servicenow_field": "impact",
        "direction": "both",
        "value_map": {"high": "1", "medium": "2", "low": "3"},
    },
    {"bigpanda_tag": "service_area", "servicenow_field": "category", "direction": "both"},
    {"bigpanda_tag": "sn_subcategory", "servicenow_field": "subcategory", "direction": "sn_to_bp"},
]


def world_settings(sn_url: str, bp_url: str, tmp: Path, **overrides: Any) -> Settings:
    """Settings pointing at the emulators; dotted ``overrides`` win."""
    base: dict[str, Any] = {
        "servicenow.url": sn_url,
        "servicenow.username": SN_USER,
        "servicenow.password": SN_PASSWORD,
        "bigpanda.url": bp_url,
        "bigpanda.api_key": BP_API_KEY,
        "bigpanda.bearer_token": BP_ORG_TOKEN,
        "bigpanda.rate_limit_per_s": 1000.0,
        "bigpanda.environments": [bp_emulator.DEFAULT_ENVIRONMENT_ID],
        "state_dir": str(tmp),
        "poll_interval": 0.2,
        "cursor_overlap": 5.0,
        "http_port": 0,
        "tag_mapping": DEFAULT_MAPPING,
        "retry.interval": 2.0,
        "retry.in_cycle_attempts": 2,
        "retry.in_cycle_backoff": 0.05,
        "retry.in_cycle_backoff_max": 0.2,
        "guard.min_links": 1000,
        "log_format": "text",
    }
    base.update(overrides)
    return load_settings(None, base, env_file=None)


@dataclass
class World:
    """Both emulators, their URLs and apps, the settings and (once built) the engine."""

    clock: Clock
    tmp: Path
    sn_app: web.Application
    bp_app: web.Application
    sn_url: str
    bp_url: str
    http: aiohttp.ClientSession
    settings: Settings
    engine: Engine | None = None
    reports: list[CycleReport] = field(default_factory=list)

    # ------------------------------------------------------------------ engine

    async def build(self, **overrides: Any) -> Engine:
        """(Re)build the engine, with setting overrides on top of the world's."""
        if self.engine is not None:
            await self.engine.close()
        if overrides:
            self.settings = world_settings(self.sn_url, self.bp_url, self.tmp, **overrides)
        url = self.settings.effective_database_url
        await upgrade_database(url)
        store = await open_store(url)
        self.engine = await build_engine(self.settings, clock=self.clock, store=store)
        await self.engine.check_credentials()
        await self.engine.prepare()
        return self.engine

    async def cycle(self, n: int = 1) -> CycleReport:
        """Run ``n`` sync cycles; returns the last report (each must not raise)."""
        if self.engine is None:
            await self.build()
        assert self.engine is not None
        report = CycleReport()
        for _ in range(n):
            report = await self.engine.coordinator.run_cycle()
            self.reports.append(report)
        return report

    async def settle(self, max_cycles: int = 6, step_s: float = 1.0) -> None:
        """Cycle (moving a FakeClock by ``step_s``) until a cycle writes nothing."""
        for _ in range(max_cycles):
            before = await self.writes()
            await self.cycle()
            if isinstance(self.clock, FakeClock):
                self.clock.advance(step_s)
            if await self.writes() == before:
                return
        raise AssertionError(f"no quiet cycle within {max_cycles} cycles")

    # ------------------------------------------------------------------ emulators

    async def control(self, side: str, method: str, path: str, body: Any = None) -> Any:
        base = self.sn_url if side == "servicenow" else self.bp_url
        async with self.http.request(method, f"{base}/_emulator/{path}", json=body) as resp:
            assert resp.status < 300, await resp.text()
            return await resp.json()

    async def stats(self, side: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.control(side, "GET", "stats")
        return result

    async def writes(self) -> int:
        """Write requests received by both emulators so far."""
        sn = await self.stats("servicenow")
        bp = await self.stats("bigpanda")
        return int(sn["writes"]) + int(bp["writes"])

    async def fault(self, side: str, **rule: Any) -> None:
        await self.control(side, "POST", "faults", rule)

    async def clear_faults(self) -> None:
        for side in ("servicenow", "bigpanda"):
            await self.control(side, "DELETE", "faults")

    # ------------------------------------------------------------------ waiting

    async def wait_for(
        self,
        predicate: Callable[[], Awaitable[bool]],
        *,
        timeout_s: float = 15.0,
        what: str = "condition",
    ) -> None:
        """Poll ``predicate`` on the real clock until true (daemon tests only)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not await predicate():
            if loop.time() > deadline:
                raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
            await asyncio.sleep(0.05)

    @contextlib.asynccontextmanager
    async def daemon(self, **overrides: Any) -> AsyncIterator[Any]:
        """The real daemon (scheduler, health server) serving until the block ends."""
        from sync.runtime.daemon import Daemon, DaemonOptions

        settings = (
            world_settings(self.sn_url, self.bp_url, self.tmp, **overrides)
            if overrides
            else self.settings
        )
        daemon = Daemon(settings, DaemonOptions(), clock=self.clock)
        await daemon.start()
        task = asyncio.create_task(daemon.serve())
        try:
            yield daemon
        finally:
            daemon.request_stop()
            await asyncio.wait_for(task, timeout=10)
            await daemon.close()


@contextlib.asynccontextmanager
async def open_world(
    tmp: Path, clock: Clock, *, bp_options: dict[str, Any] | None = None, **overrides: Any
) -> AsyncIterator[World]:
    sn_app = sn_emulator.create_app(clock=clock, users={SN_USER: SN_PASSWORD})
    bp_app = bp_emulator.create_app(
        clock=clock, api_key=BP_API_KEY, org_token=BP_ORG_TOKEN, **(bp_options or {})
    )
    async with (
        serve_app(sn_app) as sn_url,
        serve_app(bp_app) as bp_url,
        aiohttp.ClientSession() as http,
    ):
        settings = world_settings(sn_url, bp_url, tmp, **overrides)
        world = World(clock, tmp, sn_app, bp_app, sn_url, bp_url, http, settings)
        try:
            yield world
        finally:
            if world.engine is not None:
                await world.engine.close()


@pytest.fixture
async def world(tmp_path: Path, clock: FakeClock) -> AsyncIterator[World]:
    """Emulators + engine on a FakeClock; the BigPanda rate limit off (pacing is tested
    in the client's own tests)."""
    async with open_world(tmp_path, clock, bp_options={"rate_limit_per_s": None}) as w:
        yield w


@pytest.fixture
async def live_world(tmp_path: Path) -> AsyncIterator[World]:
    """Emulators on the real clock, for ``world.daemon()`` runs."""
    async with open_world(tmp_path, SystemClock(), bp_options={"rate_limit_per_s": None}) as w:
        yield w


@pytest.fixture
async def emu(world: World) -> Any:
    """The world's emulators over HTTP, the system tags defined (a module may define
    its own ``emu``)."""
    from .helpers import SYSTEM_TAGS, Emu

    helper = Emu(world)
    await helper.define_tags(*SYSTEM_TAGS)
    return helper
