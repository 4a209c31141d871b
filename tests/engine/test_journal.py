"""Journals on fakes: the coordinator reads, the planner decides, the executor carries
each entry once: recorded before it is sent, re-checked when it may have landed
(``sync.journal``, ``sync.journal_reads``, ``sync.executor.journal_writes``)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sync.actions import CommentBigPanda
from sync.backfill import Backfill
from sync.clock import FakeClock
from sync.constants import MIRROR_MARKER, Side
from sync.coordinator import Coordinator
from sync.errors import PermanentError, TransientError
from sync.executor import Executor
from sync.journal import HISTORY
from sync.settings import Settings
from sync.store.base import OutboxState
from sync.store.memory import MemoryStore
from tests.engine.conftest import make_settings
from tests.fakes import FakeBigPanda, FakeServiceNow

BOTH = {"journal.from_servicenow": "work_notes,comments"}


class Engine:
    """Store, fakes, clock and a coordinator (rebuilt by ``restart``: a new process)."""

    def __init__(self, store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock):
        self.store, self.sn, self.bp, self.clock = store, sn, bp, clock
        self.settings: Settings = make_settings()
        self.coordinator: Coordinator | None = None

    def restart(self, **overrides: Any) -> Coordinator:
        if overrides or self.coordinator is None:
            self.settings = make_settings(**overrides)
        executor = Executor(self.store, self.sn, self.bp, self.settings, self.clock)
        self.coordinator = Coordinator(
            self.store, self.sn, self.bp, executor, self.settings, clock=self.clock
        )
        return self.coordinator

    async def cycles(self, n: int = 1) -> None:
        assert self.coordinator is not None
        for _ in range(n):
            report = await self.coordinator.run_cycle()
            assert report.ok, report.error
            self.clock.advance(1)

    async def linked(self) -> tuple[str, str]:
        """A new incident, created in ServiceNow; a second later."""
        incident = self.bp.add_incident()
        await self.cycles(3)
        link = await self.store.live_link_for_bp(incident.id)
        assert link is not None
        assert link.sn_sys_id is not None
        return incident.id, link.sn_sys_id

    def notes(self, sys_id: str) -> list[str]:
        return [text for row, _, text in self.sn.journal if row == sys_id]

    def comments(self, bp_id: str) -> list[str]:
        activities = self.bp.incidents[bp_id].activities
        return [str(a.params["comment"]) for a in activities if a.type == "incident_commented"]


@pytest.fixture
def engine(store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock) -> Engine:
    return Engine(store, sn, bp, clock)


def copies(texts: list[str], original: str) -> list[str]:
    return [t for t in texts if t.startswith(MIRROR_MARKER) and original in t]


async def test_each_entry_once_both_ways(engine: Engine) -> None:
    engine.restart(**BOTH)
    bp_id, sys_id = await engine.linked()
    engine.bp.comment(bp_id, "from BigPanda")
    engine.sn.add_journal_entry(sys_id, "comments", "from ServiceNow")
    await engine.cycles(4)
    assert len(copies(engine.notes(sys_id), "from BigPanda")) == 1
    assert len(copies(engine.comments(bp_id), "from ServiceNow")) == 1
    assert not copies(engine.comments(bp_id), "from BigPanda")  # never back
    assert not copies(engine.notes(sys_id), "from ServiceNow")
    assert [k for k, *_ in engine.sn.journal if k == sys_id]  # (the sys_id's rows)
    # the ledger holds both, with their digests
    rows = (await engine.store.carried_entries([bp_id]))[bp_id]
    assert {r.side for r in rows} == {Side.BIGPANDA, Side.SERVICENOW}


async def test_a_servicenow_write_that_landed_is_not_sent_again(engine: Engine) -> None:
    """The PATCH went through, its answer did not: the in-cycle retry finds the entry in
    the incident's journal by its digest and sends nothing."""
    engine.restart()
    bp_id, sys_id = await engine.linked()
    sn = engine.sn
    real = sn.update_incident
    calls: list[dict[str, str]] = []

    async def lost_answer(sys_id_: str, fields: Any) -> Any:
        calls.append(dict(fields))
        record = await real(sys_id_, fields)
        if len(calls) == 1:
            raise TransientError("servicenow", "connection reset after the write (injected)")
        return record

    sn.update_incident = lost_answer  # type: ignore[method-assign]
    engine.bp.comment(bp_id, "only once please")
    await engine.cycles(3)
    assert len(copies(engine.notes(sys_id), "only once please")) == 1
    assert len(calls) == 1  # the retry looked, and did not send
    assert sn.count("list_journal") >= 1


async def test_a_bigpanda_comment_that_landed_is_not_sent_again(engine: Engine) -> None:
    engine.restart(**BOTH)
    bp_id, sys_id = await engine.linked()
    bp = engine.bp
    real = bp.add_comment
    calls: list[str] = []

    async def lost_answer(env: str, incident_id: str, text: str) -> None:
        calls.append(text)
        await real(env, incident_id, text)
        if len(calls) == 1:
            raise TransientError("bigpanda", "timeout after the write (injected)")

    bp.add_comment = lost_answer  # type: ignore[method-assign]
    engine.sn.add_journal_entry(sys_id, "work_notes", "checked the disks")
    await engine.cycles(3)
    assert len(copies(engine.comments(bp_id), "checked the disks")) == 1
    assert len(calls) == 1


async def test_recorded_before_sent_and_a_kill_after_the_send(engine: Engine) -> None:
    """The entry is in the ledger before its write leaves; killed after the write landed
    (before it was marked done), the next process re-checks and sends nothing."""
    engine.restart()
    bp_id, sys_id = await engine.linked()
    sn = engine.sn
    real = sn.update_incident
    seen: list[bool] = []

    async def killed_after(sys_id_: str, fields: Any) -> Any:
        ledger = await engine.store.carried_entries([bp_id])
        seen.append(any(r.entry_id != HISTORY for r in ledger.get(bp_id, [])))
        await real(sys_id_, fields)
        raise asyncio.CancelledError  # the process dies here

    sn.update_incident = killed_after  # type: ignore[method-assign]
    engine.bp.comment(bp_id, "survives a kill")
    assert engine.coordinator is not None
    with pytest.raises(asyncio.CancelledError):
        await engine.coordinator.run_cycle()
    assert seen == [True]  # recorded before sent
    left = await engine.store.list_outbox([OutboxState.PENDING, OutboxState.IN_FLIGHT])
    assert [i.kind for i in left] == ["sn.journal"]  # not done: sent again after a restart
    sn.update_incident = real  # type: ignore[method-assign]
    engine.clock.advance(1)
    engine.restart()  # a new process
    await engine.cycles(4)
    assert len(copies(engine.notes(sys_id), "survives a kill")) == 1
    assert await engine.store.count_outbox([OutboxState.PENDING, OutboxState.IN_FLIGHT]) == 0


async def test_killed_before_the_send_it_is_sent_by_the_next_process(engine: Engine) -> None:
    engine.restart()
    bp_id, sys_id = await engine.linked()
    engine.sn.fail_next("update_incident", asyncio.CancelledError())
    engine.bp.comment(bp_id, "sent after the restart")
    assert engine.coordinator is not None
    with pytest.raises(asyncio.CancelledError):
        await engine.coordinator.run_cycle()
    assert not copies(engine.notes(sys_id), "sent after the restart")
    engine.clock.advance(1)
    engine.restart()
    await engine.cycles(3)
    assert len(copies(engine.notes(sys_id), "sent after the restart")) == 1


async def test_bpsyncs_own_comments_carry_the_marker(engine: Engine) -> None:
    """B14's comment (the plan's) and any comment bpsync sends (the handler's guard)."""
    engine.restart(**BOTH)
    bp_id, sys_id = await engine.linked()
    engine.sn.fail_next(
        "update_incident", PermanentError("servicenow", "Operation Failed", status=403)
    )
    engine.bp.comment(bp_id, "refused on the way")
    await engine.cycles(3)
    b14 = [c for c in engine.comments(bp_id) if "refused the sn.journal write" in c]
    assert len(b14) == 1
    assert b14[0].startswith(MIRROR_MARKER)
    assert engine.coordinator is not None
    await engine.coordinator.executor.execute(
        [CommentBigPanda(bp_id, "env1", "a note without the marker")], environment_id="env1"
    )
    assert engine.comments(bp_id)[-1] == f"{MIRROR_MARKER} a note without the marker"
    await engine.cycles(3)
    assert not copies(engine.notes(sys_id), "without the marker")
    assert not copies(engine.notes(sys_id), "refused the sn.journal")


async def test_an_unreadable_journal_is_skipped_with_one_warning(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    engine.restart(**BOTH)
    bp_id, sys_id = await engine.linked()
    refused = PermanentError("servicenow", "User Not Authorized", status=403)
    engine.sn.fail_next("list_journal", refused, refused)
    engine.bp.comment(bp_id, "still carried")
    engine.sn.change(sys_id, u_team="db")
    engine.sn.add_journal_entry(sys_id, "work_notes", "read later")
    await engine.cycles(1)
    engine.bp.comment(bp_id, "and again")
    engine.sn.add_journal_entry(sys_id, "work_notes", "read later too")
    await engine.cycles(1)
    warnings = [r for r in caplog.records if "sys_journal_field" in r.getMessage()]
    assert len(warnings) == 1
    assert len(copies(engine.notes(sys_id), "still carried")) == 1
    engine.sn.add_journal_entry(sys_id, "work_notes", "readable now")
    await engine.cycles(3)
    for text in ("read later", "read later too", "readable now"):
        assert len([c for c in engine.comments(bp_id) if c.endswith(f"\n{text}")]) == 1


async def test_idle_cycles_read_nothing(engine: Engine) -> None:
    engine.restart(**BOTH)
    bp_id, _ = await engine.linked()
    engine.bp.comment(bp_id, "x")
    await engine.cycles(3)
    engine.clock.advance(engine.settings.cursor_overlap + 1)
    await engine.cycles(2)
    reads = engine.bp.count("list_activities"), engine.sn.count("list_journal")
    await engine.cycles(5)
    assert (engine.bp.count("list_activities"), engine.sn.count("list_journal")) == reads


TEAM = {
    "tag_mapping": [{"bigpanda_tag": "team", "servicenow_field": "u_team", "direction": "both"}]
}


async def test_field_writes_do_not_wait_for_the_batchs_comment_reads(engine: Engine) -> None:
    """Each pair's conversation is read just before the pair is planned and executed:
    the first pair's field write lands while the other pairs' activities reads are still
    in flight (they wait for it here; reading the whole batch first would never end)."""
    engine.restart(**TEAM, pair_concurrency=2)
    linked = dict([await engine.linked() for _ in range(4)])
    first = min(linked)  # the batch's first pair (same second: by BigPanda id)
    for bp_id in linked:
        engine.bp.comment(bp_id, f"said on {bp_id}")
        engine.bp.change_tag(bp_id, "team", "db")

    landed = asyncio.Event()  # the first pair's field write is in ServiceNow
    real = engine.sn.update_incident

    async def update(sys_id: str, fields: Any) -> Any:
        record = await real(sys_id, fields)
        if sys_id == linked[first] and fields.get("u_team") == "db":
            landed.set()
        return record

    engine.sn.update_incident = update  # type: ignore[method-assign]
    waited: list[str] = []

    async def slow_activities(method: str, args: tuple[Any, ...]) -> None:
        if method == "list_activities" and args[0] != first:
            await asyncio.wait_for(landed.wait(), timeout=5)
            waited.append(args[0])

    engine.bp.before_call = slow_activities
    await engine.cycles(1)
    engine.bp.before_call = None
    assert sorted(waited) == sorted(set(linked) - {first})
    for bp_id, sys_id in linked.items():
        assert engine.sn.incidents[sys_id]["u_team"] == "db"
        assert len(copies(engine.notes(sys_id), f"said on {bp_id}")) == 1
    await engine.cycles(3)
    for bp_id, sys_id in linked.items():  # and never again
        assert len(copies(engine.notes(sys_id), f"said on {bp_id}")) == 1


async def test_an_outage_in_one_pairs_read_keeps_what_finished(engine: Engine) -> None:
    """The comment reads of a batch go down after the first pair: the cycle stops. The
    first pair stays finished (nothing of it is written again); the second, whose field
    write went first (a plan of field writes only), is left open with its comment; the
    third is not started. Once BigPanda is back each comment is carried once and no
    field is written twice."""
    engine.restart(**TEAM, pair_concurrency=1)
    linked = dict([await engine.linked() for _ in range(3)])
    for bp_id in linked:
        engine.bp.comment(bp_id, f"said on {bp_id}")
        engine.bp.change_tag(bp_id, "team", "web")
    reads: list[str] = []

    def down_after_one(method: str, args: tuple[Any, ...]) -> None:
        if method == "list_activities":
            reads.append(args[0])
            if len(reads) > 1:  # an outage (pacing gave up): the cycle stops
                raise TransientError("bigpanda", "503 Service Unavailable (injected)")

    engine.bp.before_call = down_after_one
    assert engine.coordinator is not None
    report = await engine.coordinator.run_cycle()
    assert not report.ok
    first, second = reads
    written = {
        b for b, sys_id in linked.items() if engine.sn.incidents[sys_id].get("u_team") == "web"
    }
    assert written == {first, second}
    assert len(copies(engine.notes(linked[first]), f"said on {first}")) == 1
    assert not copies(engine.notes(linked[second]), f"said on {second}")
    engine.bp.before_call = None
    engine.clock.advance(1)
    updates = engine.sn.count("update_incident")
    await engine.cycles(3)
    # the second: its entry; the third: its field and its entry; the first: nothing
    assert engine.sn.count("update_incident") - updates == 3
    for bp_id, sys_id in linked.items():
        assert engine.sn.incidents[sys_id]["u_team"] == "web"
        assert len(copies(engine.notes(sys_id), f"said on {bp_id}")) == 1


# --------------------------------------------------------------------------- backfill


NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def _backfill(engine: Engine, **options: Any) -> Backfill:
    coordinator = engine.restart(**BOTH)
    return Backfill(
        store=engine.store,
        bigpanda=engine.bp,
        executor=coordinator.executor,
        coordinator=coordinator,
        clock=engine.clock,
        environments=["env1"],
        since="7d",
        **options,
    )


async def _history(engine: Engine) -> str:
    engine.clock.set(NOW - timedelta(days=2))
    incident = engine.bp.add_incident()
    engine.clock.advance(60)
    engine.bp.comment(incident.id, "said long ago")
    engine.clock.set(NOW)
    return incident.id


async def test_backfill_carries_history_only_with_journal(engine: Engine) -> None:
    bp_id = await _history(engine)
    summary = await _backfill(engine).run()
    assert summary.counts["created"] == 1
    link = await engine.store.live_link_for_bp(bp_id)
    assert link is not None
    assert link.sn_sys_id is not None
    assert not copies(engine.notes(link.sn_sys_id), "said long ago")
    # the daemon later: the incident changes, its history stays where it was said
    engine.clock.advance(1)
    engine.bp.comment(bp_id, "said today")
    await engine.cycles(3)
    notes = engine.notes(link.sn_sys_id)
    assert not copies(notes, "said long ago")
    assert len(copies(notes, "said today")) == 1


async def test_backfill_with_journal_carries_history_once(engine: Engine) -> None:
    bp_id = await _history(engine)
    summary = await _backfill(engine, with_journal=True).run()
    assert summary.counts["created"] == 1
    link = await engine.store.live_link_for_bp(bp_id)
    assert link is not None
    assert link.sn_sys_id is not None
    assert len(copies(engine.notes(link.sn_sys_id), "said long ago")) == 1
    await _backfill(engine, with_journal=True, restart=True).run()  # run again
    engine.clock.advance(1)
    engine.bp.comment(bp_id, "said today")
    await engine.cycles(3)
    notes = engine.notes(link.sn_sys_id)
    assert len(copies(notes, "said long ago")) == 1
    assert len(copies(notes, "said today")) == 1
