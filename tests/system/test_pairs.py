"""Several sync pairs in one process (``[[pairs]]``): each pair with its own emulators,
database, clients and leadership; one pair's refused credentials or 429 storm leaves the
other syncing at its usual pace.

Each test runs the real daemon (scheduler, HTTP server) on the real clock against two
emulator sets over loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sync.clock import SystemClock
from sync.errors import ConfigError
from sync.runtime.daemon import Daemon, DaemonOptions

from .conftest import World, open_world, world_settings
from .helpers import SYSTEM_MAPPING, SYSTEM_TAGS, Emu

pytestmark = pytest.mark.slow


@contextlib.asynccontextmanager
async def two_worlds(tmp: Path) -> AsyncIterator[tuple[World, World]]:
    clock = SystemClock()
    off = {"rate_limit_per_s": None}
    (tmp / "a").mkdir()
    (tmp / "b").mkdir()
    async with (
        open_world(tmp / "a", clock, bp_options=off) as a,
        open_world(tmp / "b", clock, bp_options=off) as b,
    ):
        for world in (a, b):
            await Emu(world).define_tags(*SYSTEM_TAGS)
        yield a, b


def pair_settings(a: World, b: World, tmp: Path, **b_overrides: Any) -> Any:
    """Pair ``default`` on world a, pair ``b`` on world b (``b_overrides``: its sections)."""
    pair_b: dict[str, Any] = {
        "name": "b",
        "servicenow": {"url": b.sn_url},
        "bigpanda": {"url": b.bp_url},
    }
    for section, values in b_overrides.items():
        pair_b[section] = {**pair_b.get(section, {}), **values}
    return world_settings(
        a.sn_url,
        a.bp_url,
        tmp,
        tag_mapping=SYSTEM_MAPPING,
        pairs=[{"name": "default"}, pair_b],
    )


@contextlib.asynccontextmanager
async def serving(settings: Any) -> AsyncIterator[Daemon]:
    daemon = Daemon(settings, DaemonOptions())
    await daemon.start()
    task = asyncio.create_task(daemon.serve())
    try:
        yield daemon
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, timeout=10)
        await daemon.close()


async def ticket_within(world: World, host: str, timeout_s: float = 10.0) -> float:
    """Seconds from a new BigPanda incident (host) to its one ServiceNow ticket."""
    emu = Emu(world)
    started = time.monotonic()
    bp_id = await emu.new_incident(host, check="cpu")

    async def ticket() -> bool:
        return len(await emu.sn_for(bp_id)) == 1

    await world.wait_for(ticket, timeout_s=timeout_s, what=f"a ticket for {host}")
    return time.monotonic() - started


async def metric(daemon: Daemon, name: str, **labels: str) -> float:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{daemon._server.port}/metrics") as resp,
    ):
        text = await resp.text()
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{wanted}}} "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name}{{{wanted}}} in /metrics")


async def readyz(daemon: Daemon) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{daemon._server.port}/readyz") as resp,
    ):
        return resp.status, await resp.json()


async def test_two_pairs_each_sync_their_own_incidents(tmp_path: Path) -> None:
    async with two_worlds(tmp_path) as (a, b), serving(pair_settings(a, b, tmp_path)) as daemon:
        assert [r.name for r in daemon.runners] == ["default", "b"]
        await ticket_within(a, "web-a")
        await ticket_within(b, "web-b")
        # each ticket in its own instance only, each link in its own database
        emu_a, emu_b = Emu(a), Emu(b)
        assert [i["short_description"] for i in await emu_a.sn_query("active=true")] != []
        a_numbers = {i["number"] for i in await emu_a.sn_query("active=true")}
        b_numbers = {i["number"] for i in await emu_b.sn_query("active=true")}
        assert len(a_numbers) == len(b_numbers) == 1
        runner_a, runner_b = daemon.runners
        assert runner_a.engine is not None and runner_b.engine is not None
        assert await runner_a.engine.store.count_links() == 1
        assert await runner_b.engine.store.count_links() == 1
        assert (tmp_path / "pairs" / "b" / "bpsync.db").is_file()
        # a change in pair b's ServiceNow reaches pair b's BigPanda only
        bp_b = (await emu_b.search())[0]["id"]
        sn_b = await emu_b.sn_one_for(bp_b)
        await emu_b.sn_patch(sn_b["sys_id"], {"category": "network"})

        async def tagged() -> bool:
            return (await emu_b.tags(bp_b)).get("service_area") == "network"

        await b.wait_for(tagged, timeout_s=10, what="pair b's change")
        # every series names its pair
        assert await metric(daemon, "bpsync_live_links", pair="b") == 1
        assert await metric(daemon, "bpsync_live_links", pair="default") == 1
        assert await metric(daemon, "bpsync_leader", pair="b") == 1


async def test_one_pairs_refused_credentials_do_not_stop_the_other(tmp_path: Path) -> None:
    async with two_worlds(tmp_path) as (a, b):
        settings = pair_settings(a, b, tmp_path, bigpanda={"api_key": "BPUwrong-key"})
        async with serving(settings) as daemon:
            assert await ticket_within(a, "web-a") < 5

            async def ready() -> bool:  # the cycle that made the ticket has ended
                return (await readyz(daemon))[0] == 200

            await a.wait_for(ready, timeout_s=5, what="/readyz 200 (a pair is ready)")
            _, body = await readyz(daemon)
            assert any(r.startswith("b: ") and "cannot start" in r for r in body["reasons"])
            assert not daemon.runners[1].started
            # the status page shows both pairs: the one that cannot start says why
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{daemon._server.port}/status.json") as resp,
            ):
                pairs = {p["name"]: p for p in (await resp.json())["pairs"]}
            assert set(pairs) == {"default", "b"}
            assert "cannot start" in pairs["b"]["last_cycle_error"]
            assert pairs["default"]["links_by_state"]["linked"] == 1
            assert await Emu(b).sn_query("active=true") == []


async def test_one_pairs_429_storm_leaves_the_others_latency_unchanged(tmp_path: Path) -> None:
    async with two_worlds(tmp_path) as (a, b), serving(pair_settings(a, b, tmp_path)) as daemon:
        calm = [await ticket_within(a, f"calm-{n}") for n in range(3)]
        # pair b: every BigPanda request answered 429, with a burst of incidents waiting
        emu_b = Emu(b)
        for n in range(10):
            await emu_b.new_incident(f"storm-{n}", check="cpu")
        await b.fault("bigpanda", rate=1.0, status=429)
        await asyncio.sleep(1.0)  # the storm is under way
        stormy = [await ticket_within(a, f"stormy-{n}") for n in range(3)]
        throttled = await metric(
            daemon,
            "bpsync_throttled_total",
            pair="b",
            side="bigpanda",
            family=await _throttled_family(daemon),
        )
        assert throttled > 0
        # the poll runs every 0.2 s: a ticket takes a cycle or two, storm or not
        assert statistics.median(stormy) < statistics.median(calm) + 0.5, (calm, stormy)
        assert max(stormy) < 3.0, stormy
        await b.clear_faults()


async def _throttled_family(daemon: Daemon) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{daemon._server.port}/metrics") as resp,
    ):
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith("bpsync_throttled_total{") and 'pair="b"' in line:
            return line.split('family="', 1)[1].split('"', 1)[0]
    raise AssertionError("pair b was never throttled")


async def test_two_pairs_on_one_incident_stream_are_refused(tmp_path: Path) -> None:
    async with two_worlds(tmp_path) as (a, _b):
        settings = world_settings(
            a.sn_url, a.bp_url, tmp_path, pairs=[{"name": "default"}, {"name": "copy"}]
        )
        with pytest.raises(ConfigError, match="'default' and 'copy' write the same ServiceNow"):
            Daemon(settings, DaemonOptions())
