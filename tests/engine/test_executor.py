"""Executor: outbox before send, retries, Retry-After, dead letters, notify, B14, creates."""

from __future__ import annotations

import importlib
import inspect
import itertools
import logging
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from aiohttp import web

from sync.actions import (
    CommentBigPanda,
    CreateServiceNowIncident,
    RefLookup,
    ResolveBigPanda,
    ResolveServiceNow,
    UpdateBigPandaTags,
    UpdateServiceNowFields,
)
from sync.clock import FakeClock
from sync.constants import Side
from sync.coordinator import recover
from sync.errors import FatalError, PermanentError, StoreError, TransientError
from sync.executor import Executor, decode_action, encode_action, link_tag_value
from sync.executor.codec import new_outbox_item
from sync.model import Link, LinkState
from sync.settings import Settings
from sync.store.base import OutboxItem, OutboxState
from sync.store.memory import MemoryStore
from tests.engine.conftest import SN_URL, make_settings
from tests.fakes import FakeBigPanda, FakeServiceNow


async def _linked_pair(
    store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock
) -> tuple[str, str, int]:
    incident = bp.add_incident()
    record = sn.add_incident(correlation_id=incident.id, short_description="x")
    link = await store.create_pending_link(incident.id, clock.now(), bp_environment_id="env1")
    await store.confirm_link(link.id, record["sys_id"], record["number"], clock.now())
    return incident.id, record["sys_id"], link.id


async def _updates(store: MemoryStore) -> list[OutboxItem]:
    return [i for i in await store.list_outbox() if i.kind == "sn.update"]


def _transient(message: str = "503", retry_after_s: float | None = None) -> TransientError:
    return TransientError("servicenow", message, status=503, retry_after_s=retry_after_s)


async def test_payload_round_trip() -> None:
    action = ResolveServiceNow(
        1,
        "b" * 24,
        "s" * 32,
        "Solution provided",
        "done",
        resolved_by=RefLookup("sys_user", "email", "a@b.c"),
    )
    assert decode_action(encode_action(action)) == action
    tags = UpdateBigPandaTags(1, "b" * 24, "env1", {"a": "1"}, remove_tags=("x", "y"))
    assert decode_action(encode_action(tags)) == tags


async def test_create_records_link_and_sets_link_tag(
    executor: Executor, store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda
) -> None:
    incident = bp.add_incident()
    action = CreateServiceNowIncident(
        incident.id, "env1", {"short_description": "disk full"}, record_sn={"impact": "1"}
    )
    result = await executor.execute([action], environment_id="env1")
    assert result.outcomes == [("sn.create", "ok")]
    link = await store.live_link_for_bp(incident.id)
    assert link is not None and link.state == LinkState.LINKED and link.sn_sys_id
    record = sn.incidents[link.sn_sys_id]
    assert record["correlation_id"] == incident.id
    assert record["correlation_display"] == "BigPanda"
    expected = link_tag_value(SN_URL, record["number"], link.sn_sys_id)
    assert (
        expected == f"{record['number']} {SN_URL}/nav_to.do?uri=incident.do?sys_id={link.sn_sys_id}"
    )
    assert bp.incidents[incident.id].tags["servicenow_link"] == expected
    states = await store.field_states(link.id)
    assert states[(Side.SERVICENOW, "impact")].value == "1"
    assert await store.count_outbox([OutboxState.DONE]) == 2  # the create and the tag


class CountingStore(MemoryStore):
    """A MemoryStore that counts the store calls the executor makes (not its own)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()
        self._depth = 0

    def __getattribute__(self, name: str) -> Any:
        attr = super().__getattribute__(name)
        if name.startswith("_") or not inspect.iscoroutinefunction(attr):
            return attr

        async def counted(*args: Any, **kwargs: Any) -> Any:
            if self._depth == 0:
                self.calls[name] += 1
            self._depth += 1
            try:
                return await attr(*args, **kwargs)
            finally:
                self._depth -= 1

        return counted


@pytest.mark.parametrize("checked_absent", [True, False])
async def test_a_create_costs_three_store_writes_and_no_read(
    sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock, checked_absent: bool
) -> None:
    """CPU per created incident (issue 16): the pending link with the create's item, the
    confirmation with the link tag's item and the create's completion, the tag's
    completion. After a batched check that found nothing, the link just made is not read
    again; without one, the incident's links are read once (the search's history)."""
    store = CountingStore()
    executor = Executor(store, sn, bp, make_settings(), clock)
    incident = bp.add_incident()
    action = CreateServiceNowIncident(
        incident.id,
        "env1",
        {"short_description": "disk full"},
        record_sn={"impact": "1"},
        checked_absent=checked_absent,
    )
    result = await executor.execute([action], environment_id="env1")
    assert result.outcomes == [("sn.create", "ok")]
    reads = {} if checked_absent else {"links_for_bp": 1}
    assert store.calls == Counter(
        {"create_pending_link_and_enqueue": 1, "complete_and_enqueue": 2, **reads}
    )
    link = await store.live_link_for_bp(incident.id)
    assert link is not None and link.state == LinkState.LINKED and link.sn_sys_id
    record = sn.incidents[link.sn_sys_id]
    tag = link_tag_value(SN_URL, record["number"], link.sn_sys_id)
    assert bp.incidents[incident.id].tags["servicenow_link"] == tag
    assert (await store.field_states(link.id))[(Side.BIGPANDA, "servicenow_link")].value == tag
    [entry] = await store.list_audit(link_id=link.id, kind="action")
    assert entry.outcome == "created"


async def test_create_keeps_the_environment_with_the_link(
    executor: Executor, store: MemoryStore, bp: FakeBigPanda
) -> None:
    incident = bp.add_incident()
    action = CreateServiceNowIncident(incident.id, "env-7", {"short_description": "x"})
    await executor.execute([action], environment_id="env-7")
    link = await store.live_link_for_bp(incident.id)
    assert link is not None and link.bp_environment_id == "env-7"
    assert await executor.environment_of(incident.id) == "env-7"
    assert await store.get_checkpoint(f"bp_env:{incident.id}") is None  # no more
    assert await executor.environment_of("f" * 24) is None


async def test_create_log_line_names_both_ids(
    executor: Executor,
    store: MemoryStore,
    bp: FakeBigPanda,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # one line per action with both ids (issue 7): a create knows its sys_id only after
    # the write, and the operator grepping for either id must find the line
    incident = bp.add_incident()
    caplog.set_level(logging.INFO, logger="sync.executor")
    action = CreateServiceNowIncident(incident.id, "env1", {"short_description": "x"})
    await executor.execute([action], environment_id="env1")
    link = await store.live_link_for_bp(incident.id)
    assert link is not None
    lines = [r for r in caplog.records if getattr(r, "kind", None) == "sn.create"]
    assert len(lines) == 1
    assert lines[0].__dict__["bp_incident_id"] == incident.id
    assert lines[0].__dict__["sn_sys_id"] == link.sn_sys_id
    assert lines[0].__dict__["link_id"] == link.id
    assert lines[0].__dict__["outcome"] == "ok"


async def test_outbox_item_exists_before_the_send(
    executor: Executor, store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock
) -> None:
    incident_id, sys_id, link_id = await _linked_pair(store, sn, bp, clock)
    seen: list[tuple[OutboxState, str]] = []

    async def inspect(method: str, args: tuple[Any, ...]) -> None:
        if method == "update_incident":
            items = await store.list_outbox()
            seen.extend((item.state, item.kind) for item in items)

    sn.before_call = inspect
    action = UpdateServiceNowFields(link_id, incident_id, sys_id, {"impact": "2"})
    await executor.execute([action], environment_id="env1")
    assert seen == [(OutboxState.PENDING, "sn.update")]
    assert [i.state for i in await store.list_outbox()] == [OutboxState.DONE]


async def test_transient_then_success_inside_the_cycle(
    executor: Executor, store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock
) -> None:
    incident_id, sys_id, link_id = await _linked_pair(store, sn, bp, clock)
    sn.fail_next("update_incident", _transient(), _transient())
    action = UpdateServiceNowFields(
        link_id, incident_id, sys_id, {"impact": "2"}, record_sn={"impact": "2"}
    )
    result = await executor.execute([action], environment_id="env1")
    assert result.outcomes == [("sn.update", "ok")]
    times = [t for name, t in sn.calls if name == "update_incident"]
    assert [round(b - a, 3) for a, b in itertools.pairwise(times)] == [0.5, 1.0]
    assert sn.incidents[sys_id]["impact"] == "2"
    [item] = await store.list_outbox()
    assert item.state == OutboxState.DONE and item.attempts == 0


async def test_retry_after_is_honoured(
    executor: Executor, store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock
) -> None:
    incident_id, sys_id, link_id = await _linked_pair(store, sn, bp, clock)
    sn.fail_next("update_incident", _transient("429", retry_after_s=2.0))
    first = UpdateServiceNowFields(link_id, incident_id, sys_id, {"impact": "2"})
    await executor.execute([first], environment_id="env1")
    times = [t for name, t in sn.calls if name == "update_incident"]
    assert len(times) == 2 and times[1] - times[0] >= 2.0


async def test_a_servicenow_retry_after_defers_every_servicenow_write_until_then(
    store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock
) -> None:
    """A Retry-After past the outage window (the client hands it to the caller and holds
    the instance): the write and every other ServiceNow write, of any incident, wait
    for it to pass, unsent; a BigPanda write does not."""
    executor = Executor(store, sn, bp, make_settings(**{"retry.interval": 5.0}), clock)
    first_bp, first_sys, first_link = await _linked_pair(store, sn, bp, clock)
    other_bp, other_sys, other_link = await _linked_pair(store, sn, bp, clock)
    sn.fail_next("update_incident", _transient("429", retry_after_s=120.0))
    start = clock.monotonic()
    first = UpdateServiceNowFields(first_link, first_bp, first_sys, {"impact": "2"})
    assert (await executor.execute([first], environment_id="env1")).outcomes == [
        ("sn.update", "retry")
    ]
    [item] = await _updates(store)
    assert item.next_attempt_at >= clock.now() + timedelta(seconds=119)
    # another incident's ServiceNow write in the same window: deferred, not sent
    other = UpdateServiceNowFields(other_link, other_bp, other_sys, {"urgency": "2"})
    assert (await executor.execute([other], environment_id="env1")).outcomes == [
        ("sn.update", "retry")
    ]
    assert sn.count("update_incident") == 1
    # a BigPanda write is not ServiceNow's to hold
    tags = UpdateBigPandaTags(other_link, other_bp, "env1", {"priority": "P2"})
    assert (await executor.execute([tags], environment_id="env1")).outcomes == [("bp.tags", "ok")]
    clock.advance(121)
    report = await executor.drive_due()
    assert report.completed == 2
    times = [t for name, t in sn.calls if name == "update_incident"]
    assert len(times) == 3 and all(t - start >= 120.0 for t in times[1:])
    assert sn.incidents[first_sys]["impact"] == "2" and sn.incidents[other_sys]["urgency"] == "2"


async def test_a_hold_on_one_bigpanda_family_defers_no_write_to_another(
    store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock
) -> None:
    """The pacer holds BigPanda per endpoint family: a 429 on the tags routes whose hold
    outlasts the outage window defers tag writes only; a comment, a resolve of another
    incident go out at once."""
    executor = Executor(store, sn, bp, make_settings(**{"retry.interval": 5.0}), clock)
    first_bp, _, first_link = await _linked_pair(store, sn, bp, clock)
    other_bp, _, other_link = await _linked_pair(store, sn, bp, clock)
    limited = TransientError("bigpanda", "rate limited", status=429, retry_after_s=90.0)
    bp.fail_next("set_tags", limited)
    tags = UpdateBigPandaTags(first_link, first_bp, "env1", {"priority": "P2"})
    assert (await executor.execute([tags], environment_id="env1")).outcomes == [
        ("bp.tags", "retry")
    ]
    assert bp.held_for("tags") == pytest.approx(90.0) and bp.held_for("comments") == 0.0
    sent_before = len(bp.calls)
    comment = CommentBigPanda(other_bp, "env1", "closed in ServiceNow", link_id=other_link)
    resolve = ResolveBigPanda(other_link, other_bp, "env1", "resolved in ServiceNow")
    result = await executor.execute([comment, resolve], environment_id="env1")
    assert result.outcomes == [("bp.comment", "ok"), ("bp.resolve", "ok")]
    assert clock.monotonic() < 1.0  # sent at once, not after the tags' hold
    assert [name for name, _ in bp.calls[sent_before:]] == ["add_comment", "resolve_incident"]
    # a tag write of the other incident waits for the tags' hold, unsent
    more = UpdateBigPandaTags(other_link, other_bp, "env1", {"priority": "P3"})
    assert (await executor.execute([more], environment_id="env1")).outcomes == [
        ("bp.tags", "retry")
    ]
    assert bp.count("set_tags") == 1


async def test_permanent_failure_one_attempt_b14_then_recovery(
    executor: Executor, store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock
) -> None:
    incident_id, sys_id, link_id = await _linked_pair(store, sn, bp, clock)
    sn.fail_next(
        "update_incident",
        PermanentError(
            "servicenow", "Invalid value", status=400, detail="impact must be 1, 2 or 3"
        ),
    )
    bad = UpdateServiceNowFields(link_id, incident_id, sys_id, {"impact": "9"})
    result = await executor.execute([bad], environment_id="env1")
    assert result.outcomes == [("sn.update", "dead")]
    assert sn.count("update_incident") == 1
    [dead] = await store.list_outbox([OutboxState.DEAD])
    assert dead.attempts == 1 and "Invalid value" in (dead.last_error or "")
    incident = bp.incidents[incident_id]
    assert len(incident.comments) == 1
    assert "Invalid value" in incident.comments[0] and "impact must be 1" in incident.comments[0]
    assert incident.tags["servicenow_link"] == "error"
    assert executor.notifications == 1
    # nothing more is sent for it, however many cycles pass
    clock.advance(3600)
    await executor.drive_due()
    assert sn.count("update_incident") == 1
    # a later successful ServiceNow write sets the tag back to the incident's link
    good = UpdateServiceNowFields(link_id, incident_id, sys_id, {"impact": "2"})
    await executor.execute([good], environment_id="env1")
    number = sn.incidents[sys_id]["number"]
    assert incident.tags["servicenow_link"] == link_tag_value(SN_URL, number, sys_id)
    # ... and the dead letter it made pointless (the same field written) is closed
    assert await store.list_outbox([OutboxState.DEAD]) == []
    [closed] = await store.list_audit(kind="action", limit=1)
    assert (closed.outcome, closed.detail["outbox_id"]) == ("superseded", dead.id)


async def test_a_dead_letter_stays_while_no_later_write_covers_it(
    executor: Executor, store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock
) -> None:
    incident_id, sys_id, link_id = await _linked_pair(store, sn, bp, clock)
    refused = PermanentError("servicenow", "Invalid value", status=400)
    sn.fail_next("update_incident", refused)
    bad = UpdateServiceNowFields(link_id, incident_id, sys_id, {"impact": "9", "urgency": "9"})
    await executor.execute([bad], environment_id="env1")
    # a later write of one of its two fields: the other still needs a person
    other = UpdateServiceNowFields(link_id, incident_id, sys_id, {"impact": "2"})
    await executor.execute([other], environment_id="env1")
    [dead] = await store.list_outbox([OutboxState.DEAD])
    assert dead.kind == "sn.update"
    # both fields written later: closed
    both = UpdateServiceNowFields(link_id, incident_id, sys_id, {"impact": "1", "urgency": "2"})
    await executor.execute([both], environment_id="env1")
    assert await store.list_outbox([OutboxState.DEAD]) == []


class _NotifySink:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        async def handle(request: web.Request) -> web.Response:
            self.bodies.append(await request.json())
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_post("/notify", handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/notify"

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


async def test_attempts_dead_letter_and_notify_exactly(
    store: MemoryStore,
    sn: FakeServiceNow,
    bp: FakeBigPanda,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = _NotifySink()
    await sink.start()
    try:
        settings = make_settings(
            **{
                "retry.attempts": 6,
                "retry.dlq_after": 5,
                "retry.notify_after": 6,
                "retry.interval": 900.0,
                "retry.in_cycle_attempts": 1,
                "retry.notify_url": sink.url,
            }
        )
        executor = Executor(store, sn, bp, settings, clock)
        incident_id, sys_id, link_id = await _linked_pair(store, sn, bp, clock)
        sn.fail_next("update_incident", *[_transient(f"503 #{n}") for n in range(1, 7)])
        action = UpdateServiceNowFields(link_id, incident_id, sys_id, {"impact": "2"})
        await executor.execute([action], environment_id="env1")
        observed: list[tuple[int, OutboxState, int]] = []
        [item] = await _updates(store)
        observed.append((item.attempts, item.state, len(sink.bodies)))
        for _ in range(5):
            clock.advance(899)  # not yet due
            await executor.drive_due()
            assert len(await _updates(store)) == 1
            clock.advance(1)
            await executor.drive_due()
            [item] = await _updates(store)
            observed.append((item.attempts, item.state, len(sink.bodies)))
        pending, dead = OutboxState.PENDING, OutboxState.DEAD
        assert observed == [
            (1, pending, 0),
            (2, pending, 0),
            (3, pending, 0),
            (4, pending, 0),
            (5, dead, 0),
            (6, dead, 1),
        ]
        assert sn.count("update_incident") == 6
        # exhausted: no 7th attempt
        clock.advance(10_000)
        await executor.drive_due()
        assert sn.count("update_incident") == 6
        [body] = sink.bodies
        assert body["bp_incident_id"] == incident_id and body["sn_sys_id"] == sys_id
        assert body["attempts"] == 6 and "503 #6" in body["reason"]
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and getattr(errors[0], "sn_sys_id", None) == sys_id
        # B14 after the last attempt
        assert bp.incidents[incident_id].tags["servicenow_link"] == "error"
        # `dlq retry` starts over, and a fixed failure succeeds and clears it
        assert await store.retry_dead(None, clock.now()) == 1
        await executor.drive_due()
        [item] = await _updates(store)
        assert item.state == OutboxState.DONE
        assert sn.incidents[sys_id]["impact"] == "2"
    finally:
        await sink.stop()


async def _update_failing_five_times(
    store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock
) -> tuple[Executor, str, str, int]:
    """A linked pair's ServiceNow update, sent once and failed; it fails 4 times more
    (in-cycle attempts 1, retry interval 10 s). Returns the executor, the incident ids
    and the link id."""
    settings = make_settings(**{"retry.in_cycle_attempts": 1, "retry.interval": 10.0})
    executor = Executor(store, sn, bp, settings, clock)
    incident_id, sys_id, link_id = await _linked_pair(store, sn, bp, clock)
    sn.fail_next("update_incident", *[_transient() for _ in range(5)])
    action = UpdateServiceNowFields(link_id, incident_id, sys_id, {"impact": "2"})
    await executor.execute([action], environment_id="env1")
    return executor, incident_id, sys_id, link_id


async def test_a_dead_item_succeeding_on_its_last_attempt_leaves_the_dlq(
    store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock
) -> None:
    executor, incident_id, _, _ = await _update_failing_five_times(store, sn, bp, clock)
    # B14 at the first failure: the user hears of it now, once (not once per attempt)
    assert bp.incidents[incident_id].tags["servicenow_link"] == "error"
    comments = [w for w in bp.writes if w[0] == "comment"]
    assert len(comments) == 1 and "bpsync tries again" in comments[0][2]["text"]
    for _ in range(4):
        clock.advance(10)
        await executor.drive_due()
    [item] = await _updates(store)
    assert (item.state, item.attempts) == (OutboxState.DEAD, 5)
    assert len([w for w in bp.writes if w[0] == "comment"]) == 1
    clock.advance(10)
    await executor.drive_due()
    [item] = await _updates(store)
    assert item.state == OutboxState.DONE
    assert executor.notifications == 0
    # the success puts the link back on the incident
    assert bp.incidents[incident_id].tags["servicenow_link"].startswith("INC")


async def test_fatal_error_propagates_and_keeps_the_item(
    executor: Executor, store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock
) -> None:
    incident_id, sys_id, link_id = await _linked_pair(store, sn, bp, clock)
    sn.fail_next("update_incident", FatalError("servicenow", "User Not Authenticated", status=401))
    action = UpdateServiceNowFields(link_id, incident_id, sys_id, {"impact": "2"})
    with pytest.raises(FatalError):
        await executor.execute([action], environment_id="env1")
    [item] = await store.list_outbox()
    assert item.state == OutboxState.PENDING and item.attempts == 0
    await executor.drive_due()
    assert sn.incidents[sys_id]["impact"] == "2"


async def test_writes_to_one_target_keep_their_order(
    executor: Executor, store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock
) -> None:
    incident_id, sys_id, link_id = await _linked_pair(store, sn, bp, clock)
    sn.fail_next("update_incident", *[_transient() for _ in range(3)])
    old = UpdateServiceNowFields(link_id, incident_id, sys_id, {"impact": "1"})
    new = UpdateServiceNowFields(link_id, incident_id, sys_id, {"impact": "2"})
    assert (await executor.execute([old], environment_id="env1")).outcomes == [
        ("sn.update", "retry")
    ]
    assert (await executor.execute([new], environment_id="env1")).outcomes == [
        ("sn.update", "queued")
    ]
    assert sn.incidents[sys_id]["impact"] == "3"  # the table's default, untouched
    clock.advance(60)
    await executor.drive_due()
    assert [w[2] for w in sn.writes] == [{"impact": "1"}, {"impact": "2"}]
    assert sn.incidents[sys_id]["impact"] == "2"


async def test_in_flight_item_of_a_crashed_process_is_sent_again(
    store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock
) -> None:
    settings = make_settings()
    incident_id, sys_id, link_id = await _linked_pair(store, sn, bp, clock)
    crashed = Executor(store, sn, bp, settings, clock)

    class Crash(BaseException):
        pass

    sn.fail_next("update_incident", Crash())
    action = UpdateBigPandaTags(link_id, incident_id, "env1", {"owner": "ops"})
    with pytest.raises(Crash):
        await crashed.execute(
            [UpdateServiceNowFields(link_id, incident_id, sys_id, {"impact": "2"}), action],
            environment_id="env1",
        )
    await store.claim_due(clock.now(), limit=10, lease_s=60)  # a drive that died mid-way
    restarted = Executor(store, sn, bp, settings, clock)
    assert (await restarted.drive_due()).completed == 0  # the lease still holds
    clock.advance(121)
    assert (await restarted.drive_due()).completed == 1
    assert sn.incidents[sys_id]["impact"] == "2"


async def test_an_item_left_in_flight_by_a_killed_process_is_sent_at_once_after_restart(
    store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock
) -> None:
    """One writer at a time (SQLite lock, Postgres epoch): what a previous process claimed
    before this one started is not in flight any more; waiting for the 120 s lease would
    hold the pair's writes (and the pair) for two minutes after every restart."""
    settings = make_settings()
    incident_id, sys_id, link_id = await _linked_pair(store, sn, bp, clock)
    crashed = Executor(store, sn, bp, settings, clock)

    class Crash(BaseException):
        pass

    sn.fail_next("update_incident", Crash())
    with pytest.raises(Crash):
        await crashed.execute(
            [UpdateServiceNowFields(link_id, incident_id, sys_id, {"impact": "2"})],
            environment_id="env1",
        )
    await store.claim_due(clock.now(), limit=10, lease_s=60)  # claimed, then killed
    clock.advance(5)  # the restart
    restarted = Executor(store, sn, bp, settings, clock)
    assert (await restarted.drive_due()).completed == 1
    assert sn.incidents[sys_id]["impact"] == "2"
    # and its own claims keep their lease
    await store.enqueue("sn.update", f"servicenow:{sys_id}", {"action": {}}, "k-own", clock.now())
    await store.claim_due(clock.now(), limit=10, lease_s=60)
    clock.advance(5)
    assert (await restarted.drive_due()).sent == 0


async def test_create_adopts_an_existing_incident(
    executor: Executor, store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda
) -> None:
    incident = bp.add_incident()
    existing = sn.add_incident(correlation_id=incident.id, short_description="old", impact="2")
    action = CreateServiceNowIncident(
        incident.id, "env1", {"short_description": "new text", "impact": "2"}
    )
    await executor.execute([action], environment_id="env1")
    assert sn.count("create_incident") == 0
    assert len(sn.incidents) == 1
    assert sn.writes == [("update", existing["sys_id"], {"short_description": "new text"})]
    link = await store.live_link_for_bp(incident.id)
    assert link is not None and link.sn_sys_id == existing["sys_id"]


async def test_create_skipped_when_a_live_link_exists(
    executor: Executor, store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock
) -> None:
    incident = bp.add_incident()
    await store.create_pending_link(incident.id, clock.now())
    action = CreateServiceNowIncident(incident.id, "env1", {"short_description": "x"})
    result = await executor.execute([action], environment_id="env1")
    assert result.outcomes == [("sn.create", "skipped")]
    assert sn.count("create_incident") == 0


async def test_create_timeout_retried_adopts_instead_of_duplicating(
    executor: Executor, store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda
) -> None:
    incident = bp.add_incident()

    async def create_then_fail(method: str, args: tuple[Any, ...]) -> None:
        if method == "create_incident" and sn.count("create_incident") == 1:
            sn._create(dict(args[0]))  # the create reached ServiceNow, the answer was lost
            raise _transient("timeout")

    sn.before_call = create_then_fail
    action = CreateServiceNowIncident(incident.id, "env1", {"short_description": "x"})
    result = await executor.execute([action], environment_id="env1")
    assert result.outcomes == [("sn.create", "ok")]
    assert len(sn.incidents) == 1
    link = await store.live_link_for_bp(incident.id)
    assert link is not None and link.sn_sys_id in sn.incidents


async def test_pending_link_recovery_adopts_instead_of_creating(
    executor: Executor,
    store: MemoryStore,
    sn: FakeServiceNow,
    bp: FakeBigPanda,
    clock: FakeClock,
    settings: Settings,
) -> None:
    incident = bp.add_incident()
    # crashed after the create reached ServiceNow, before anything else was recorded
    link = await store.create_pending_link(incident.id, clock.now(), bp_environment_id="env1")
    record = sn.add_incident(correlation_id=incident.id)
    replan = await recover(executor, settings)
    assert replan == []
    confirmed = await store.get_link(link.id)
    assert confirmed is not None and confirmed.sn_sys_id == record["sys_id"]
    assert confirmed.state == LinkState.LINKED
    assert sn.count("create_incident") == 0
    assert bp.incidents[incident.id].tags["servicenow_link"].startswith(record["number"])


class CrashAfterConfirm(MemoryStore):
    """Killed right after the recovered link's confirmation (its tag is sent next)."""

    crash = True

    async def confirm_link_and_record(self, *args: Any, **kwargs: Any) -> Link:
        link = await super().confirm_link_and_record(*args, **kwargs)
        if self.crash and kwargs.get("audit_outcome") == "adopted":
            self.crash = False
            raise StoreError("killed")
        return link


async def test_a_recovered_links_tag_is_in_the_outbox_before_the_link_is_confirmed(
    sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock, settings: Settings
) -> None:
    """The adoption's plan (the link tag) is recorded before the link is confirmed: a
    kill after the confirmation leaves the tag to send, not a linked pair without it."""
    store = CrashAfterConfirm()
    incident = bp.add_incident()
    await store.create_pending_link(incident.id, clock.now(), bp_environment_id="env1")
    record = sn.add_incident(correlation_id=incident.id)
    with pytest.raises(StoreError):
        await recover(Executor(store, sn, bp, settings, clock), settings)
    assert "servicenow_link" not in bp.incidents[incident.id].tags
    # the next life: the link is no longer pending; the tag goes out with the retries
    assert await recover(Executor(store, sn, bp, settings, clock), settings) == []
    assert bp.incidents[incident.id].tags["servicenow_link"].startswith(record["number"])
    [tag] = [i for i in await store.list_outbox() if i.kind == "bp.link_tag"]
    assert tag.state == OutboxState.DONE
    # the confirmation and its audit entry are one transaction: recorded once, not lost
    audit = await store.list_audit()
    assert [a.outcome for a in audit if a.outcome == "adopted"] == ["adopted"]


async def test_pending_link_without_incident_is_handed_back_for_planning(
    executor: Executor, store: MemoryStore, bp: FakeBigPanda, clock: FakeClock
) -> None:
    incident = bp.add_incident()
    link = await store.create_pending_link(incident.id, clock.now())
    recovery = await executor.recover_pending_links()
    assert recovery.adoptions == []
    [superseded] = recovery.replan
    assert superseded.id == link.id and superseded.state == LinkState.SUPERSEDED
    assert await store.live_link_for_bp(incident.id) is None


async def test_reopen_past_window_supersedes_and_ignores_the_old_incident(
    executor: Executor, store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock
) -> None:
    incident_id, old_sys_id, old_link = await _linked_pair(store, sn, bp, clock)
    sn.change(old_sys_id, state="6")  # resolved: still active in ServiceNow
    action = CreateServiceNowIncident(
        incident_id, "env1", {"short_description": "again"}, previous_link_id=old_link
    )
    await executor.execute([action], environment_id="env1")
    links = await store.links_for_bp(incident_id)
    assert [link.state for link in links] == [LinkState.LINKED, LinkState.SUPERSEDED]
    assert links[0].previous_link_id == old_link
    assert links[0].sn_sys_id != old_sys_id
    assert sn.count("create_incident") == 1


async def test_lookups_fill_found_fields_and_warn_once(
    executor: Executor,
    store: MemoryStore,
    sn: FakeServiceNow,
    bp: FakeBigPanda,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sn.tables["sys_user"] = [{"sys_id": "u1", "email": "ann@example.com"}]
    caplog.set_level(logging.WARNING)
    for _ in range(2):
        incident = bp.add_incident()
        action = CreateServiceNowIncident(
            incident.id,
            "env1",
            {"short_description": "x"},
            lookups={
                "caller_id": RefLookup("sys_user", "email", "ann@example.com"),
                "opened_by": RefLookup("sys_user", "email", "nobody@example.com"),
            },
        )
        assert (await executor.execute([action], environment_id="env1")).outcomes == [
            ("sn.create", "ok")
        ]
    created = [w for w in sn.writes if w[0] == "create"]
    assert len(created) == 2
    assert all(w[2]["caller_id"] == "u1" and "opened_by" not in w[2] for w in created)
    warnings = [r for r in caplog.records if "nobody@example.com" in r.getMessage()]
    assert len(warnings) == 1
    assert sn.count("query") == 2  # one per value, then cached


@pytest.mark.parametrize("module", ["core", "writes", "delivery", "alerts"])
def test_every_part_of_the_executor_logs_on_one_logger(module: str) -> None:
    """Log consumers (``sync.demo``, alerting on ``logger``) filter on ``sync.executor``."""
    part = importlib.import_module(f"sync.executor.{module}")
    assert part.log.name == "sync.executor"


class _ReadsCounted(MemoryStore):
    """A memory store that remembers which outbox payloads were read."""

    def __init__(self) -> None:
        super().__init__()
        self.listed: list[str | None] = []
        self.items_read: list[int] = []

    async def list_outbox(self, *args: Any, **kwargs: Any) -> list[OutboxItem]:
        self.listed.append(kwargs.get("target"))
        return await super().list_outbox(*args, **kwargs)

    async def outbox_items(self, ids: Any) -> list[OutboxItem]:
        self.items_read.extend(ids)
        return await super().outbox_items(ids)


async def test_a_cycle_reads_the_payloads_of_what_it_sends_only(
    sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock
) -> None:
    """A deep backlog (writes waiting out an outage) is read each cycle without its
    payloads: only the items sent again are read whole."""
    store = _ReadsCounted()
    executor, _, sys_id, link_id = await _update_failing_five_times(store, sn, bp, clock)
    for _ in range(4):  # five failed attempts: dead, with a sixth left
        clock.advance(10)
        await executor.drive_due()
    [dead] = await store.list_outbox([OutboxState.DEAD])
    # the backlog: writes of other incidents, failed once, due in 15 minutes
    for n in range(30):
        write = UpdateServiceNowFields(link_id, f"bp-{n}", f"{n:032x}", {"impact": "3"})
        new, _ = new_outbox_item(write, "env1")
        item = await store.enqueue(
            new.kind, new.target, new.payload, new.idempotency_key, clock.now()
        )
        await store.fail(
            item.id, "servicenow: HTTP 503", clock.now() + timedelta(minutes=15), clock.now()
        )
    assert len(await store.list_outbox([OutboxState.PENDING])) == 30
    store.listed, store.items_read = [], []
    clock.advance(10)  # the dead item is due again; the backlog is not
    report = await executor.drive_due()
    assert (report.sent, report.completed) == (1, 1)
    assert store.items_read == [dead.id]
    # and the dead letters of its own target only (what its success made pointless)
    assert store.listed == [f"servicenow:{sys_id}"]
    assert sn.incidents[sys_id]["impact"] == "2"
