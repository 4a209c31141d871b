"""Backfill: the daemon's planner and executor over history, resumable, and a dry run."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sync.backfill import Backfill, BackfillSummary, checkpoint_name
from sync.clock import FakeClock
from sync.coordinator import Coordinator
from sync.errors import GuardTripped
from sync.executor import Executor
from sync.model import LinkState
from sync.settings import Settings
from sync.store.memory import MemoryStore
from sync.window import parse_time, resolve_window
from tests.engine.conftest import make_settings
from tests.fakes import FakeBigPanda, FakeServiceNow

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)

_STORE_WRITES = frozenset(
    {
        "create_pending_link",
        "confirm_link",
        "create_pending_link_and_enqueue",
        "confirm_link_and_record",
        "complete_and_enqueue",
        "set_link_state",
        "record_field_states",
        "enqueue",
        "claim_due",
        "complete",
        "fail",
        "dead_letter",
        "retry_dead",
        "drop_dead",
        "record_audit",
        "advance_cursor",
        "set_checkpoint",
        "take_epoch",
    }
)


class ReadOnlyStore:
    """A store proxy that fails the test on any write."""

    def __init__(self, inner: MemoryStore) -> None:
        self._inner = inner
        self.reads: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        if name in _STORE_WRITES:
            raise AssertionError(f"dry run wrote to the store: {name}")
        self.reads[name] += 1
        return getattr(self._inner, name)


class Lines:
    """A BackfillProgress that keeps what it is told."""

    def __init__(self) -> None:
        self.total = 0
        self.done = 0
        self.lines: list[str] = []

    def add_total(self, count: int) -> None:
        self.total += count

    def advance(self, count: int) -> None:
        self.done += count

    def action(self, line: str) -> None:
        self.lines.append(line)


def _backfill(
    store: Any,
    sn: FakeServiceNow,
    bp: FakeBigPanda,
    clock: FakeClock,
    settings: Settings | None = None,
    *,
    force: bool = False,
    **options: Any,
) -> Backfill:
    settings = settings or make_settings()
    executor = Executor(store, sn, bp, settings, clock)
    coordinator = Coordinator(store, sn, bp, executor, settings, clock=clock, force=force)
    options.setdefault("since", "7d")
    return Backfill(
        store=store,
        bigpanda=bp,
        executor=executor,
        coordinator=coordinator,
        clock=clock,
        environments=["env1"],
        **options,
    )


def _per_incident(sn: FakeServiceNow) -> Counter[str]:
    return Counter(r["correlation_id"] for r in sn.incidents.values() if r.get("correlation_id"))


@pytest.fixture
def history(bp: FakeBigPanda, clock: FakeClock) -> list[str]:
    """33 active incidents and 4 resolved ones (never linked: nothing to create)."""
    clock.set(NOW - timedelta(days=2))
    active = [bp.add_incident(tags={"team": f"t{n}"}).id for n in range(33)]
    for _ in range(4):
        bp.resolve(bp.add_incident().id)
    clock.set(NOW)
    return active


async def test_backfill_creates_each_active_incident_once(
    store: MemoryStore,
    sn: FakeServiceNow,
    bp: FakeBigPanda,
    clock: FakeClock,
    history: list[str],
) -> None:
    progress = Lines()
    summary = await _backfill(store, sn, bp, clock, progress=progress).run()
    assert summary.counts["created"] == 33
    assert summary.counts["skipped"] == 4
    assert summary.counts["failed"] == summary.counts["adopted"] == 0
    assert summary.ok and not summary.interrupted
    assert _per_incident(sn) == Counter(dict.fromkeys(history, 1))
    assert progress.total == 37 and progress.done == 37
    for bp_id in history:  # B1: linked, link tag set
        link = await store.live_link_for_bp(bp_id)
        assert link is not None and link.state is LinkState.LINKED
        assert bp.incidents[bp_id].tags["servicenow_link"].startswith(link.sn_number or "?")
    # pages of 10 with the alerts expanded, sorted by a key that does not move
    assert bp.count("get_incident") == 0
    # finished: the checkpoint says so; running it again starts over and writes nothing new
    state = await store.get_checkpoint(checkpoint_name("env1", "7d", None))
    assert state is not None and '"done": true' in state
    writes = len(sn.writes)
    again = await _backfill(store, sn, bp, clock).run()
    assert again.counts["created"] == 0 and again.counts["skipped"] == 37
    assert len(sn.writes) == writes
    assert _per_incident(sn) == Counter(dict.fromkeys(history, 1))


async def test_an_incident_already_in_servicenow_is_adopted(
    store: MemoryStore,
    sn: FakeServiceNow,
    bp: FakeBigPanda,
    clock: FakeClock,
    history: list[str],
) -> None:
    sn.add_incident(correlation_id=history[5], short_description="made by hand")
    summary = await _backfill(store, sn, bp, clock).run()
    assert summary.counts["created"] == 32 and summary.counts["adopted"] == 1
    assert _per_incident(sn) == Counter(dict.fromkeys(history, 1))


async def test_stopped_part_way_and_resumed_creates_each_incident_once(
    store: MemoryStore,
    sn: FakeServiceNow,
    bp: FakeBigPanda,
    clock: FakeClock,
    history: list[str],
) -> None:
    pages: list[int] = []
    original = bp.search_incidents

    async def search(env: str, **kw: Any) -> Any:
        if kw.get("page_size") == 10:
            pages.append(kw["page"])
        return await original(env, **kw)

    bp.search_incidents = search  # type: ignore[method-assign,assignment]
    first = _backfill(store, sn, bp, clock, should_stop=lambda: len(pages) >= 2)
    summary = await first.run()
    # two pages of ten (newest start first, as the API sorts): active ones created,
    # resolved ones skipped
    assert summary.interrupted
    assert summary.counts["created"] + summary.counts["skipped"] == 20
    assert len(_per_incident(sn)) == summary.counts["created"]
    pages.clear()
    clock.advance(3600)  # "7d" an hour later: the checkpoint keeps the first window
    resumed = _backfill(store, sn, bp, clock)
    summary = await resumed.run()
    assert pages == [3, 4]  # resumed at the next page
    assert resumed.window == first.window
    assert not summary.interrupted
    assert summary.counts["created"] == 33 and summary.counts["skipped"] == 4  # both runs
    assert _per_incident(sn) == Counter(dict.fromkeys(history, 1))


@pytest.mark.parametrize("crash_in", ["create_incident", "confirm_link"])
async def test_crashed_mid_create_and_resumed_creates_each_incident_once(
    store: MemoryStore,
    sn: FakeServiceNow,
    bp: FakeBigPanda,
    clock: FakeClock,
    history: list[str],
    crash_in: str,
) -> None:
    """Killed before the create is sent, or between the create and the link write (B15)."""
    calls = Counter[str]()

    def crash_on_the_15th(method: str) -> None:
        calls[method] += 1
        if calls[method] == 15:
            raise asyncio.CancelledError  # what a kill looks like to the coroutine

    if crash_in == "create_incident":
        sn.before_call = lambda method, args: crash_on_the_15th(method)
    else:
        # the link write after a create: confirm, audit, field states, the link tag's
        # item and the create's completion in one transaction
        complete = store.complete_and_enqueue

        async def crashing_complete(*args: Any, **kw: Any) -> Any:
            if kw.get("confirm") is not None:
                crash_on_the_15th("confirm_link")
            return await complete(*args, **kw)

        store.complete_and_enqueue = crashing_complete  # type: ignore[method-assign]
    with pytest.raises(asyncio.CancelledError):
        await _backfill(store, sn, bp, clock).run()
    sn.before_call = None
    # a page's incidents run concurrently: those of the crashed page that were further
    # along may exist too (as a kill leaves them)
    if crash_in == "confirm_link":
        store.complete_and_enqueue = complete  # type: ignore[method-assign]
        assert 15 <= len(_per_incident(sn)) < len(history)
        # the 15th exists in ServiceNow, its link still pending
        assert await store.list_links([LinkState.PENDING])
    else:
        assert 14 <= len(_per_incident(sn)) < len(history)
    summary = await _backfill(store, sn, bp, clock).run()
    assert not summary.interrupted and summary.counts["failed"] == 0
    assert _per_incident(sn) == Counter(dict.fromkeys(history, 1))
    for bp_id in history:
        link = await store.live_link_for_bp(bp_id)
        assert link is not None and link.state is LinkState.LINKED


async def test_dry_run_prints_each_action_and_writes_nothing(
    store: MemoryStore,
    sn: FakeServiceNow,
    bp: FakeBigPanda,
    clock: FakeClock,
    history: list[str],
) -> None:
    # one incident is linked already and changed a tag since: an update would be sent
    await _backfill(store, sn, bp, clock, since="3d", until="1d").run()
    bp.add_incident(tags={"team": "late"})
    bp.change_tag(history[0], "team", "changed")
    sn_writes, bp_writes = len(sn.writes), len(bp.writes)
    outbox, audit = await store.count_outbox(), len(await store.list_audit(limit=10_000))
    progress = Lines()
    readonly = ReadOnlyStore(store)
    settings = make_settings(
        **{"tag_mapping": [{"bigpanda_tag": "team", "servicenow_field": "u_team"}]}
    )
    summary: BackfillSummary = await _backfill(
        readonly, sn, bp, clock, settings, dry_run=True, progress=progress
    ).run()
    assert (len(sn.writes), len(bp.writes)) == (sn_writes, bp_writes)
    assert await store.count_outbox() == outbox
    assert len(await store.list_audit(limit=10_000)) == audit
    assert summary.dry_run and summary.counts["created"] == 1
    assert summary.counts["updated"] >= 1
    assert sum(line.startswith("create ServiceNow incident") for line in progress.lines) == 1
    assert any(line.startswith("update ServiceNow") for line in progress.lines)


def test_times_iso_and_relative() -> None:
    assert parse_time("7d", NOW) == NOW - timedelta(days=7)
    assert parse_time("24h", NOW) == NOW - timedelta(hours=24)
    assert parse_time(" 90M ", NOW) == NOW - timedelta(minutes=90)
    assert parse_time("now", NOW) == NOW
    assert parse_time("2026-11-01", NOW) == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_time("2026-11-01T08:00:00Z", NOW) == datetime(2026, 11, 1, 8, tzinfo=UTC)
    assert parse_time("2026-11-01T10:00+02:00", NOW) == datetime(2026, 11, 1, 8, tzinfo=UTC)
    assert resolve_window("2d", "1d", NOW) == (NOW - timedelta(days=2), NOW - timedelta(days=1))
    assert resolve_window("2d", "2099-01-01", NOW)[1] == NOW  # capped at now


@pytest.mark.parametrize(
    ("since", "until", "message"),
    [
        ("yesterday", None, "--since 'yesterday' is not a time"),
        ("7x", None, "--since '7x' is not a time"),
        ("7d", "soon", "--until 'soon' is not a time"),
        ("1d", "2d", "must be before --until"),
        ("2099-01-01", None, "must be before --until"),
    ],
)
def test_bad_times_are_one_clear_line(since: str, until: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        resolve_window(since, until, NOW)
    assert "\n" not in str(caught.value)


class CountingStore:
    """A store proxy that counts the scans of the live links."""

    def __init__(self, inner: MemoryStore) -> None:
        self._inner = inner
        self.counts = 0

    def __getattr__(self, name: str) -> Any:
        if name == "count_links":
            self.counts += 1
        return getattr(self._inner, name)


async def test_a_page_resolving_most_live_links_trips_the_guard(
    store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock
) -> None:
    """The mass-resolve guard weighs a page's resolves against the live links (counted
    only for a page that resolves: a backfill of creates never scans them)."""
    counting = CountingStore(store)
    clock.set(NOW - timedelta(days=2))
    active = [bp.add_incident().id for _ in range(12)]
    clock.set(NOW - timedelta(days=1))
    created = await _backfill(counting, sn, bp, clock).run()
    assert created.counts["created"] == 12
    assert counting.counts == 0
    for bp_id in active:  # every one resolved in BigPanda
        bp.resolve(bp_id)
    writes = list(sn.writes)
    clock.set(NOW)
    with pytest.raises(GuardTripped, match="would resolve 10 of 12 live links"):
        await _backfill(counting, sn, bp, clock).run()
    assert counting.counts == 1
    assert sn.writes == writes  # nothing resolved
    # confirmed by the operator (--force): each link resolved with its incident
    assert (await _backfill(counting, sn, bp, clock, force=True).run()).counts["failed"] == 0
    links = [await store.live_link_for_bp(bp_id) for bp_id in active]
    assert [link.state if link else None for link in links] == [LinkState.RESOLVED] * 12
