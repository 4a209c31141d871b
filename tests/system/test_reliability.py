"""Reliability over loopback (SPEC B13, B14, B19, B20; issue 6).

Both emulators, the real clients, a SQLite store and the engine in this process
(``tests/system/conftest.py``), on one :class:`~sync.clock.FakeClock`: faults come from
the emulators' ``/_emulator/faults``, and what crossed the wire (and when, on the shared
clock) from ``/_emulator/stats?log=1``. The executor's mechanism is unit-tested with fakes
in ``tests/engine/test_executor.py``; these tests prove it through real HTTP:

- (a) 30 % of ServiceNow writes answer 503 and some connections are reset, over 50
  incidents and 200 field changes: every change arrives, one ServiceNow incident each.
- (b) a 429 with ``Retry-After: 2``: nothing is sent to that record before 2 s.
- (c) a 400: one attempt only, the BigPanda comment with ServiceNow's message and the
  link tag ``error``; a later success sets the tag back to the URL.
- (d) attempts 6 / dead letter after 5 / notification after 6, exactly; the notify URL
  receives the POST.
- (e) ``bpsync dlq retry`` of a fixed failure succeeds and clears it; ``list``/``drop``.
- Guards (mass resolve, empty side) stop the cycle until ``force`` or the condition clears.
- Injection (B20): query metacharacters in BigPanda values reach ServiceNow as plain text
  and widen no query.
- Bad input (B19): malformed JSON, a non-JSON content type and an unknown sys_id name the
  problem; the incident concerned is retried or skipped, the others go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from click.testing import CliRunner, Result

from sync.cli.main import cli
from sync.clients.snquery import QueryError
from sync.clock import FakeClock
from sync.emulators.control import serve_app
from sync.store.base import OutboxItem, OutboxState

from .conftest import World
from .helpers import SYSTEM_MAPPING, Emu, link_value

LINK_TAG = "servicenow_link"
INCIDENT_PATH = "/api/now/table/incident"
OPEN_STATES = [OutboxState.PENDING, OutboxState.IN_FLIGHT, OutboxState.DEAD]


# --------------------------------------------------------------------------- helpers


async def start(world: World, **overrides: Any) -> None:
    await world.build(tag_mapping=SYSTEM_MAPPING, **overrides)


async def cycle(world: World) -> None:
    report = await world.cycle()
    assert report.ok, f"cycle failed: {report.error!r}"


async def linked(world: World, emu: Emu, host: str) -> tuple[str, dict[str, str]]:
    """A BigPanda incident synced to its ServiceNow incident, the world quiet after."""
    bp_id = await emu.new_incident(host, check="cpu")
    await world.settle()
    return bp_id, await emu.sn_one_for(bp_id)


def record_path(sys_id: str) -> str:
    return f"{INCIDENT_PATH}/{sys_id}"


def fake(world: World) -> FakeClock:
    assert isinstance(world.clock, FakeClock)
    return world.clock


async def outbox(world: World, states: list[OutboxState] | None = None) -> list[OutboxItem]:
    assert world.engine is not None
    return await world.engine.store.list_outbox(states or OPEN_STATES, limit=10_000)


async def comments(emu: Emu, bp_id: str) -> list[str]:
    """The texts of the incident's comment activities."""
    found = []
    for activity in await emu.activities(bp_id):
        blob = json.dumps(activity)
        if "comment" in blob:
            found.append(blob)
    return found


async def bpsync_cli(world: World, *args: str, input: str | None = None) -> Result:
    """``bpsync ARGS`` against the world's SQLite file (in a thread: the CLI runs its own
    event loop)."""
    env = {"BPSYNC_STATE_DIR": str(world.tmp)}
    runner = CliRunner()
    return await asyncio.to_thread(runner.invoke, cli, list(args), env=env, input=input)


@contextlib.asynccontextmanager
async def notify_receiver() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A tiny HTTP app that records the JSON bodies POSTed to it."""
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hook", hook)
    async with serve_app(app) as url:
        yield url + "/hook", received


# --------------------------------------------------------------------------- (a)


async def test_a_503s_and_resets_on_servicenow_writes_lose_nothing_and_duplicate_nothing(
    world: World, emu: Emu
) -> None:
    """50 incidents, 200 field changes (100 each way), while 30 % of ServiceNow writes
    answer 503 and a further share of connections is reset."""
    await start(world, **{"retry.interval": 2.0, "retry.in_cycle_attempts": 2})
    clock = fake(world)
    writes = ["POST", "PATCH", "PUT", "DELETE"]
    await world.fault("servicenow", rate=0.3, status=503, methods=writes)
    await world.fault("servicenow", rate=0.1, reset_connection=True, methods=writes)

    hosts = [f"rel-{i:02d}" for i in range(50)]
    for host in hosts:
        await emu.ingest(host=host, check="cpu")
    ids: dict[str, str] = {}
    for host in hosts:
        ids[host] = str((await emu.incident_for(host))["id"])
    bp_ids = list(ids.values())
    assert len(set(bp_ids)) == 50

    async def sn_of(bp_id: str) -> dict[str, str] | None:
        found = await emu.sn_for(bp_id)
        return found[0] if len(found) == 1 else None

    async def user_patch(sys_id: str, fields: dict[str, str]) -> None:
        """A person's edit in ServiceNow: the faults hit it too, so they try again."""
        for _ in range(50):
            with contextlib.suppress(AssertionError, aiohttp.ClientError):
                await emu.sn_patch(sys_id, fields)
                return
        raise AssertionError(f"could not PATCH {sys_id} through the faults")

    async def run_cycles(n: int) -> None:
        for _ in range(n):
            await cycle(world)
            clock.advance(2.1)

    # the creates go out under the faults too
    await run_cycles(3)
    sys_ids: dict[str, str] = {}
    for _ in range(30):
        for bp_id in bp_ids:
            if bp_id not in sys_ids and (sn := await sn_of(bp_id)) is not None:
                sys_ids[bp_id] = sn["sys_id"]
        if len(sys_ids) == 50:
            break
        await run_cycles(1)
    assert len(sys_ids) == 50, f"only {len(sys_ids)} of 50 incidents reached ServiceNow"

    impacts = ["high", "medium", "low"]
    impact_code = {"high": "1", "medium": "2", "low": "3"}
    changes = 0
    # round 0: BigPanda service_area -> category, ServiceNow subcategory -> sn_subcategory
    for i, bp_id in enumerate(bp_ids):
        await emu.set_tags(bp_id, service_area=f"area-{i}")
        await user_patch(sys_ids[bp_id], {"subcategory": f"sub0-{i}"})
        changes += 2
    await run_cycles(1)  # round 1 starts while round 0's writes are being retried
    # round 1: BigPanda impact_level -> impact, ServiceNow subcategory again
    for i, bp_id in enumerate(bp_ids):
        await emu.set_tags(bp_id, impact_level=impacts[i % 3])
        await user_patch(sys_ids[bp_id], {"subcategory": f"sub1-{i}"})
        changes += 2
    assert changes == 200

    async def missing() -> list[str]:
        lost = []
        for i, bp_id in enumerate(bp_ids):
            sn = await emu.sn_get(sys_ids[bp_id])
            tags = await emu.tags(bp_id)
            if sn["category"] != f"area-{i}":
                lost.append(f"{bp_id} category={sn['category']!r}")
            if sn["impact"] != impact_code[impacts[i % 3]]:
                lost.append(f"{bp_id} impact={sn['impact']!r}")
            if tags.get("sn_subcategory") != f"sub1-{i}":
                lost.append(f"{bp_id} sn_subcategory={tags.get('sn_subcategory')!r}")
        return lost

    lost: list[str] = []
    for _ in range(40):
        await run_cycles(1)
        if await outbox(world):
            continue
        lost = await missing()
        if not lost:
            break
    assert not await outbox(world), "writes still open after the faults"
    lost = await missing()
    stats = await world.stats("servicenow")
    print(
        f"\n(a) 50 incidents, {changes} changes, ServiceNow answered "
        f"{stats['statuses'].get('503', 0)} x 503 and {stats['statuses'].get('0', 0)} resets; "
        f"lost changes: {len(lost)}"
    )
    assert stats["statuses"].get("503", 0) > 20, "the 503 fault did not bite"
    assert stats["statuses"].get("0", 0) > 5, "no connection was reset"
    assert not lost, f"changes lost: {lost[:10]}"
    # exactly one ServiceNow incident per BigPanda incident
    everything = await emu.sn_query("correlation_idISNOTEMPTY")
    per_bp: dict[str, int] = {}
    for row in everything:
        per_bp[row["correlation_id"]] = per_bp.get(row["correlation_id"], 0) + 1
    assert per_bp == dict.fromkeys(bp_ids, 1)
    # the dead-letter queue is empty: every failure was transient and retried
    assert await outbox(world, [OutboxState.DEAD]) == []


# --------------------------------------------------------------------------- (b)


@pytest.mark.parametrize(
    "in_cycle_backoff_max",
    [
        pytest.param(0.2, id="deferred-to-a-later-cycle"),
        pytest.param(5.0, id="waited-inside-the-cycle"),
    ],
)
async def test_b_429_retry_after_2_nothing_sent_before_2s(
    world: World, emu: Emu, in_cycle_backoff_max: float
) -> None:
    await start(
        world,
        **{
            "retry.interval": 0.5,
            "retry.in_cycle_attempts": 3,
            "retry.in_cycle_backoff": 0.05,
            "retry.in_cycle_backoff_max": in_cycle_backoff_max,
        },
    )
    clock = fake(world)
    bp_id, sn = await linked(world, emu, "ra-01")
    path = record_path(sn["sys_id"])
    await world.fault(
        "servicenow", status=429, retry_after_s=2, count=1, methods=["PATCH"], path=path
    )
    await emu.set_tags(bp_id, service_area="network")
    for _ in range(20):  # (no GET of the record here: the log must be bpsync's alone)
        await cycle(world)
        if not await outbox(world):
            break
        clock.advance(0.25)
    log = await emu.request_log("servicenow", path=path)
    assert (await emu.sn_get(sn["sys_id"]))["category"] == "network"
    assert log[0]["status"] == 429, log
    t0 = log[0]["t"]
    later = log[1:]
    assert later, "the write was never sent again"
    early = [entry for entry in later if entry["t"] - t0 < 2.0]
    assert not early, f"sent before Retry-After elapsed: {early} (429 at t={t0})"
    assert later[0]["status"] == 200
    assert later[0]["t"] - t0 == pytest.approx(2.0, abs=0.3)


# --------------------------------------------------------------------------- (c)


async def test_c_400_one_attempt_comment_and_error_tag_then_back_to_the_url(
    world: World, emu: Emu
) -> None:
    await start(world, **{"retry.interval": 1.0})
    clock = fake(world)
    bp_id, sn = await linked(world, emu, "bad-01")
    path = record_path(sn["sys_id"])
    url_value = link_value(world.sn_url, sn["number"], sn["sys_id"])
    assert (await emu.tags(bp_id))[LINK_TAG] == url_value

    await world.fault("servicenow", status=400, count=1, methods=["PATCH"], path=path)
    await emu.set_tags(bp_id, service_area="refused-value")
    await cycle(world)

    patches = await emu.request_log("servicenow", path=path, method="PATCH")
    assert [p["status"] for p in patches] == [400]
    assert (await emu.tags(bp_id))[LINK_TAG] == "error"
    texts = await comments(emu, bp_id)
    assert any("Injected fault" in t for t in texts), texts  # ServiceNow's own message
    dead = await outbox(world, [OutboxState.DEAD])
    assert len(dead) == 1
    assert dead[0].kind == "sn.update"
    assert dead[0].attempts == 1
    assert (dead[0].last_error or "").startswith("permanent: ")
    assert "Injected fault" in (dead[0].last_error or "")

    # no retry, however long we wait
    for _ in range(5):
        clock.advance(30)
        await cycle(world)
    patches = await emu.request_log("servicenow", path=path, method="PATCH")
    assert [p["status"] for p in patches] == [400]

    # a later successful write sets the link tag back to the number and URL
    await emu.set_tags(bp_id, service_area="accepted-value")
    await world.settle()
    assert (await emu.sn_get(sn["sys_id"]))["category"] == "accepted-value"
    assert (await emu.tags(bp_id))[LINK_TAG] == url_value


# --------------------------------------------------------------------------- (d)


async def test_d_six_attempts_dead_after_five_notify_after_six_exactly(
    world: World, emu: Emu, caplog: pytest.LogCaptureFixture
) -> None:
    async with notify_receiver() as (hook_url, received):
        await start(
            world,
            **{
                "retry.attempts": 6,
                "retry.dlq_after": 5,
                "retry.notify_after": 6,
                "retry.interval": 2.0,
                "retry.in_cycle_attempts": 1,  # one HTTP request per attempt
                "retry.notify_url": hook_url,
            },
        )
        clock = fake(world)
        bp_id, sn = await linked(world, emu, "down-01")
        path = record_path(sn["sys_id"])
        await world.fault("servicenow", status=503, methods=["PATCH"], path=path)
        await emu.set_tags(bp_id, service_area="never-arrives")

        caplog.set_level(logging.INFO, logger="sync")
        seen: list[tuple[int, str, int]] = []
        for attempt in range(1, 7):
            if attempt > 1:
                clock.advance(2.0)
            await cycle(world)
            items = [i for i in await outbox(world) if i.kind == "sn.update"]
            assert len(items) == 1
            item = items[0]
            seen.append((item.attempts, item.state.value, len(received)))
            assert item.attempts == attempt
            expected_state = OutboxState.PENDING if attempt < 5 else OutboxState.DEAD
            assert item.state == expected_state, seen
            assert len(received) == (1 if attempt == 6 else 0), seen
            # B14 from the first failed attempt on: the user hears of it while it happens
            assert (await emu.tags(bp_id))[LINK_TAG] == "error"

        # after the last attempt: nothing more is sent
        for _ in range(6):
            clock.advance(2.0)
            await cycle(world)
        patches = await emu.request_log("servicenow", path=path, method="PATCH")
        assert [p["status"] for p in patches] == [503] * 6
        gaps = [b["t"] - a["t"] for a, b in itertools.pairwise(patches)]
        assert all(gap >= 2.0 - 1e-6 for gap in gaps), gaps

        # the notification: one POST with both ids and the reason
        assert len(received) == 1
        body = received[0]
        assert body["bp_incident_id"] == bp_id
        assert body["sn_sys_id"] == sn["sys_id"]
        assert body["attempts"] == 6
        assert body["state"] == "dead"
        assert "503" in body["reason"]
        # ... an ERROR log line with both ids and the reason, and the counter
        errors = [
            r for r in caplog.records if r.levelno == logging.ERROR and getattr(r, "notify", False)
        ]
        assert len(errors) == 1
        assert getattr(errors[0], "bp_incident_id", None) == bp_id
        assert getattr(errors[0], "sn_sys_id", None) == sn["sys_id"]
        assert "503" in errors[0].getMessage()
        assert world.engine is not None
        assert world.engine.executor.notifications == 1
        # ... and B14 once per outage, not once per attempt
        assert (await emu.tags(bp_id))[LINK_TAG] == "error"
        reports = [t for t in await comments(emu, bp_id) if "Injected fault" in t]
        assert len(reports) == 1, reports
        assert "bpsync tries again" in reports[0]


# --------------------------------------------------------------------------- (e)


async def test_e_dlq_retry_of_a_fixed_failure_succeeds_and_clears_it(
    world: World, emu: Emu
) -> None:
    await start(world)
    clock = fake(world)
    bp_id, sn = await linked(world, emu, "fix-01")
    other_id, other_sn = await linked(world, emu, "fix-02")
    for sys_id in (sn["sys_id"], other_sn["sys_id"]):
        await world.fault(
            "servicenow", status=400, count=1, methods=["PATCH"], path=record_path(sys_id)
        )
    await emu.set_tags(bp_id, service_area="after-the-fix")
    await emu.set_tags(other_id, service_area="to-be-dropped")
    await cycle(world)
    dead = {i.sn_sys_id: i for i in await outbox(world, [OutboxState.DEAD])}
    assert set(dead) == {sn["sys_id"], other_sn["sys_id"]}
    item, other = dead[sn["sys_id"]], dead[other_sn["sys_id"]]

    listed = await bpsync_cli(world, "dlq", "list")
    assert listed.exit_code == 0, listed.output
    assert "dead letters (2 of 2)" in listed.output
    for dead_item in (item, other):
        row = next(line for line in listed.output.splitlines() if f" {dead_item.id} " in line)
        assert "sn.update" in row
        assert f"{dead_item.bp_incident_id} / {dead_item.sn_sys_id}" in row  # the incident
        assert " 1 of 6 " in row  # attempts
        assert "a person" in row  # refused: bpsync does not retry it
        assert "permanent: servicenow: HTTP 400: Injected fault" in row  # without the URL
    # the reason carries ServiceNow's message
    assert listed.output.count("HTTP 400: Injected") == 2

    # drop: asks first; "n" keeps it, --yes drops it
    kept = await bpsync_cli(world, "dlq", "drop", str(other.id), input="n\n")
    assert kept.exit_code != 0
    assert len(await outbox(world, [OutboxState.DEAD])) == 2
    dropped = await bpsync_cli(world, "dlq", "drop", str(other.id), "--yes")
    assert dropped.exit_code == 0, dropped.output
    assert f"dropped dead write {other.id}" in dropped.output

    # the failure is fixed (the fault was a one-off): retry it
    retried = await bpsync_cli(world, "dlq", "retry", str(item.id))
    assert retried.exit_code == 0, retried.output
    assert "1 write back in the outbox" in retried.output
    # the CLI stamps the item with the real time; bring the fake clock past it
    clock.set(max(clock.now(), datetime.now(UTC)) + timedelta(seconds=1))
    await cycle(world)
    assert (await emu.sn_get(sn["sys_id"]))["category"] == "after-the-fix"
    assert await outbox(world) == []
    assert (await emu.tags(bp_id))[LINK_TAG] == link_value(world.sn_url, sn["number"], sn["sys_id"])
    listed = await bpsync_cli(world, "dlq", "list")
    assert "dead letters (0 of 0)" in listed.output
    # an unknown id is one clear line
    missing = await bpsync_cli(world, "dlq", "retry", str(item.id))
    assert missing.exit_code != 0
    assert f"no dead write with id {item.id}" in str(missing.exception or missing.output)
    assert other.id not in {i.id for i in await outbox(world)}


# --------------------------------------------------------------------------- guards


async def test_mass_resolve_guard_stops_the_cycle_until_forced(
    world: World, emu: Emu, caplog: pytest.LogCaptureFixture
) -> None:
    await start(world, **{"guard.min_links": 2, "guard.max_resolve_fraction": 0.5})
    clock = fake(world)
    pairs = [await linked(world, emu, f"mass-{i}") for i in range(4)]
    for bp_id, _ in pairs[:3]:  # 3 of 4 live links: more than half
        await emu.resolve(bp_id)
    caplog.set_level(logging.INFO, logger="sync")
    before = await world.writes()
    for _ in range(2):
        report = await world.cycle()
        clock.advance(1)
        assert report.guard == "mass_resolve", report
        assert "mass_resolve" in str(report.error)
    assert await world.writes() == before, "a guarded cycle wrote"
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert sum("mass_resolve" in line for line in lines) == 1, lines  # logged once
    for _, sn in pairs:
        assert (await emu.sn_get(sn["sys_id"]))["state"] != "6"

    assert world.engine is not None
    world.engine.coordinator.force = True
    await cycle(world)
    for _, sn in pairs[:3]:
        assert (await emu.sn_get(sn["sys_id"]))["state"] == "6"
    assert (await emu.sn_get(pairs[3][1]["sys_id"]))["state"] != "6"


async def test_mass_resolve_guard_clears_when_the_condition_clears(world: World, emu: Emu) -> None:
    """The guard holds the cycle (cursors included) until the plans are under the limit:
    two of the three resolved incidents come back (a new critical alert reopens them),
    and the one resolve left goes through without --force."""
    await start(world, **{"guard.min_links": 2, "guard.max_resolve_fraction": 0.5})
    clock = fake(world)
    pairs = [await linked(world, emu, f"clear-{i}") for i in range(4)]
    for bp_id, _ in pairs[:3]:
        await emu.resolve(bp_id)
    clock.advance(1)
    assert (await world.cycle()).guard == "mass_resolve"
    for i in (1, 2):
        await emu.ingest(host=f"clear-{i}", check="cpu")
    assert [(await emu.incident(bp_id))["active"] for bp_id, _ in pairs] == [
        False,
        True,
        True,
        True,
    ]
    clock.advance(1)
    await cycle(world)
    await world.settle()
    states = [(await emu.sn_get(sn["sys_id"]))["state"] for _, sn in pairs]
    assert states[0] == "6"
    assert "6" not in states[1:]
    assert [len(await emu.sn_for(bp_id)) for bp_id, _ in pairs] == [1, 1, 1, 1]


async def test_empty_side_guard_stops_the_cycle_until_forced(
    world: World, emu: Emu, caplog: pytest.LogCaptureFixture
) -> None:
    """ServiceNow suddenly shows nothing (its data wiped: the wrong instance, a restore)
    while links say otherwise: a full listing that comes back empty stops the cycle."""
    await start(world, **{"guard.min_links": 2})
    clock = fake(world)
    pairs = [await linked(world, emu, f"empty-{i}") for i in range(3)]
    assert world.engine is not None
    store = world.engine.store
    await world.control("servicenow", "POST", "reset")
    # a full listing: the cursor as a new deployment on an old store would have it
    from sync.constants import Side
    from sync.store.base import Cursor

    await store.advance_cursor(Cursor(side=Side.SERVICENOW, watermark=None), clock.now())
    caplog.set_level(logging.INFO, logger="sync")
    before = await world.writes()
    report = await world.cycle()
    assert report.guard == "empty_side", report
    assert "servicenow returned no incidents" in str(report.error)
    assert any("empty_side" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    await emu.set_tags(pairs[0][0], service_area="held")
    before = await world.writes()
    clock.advance(1)
    report = await world.cycle()
    assert report.guard == "empty_side"
    assert await world.writes() == before
    world.engine.coordinator.force = True
    clock.advance(1)
    report = await world.cycle()
    assert report.ok, report


# --------------------------------------------------------------------------- B20


async def test_query_metacharacters_reach_servicenow_as_plain_text_and_widen_no_query(
    world: World, emu: Emu
) -> None:
    await start(world, **{"incidents.cmdb_ci_tag": "ci"})
    # the emulator does widen an unescaped query (so the checks below mean something)
    widened = await emu.sn_query("name=no-such-ci^NQname=db01", table="cmdb_ci")
    assert len(widened) == 1
    values = [
        "a^NQactive=true^ORDERBYnumber",
        "x^ORcategory!=x",
        "one,two,three",
        "javascript:gs.getUserID()",
        "  JavaScript:alert(1)^NQname=db01",
    ]
    created: list[tuple[str, str]] = []
    for i, value in enumerate(values):
        # the value as a mapped tag (written) and as the CI tag of the primary alert
        # (looked up in cmdb_ci.name): an unescaped look-up would find db01
        bp_id = await emu.new_incident(f"inj-{i}", check="cpu", ci=f"no-such-ci^NQname=db01{i}")
        await emu.set_tags(bp_id, service_area=value)
        created.append((bp_id, value))
    await world.settle()
    for bp_id, value in created:
        sn = await emu.sn_one_for(bp_id)
        assert sn["category"] == value
        assert sn["cmdb_ci"] == ""
    # and the other way: a ServiceNow value with metacharacters reaches the tag as is
    bp_id, value = created[0]
    sn = await emu.sn_one_for(bp_id)
    await emu.sn_patch(sn["sys_id"], {"subcategory": "b^NQc,d javascript:x"})
    await world.settle()
    assert (await emu.tags(bp_id))["sn_subcategory"] == "b^NQc,d javascript:x"

    # the client's queries: escaped values match nothing extra
    assert world.engine is not None
    client = world.engine.servicenow
    users = await emu.sn_query("emailISNOTEMPTY", table="sys_user")
    assert len(users) >= 2
    for hostile in ("nobody@example.com^ORemailISNOTEMPTY", "x^NQemailISNOTEMPTY"):
        assert await client.query("sys_user", {"email": hostile}, fields=["sys_id"], limit=10) == []
    with pytest.raises(QueryError, match="javascript"):
        await client.query(
            "sys_user", {"email": "javascript:gs.getUserID()"}, fields=["sys_id"], limit=10
        )
    for hostile in (f"{bp_id}^ORactive=true", f"{bp_id}^NQactive=true", f"{bp_id},x"):
        with pytest.raises(QueryError, match="correlation_id"):
            await client.find_by_correlation_id(hostile)


# --------------------------------------------------------------------------- B19


Corrupter = Callable[[web.Request, bytes], Awaitable[web.StreamResponse | None]]


@contextlib.asynccontextmanager
async def proxy(target: str, corrupt: Corrupter) -> AsyncIterator[str]:
    """A tiny reverse proxy in front of an emulator: ``corrupt(request, body)`` may
    answer instead of the emulator (None: pass the request through)."""
    session = aiohttp.ClientSession(auto_decompress=False)

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        forged = await corrupt(request, body)
        if forged is not None:
            return forged
        headers = {k: v for k, v in request.headers.items() if k.lower() not in {"host"}}
        async with session.request(
            request.method,
            target + str(request.rel_url),
            data=body or None,
            headers=headers,
            allow_redirects=False,
        ) as upstream:
            payload = await upstream.read()
            keep = {
                k: v
                for k, v in upstream.headers.items()
                if k.lower()
                not in {"content-length", "transfer-encoding", "connection", "content-encoding"}
            }
            return web.Response(status=upstream.status, body=payload, headers=keep)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    try:
        async with serve_app(app) as url:
            yield url
    finally:
        await session.close()


async def test_b19_bad_answers_from_servicenow_name_the_problem_and_the_others_go_on(
    world: World, emu: Emu, caplog: pytest.LogCaptureFixture
) -> None:
    """Malformed JSON, a non-JSON content type, an unknown sys_id: each names the problem,
    its incident is retried or skipped, the other incidents are synced."""
    targets: dict[str, str] = {}  # sys_id -> what to answer on its PATCH
    served: list[str] = []

    async def corrupt(request: web.Request, body: bytes) -> web.StreamResponse | None:
        for sys_id, how in list(targets.items()):
            if request.method == "PATCH" and request.path.endswith(sys_id):
                served.append(how)
                del targets[sys_id]  # once
                if how == "malformed":
                    return web.Response(
                        status=200, body=b'{"result": {"sys_id": "', content_type="application/json"
                    )
                return web.Response(
                    status=200, text="<html>Instance hibernating</html>", content_type="text/html"
                )
        return None

    async with proxy(world.sn_url, corrupt) as sn_proxy:
        # one send per attempt: a bad answer is a failed attempt, logged and retried
        await start(
            world,
            **{
                "servicenow.url": sn_proxy,
                "retry.interval": 1.0,
                "retry.in_cycle_attempts": 1,
            },
        )
        clock = fake(world)
        pairs = [await linked(world, emu, f"b19-{i}") for i in range(4)]
        sn_a, sn_b, sn_c, sn_d = (sn for _, sn in pairs)
        bp_c = pairs[2][0]
        targets[sn_a["sys_id"]] = "malformed"
        targets[sn_b["sys_id"]] = "html"
        # an unknown sys_id: the record vanished from ServiceNow behind bpsync's back
        async with world.http.delete(
            f"{world.sn_url}{record_path(sn_c['sys_id'])}",
            headers=emu._sn_headers,
        ) as resp:
            assert resp.status == 204
        caplog.set_level(logging.INFO, logger="sync")
        for bp_id, _ in pairs:
            await emu.set_tags(bp_id, service_area="b19-value")
        report = await world.cycle()
        assert report.ok, report
        assert sorted(served) == ["html", "malformed"]
        # the good incident went on in the same cycle
        assert (await emu.sn_get(sn_d["sys_id"]))["category"] == "b19-value"
        text = "\n".join(r.getMessage() for r in caplog.records)
        assert "malformed JSON" in text
        assert "expected JSON, got text/html" in text
        assert "No Record found" in text
        # the two transient ones are retried and arrive; the unknown sys_id is a dead
        # letter naming the record, and told on BigPanda
        for _ in range(5):
            clock.advance(1.5)
            await cycle(world)
        assert (await emu.sn_get(sn_a["sys_id"]))["category"] == "b19-value"
        assert (await emu.sn_get(sn_b["sys_id"]))["category"] == "b19-value"
        dead = await outbox(world, [OutboxState.DEAD])
        assert [d.sn_sys_id for d in dead] == [sn_c["sys_id"]]
        assert sn_c["sys_id"] in (dead[0].last_error or "")
        assert (await emu.tags(bp_c))[LINK_TAG] == "error"
        assert await outbox(world, [OutboxState.PENDING, OutboxState.IN_FLIGHT]) == []


async def test_b19_malformed_json_from_a_poll_is_read_again_and_the_cycle_goes_on(
    world: World, emu: Emu, caplog: pytest.LogCaptureFixture
) -> None:
    """A malformed or non-JSON answer to a poll (either API) is a GET that changed
    nothing: it is sent again after a pause, the cycle goes on and nothing is lost."""
    broken: list[tuple[str, str]] = []  # (side, how) to serve once on the next list GET

    def corrupter(side: str) -> Corrupter:
        async def corrupt(request: web.Request, body: bytes) -> web.StreamResponse | None:
            is_list = (
                request.path == INCIDENT_PATH
                if side == "servicenow"
                else request.path.endswith("/incidents") and "environments" in request.path
            )
            if request.method != "GET" or not is_list:
                return None
            for entry in broken:
                if entry[0] == side:
                    broken.remove(entry)
                    if entry[1] == "malformed":
                        return web.Response(
                            status=200, body=b'{"items": [', content_type="application/json"
                        )
                    return web.Response(status=200, text="maintenance", content_type="text/plain")
            return None

        return corrupt

    async with (
        proxy(world.sn_url, corrupter("servicenow")) as sn_proxy,
        proxy(world.bp_url, corrupter("bigpanda")) as bp_proxy,
    ):
        await start(world, **{"servicenow.url": sn_proxy, "bigpanda.url": bp_proxy})
        clock = fake(world)
        bp_id, sn = await linked(world, emu, "poll-01")
        caplog.set_level(logging.INFO, logger="sync")
        for side, how in [
            ("servicenow", "malformed"),
            ("servicenow", "text"),
            ("bigpanda", "malformed"),
            ("bigpanda", "text"),
        ]:
            caplog.clear()
            await emu.set_tags(bp_id, service_area=f"{side}-{how}")
            await emu.sn_patch(sn["sys_id"], {"subcategory": f"{side}-{how}"})
            broken.append((side, how))
            clock.advance(1)
            with caplog.at_level(logging.DEBUG, logger="sync.clients"):
                report = await world.cycle()
            assert report.ok, f"{side} {how}: {report.error}"
            assert not broken, "the broken answer was not served"
            expected = "malformed JSON" if how == "malformed" else "expected JSON"
            assert any(expected in r.getMessage() for r in caplog.records), caplog.text
            assert (await emu.sn_get(sn["sys_id"]))["category"] == f"{side}-{how}"
            assert (await emu.tags(bp_id))["sn_subcategory"] == f"{side}-{how}"


# --------------------------------------------------------------------------- B15


async def test_a_change_made_while_the_create_waits_for_its_retry_is_not_lost(
    world: World, emu: Emu
) -> None:
    """The create fails (transient) and waits for its retry; meanwhile the BigPanda
    incident changes. When the create finally goes through, the change must follow."""
    # a field ServiceNow gives no default at create (a default counts as a ServiceNow
    # change, which "newest" may prefer to the BigPanda edit: reported separately)
    mapping = [{"bigpanda_tag": "bp_note", "servicenow_field": "subcategory", "direction": "both"}]
    await emu.define_tags("bp_note")
    await world.build(tag_mapping=mapping, **{"retry.interval": 2.0, "retry.in_cycle_attempts": 1})
    clock = fake(world)
    await world.fault("servicenow", status=503, methods=["POST"], path=INCIDENT_PATH, count=1)
    bp_id = await emu.new_incident("late-01", check="cpu")
    await cycle(world)
    assert await emu.sn_for(bp_id) == []
    assert [i.kind for i in await outbox(world)] == ["sn.create"]

    await emu.set_tags(bp_id, bp_note="changed-meanwhile")
    clock.advance(0.5)
    await cycle(world)  # the change is polled while the link is still pending
    clock.advance(2.0)
    await world.settle()
    sn = await emu.sn_one_for(bp_id)
    assert sn["subcategory"] == "changed-meanwhile"
