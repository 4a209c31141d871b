"""A storm through the engine (fakes, FakeClock): batched reads, budgets, kept progress.

The loopback storm with real limiters and SIGKILLs is ``tests/system/test_storm.py``;
here the same machinery is checked call by call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import Any

from sync.clock import FakeClock
from sync.constants import Side
from sync.coordinator import Coordinator
from sync.errors import FatalError
from sync.executor import Executor
from sync.newcomers import unmatched
from sync.settings import Settings
from sync.store.memory import MemoryStore
from tests.engine.conftest import make_settings
from tests.fakes import FakeBigPanda, FakeServiceNow


def _engine(
    store: MemoryStore,
    sn: FakeServiceNow,
    bp: FakeBigPanda,
    clock: FakeClock,
    settings: Settings,
    metrics: Any = None,
) -> Coordinator:
    executor = Executor(store, sn, bp, settings, clock)
    return Coordinator(store, sn, bp, executor, settings, clock=clock, metrics=metrics)


class Backlog:
    """CoordinatorMetrics that keep the backlog gauge."""

    def __init__(self) -> None:
        self.left: dict[str, int] = {}

    def cycle_done(self, outcome: str, duration_s: float) -> None:
        pass

    def state(self, **_: Any) -> None:
        pass

    def backlog(self, side: str, count: int) -> None:
        self.left[side] = count

    def skipped(self, side: str, reason: str) -> None:
        pass


def _per_incident(sn: FakeServiceNow) -> Counter[str]:
    return Counter(r["correlation_id"] for r in sn.incidents.values() if r.get("correlation_id"))


async def test_new_incidents_cost_one_search_page_and_one_duplicate_check_per_ten(
    store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock
) -> None:
    ids = [bp.add_incident(tags={"team": f"t{n}"}).id for n in range(25)]
    clock.advance(1)
    coordinator = _engine(store, sn, bp, clock, make_settings())
    report = await coordinator.run_cycle()
    assert report.ok, report.error
    assert _per_incident(sn) == dict.fromkeys(ids, 1)
    assert bp.count("get_incident") == 0  # every incident's alerts came with a search page
    assert bp.count("search_incidents") == 3  # 10 + 10 + 5
    assert sn.count("find_by_correlation_ids") == 3
    assert sn.count("find_by_correlation_id") == 0  # no per-incident check on a first try
    assert all(bp.incidents[i].tags.get("servicenow_link") for i in ids)


async def test_a_found_duplicate_falls_back_to_the_full_check_and_is_adopted(
    store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock
) -> None:
    first, second = bp.add_incident().id, bp.add_incident().id
    sn.add_incident(correlation_id=first, short_description="made by hand")
    clock.advance(1)
    report = await _engine(store, sn, bp, clock, make_settings()).run_cycle()
    assert report.ok, report.error
    assert _per_incident(sn) == {first: 1, second: 1}  # adopted, not duplicated
    assert sn.count("find_by_correlation_id") == 1  # only the one found in the batch


async def test_a_storm_larger_than_the_budget_is_worked_through_across_cycles(
    store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock
) -> None:
    ids = [bp.add_incident().id for _ in range(30)]
    clock.advance(1)

    def one_second_per_create(method: str, _args: tuple[Any, ...]) -> None:
        if method == "create_incident":
            clock.advance(1.0)

    sn.before_call = one_second_per_create
    settings = make_settings(cycle_budget=5.0, pair_concurrency=1)
    metrics = Backlog()
    coordinator = _engine(store, sn, bp, clock, settings, metrics)
    done_per_cycle = []
    for _ in range(10):
        report = await coordinator.run_cycle()
        assert report.ok, report.error
        done_per_cycle.append(len(_per_incident(sn)))
        if len(_per_incident(sn)) == len(ids):
            break
    assert _per_incident(sn) == dict.fromkeys(ids, 1)  # each once, none lost
    # the budget (5 s) ran out within each cycle's first page (10 creates, 1 s each):
    # no further page was read, but the page read was sent whole (its reads are paid)
    assert done_per_cycle == [10, 20, 30]
    assert metrics.left[Side.BIGPANDA.value] == 0
    # finished incidents were neither fetched nor planned again, and no page was read
    # twice: one search page per ten new incidents, whatever the number of cycles
    assert bp.count("get_incident") == 0
    assert bp.count("search_incidents") == 3
    assert sn.count("find_by_correlation_ids") == 3


async def test_no_search_page_is_read_twice_when_budgets_cut_a_storm_at_full_concurrency(
    store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock
) -> None:
    """The defaults' ten pairs at once and the pages read ahead for them: whichever
    moment the budget ends a cycle, each page of new incidents is read once."""
    ids = [bp.add_incident().id for _ in range(95)]
    clock.advance(1)

    def slow_creates(method: str, _args: tuple[Any, ...]) -> None:
        if method == "create_incident":
            clock.advance(0.3)

    sn.before_call = slow_creates
    coordinator = _engine(store, sn, bp, clock, make_settings(cycle_budget=4.0))
    cycles = 0
    while len(_per_incident(sn)) < len(ids) and cycles < 20:
        report = await coordinator.run_cycle()
        assert report.ok, report.error
        cycles += 1
    assert _per_incident(sn) == dict.fromkeys(ids, 1)
    assert cycles >= 3  # the budget did cut the storm
    assert bp.count("search_incidents") == 10  # ceil(95 / 10), each page once
    assert bp.count("get_incident") == 0


async def test_a_stop_leaves_the_rest_of_a_page_read_for_the_next_cycle(
    store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock
) -> None:
    """Unlike the budget, a stop (SIGTERM) starts nothing new, paid or not."""
    ids = [bp.add_incident().id for _ in range(10)]
    clock.advance(1)
    coordinator = _engine(store, sn, bp, clock, make_settings(pair_concurrency=1))

    def stop_at_the_second_create(method: str, _args: tuple[Any, ...]) -> None:
        if method == "create_incident" and sn.count("create_incident") == 2:
            coordinator.request_stop()

    sn.before_call = stop_at_the_second_create
    report = await coordinator.run_cycle()
    assert report.ok, report.error
    assert 2 <= len(_per_incident(sn)) <= 3  # the one in flight finished; no more
    sn.before_call = None
    coordinator = _engine(store, sn, bp, clock, make_settings())  # the next process
    report = await coordinator.run_cycle()
    assert report.ok, report.error
    assert _per_incident(sn) == dict.fromkeys(ids, 1)


async def test_progress_is_recorded_before_an_outage_ends_the_cycle(
    store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock
) -> None:
    ids = [bp.add_incident().id for _ in range(15)]
    clock.advance(1)
    creates = 0

    def refuse_the_second_check(method: str, _args: tuple[Any, ...]) -> None:
        nonlocal creates
        if method == "find_by_correlation_ids":
            creates += 1
            if creates == 2:
                raise FatalError("servicenow", "authentication refused (injected)")

    sn.before_call = refuse_the_second_check
    coordinator = _engine(store, sn, bp, clock, make_settings(pair_concurrency=1))
    report = await coordinator.run_cycle()
    assert not report.ok
    links = await store.live_links_for_bp(ids)
    # the first batch (the oldest page) went through; the pairs in flight finished,
    # those still queued wait: done work stays done
    assert set(links) <= set(ids[:5])
    assert len(links) >= 3
    assert _per_incident(sn) == dict.fromkeys(links, 1)
    checks = sn.count("find_by_correlation_ids")
    sn.before_call = None
    report = await coordinator.run_cycle()
    assert report.ok, report.error
    assert _per_incident(sn) == dict.fromkeys(ids, 1)
    assert sn.count("find_by_correlation_ids") <= checks + 2  # only those left


async def test_a_create_sent_by_a_killed_process_is_searched_before_it_is_sent_again(
    store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock
) -> None:
    """The batched check spares a create's first attempt its search, but an item a
    killed process already sent has 0 attempts too (attempts count failures): sent
    again from the outbox, it must search first (B2), never create a second ticket."""
    ids = [bp.add_incident().id for _ in range(2)]
    clock.advance(1)
    original = sn.create_incident

    async def create_then_die(fields: Any) -> Any:
        await original(fields)
        raise asyncio.CancelledError  # SIGKILL right after ServiceNow created it

    sn.create_incident = create_then_die  # type: ignore[method-assign]
    first = _engine(store, sn, bp, clock, make_settings(pair_concurrency=1))
    with contextlib.suppress(asyncio.CancelledError):
        await first.run_cycle()
    assert sum(_per_incident(sn).values()) == 1
    sn.create_incident = original  # type: ignore[method-assign]
    clock.advance(1)
    second = _engine(store, sn, bp, clock, make_settings())  # the restarted process
    for _ in range(3):
        report = await second.run_cycle()
        assert report.ok, report.error
        clock.advance(1)
    assert _per_incident(sn) == dict.fromkeys(ids, 1)


async def test_the_batched_duplicate_check_counts_a_row_that_is_not_an_incident(
    sn: FakeServiceNow,
) -> None:
    """A broken import's incident carrying a BigPanda id is still a match: the batch is
    neither failed by it nor blind to it (no duplicate created)."""
    imported = await sn.create_incident({"correlation_id": "65397b2eede0a80012631e01"})
    sn.change(imported.sys_id, state="resolved-ish")
    wanted = ["65397b2eede0a80012631e01", "65397b2eede0a80012631e02"]
    assert await unmatched(sn, wanted) == {"65397b2eede0a80012631e02"}
