"""Coordinator: cursors with overlap (B16), pairing, guards, outage logging."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sync.actions import (
    Action,
    CreateServiceNowIncident,
    PlanInput,
    ResolveServiceNow,
)
from sync.clients.base import BPEnvironment
from sync.clock import FakeClock
from sync.constants import Side
from sync.coordinator import LINK_COUNT_TTL_S, Coordinator
from sync.errors import TransientError
from sync.executor import Executor
from sync.guards import EMPTY_SIDE, MASS_RESOLVE
from sync.metrics import Metrics
from sync.model import LinkState
from sync.settings import Settings
from sync.store.memory import MemoryStore
from tests.engine.conftest import make_settings
from tests.fakes import FakeBigPanda, FakeServiceNow


class RecordingPlanner:
    """A stand-in planner: records its inputs, answers with ``decide``."""

    def __init__(self, decide: Callable[[PlanInput], list[Action]] | None = None) -> None:
        self.inputs: list[PlanInput] = []
        self.decide = decide

    def __call__(self, inp: PlanInput, settings: Settings, now: datetime) -> list[Action]:
        self.inputs.append(inp)
        return self.decide(inp) if self.decide else []

    def take(self) -> list[PlanInput]:
        taken, self.inputs = self.inputs, []
        return taken


def _create_new(inp: PlanInput) -> list[Action]:
    if inp.bp is not None and inp.link is None and inp.bp.active:
        assert inp.environment_id is not None
        return [CreateServiceNowIncident(inp.bp.id, inp.environment_id, {"short_description": "x"})]
    return []


def _coordinator(
    store: MemoryStore,
    sn: FakeServiceNow,
    bp: FakeBigPanda,
    clock: FakeClock,
    planner: RecordingPlanner,
    settings: Settings | None = None,
    *,
    force: bool = False,
) -> Coordinator:
    settings = settings or make_settings()
    executor = Executor(store, sn, bp, settings, clock)
    return Coordinator(store, sn, bp, executor, settings, clock=clock, planner=planner, force=force)


def _bp_ids(inputs: list[PlanInput]) -> list[str]:
    return sorted(i.bp.id for i in inputs if i.bp is not None)


async def test_changes_sharing_a_second_with_the_cursor_are_all_synced_once(
    store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock
) -> None:
    planner = RecordingPlanner()
    coordinator = _coordinator(store, sn, bp, clock, planner)
    first = [bp.add_incident() for _ in range(3)]
    assert (await coordinator.run_cycle()).ok
    assert _bp_ids(planner.take()) == sorted(i.id for i in first)
    # same second as the cursor: a new incident and a tag edit of an old one
    late = bp.add_incident()
    bp.change_tag(first[0].id, "owner", "ops")
    assert (await coordinator.run_cycle()).ok
    inputs = planner.take()
    assert _bp_ids(inputs) == sorted([late.id, first[0].id])
    assert next(i for i in inputs if i.bp and i.bp.id == first[0].id).bp.tags == {"owner": "ops"}  # type: ignore[union-attr]
    # nothing new: nothing planned, although the overlap window returns them all again
    clock.advance(5)
    assert (await coordinator.run_cycle()).ok
    assert planner.take() == []
    cursor = await store.get_cursor(Side.BIGPANDA)
    assert cursor.watermark is not None and len(cursor.seen) == 5  # both versions of [0]


async def test_servicenow_changes_in_one_second_are_all_seen(
    store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock
) -> None:
    planner = RecordingPlanner(_create_new)
    coordinator = _coordinator(store, sn, bp, clock, planner)
    incidents = [bp.add_incident() for _ in range(2)]
    await coordinator.run_cycle()
    planner.take()
    clock.advance(3)
    await coordinator.run_cycle()  # sees bpsync's own creates and link tags once
    planner.take()
    links = [await store.live_link_for_bp(i.id) for i in incidents]
    sys_ids = [link.sn_sys_id for link in links if link is not None and link.sn_sys_id]
    assert len(sys_ids) == 2
    clock.advance(10)
    sn.change(sys_ids[0], impact="1")
    await coordinator.run_cycle()
    assert [i.sn.fields["impact"] for i in planner.take() if i.sn] == ["1"]
    sn.change(sys_ids[1], impact="2")  # the same second as the previous change
    sn.change(sys_ids[0], urgency="1")
    await coordinator.run_cycle()
    seen = {i.sn.sys_id: i for i in planner.take() if i.sn}
    assert set(seen) == set(sys_ids)
    for inp in seen.values():
        assert inp.link is not None and inp.link.sn_sys_id == inp.sn.sys_id  # type: ignore[union-attr]
        assert inp.environment_id == "env1"


async def test_an_idle_poll_stops_rereading_the_last_burst(
    store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock
) -> None:
    """After a burst the watermark sits at the burst's last change; once idle for a whole
    overlap it moves up to now - overlap, so idle polls no longer return the burst (and a
    later change is still found, the overlap reaching back before the new watermark)."""
    planner = RecordingPlanner(_create_new)
    settings = make_settings(cursor_overlap=30.0)
    coordinator = _coordinator(store, sn, bp, clock, planner, settings)
    for _ in range(3):
        bp.add_incident()
    await coordinator.run_cycle()  # creates: a burst on ServiceNow
    clock.advance(1)
    await coordinator.run_cycle()
    burst_mark = (await store.get_cursor(Side.SERVICENOW)).watermark
    assert burst_mark is not None
    polled: list[int] = []
    real = sn.list_changed

    async def counting(since: datetime | None, **kw: Any) -> list[dict[str, str]]:
        rows = await real(since, **kw)
        polled.append(len(rows))
        return rows

    sn.list_changed = counting  # type: ignore[method-assign]
    clock.advance(10)
    await coordinator.run_cycle()
    assert polled[-1] == 3  # inside the overlap: the burst is read again (and dropped)
    clock.advance(60)  # idle for more than an overlap
    await coordinator.run_cycle()
    mark = (await store.get_cursor(Side.SERVICENOW)).watermark
    assert mark is not None and mark == clock.now() - timedelta(seconds=30)
    clock.advance(15)
    await coordinator.run_cycle()
    assert polled[-1] == 0  # the idle poll is one empty page
    link = next(iter(await store.list_links(limit=10)))
    assert link.sn_sys_id is not None
    sn.change(link.sn_sys_id, impact="1")
    planner.take()
    await coordinator.run_cycle()
    assert [i.sn.fields["impact"] for i in planner.take() if i.sn] == ["1"]


async def test_a_failing_pair_holds_the_cursor_and_the_others_go_on(
    store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock
) -> None:
    bad = bp.add_incident()
    clock.advance(1)
    good = bp.add_incident()
    fail = {"on": True}

    def decide(inp: PlanInput) -> list[Action]:
        if inp.bp is not None and inp.bp.id == bad.id and fail["on"]:
            raise ValueError("cannot read this incident")
        return _create_new(inp)

    planner = RecordingPlanner(decide)
    coordinator = _coordinator(store, sn, bp, clock, planner)
    await coordinator.run_cycle()
    assert await store.live_link_for_bp(good.id) is not None
    planner.take()
    clock.advance(60)  # past the overlap: only the held watermark brings it back
    fail["on"] = False
    await coordinator.run_cycle()
    assert bad.id in _bp_ids(planner.take())
    assert await store.live_link_for_bp(bad.id) is not None
    assert len(sn.incidents) == 2


async def test_unlinked_servicenow_change_is_ignored_unless_it_names_a_bigpanda_incident(
    store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock
) -> None:
    settings = make_settings(**{"bigpanda.environments": "env1"})
    planner = RecordingPlanner()
    coordinator = _coordinator(store, sn, bp, clock, planner, settings)
    incident = bp.add_incident()
    await coordinator.run_cycle()
    planner.take()
    clock.advance(2)
    sn.add_incident(correlation_id="not-a-bigpanda-id")
    record = sn.add_incident(correlation_id=incident.id)
    await coordinator.run_cycle()
    [inp] = planner.take()
    assert inp.bp is not None and inp.bp.id == incident.id and inp.bp.alerts
    assert inp.sn is not None and inp.sn.sys_id == record["sys_id"] and inp.link is None


async def test_empty_side_guard_stops_writes_until_forced(
    store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock
) -> None:
    settings = make_settings(**{"guard.min_links": 2})
    planner = RecordingPlanner(_create_new)
    coordinator = _coordinator(store, sn, bp, clock, planner, settings)
    for _ in range(3):
        bp.add_incident()
    await coordinator.run_cycle()
    assert len(sn.incidents) == 3
    bp.environments = []  # the key lost its access, or the filter broke
    clock.advance(20)
    report = await coordinator.run_cycle()
    assert report.guard == EMPTY_SIDE and not report.ok
    assert len(sn.incidents) == 3
    bp.environments = [BPEnvironment("env1", "ENV1")]
    assert (await coordinator.run_cycle()).ok  # the condition cleared
    bp.environments = []
    coordinator.force = True
    assert (await coordinator.run_cycle()).ok  # confirmed by the operator


async def test_mass_resolve_guard_stops_the_cycle_until_forced(
    store: MemoryStore,
    sn: FakeServiceNow,
    bp: FakeBigPanda,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(**{"guard.min_links": 4, "guard.max_resolve_fraction": 0.5})

    def decide(inp: PlanInput) -> list[Action]:
        if inp.bp is not None and not inp.bp.active and inp.link and inp.link.sn_sys_id:
            return [
                ResolveServiceNow(
                    inp.link.id, inp.bp.id, inp.link.sn_sys_id, "Solution provided", "done"
                )
            ]
        return _create_new(inp)

    planner = RecordingPlanner(decide)
    coordinator = _coordinator(store, sn, bp, clock, planner, settings)
    incidents = [bp.add_incident() for _ in range(4)]
    await coordinator.run_cycle()
    clock.advance(20)
    for incident in incidents[:3]:
        bp.resolve(incident.id)
    for _ in range(2):
        report = await coordinator.run_cycle()
        assert report.guard == MASS_RESOLVE
    assert all(r["state"] == "1" for r in sn.incidents.values())
    guard_lines = [r for r in caplog.records if "guard mass_resolve" in r.getMessage()]
    assert len(guard_lines) == 1  # logged once, not every cycle
    coordinator.force = True
    report = await coordinator.run_cycle()
    assert report.ok
    assert sorted(r["state"] for r in sn.incidents.values()) == ["1", "6", "6", "6"]
    overridden = [r for r in caplog.records if "overridden by --force" in r.getMessage()]
    assert len(overridden) == 1


async def test_outage_logged_once_and_recovery_once(
    store: MemoryStore,
    sn: FakeServiceNow,
    bp: FakeBigPanda,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    coordinator = _coordinator(store, sn, bp, clock, RecordingPlanner())
    caplog.set_level(logging.INFO)
    sn.fail_next("list_changed", *[TransientError("servicenow", "connection reset")] * 3)
    for _ in range(3):
        assert not (await coordinator.run_cycle()).ok
    assert (await coordinator.run_cycle()).ok
    down = [r for r in caplog.records if "servicenow is unavailable" in r.getMessage()]
    up = [r for r in caplog.records if "servicenow is available again" in r.getMessage()]
    stopped = [r for r in caplog.records if "cycle stopped" in r.getMessage()]
    assert (len(down), len(up), len(stopped)) == (1, 1, 0)


def live_links(metrics: Metrics) -> float:
    """The ``bpsync_live_links`` gauge as ``/metrics`` shows it."""
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            if sample.name == "bpsync_live_links":
                return sample.value
    raise AssertionError("no bpsync_live_links")


async def test_idle_cycles_reuse_the_link_count_and_a_cycle_that_acts_counts_again(
    store: MemoryStore,
    sn: FakeServiceNow,
    bp: FakeBigPanda,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = make_settings()
    metrics = Metrics()
    executor = Executor(store, sn, bp, settings, clock)
    coordinator = Coordinator(
        store,
        sn,
        bp,
        executor,
        settings,
        clock=clock,
        planner=RecordingPlanner(_create_new),
        metrics=metrics,
    )
    counts = 0
    count_links_by_state = store.count_links_by_state

    async def counted(*args: Any) -> Any:
        nonlocal counts
        counts += 1
        return await count_links_by_state(*args)

    monkeypatch.setattr(store, "count_links_by_state", counted)
    bp.add_incident()
    assert (await coordinator.run_cycle()).actions == 1
    assert live_links(metrics) == 1  # the cycle made a link: counted again at its end
    assert counts == 2  # at its start and at its end
    for _ in range(3):  # idle cycles within LINK_COUNT_TTL_S: no count
        clock.advance(10)
        assert (await coordinator.run_cycle()).actions == 0
    assert counts == 2
    # another process ends the link: shown once the count is older than the TTL
    (link,) = await store.list_links([LinkState.LINKED], limit=10)
    await store.set_link_state(link.id, LinkState.SUPERSEDED, clock.now())
    clock.advance(10)
    await coordinator.run_cycle()
    assert (counts, live_links(metrics)) == (2, 1)
    clock.advance(LINK_COUNT_TTL_S)
    await coordinator.run_cycle()
    assert (counts, live_links(metrics)) == (3, 0)
