"""Push mode over loopback (issue 15): the webhook receivers' contract, and pushed changes
synced once, whatever the deliveries do.

- The receivers (``POST /webhooks/bigpanda``, ``/webhooks/servicenow``): bearer token,
  size limit (refused unread), malformed bodies (a one-line 400, never a 500), every
  BigPanda body shape, the cap on requests at once, one row per incident however many
  deliveries, and a kill right after the 202 (``bpsync run`` as a process).
- The engine, on the FakeClock world: a pushed change synced once and its polled copy
  dropped (0 extra writes); duplicated, replayed, reordered and stale deliveries
  harmless; a dropped delivery caught by the poll; bpsync's own writes echoed back by
  the webhooks recognised; the emulators' own pushers (BigPanda's webhook, ServiceNow's
  business rule) with their fault switches.
- The daemon on the real clock: pushed changes within a second both ways, and a dropped
  delivery caught by the reconciling poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web

from sync.clock import FakeClock
from sync.constants import Side
from sync.emulators.bigpanda import WEBHOOKS_KEY
from sync.emulators.control import serve_app
from sync.emulators.servicenow import RULE_KEY
from sync.engine import build_engine
from sync.metrics import Metrics
from sync.push.passes import PassResult, PushPass
from sync.runtime.receiver import PushReceiver
from sync.store import open_store, upgrade_database
from sync.store.base import LinkStore
from tests.runtime import test_daemon_process as processes
from tests.runtime.test_daemon_process import SN_AUTH, Apis, daemon_env

from .conftest import World, world_settings
from .helpers import ENV, SYSTEM_MAPPING, SYSTEM_TAGS, Emu

BP_TOKEN = "bp-webhook-secret-1"
SN_TOKEN = "sn-rule-secret-2"
PUSH: dict[str, Any] = {
    "push.enabled": True,
    "push.bigpanda_token": BP_TOKEN,
    "push.servicenow_token": SN_TOKEN,
}
SYS_ID = "0123456789abcdef0123456789abcdef"
apis = processes.apis  # the fixtures of the daemon process tests: emulators, `bpsync run`
daemons = processes.daemons
BP_ID = "0123456789abcdef01234567"


@dataclass
class Push:
    """bpsync's receivers served over loopback, the engine's push pass, and its metrics."""

    url: str
    http: aiohttp.ClientSession
    woke: list[Side]
    passes: PushPass
    metrics: Metrics
    store: LinkStore

    async def post(
        self,
        side: str,
        body: Any = None,
        *,
        token: str | None = None,
        data: bytes | None = None,
        scheme: str = "Bearer",
    ) -> tuple[int, dict[str, Any]]:
        token = token if token is not None else (BP_TOKEN if side == "bigpanda" else SN_TOKEN)
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"{scheme} {token}"
        payload = data if data is not None else json.dumps(body).encode()
        async with self.http.post(
            f"{self.url}/webhooks/{side}", data=payload, headers=headers
        ) as resp:
            text = await resp.text()
            if resp.content_type != "application/json":
                return resp.status, {"text": text}
            return resp.status, json.loads(text)

    async def run(self) -> PassResult:
        """One push pass over what is recorded (as the daemon's loop runs it)."""
        events = await self.passes.take()
        assert not self.passes.wants_cycle(events)
        return await self.passes.work(events)

    def changes(self, side: str, via: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "bpsync_changes_total", {"pair": "default", "side": side, "via": via}
        )
        return value or 0.0

    def answered(self, side: str, status: int) -> float:
        value = self.metrics.registry.get_sample_value(
            "bpsync_push_requests_total", {"pair": "default", "side": side, "status": str(status)}
        )
        return value or 0.0


@contextlib.asynccontextmanager
async def pushing(world: World, **overrides: Any) -> AsyncIterator[Push]:
    """The world's engine rebuilt with push on (and metrics), its receivers served."""
    metrics = Metrics()
    world.settings = world_settings(
        world.sn_url, world.bp_url, world.tmp, tag_mapping=SYSTEM_MAPPING, **{**PUSH, **overrides}
    )
    if world.engine is not None:
        await world.engine.close()
    url = world.settings.effective_database_url
    await upgrade_database(url)
    store = await open_store(url)
    world.engine = await build_engine(
        world.settings, clock=world.clock, store=store, metrics=metrics
    )
    await world.engine.check_credentials()
    await world.engine.prepare()
    woke: list[Side] = []
    receiver = PushReceiver(world.settings, store, world.clock, woke.append, metrics=metrics)
    app = web.Application()
    receiver.install(app)
    async with serve_app(app) as base:
        yield Push(base, world.http, woke, PushPass(world.engine.coordinator), metrics, store)


async def cycle(world: World) -> Any:
    report = await world.cycle()
    assert report.ok, f"cycle failed: {report.error!r}"
    return report


async def hook_emulators(world: World, push: Push, **faults: Any) -> None:
    """Both emulators push to bpsync: BigPanda's webhook (AutoShare) and ServiceNow's
    business rule, with the bearer tokens bpsync expects and ``faults`` on both."""
    await world.control(
        "bigpanda",
        "POST",
        "webhook",
        {
            "url": f"{push.url}/webhooks/bigpanda",
            "headers": {"Authorization": f"Bearer {BP_TOKEN}"},
            "faults": faults,
        },
    )
    await world.control(
        "servicenow",
        "POST",
        "business_rule",
        {
            "url": f"{push.url}/webhooks/servicenow",
            "headers": {"Authorization": f"Bearer {SN_TOKEN}"},
            "faults": faults,
        },
    )


async def delivered(world: World) -> None:
    """Every delivery the emulators have in flight has arrived (or failed)."""
    for _ in range(3):  # a delivery's wait on the FakeClock may start another
        await world.bp_app[WEBHOOKS_KEY].idle()
        await world.sn_app[RULE_KEY].idle()


# --------------------------------------------------------------------------- receivers


async def test_receivers_refuse_calls_without_their_token(world: World) -> None:
    async with pushing(world) as push:
        body = {"table": "incident", "sys_id": SYS_ID}
        assert (await push.post("servicenow", body, token=""))[0] == 401
        assert (await push.post("servicenow", body, token="wrong"))[0] == 401
        assert (await push.post("servicenow", body, token=BP_TOKEN))[0] == 401  # other side's
        assert (await push.post("servicenow", body, scheme="Basic"))[0] == 401
        status, answer = await push.post("bigpanda", {"id": BP_ID}, token=SN_TOKEN)
        assert status == 401
        assert "Bearer" in answer["error"]
        assert await push.store.count_push_events() == 0
        assert push.woke == []
        assert (await push.post("servicenow", body))[0] == 202
        assert push.answered("servicenow", 401) == 4


async def test_a_receiver_without_a_token_is_off(world: World) -> None:
    async with pushing(world, **{"push.bigpanda_token": None}) as push:
        assert (await push.post("bigpanda", {"id": BP_ID}))[0] == 404
        assert (await push.post("servicenow", {"sys_id": SYS_ID}))[0] == 202


@pytest.mark.parametrize(
    ("side", "data", "reason"),
    [
        ("servicenow", b"{not json", "malformed JSON"),
        ("servicenow", b"\xff\xfe", "not UTF-8"),
        ("servicenow", b"", "empty body"),
        ("servicenow", b"[1, 2]", "JSON object is expected"),
        ("servicenow", b'{"table": "incident"}', "no sys_id"),
        ("servicenow", b'{"sys_id": "x; DROP TABLE"}', "32 letters and digits"),
        ("servicenow", b'{"table": "problem", "sys_id": "' + SYS_ID.encode() + b'"}', "table"),
        ("servicenow", b'{"sys_id": "' + SYS_ID.encode() + b'", "sys_mod_count": "x"}', "number"),
        ("bigpanda", b'{"trigger": "incident#updated"}', "no incident id"),
        ("bigpanda", b'{"incident": {"id": 42}}', "not a BigPanda id"),
        ("bigpanda", b'{"incident_id": "' + BP_ID.encode() + b'", "environment": "a/b"}', "env"),
        ("bigpanda", b"null", "JSON object is expected"),
    ],
)
async def test_malformed_deliveries_are_a_400_with_a_one_line_reason(
    world: World, side: str, data: bytes, reason: str
) -> None:
    async with pushing(world) as push:
        status, answer = await push.post(side, data=data)
        assert status == 400
        assert reason in answer["error"]
        assert "\n" not in answer["error"]
        assert await push.store.count_push_events() == 0


async def test_every_bigpanda_body_shape_names_its_incident(world: World) -> None:
    async with pushing(world) as push:
        incident = {"id": BP_ID, "status": "Critical", "updated_at": 1767225600}
        wrapped = {"incident": {**incident, "environments": [ENV]}, "trigger": "incident#new"}
        assert (await push.post("bigpanda", wrapped))[0] == 202
        bare = {**incident, "event_type": "incident#updated"}
        assert (await push.post("bigpanda", bare))[0] == 202
        v2 = {"incident_id": "f" * 24, "environment_id": ENV, "trigger": "incident-tag#upserted"}
        assert (await push.post("bigpanda", v2))[0] == 202
        events = {e.object_id: e for e in await push.store.pending_push_events(limit=10)}
        assert set(events) == {BP_ID, "f" * 24}
        # one row per incident: the second delivery counted on the first one's row
        assert events[BP_ID].deliveries == 2
        assert events[BP_ID].version == "1767225600"
        assert events[BP_ID].environment_id == ENV
        assert events["f" * 24].environment_id == ENV
        assert push.woke == [Side.BIGPANDA] * 3


async def _raw_post(url: str, path: str, head: dict[str, str], body: bytes) -> Any:
    """A POST written by hand: the head and part of a body (nothing more is sent)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    lines = [f"POST {path} HTTP/1.1", f"Host: {parts.netloc}"]
    lines += [f"{k}: {v}" for k, v in head.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    await writer.drain()
    return reader, writer


async def _status_then_closed(reader: asyncio.StreamReader) -> int:
    status_line = await asyncio.wait_for(reader.readline(), 5)
    rest = await asyncio.wait_for(reader.read(), 5)  # EOF: the server closed it
    assert rest.endswith(b"}")
    return int(status_line.split()[1])


async def test_oversized_bodies_are_refused_without_being_read(world: World) -> None:
    async with pushing(world, **{"push.max_body": 4096}) as push:
        auth = {"Authorization": f"Bearer {SN_TOKEN}", "Content-Type": "application/json"}
        # announced: 413 after the head, while 100 MiB are still to come
        announced = {**auth, "Content-Length": str(100 * 1024 * 1024)}
        reader, writer = await _raw_post(push.url, "/webhooks/servicenow", announced, b"{")
        assert await _status_then_closed(reader) == 413
        writer.close()
        # chunked: 413 once the limit is passed, the rest never read
        chunked = {**auth, "Transfer-Encoding": "chunked"}
        chunk = b"800\r\n" + b" " * 2048 + b"\r\n"
        reader, writer = await _raw_post(push.url, "/webhooks/servicenow", chunked, chunk * 3)
        assert await _status_then_closed(reader) == 413
        writer.close()
        # at the limit: read and judged
        body = json.dumps({"sys_id": SYS_ID}).encode().ljust(4096)
        assert (await push.post("servicenow", data=body))[0] == 202
        assert await push.store.count_push_events() == 1
        assert push.answered("servicenow", 413) == 2


async def test_requests_at_once_are_capped(world: World) -> None:
    async with pushing(world, **{"push.max_concurrent": 1}) as push:
        body = json.dumps({"sys_id": SYS_ID}).encode().ljust(100)
        head = {
            "Authorization": f"Bearer {SN_TOKEN}",
            "Content-Type": "application/json",
            "Content-Length": "100",
        }
        # the first delivery sends half its body and holds the receiver's one slot
        reader, writer = await _raw_post(push.url, "/webhooks/servicenow", head, body[:50])
        await asyncio.sleep(0.1)
        async with push.http.post(
            f"{push.url}/webhooks/servicenow",
            json={"sys_id": "f" * 32},
            headers={"Authorization": f"Bearer {SN_TOKEN}"},
        ) as resp:
            assert resp.status == 503
            assert resp.headers["Retry-After"] == "1"
        assert (await push.post("bigpanda", {"id": BP_ID}))[0] == 202  # its own slots
        writer.write(body[50:])
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
        assert status_line.split()[1] == b"202"
        writer.close()
        assert (await push.post("servicenow", {"sys_id": "f" * 32}))[0] == 202


# --------------------------------------------------------------------------- the engine


async def test_a_pushed_change_is_synced_once_and_its_polled_copy_dropped(
    world: World, emu: Emu
) -> None:
    assert isinstance(world.clock, FakeClock)
    async with pushing(world) as push:
        bp_id = await emu.new_incident("push-1", check="cpu")
        await world.settle()
        sn = await emu.sn_one_for(bp_id)
        world.clock.advance(1)
        await emu.sn_patch(sn["sys_id"], {"category": "network"})
        before = await world.writes()
        polled = push.changes("servicenow", "poll")
        body = {"table": "incident", "sys_id": sn["sys_id"], "sys_mod_count": "1"}
        assert (await push.post("servicenow", body))[0] == 202
        result = await push.run()
        assert result.changes[Side.SERVICENOW] == 1
        assert (await emu.tags(bp_id))["service_area"] == "network"
        assert await world.writes() == before + 1  # the one BigPanda tag write
        assert await push.store.count_push_events() == 0  # worked, acknowledged
        world.clock.advance(1)
        report = await cycle(world)
        # the poll's copy of the change is the same change: dropped, nothing written
        assert push.changes("servicenow", "poll") == polled
        assert push.changes("servicenow", "push") == 1
        assert await world.writes() == before + 1
        assert report.actions == 0


async def test_duplicated_replayed_and_stale_deliveries_write_once(world: World, emu: Emu) -> None:
    assert isinstance(world.clock, FakeClock)
    async with pushing(world) as push:
        bp_id = await emu.new_incident("push-2", check="cpu")
        await world.settle()
        sys_id = (await emu.sn_one_for(bp_id))["sys_id"]
        world.clock.advance(1)
        await emu.sn_patch(sys_id, {"category": "storage"})
        old = {"table": "incident", "sys_id": sys_id, "sys_mod_count": "1"}
        world.clock.advance(1)
        await emu.sn_patch(sys_id, {"category": "database"})
        new = {**old, "sys_mod_count": "2"}
        before = await world.writes()
        for body in (new, new, old, new):  # duplicated and reordered
            assert (await push.post("servicenow", body))[0] == 202
        assert len(await push.store.pending_push_events(limit=10)) == 1
        await push.run()
        assert (await emu.tags(bp_id))["service_area"] == "database"
        assert await world.writes() == before + 1
        # replayed and stale deliveries after the change was synced: read, found known
        for body in (old, new):
            assert (await push.post("servicenow", body))[0] == 202
            result = await push.run()
            assert result.duplicates + sum(result.changes.values()) == 1
        world.clock.advance(1)
        await cycle(world)
        assert await world.writes() == before + 1
        assert (await emu.tags(bp_id))["service_area"] == "database"


async def test_a_pass_runs_beside_a_cycle_for_the_incidents_it_does_not_work(
    world: World, emu: Emu
) -> None:
    """A cycle whose write is slow does not hold up a delivery about another incident:
    the pass runs beside it and writes while the cycle's write waits. An incident the
    cycle has not reached yet is given up to the pass (written once, by the pass); a
    delivery about the incident the cycle is writing to is left for after it. The
    cycle's checkpoint records the pass's changes as seen: nothing is written twice."""
    assert isinstance(world.clock, FakeClock)
    async with pushing(world, pair_concurrency=1) as push:
        in_cycle = await emu.new_incident("beside-1", check="cpu")
        queued = await emu.new_incident("beside-2", check="disk")
        other = await emu.new_incident("beside-3", check="mem")
        await world.settle()
        other_sys_id = (await emu.sn_one_for(other))["sys_id"]
        in_cycle_sys_id = (await emu.sn_one_for(in_cycle))["sys_id"]
        queued_sys_id = (await emu.sn_one_for(queued))["sys_id"]
        world.clock.advance(1)
        await emu.set_tags(in_cycle, impact_level="high")  # the next cycle works it first
        world.clock.advance(1)
        await emu.set_tags(queued, impact_level="high")  # and this one after it
        assert world.engine is not None
        coordinator = world.engine.coordinator
        client = coordinator.servicenow
        real = client.update_incident
        release = asyncio.Event()
        slowed: list[str] = []

        async def slow(sys_id: str, fields: Any) -> Any:
            if sys_id == in_cycle_sys_id:
                slowed.append(sys_id)
                await asyncio.wait_for(release.wait(), timeout=10)
            return await real(sys_id, fields)

        client.update_incident = slow  # type: ignore[method-assign]
        writes = await world.writes()
        running = asyncio.create_task(world.cycle())
        while coordinator.host is None or not slowed:  # open to guests, writing in_cycle
            assert not running.done()
            await asyncio.sleep(0.01)
        host = coordinator.host
        await emu.sn_patch(other_sys_id, {"category": "network"})
        body = {"table": "incident", "sys_id": other_sys_id, "sys_mod_count": "1"}
        assert (await push.post("servicenow", body))[0] == 202
        for bp_id in (in_cycle, queued):
            assert (await push.post("bigpanda", {"incident_id": bp_id}))[0] == 202
        async with coordinator.guests:
            result = await push.passes.work(await push.passes.take(), host=host)
        assert result.changes == {Side.BIGPANDA: 1, Side.SERVICENOW: 1}
        assert result.deferred == 1
        assert (await emu.tags(other))["service_area"] == "network"  # written beside it
        assert (await emu.sn_get(queued_sys_id))["impact"] == "1"
        assert not running.done()  # the cycle's write still waits
        assert await world.writes() == writes + 3  # the PATCH above, and the two writes
        assert [e.object_id for e in await push.store.pending_push_events(limit=5)] == [in_cycle]
        release.set()
        report = await running
        assert report.ok, report.error
        client.update_incident = real  # type: ignore[method-assign]
        assert report.actions == 1  # in_cycle's own write; queued was the pass's
        # the cycle's checkpoint wrote the pass's changes as seen: the poll drops them
        cursor = await push.store.get_cursor(Side.SERVICENOW)
        assert any(key.startswith(f"{other_sys_id}:1:") for key in cursor.seen)
        await push.run()  # the delivery left for after the cycle: synced already
        written = await world.writes()
        world.clock.advance(1)
        await cycle(world)
        assert await world.writes() == written
        assert coordinator.host is None


async def test_a_pair_the_cycle_is_still_reading_is_given_up_to_the_pass(
    world: World, emu: Emu
) -> None:
    """A cycle reading a comment thread has written nothing of that pair yet: a delivery
    about it is worked by the pass beside it, and the cycle, its read done, leaves the
    pair to the pass (the comment is carried once, by the pass)."""
    assert isinstance(world.clock, FakeClock)
    async with pushing(world) as push:
        bp_id = await emu.new_incident("given-up-1", check="cpu")
        await world.settle()
        sys_id = (await emu.sn_one_for(bp_id))["sys_id"]
        world.clock.advance(1)
        await emu._bp(
            "POST",
            f"/resources/v2.0/environments/{ENV}/incidents/{bp_id}/comments",
            json={"comment": "only once, by whoever"},
            expect=204,
        )
        assert world.engine is not None
        coordinator = world.engine.coordinator
        client = coordinator.bigpanda
        real = client.list_activities
        release = asyncio.Event()
        reading: list[str] = []

        async def slow(incident_id: str, **kw: Any) -> Any:
            if not reading:  # the cycle's read waits; the pass's goes through
                reading.append(incident_id)
                await asyncio.wait_for(release.wait(), timeout=10)
            return await real(incident_id, **kw)

        client.list_activities = slow  # type: ignore[method-assign]
        running = asyncio.create_task(world.cycle())
        while coordinator.host is None or not reading:
            assert not running.done()
            await asyncio.sleep(0.01)
        assert (await push.post("bigpanda", {"incident_id": bp_id}))[0] == 202
        async with coordinator.guests:
            result = await push.passes.work(await push.passes.take(), host=coordinator.host)
        assert (result.changes[Side.BIGPANDA], result.deferred) == (1, 0)
        notes = [n for n in await emu.journal(sys_id) if "only once, by whoever" in n]
        assert len(notes) == 1
        release.set()
        report = await running
        client.list_activities = real  # type: ignore[method-assign]
        assert report.ok, report.error
        assert report.actions == 0  # the cycle left it to the pass
        world.clock.advance(1)
        await cycle(world)
        notes = [n for n in await emu.journal(sys_id) if "only once, by whoever" in n]
        assert len(notes) == 1


async def test_a_dropped_delivery_is_caught_by_the_poll(world: World, emu: Emu) -> None:
    assert isinstance(world.clock, FakeClock)
    async with pushing(world) as push:
        await hook_emulators(world, push, drop=1.0)  # every delivery lost
        bp_id = await emu.new_incident("push-3", check="cpu")
        await delivered(world)
        assert (await push.run()).events == 0
        await world.settle()  # the poll alone: created and linked
        sys_id = (await emu.sn_one_for(bp_id))["sys_id"]
        world.clock.advance(1)
        await emu.set_tags(bp_id, impact_level="high")
        await delivered(world)
        assert await push.store.count_push_events() == 0
        await cycle(world)
        assert (await emu.sn_get(sys_id))["impact"] == "1"
        assert push.changes("bigpanda", "poll") >= 1
        assert push.changes("bigpanda", "push") == 0
        rule = await world.control("servicenow", "GET", "business_rule")
        assert {d["result"] for d in rule["deliveries"]} == {"dropped"}
        hook = await world.control("bigpanda", "GET", "webhook")
        assert {d["result"] for d in hook["deliveries"]} == {"dropped"}


async def test_webhooks_from_both_emulators_sync_and_echoes_are_recognised(
    world: World, emu: Emu
) -> None:
    """Every webhook delivered twice and some late: a new incident is created once, a
    change each way is written once, and bpsync's own writes coming back by webhook
    (the create, the link tag, the field updates) write nothing back."""
    assert isinstance(world.clock, FakeClock)
    async with pushing(world) as push:
        await cycle(world)  # cursors exist: pushed keys are remembered for the poll
        polled = push.changes("servicenow", "poll")
        await hook_emulators(world, push, duplicate=1.0, reorder=0.5, seed=7)
        bp_id = await emu.new_incident("push-4", check="cpu")
        for _ in range(4):  # the push, then the echoes of bpsync's own writes
            await delivered(world)
            await push.run()
        assert len(await emu.sn_for(bp_id)) == 1  # created once
        hook = await world.control("bigpanda", "GET", "webhook")
        assert {d["result"] for d in hook["deliveries"]} == {"delivered"}
        rule = await world.control("servicenow", "GET", "business_rule")
        assert {d["operation"] for d in rule["deliveries"]} == {"insert"}
        # the create came by push; its echo (ServiceNow's insert) was read and recognised
        assert push.changes("bigpanda", "push") >= 1
        assert push.changes("servicenow", "push") >= 1
        sn = await emu.sn_one_for(bp_id)
        assert (await emu.tags(bp_id))["servicenow_link"].endswith(sn["sys_id"])
        sn_requests = await emu.requests("servicenow")
        assert sn_requests.get("POST /api/now/table/{table}", 0) == 1
        before = await world.writes()
        # a change each way, each delivered twice
        world.clock.advance(1)
        await emu.set_tags(bp_id, impact_level="medium")
        await emu.sn_patch(sn["sys_id"], {"category": "hardware"})
        after_people = await world.writes()
        for _ in range(4):
            await delivered(world)
            await push.run()
        assert (await emu.sn_get(sn["sys_id"]))["impact"] == "2"
        assert (await emu.tags(bp_id))["service_area"] == "hardware"
        assert await world.writes() == after_people + 2  # one write to each side
        assert after_people == before + 2
        # and the poll finds nothing left to do
        world.clock.advance(1)
        report = await cycle(world)
        assert report.actions == 0
        assert await world.writes() == after_people + 2
        assert push.changes("servicenow", "poll") == polled
        assert push.changes("bigpanda", "push") >= 2
        assert await push.store.count_push_events() == 0


async def test_webhook_v2_bodies_sync_a_tag_change(world: World, emu: Emu) -> None:
    assert isinstance(world.clock, FakeClock)
    async with pushing(world) as push:
        await hook_emulators(world, push)
        await world.control("bigpanda", "POST", "webhook", {"envelope": "v2"})
        bp_id = await emu.new_incident("push-v2", check="cpu")
        await delivered(world)
        await push.run()
        sys_id = (await emu.sn_one_for(bp_id))["sys_id"]  # created by push
        await delivered(world)
        await push.run()  # the echoes
        world.clock.advance(1)
        await emu.set_tags(bp_id, impact_level="high")
        before = await world.writes()
        await delivered(world)
        hook = await world.control("bigpanda", "GET", "webhook")
        assert hook["deliveries"][-1]["payload"] == {
            "incident_id": bp_id,
            "environment_id": ENV,
            "trigger": "incident-tag#upserted",
        }
        result = await push.run()
        assert result.changes[Side.BIGPANDA] == 1
        assert (await emu.sn_get(sys_id))["impact"] == "1"
        assert await world.writes() == before + 1


async def test_a_burst_of_deliveries_is_left_to_a_poll(world: World, emu: Emu) -> None:
    async with pushing(world) as push:
        for n in range(push.passes.batch + 1):
            assert (await push.post("servicenow", {"sys_id": f"{n:032x}"}))[0] == 202
        events = await push.passes.take()
        assert push.passes.wants_cycle(events)
        await push.passes.ack(events)  # what the daemon does once its cycle polled
        assert await push.store.count_push_events() == 0


async def test_deliveries_about_incidents_bpsync_does_not_sync_are_dropped(
    world: World, emu: Emu
) -> None:
    async with pushing(world) as push:
        await cycle(world)
        other = await emu.sn_create({"short_description": "not from BigPanda"})
        assert (await push.post("servicenow", {"sys_id": other["sys_id"]}))[0] == 202
        assert (await push.post("servicenow", {"sys_id": SYS_ID}))[0] == 202  # no such
        assert (await push.post("bigpanda", {"incident_id": BP_ID}))[0] == 202  # no such
        before = await world.writes()
        result = await push.run()
        assert (result.events, result.dropped) == (3, 3)
        assert await world.writes() == before
        assert await push.store.count_push_events() == 0


# --------------------------------------------------------------------------- the daemon


async def _wait(predicate: Any, within: float, what: str) -> float:
    started = time.monotonic()
    while not await predicate():
        if time.monotonic() - started > within:
            raise AssertionError(f"{what}: not within {within}s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


@pytest.mark.slow
async def test_the_daemon_syncs_pushed_changes_within_a_second(
    live_world: World, tmp_path: Path
) -> None:
    world = live_world
    emu = Emu(world)
    await emu.define_tags(*SYSTEM_TAGS)
    overrides = {**PUSH, "tag_mapping": SYSTEM_MAPPING, "push.reconcile_interval": 4.0}
    async with world.daemon(**overrides) as daemon:
        base = f"http://127.0.0.1:{daemon._server.port}"
        push = Push(base, world.http, [], daemon.push, daemon.metrics, daemon.engine.store)
        await hook_emulators(world, push, duplicate=0.5, reorder=0.3, seed=3)
        await asyncio.sleep(0.3)  # the first (start-up) cycle is done
        bp_id = await emu.new_incident("live-1", check="cpu")

        async def created() -> bool:
            return len(await emu.sn_for(bp_id)) == 1

        assert await _wait(created, 3.0, "created by push") < 1.5
        sys_id = (await emu.sn_one_for(bp_id))["sys_id"]
        await asyncio.sleep(0.5)  # the echoes settle
        for n, (impact, category) in enumerate([("1", "network"), ("3", "storage")]):
            await emu.sn_patch(sys_id, {"category": category})

            async def tagged(category: str = category) -> bool:
                return (await emu.tags(bp_id)).get("service_area") == category

            assert await _wait(tagged, 3.0, f"ServiceNow -> BigPanda {n}") < 1.0
            level = {"1": "high", "3": "low"}[impact]
            await emu.set_tags(bp_id, impact_level=level)

            async def impacted(impact: str = impact) -> bool:
                return (await emu.sn_get(sys_id))["impact"] == impact

            assert await _wait(impacted, 3.0, f"BigPanda -> ServiceNow {n}") < 1.0
        assert push.changes("servicenow", "push") >= 2
        # a delivery lost: the reconciling poll (every 4 s) finds the change
        lossy = {"faults": {"drop": 1.0, "duplicate": 0, "reorder": 0}}
        await world.control("servicenow", "POST", "business_rule", lossy)
        await asyncio.sleep(1.5)  # late deliveries of earlier changes have landed
        seen = push.changes("servicenow", "poll") + push.changes("servicenow", "push")
        await emu.sn_patch(sys_id, {"category": "software"})

        async def caught() -> bool:
            return (await emu.tags(bp_id)).get("service_area") == "software"

        assert await _wait(caught, 4.0 + 3.0, "caught by the poll") < 4.0 + 2.0

        # counted once: by the poll, unless a late delivery of an earlier change (a
        # loaded machine) woke a read of the incident first (a webhook is only a hint);
        # test_a_dropped_delivery_is_caught_by_the_poll shows the poll alone on a clock
        def counted() -> float:
            return push.changes("servicenow", "poll") + push.changes("servicenow", "push")

        async def recorded() -> bool:  # counted when the cycle records it, after the write
            return counted() > seen

        await _wait(recorded, 5.0, "the change counted")
        await asyncio.sleep(0.5)  # a second count (a duplicate) would land by now
        assert counted() == seen + 1
        assert len(await emu.sn_for(bp_id)) == 1


@pytest.mark.slow
async def test_a_kill_right_after_the_202_loses_nothing(
    apis: Apis, daemons: Any, tmp_path: Path
) -> None:
    """``bpsync run`` as a process: a delivery answered 202 is in the store even when
    the daemon is killed at once (here while its pass is still reading the incident),
    and the next daemon works it."""
    async with apis.session.post(
        apis.sn + "/api/now/table/incident",
        json={"short_description": "pushed", "correlation_id": BP_ID},
        headers={**SN_AUTH, "Accept": "application/json"},
    ) as resp:
        assert resp.status == 201
        sys_id = (await resp.json())["result"]["sys_id"]
    env = daemon_env(
        apis,
        tmp_path,
        BPSYNC_PUSH__ENABLED="true",
        BPSYNC_PUSH__SERVICENOW_TOKEN=SN_TOKEN,
        BPSYNC_PUSH__RECONCILE_INTERVAL="60",
    )
    first = await daemons("first", env)
    port = await first.wait_running()
    # the pass's read of the incident takes 5 s: the kill comes while it waits
    await apis.sn_fault(
        {"path": f"/api/now/table/incident/{sys_id}", "latency_ms": 5000, "status": None}
    )
    async with apis.session.post(
        f"http://127.0.0.1:{port}/webhooks/servicenow",
        json={"table": "incident", "sys_id": sys_id, "sys_mod_count": "0"},
        headers={"Authorization": f"Bearer {SN_TOKEN}"},
    ) as resp:
        assert resp.status == 202
    first.proc.kill()
    await first.proc.wait()
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'bpsync.db'}")
    try:
        assert [e.object_id for e in await store.pending_push_events(limit=10)] == [sys_id]
        await apis.sn_clear_faults()
        second = await daemons("second", env)
        await second.wait_running()

        async def worked() -> bool:
            return await store.count_push_events() == 0

        await _wait(worked, 10.0, "the second daemon works the event")
    finally:
        await store.close()
