"""``/healthz``, ``/readyz`` and ``/metrics`` of the daemon's HTTP server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from sync.clock import FakeClock
from sync.errors import ConfigError, StoreError
from sync.metrics import Metrics
from sync.runtime.health import OVERRUN_ALLOWANCE_S, READY_INTERVALS, HealthState
from sync.runtime.server import HttpServer, start_http_server
from sync.store import open_store, upgrade_database

POLL = 15.0


@dataclass
class Db:
    """A database whose reachability the test switches."""

    up: bool = True
    hang: bool = False

    async def ping(self) -> None:
        if self.hang:
            await asyncio.sleep(60)
        if not self.up:
            raise StoreError("cannot connect to postgresql://bpsync:****@db/bpsync")


@dataclass
class Served:
    server: HttpServer
    health: HealthState
    metrics: Metrics
    db: Db
    clock: FakeClock
    session: aiohttp.ClientSession

    async def get(self, path: str) -> tuple[int, str, str]:
        async with self.session.get(self.server.url + path) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), await resp.text()

    async def ready(self) -> tuple[int, dict[str, object]]:
        async with self.session.get(self.server.url + "/readyz") as resp:
            return resp.status, await resp.json()


@pytest.fixture
async def served(clock: FakeClock) -> AsyncIterator[Served]:
    health = HealthState(clock, POLL)
    health.leader = True
    metrics = Metrics()
    db = Db()
    server = await start_http_server(
        "127.0.0.1", 0, health=health, metrics=metrics, db_ping=db.ping
    )
    assert server.port > 0
    async with aiohttp.ClientSession() as session:
        yield Served(server, health, metrics, db, clock, session)
    await server.close()


async def test_healthz_is_alive_whatever_the_state(served: Served) -> None:
    served.db.up = False
    status, ctype, body = await served.get("/healthz")
    assert status == 200
    assert ctype.startswith("application/json")
    assert "alive" in body


async def test_not_ready_before_the_first_good_cycle(served: Served) -> None:
    status, body = await served.ready()
    assert status == 503
    assert body["leader"] == 1
    assert body["reasons"] == ["no sync cycle has succeeded yet"]


async def test_ready_after_a_good_cycle(served: Served) -> None:
    served.health.cycle_succeeded()
    status, body = await served.ready()
    assert status == 200
    assert body == {"status": "ready", "leader": 1, "reasons": [], "throttled": {}}


async def test_not_ready_when_the_database_is_gone(served: Served) -> None:
    served.health.cycle_succeeded()
    served.db.up = False
    status, body = await served.ready()
    assert status == 503
    reasons = body["reasons"]
    assert isinstance(reasons, list)
    assert len(reasons) == 1
    assert reasons[0].startswith("database unreachable: cannot connect")
    assert "****" in reasons[0]
    served.db.up = True
    assert (await served.ready())[0] == 200


async def test_not_ready_when_no_cycle_succeeded_within_three_intervals(served: Served) -> None:
    served.health.cycle_succeeded()
    served.clock.advance(READY_INTERVALS * POLL - 1)
    assert (await served.ready())[0] == 200
    served.health.cycle_failed(RuntimeError("ServiceNow HTTP 503"))
    served.clock.advance(2)  # now 3 intervals + 1 s since the last good cycle
    status, body = await served.ready()
    assert status == 503
    reasons = body["reasons"]
    assert isinstance(reasons, list)
    assert "more than 3 poll intervals" in reasons[0]
    assert reasons[1] == "last cycle error: ServiceNow HTTP 503"
    served.health.cycle_succeeded()
    assert (await served.ready())[0] == 200


async def test_a_standby_is_ready_with_the_database_and_says_leader_0(served: Served) -> None:
    served.health.leader = False
    status, body = await served.ready()
    assert status == 200
    assert body["leader"] == 0
    served.db.up = False
    status, body = await served.ready()
    assert status == 503
    assert body["leader"] == 0


async def test_a_hanging_database_is_not_ready_within_the_ping_timeout(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sync.runtime.server.DB_PING_TIMEOUT_S", 0.1)
    served.health.cycle_succeeded()
    served.db.hang = True
    status, body = await served.ready()
    assert status == 503
    assert body["reasons"] == ["database unreachable: no answer within 0.1s"]


async def test_metrics_endpoint(served: Served) -> None:
    served.metrics.cycle_done("ok", 0.25)
    served.metrics.set_leader(True)
    status, ctype, body = await served.get("/metrics")
    assert status == 200
    assert ctype == "text/plain; version=0.0.4; charset=utf-8"
    assert 'bpsync_cycles_total{outcome="ok",pair="default"} 1.0' in body
    assert 'bpsync_leader{pair="default"} 1.0' in body


async def test_unknown_path_is_404(served: Served) -> None:
    assert (await served.get("/nope"))[0] == 404


async def test_a_port_in_use_is_one_line(served: Served, clock: FakeClock) -> None:
    with pytest.raises(ConfigError, match=r"cannot serve HTTP on 127\.0\.0\.1:\d+: ") as info:
        await start_http_server(
            "127.0.0.1",
            served.server.port,
            health=HealthState(clock, POLL),
            metrics=Metrics(),
            db_ping=served.db.ping,
        )
    assert "\n" not in str(info.value)


async def test_readyz_with_a_real_sqlite_store(tmp_path: Path, clock: FakeClock) -> None:
    url = f"sqlite+aiosqlite:///{(tmp_path / 'bpsync.db').as_posix()}"
    await upgrade_database(url)
    store = await open_store(url)
    health = HealthState(clock, POLL)
    health.leader = True
    health.cycle_succeeded()
    server = await start_http_server(
        "127.0.0.1", 0, health=health, metrics=Metrics(), db_ping=store.ping
    )
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(server.url + "/readyz") as resp,
        ):
            assert resp.status == 200
    finally:
        await server.close()
        await store.close()


async def test_throttled_is_reported_and_stays_ready(clock: FakeClock) -> None:
    throttled = {"bigpanda": ["search", "tags"], "servicenow": []}
    health = HealthState(clock, POLL, throttled=lambda: throttled)
    health.leader = True
    health.cycle_succeeded()
    readiness = health.readiness()
    assert readiness.ready
    assert readiness.as_json()["throttled"] == {"bigpanda": ["search", "tags"]}


async def test_a_long_storm_cycle_within_its_budget_stays_ready(clock: FakeClock) -> None:
    health = HealthState(clock, POLL, cycle_budget=60.0)
    health.leader = True
    health.cycle_succeeded()
    health.cycle_started = clock.monotonic()
    clock.advance(READY_INTERVALS * POLL + 30)  # longer than 3 intervals, inside the budget
    assert health.readiness().ready
    clock.advance(60)  # past budget + allowance: stuck, not working
    assert not health.readiness().ready
    health.cycle_started = None
    assert not health.readiness().ready


async def test_a_storm_cycle_finishing_paid_pages_stays_ready_at_a_short_poll(
    clock: FakeClock,
) -> None:
    """At a 1 s poll, 3 intervals are 3 s; a cycle that finishes the pages it paid for a
    few seconds past its budget is working, not stuck (OVERRUN_ALLOWANCE_S)."""
    health = HealthState(clock, 1.0, cycle_budget=60.0)
    health.leader = True
    health.cycle_succeeded()
    health.cycle_started = clock.monotonic()
    clock.advance(60 + 6)  # the budget, then ten pairs and a page at BigPanda's pace
    assert health.readiness().ready
    clock.advance(OVERRUN_ALLOWANCE_S)  # far past it: stuck
    assert not health.readiness().ready
