"""BigPandaClient over loopback against the BigPanda emulator (sync.emulators.bigpanda).

Every operation of the client; an incident whose only change is a tag edit is found by
``list_changed``; rate limits: 300 tag writes paced at 45 req/s against a 50 req/s limit
get no 429, and the default 5 req/s pacer runs within 10 % of the limit (both in real
time, a few seconds); a 429 is transient with a growing delay; injected faults.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from sync.clients.bigpanda import BigPandaClient, make_session
from sync.clients.pacing import PacingPolicy
from sync.clock import Clock, FakeClock, SystemClock
from sync.emulators import bigpanda as emulator
from sync.emulators.control import serve_app
from sync.errors import FatalError, NotFoundError, PermanentError, TransientError
from sync.settings import BigPandaSettings

ENV: str = emulator.DEFAULT_ENVIRONMENT_ID
API_KEY = "BPUbpsync-emulator"
ORG_TOKEN = "bpsync-org-token"


def bp_settings(url: str, **kw: Any) -> BigPandaSettings:
    values: dict[str, Any] = {
        "url": url,
        "api_key": SecretStr(API_KEY),
        "bearer_token": SecretStr(ORG_TOKEN),
    }
    values.update(kw)
    return BigPandaSettings(**values)


@dataclass
class Env:
    url: str
    clock: Clock
    client: BigPandaClient
    http: aiohttp.ClientSession
    app: web.Application
    observed: list[tuple[str, str, int | None]] = field(default_factory=list)

    async def control(self, method: str, path: str, body: Any = None) -> Any:
        async with self.http.request(method, f"{self.url}/_emulator/{path}", json=body) as r:
            assert r.status < 300, await r.text()
            return await r.json()

    async def load(self, *fixtures: dict[str, Any]) -> list[str]:
        answer = await self.control("POST", "incidents", list(fixtures))
        ids: list[str] = answer["incidents"]
        return ids

    async def statuses(self) -> dict[str, int]:
        stats = await self.control("GET", "stats")
        return {str(k): int(v) for k, v in stats["statuses"].items()}


@asynccontextmanager
async def _env(
    clock: Clock, *, app_kw: dict[str, Any], pacing: PacingPolicy | None = None, **kw: Any
) -> AsyncIterator[Env]:
    app = emulator.create_app(clock=clock, **app_kw)
    async with serve_app(app) as url:
        settings = bp_settings(url, **kw)
        async with make_session(settings) as http:
            observed: list[tuple[str, str, int | None]] = []
            client = BigPandaClient(
                http,
                settings,
                clock,
                observer=lambda _, m, t, s, d: observed.append((m, t, s)),
                pacing=pacing,
            )
            yield Env(url, clock, client, http, app, observed)


@pytest.fixture
async def env(clock: FakeClock) -> AsyncIterator[Env]:
    """Emulator at BigPanda's 5 req/s and the client at its default 5 req/s, sharing one
    FakeClock: the pacer's sleeps move the emulator's clock too."""
    async with _env(clock, app_kw={}) as e:
        yield e


def fixture(host: str, status: str = "critical", **extra: Any) -> dict[str, Any]:
    return {
        "status": status,
        "alerts": [
            {
                "status": status,
                "primary_property": "host",
                "tags": {"host": host, "check": "disk"},
                "description": f"disk full on {host}",
            }
        ],
        **extra,
    }


# ---------------------------------------------------------------- environments, auth


async def test_environments_and_check_auth(env: Env) -> None:
    envs = await env.client.list_environments()
    assert ENV in {e.id for e in envs}
    assert any(e.name == "All Incidents" for e in envs)
    await env.client.check_auth()
    assert ("GET", "/resources/v2.0/environments", 200) in env.observed


async def test_wrong_api_key_is_fatal(clock: FakeClock) -> None:
    async with _env(clock, app_kw={}, api_key=SecretStr("BPUwrong")) as e:
        with pytest.raises(FatalError, match=r"authentication refused \(check bigpanda\.api_key\)"):
            await e.client.check_auth()


# ---------------------------------------------------------------- search and get


async def test_search_pages_expands_and_filters(env: Env) -> None:
    ids = await env.load(*(fixture(f"db-{n}") for n in range(3)), fixture("web-1", "warning"))
    first = await env.client.search_incidents(ENV, page=1, page_size=3)
    second = await env.client.search_incidents(ENV, page=2, page_size=3)
    assert first.total == second.total == 4
    assert {i.id for i in first.items + second.items} == set(ids)
    assert all(i.alerts == () and len(i.alert_ids) == 1 for i in first.items)
    assert all(i.status in {"critical", "warning"} for i in first.items)  # lower-cased

    expanded = await env.client.search_incidents(ENV, page_size=10, expand_alerts=True)
    alert = expanded.items[0].alerts[0]
    assert alert.tags["check"] == "disk" and alert.primary_property == "host"

    warning = await env.client.search_incidents(ENV, query='status = "warning"')
    assert [i.id for i in warning.items] == [ids[3]]
    active = await env.client.search_incidents(ENV, folder="active", sort_by="start")
    assert active.total == 4


async def test_search_vendor_400_is_permanent_with_the_message(env: Env) -> None:
    with pytest.raises(PermanentError) as info:
        await env.client.search_incidents(ENV, query="x" * 2001)
    assert info.value.status == 400 and "2000" in str(info.value)


async def test_get_incident_with_and_without_alerts(env: Env) -> None:
    (inc_id,) = await env.load(fixture("db-1"))
    full = await env.client.get_incident(ENV, inc_id)
    assert full.id == inc_id and full.active and full.end is None
    assert full.alerts and full.alerts[0].tags["host"] == "db-1"
    assert full.alert_ids == (full.alerts[0].id,)
    assert isinstance(full.start, int) and isinstance(full.updated_at, int)
    bare = await env.client.get_incident(ENV, inc_id, expand_alerts=False)
    assert bare.alerts == () and bare.alert_ids == full.alert_ids
    with pytest.raises(NotFoundError):
        await env.client.get_incident(ENV, "0" * 24)


async def test_lower_case_statuses_are_parsed_too(clock: FakeClock) -> None:
    async with _env(clock, app_kw={"lowercase_status": True}) as e:
        (inc_id,) = await e.load(fixture("db-1", "warning"))
        got = await e.client.get_incident(ENV, inc_id)
        assert (got.status, got.severity) == ("warning", "warning")


# ---------------------------------------------------------------- writes


async def test_resolve_then_resolve_again(env: Env) -> None:
    (inc_id,) = await env.load(fixture("db-1"))
    assert await env.client.resolve_incident(ENV, inc_id, "Resolved in ServiceNow") is True
    assert await env.client.resolve_incident(ENV, inc_id, "again") is False
    got = await env.client.get_incident(ENV, inc_id)
    assert (got.status, got.active) == ("ok", False) and got.end is not None
    resolved = await env.client.list_activities(inc_id, types=["incident_resolved_api"])
    assert len(resolved) == 1


async def test_comment_and_activities(env: Env) -> None:
    (inc_id,) = await env.load(fixture("db-1"))
    await env.client.add_comment(ENV, inc_id, "first [bpsync]")
    await env.client.add_comment(ENV, inc_id, "second")
    comments = await env.client.list_activities(inc_id, types=["incident_commented"])
    assert [a.params["comment"] for a in comments] == ["second", "first [bpsync]"]  # newest first
    assert all(len(a.id) == 32 and a.timestamp > 0 for a in comments)
    everything = await env.client.list_activities(inc_id)
    assert len(everything) > len(comments)
    with pytest.raises(NotFoundError):
        await env.client.list_activities("0" * 24)


async def test_tags_round_trip(env: Env) -> None:
    (inc_id,) = await env.load(fixture("db-1"))
    await env.client.create_tag_definition("servicenow_link")
    await env.client.set_tag(ENV, inc_id, "servicenow_link", "https://sn.example/INC0010001")
    await env.client.set_tags(ENV, inc_id, {"priority": "P2", "servicenow_link": "error"})
    assert await env.client.get_tags(ENV, inc_id) == {"priority": "P2", "servicenow_link": "error"}
    assert (await env.client.get_incident(ENV, inc_id)).tags["servicenow_link"] == "error"
    await env.client.delete_tag(ENV, inc_id, "priority")
    assert await env.client.get_tags(ENV, inc_id) == {"servicenow_link": "error"}
    await env.client.delete_tags(ENV, inc_id)
    assert await env.client.get_tags(ENV, inc_id) == {}
    with pytest.raises(PermanentError, match="tag definition does not exist") as info:
        await env.client.set_tag(ENV, inc_id, "no_such_tag", "x")
    assert not isinstance(info.value, NotFoundError)
    with pytest.raises(NotFoundError):
        await env.client.get_tags(ENV, "0" * 24)


async def test_tag_definitions(env: Env) -> None:
    defs = {d.id: d for d in await env.client.list_tag_definitions()}
    assert set(defs) == {"priority"}  # a fresh org
    assert defs["priority"].type == "Priority"
    assert defs["priority"].ordered_list == ("P1", "P2", "P3", "P4", "P5")
    created = await env.client.create_tag_definition("team", description="owning team")
    assert created.name == "team" and created.type == "Text"
    text_tags = await env.client.list_tag_definitions(tag_type="Text")
    assert created.id in {d.id for d in text_tags}
    (inc_id,) = await env.load(fixture("db-1"))
    await env.client.set_tag(ENV, inc_id, created.id, "dba")
    assert (await env.client.get_tags(ENV, inc_id))[created.id] == "dba"


async def test_post_alerts_with_the_org_token(env: Env) -> None:
    alert = {"host": "db-9", "check": "cpu", "status": "critical", "timestamp": 1767225600}
    body = await env.client.post_alerts([alert], app_key="bpsync-test")
    assert body is None or isinstance(body, dict)
    assert await env.client.post_alerts([alert], app_key="bpsync-test") is None  # duplicate: 204
    found = await env.client.search_incidents(ENV, query='host = "db-9"')
    assert found.total == 1
    await env.client.post_alerts(
        [{"host": "db-9", "check": "cpu", "status": "ok"}, {"host": "db-8", "status": "warning"}],
        app_key="bpsync-test",
    )
    assert (await env.client.search_incidents(ENV, query='host = "db-8"')).total == 1


async def test_wrong_org_token_is_fatal(clock: FakeClock) -> None:
    async with _env(clock, app_kw={}, bearer_token=SecretStr("nope")) as e:
        with pytest.raises(FatalError, match=r"bigpanda\.bearer_token"):
            await e.client.post_alerts([{"host": "h", "status": "ok"}], app_key="a")


# ---------------------------------------------------------------- list_changed


async def test_list_changed_finds_an_incident_whose_only_change_is_a_tag(
    env: Env, clock: FakeClock
) -> None:
    tagged, untouched = await env.load(fixture("db-1"), fixture("db-2"))
    before = await env.client.get_incident(ENV, tagged, expand_alerts=False)
    clock.advance(600)
    since = int(clock.now().timestamp())
    clock.advance(5)
    await env.client.set_tag(ENV, tagged, "priority", "P1")

    changed = await env.client.list_changed(ENV, since, overlap_s=30, page_size=50)
    assert [i.id for i in changed] == [tagged]
    after = changed[0]
    assert after.tags == {"priority": "P1"}
    assert after.changed_at == before.changed_at  # a tag edit does not bump changed_at ...
    assert after.changed_at is not None and after.changed_at < since - 30
    assert after.updated_at is not None and after.updated_at >= since  # ... only updated_at
    assert untouched not in {i.id for i in changed}
    everything = await env.client.list_changed(ENV, None, overlap_s=30, page_size=50)
    assert {i.id for i in everything} == {tagged, untouched}


async def test_list_changed_reads_every_page_and_deduplicates(env: Env, clock: FakeClock) -> None:
    ids = await env.load(*(fixture(f"host-{n}") for n in range(25)))
    since = int(clock.now().timestamp())
    changed = await env.client.list_changed(ENV, since, overlap_s=0, page_size=10)
    assert sorted(i.id for i in changed) == sorted(ids)
    pages = [s for m, t, s in env.observed if t.endswith("/incidents") and m == "GET"]
    assert len(pages) == 3


async def test_list_changed_keeps_resolved_incidents_changed_in_the_window(
    env: Env, clock: FakeClock
) -> None:
    (inc_id,) = await env.load(fixture("db-1"))
    clock.advance(600)
    since = int(clock.now().timestamp())
    assert await env.client.resolve_incident(ENV, inc_id, "done")
    changed = await env.client.list_changed(ENV, since, overlap_s=30, page_size=100)
    assert [(i.id, i.status, i.active) for i in changed] == [(inc_id, "ok", False)]


# ---------------------------------------------------------------- rate limits and faults


async def test_429_is_delayed_and_sent_again_with_a_growing_hold(clock: FakeClock) -> None:
    # the emulator refills 0.1 token/s (bucket of 1); the pacer at 100/s would send far
    # faster, but after each 429 it holds the family (1, 2, 4, 8 s) and sends again; by
    # then the bucket holds a token again (FakeClock: no real waiting). Nothing raises.
    app_kw = {"rate_limit_per_s": 0.1, "rate_limit_burst": 1}
    async with _env(clock, app_kw=app_kw, rate_limit_per_s=100.0) as e:
        for _ in range(3):
            await e.client.list_environments()
        statuses = await e.statuses()
        assert statuses["200"] == 3
        assert statuses["429"] >= 2
        assert e.client.health.throttled_families() == ["environments"]
        assert clock.monotonic() >= 10.0  # the emulator's refill, waited out in holds


async def test_injected_faults_on_reads_are_sent_again_writes_are_not(env: Env) -> None:
    (inc_id,) = await env.load(fixture("db-1"))
    await env.control("POST", "faults", {"status": 503, "count": 1})
    assert (await env.client.get_incident(ENV, inc_id)).id == inc_id  # resent after the 503
    await env.control("POST", "faults", {"status": 500, "count": 1})
    with pytest.raises(TransientError, match="500"):
        await env.client.add_comment(ENV, inc_id, "x")  # a write: the executor decides
    # count 2: aiohttp replays an idempotent request once when a kept-alive connection drops
    await env.control("POST", "faults", {"reset_connection": True, "count": 2})
    assert isinstance(await env.client.get_tags(ENV, inc_id), dict)  # a read: resent
    statuses = await env.statuses()
    assert statuses.get("503") == 1


@pytest.mark.slow
async def test_300_tag_writes_at_45_per_s_get_no_429_from_a_50_per_s_limit() -> None:
    """Real time (about 7 s): ten concurrent writers share the pacer's tag bucket."""
    clock = SystemClock()
    async with _env(clock, app_kw={"rate_limit_per_s": 50.0}, rate_limit_per_s=45.0) as e:
        (inc_id,) = await e.load(fixture("db-1"))
        queue: asyncio.Queue[int] = asyncio.Queue()
        for n in range(300):
            queue.put_nowait(n)

        async def writer() -> None:
            while not queue.empty():
                n = queue.get_nowait()
                await e.client.set_tag(ENV, inc_id, "priority", f"P{n % 5 + 1}")

        started = time.monotonic()
        await asyncio.gather(*(writer() for _ in range(10)))
        elapsed = time.monotonic() - started
        statuses = await e.statuses()
        assert statuses.get("429", 0) == 0
        assert statuses.get("204", 0) == 300
        assert elapsed >= 299 / 45 - 0.05  # the pacer did pace


async def test_without_pacing_the_50_per_s_limit_answers_429() -> None:
    """The control for the test above: the emulator's limit is real."""
    clock = SystemClock()
    # outage_after 0: a 429 is not sent again, so every refusal shows
    no_resend = PacingPolicy(outage_after_s=0.0)
    async with _env(
        clock, app_kw={"rate_limit_per_s": 50.0}, rate_limit_per_s=10_000.0, pacing=no_resend
    ) as e:
        (inc_id,) = await e.load(fixture("db-1"))
        results = await asyncio.gather(
            *(e.client.set_tag(ENV, inc_id, "priority", "P1") for _ in range(120)),
            return_exceptions=True,
        )
        refused = [r for r in results if isinstance(r, TransientError) and r.status == 429]
        assert refused
        assert (await e.statuses()).get("429", 0) == len(refused)


@pytest.mark.slow
async def test_default_pacer_runs_at_9_tenths_of_5_per_s() -> None:
    """Real time (about 3.3 s): 16 concurrent reads of one family at the default 5 req/s
    with the default headroom of 0.9 (4.5 req/s)."""
    clock = SystemClock()
    async with _env(clock, app_kw={"rate_limit_per_s": 5.0}) as e:
        (inc_id,) = await e.load(fixture("db-1"))
        stamps: list[float] = []

        async def read() -> None:
            await e.client.get_incident(ENV, inc_id, expand_alerts=False)
            stamps.append(time.monotonic())

        started = time.monotonic()
        await asyncio.gather(*(read() for _ in range(16)))
        stamps.sort()
        rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])
        assert 4.0 <= rate <= 5.0, rate
        assert stamps[-1] - started >= 15 / 4.5 - 0.05
        assert (await e.statuses()).get("429", 0) == 0
