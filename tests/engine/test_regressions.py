"""Regressions found by the state machine (``test_sync_machine.py``), minimised.

The last ones concern pairs whose writes wait in the outbox: such a pair is held (not
planned) until its writes are done, then read on both sides and planned as it is
(``sync.held``).
"""

from __future__ import annotations

from typing import Any

from sync.actions import UpdateBigPandaTags
from sync.clock import FakeClock
from sync.coordinator import Coordinator
from sync.errors import TransientError
from sync.executor import Executor
from sync.model import LinkState
from sync.store.memory import MemoryStore
from tests.engine.conftest import make_settings
from tests.fakes import FakeBigPanda, FakeServiceNow

INTERVAL_S = 30.0


def _coordinator(
    store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock, **overrides: Any
) -> Coordinator:
    settings = make_settings(
        **{
            "bigpanda.environments": "env1",
            "tag_mapping": [
                {"bigpanda_tag": "team", "servicenow_field": "u_team", "direction": "both"},
                {
                    "bigpanda_tag": "sev",
                    "servicenow_field": "urgency",
                    "direction": "both",
                    "value_map": {"high": "1", "low": "2"},
                },
            ],
            "retry.interval": INTERVAL_S,
            "retry.in_cycle_attempts": 1,
            "guard.min_links": 1000,
            **overrides,
        }
    )
    executor = Executor(store, sn, bp, settings, clock)
    return Coordinator(store, sn, bp, executor, settings, clock=clock)


def _down(side: str) -> TransientError:
    return TransientError(side, "connection reset by peer")


async def _cycle(coordinator: Coordinator, clock: FakeClock, advance_s: float = 1.0) -> None:
    clock.advance(advance_s)
    report = await coordinator.run_cycle()
    assert report.ok, report.error


async def _linked(
    store: MemoryStore,
    sn: FakeServiceNow,
    bp: FakeBigPanda,
    coordinator: Coordinator,
    clock: FakeClock,
) -> tuple[str, str]:
    incident = bp.add_incident(tags={"team": "a"})
    await _cycle(coordinator, clock)
    link = await store.live_link_for_bp(incident.id)
    assert link is not None and link.sn_sys_id is not None
    return incident.id, link.sn_sys_id


async def test_tag_write_retried_in_cycle_after_a_partial_success_is_no_echo(
    store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock
) -> None:
    """set_tags landed, then delete_tag failed: the in-cycle retry re-sent set_tags."""
    executor = Executor(store, sn, bp, make_settings(), clock)
    incident = bp.add_incident(tags={"team": "a"})
    bp.define_tags("sev")  # a tag must be defined before it can be set
    bp.fail_next("delete_tag", _down("bigpanda"))
    action = UpdateBigPandaTags(1, incident.id, "env1", {"sev": "high"}, remove_tags=("team",))
    link = await store.create_pending_link(incident.id, clock.now())
    result = await executor.execute([action], environment_id="env1")
    assert link.id == 1 and result.outcomes == [("bp.tags", "ok")]
    assert incident.tags == {"sev": "high"}
    assert bp.echoes == []


async def test_servicenow_resolved_after_bigpanda_marks_the_link_resolved(
    store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock
) -> None:
    """resolve_servicenow and resolve_bigpanda off: BigPanda resolved first, ServiceNow
    later. The planner took the unchanged BigPanda side as active, so the link stayed
    linked and a reopen inside the window never reopened the ServiceNow incident (B9)."""
    coordinator = _coordinator(
        store,
        sn,
        bp,
        clock,
        **{"incidents.resolve_servicenow": False, "incidents.resolve_bigpanda": False},
    )
    bp_id, sys_id = await _linked(store, sn, bp, coordinator, clock)
    bp.resolve(bp_id)
    await _cycle(coordinator, clock)
    sn.change(sys_id, state="6", close_code="Workaround provided", close_notes="by hand")
    await _cycle(coordinator, clock)
    link = await store.live_link_for_bp(bp_id)
    assert link is not None and link.state == LinkState.RESOLVED
    bp.reopen(bp_id)
    await _cycle(coordinator, clock)
    assert sn.incidents[sys_id]["state"] == "2"  # the same incident, reopened
    assert len(sn.incidents) == 1


async def test_bigpanda_resolve_does_not_reopen_a_closed_servicenow_incident(
    store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock
) -> None:
    """resolve_bigpanda off: ServiceNow closed (7) first; the BigPanda resolve then wrote
    Resolved (6) over Closed, the planner taking the unchanged ServiceNow side as open."""
    coordinator = _coordinator(store, sn, bp, clock, **{"incidents.resolve_bigpanda": False})
    bp_id, sys_id = await _linked(store, sn, bp, coordinator, clock)
    sn.change(sys_id, state="7", close_code="Workaround provided", close_notes="by hand")
    await _cycle(coordinator, clock)
    bp.resolve(bp_id)
    writes = len(sn.writes)
    await _cycle(coordinator, clock)
    assert sn.incidents[sys_id]["state"] == "7"
    assert len(sn.writes) == writes
    link = await store.live_link_for_bp(bp_id)
    assert link is not None and link.state == LinkState.RESOLVED


async def test_a_resolve_retried_after_a_reopen_is_dropped(
    store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock
) -> None:
    """The ServiceNow resolve failed and waited for its retry; BigPanda reopened
    meanwhile. The retry resolved ServiceNow and marked the link resolved next to an
    active BigPanda incident, which then stayed out of sync."""
    coordinator = _coordinator(store, sn, bp, clock)
    bp_id, sys_id = await _linked(store, sn, bp, coordinator, clock)
    bp.resolve(bp_id)
    sn.fail_next("update_incident", _down("servicenow"))
    await _cycle(coordinator, clock)
    bp.reopen(bp_id)
    await _cycle(coordinator, clock)
    await _cycle(coordinator, clock, INTERVAL_S + 1)  # the retry is due
    assert sn.incidents[sys_id]["state"] == "1"
    link = await store.live_link_for_bp(bp_id)
    assert link is not None and link.state == LinkState.LINKED


async def test_a_queued_bigpanda_resolve_of_a_superseded_link_does_not_stop_cycles(
    store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock
) -> None:
    """A BigPanda resolve queued behind a failed link-tag write; by the time it was sent
    the incident had been reopened past a new ServiceNow incident (reopen_resolved off).
    It resolved the reopened incident, then marking its superseded link resolved raised
    DuplicateLinkError: every later cycle failed on the same outbox item."""
    coordinator = _coordinator(store, sn, bp, clock, **{"incidents.reopen_resolved": False})
    bp.fail_next("set_tag", _down("bigpanda"))  # the link tag of the create
    bp_id, old_sys_id = await _linked(store, sn, bp, coordinator, clock)
    sn.change(old_sys_id, state="6", close_code="Workaround provided", close_notes="by hand")
    await _cycle(coordinator, clock)  # ResolveBigPanda: queued behind the link tag
    bp.resolve(bp_id)
    await _cycle(coordinator, clock)
    bp.reopen(bp_id)
    await _cycle(coordinator, clock)  # a new ServiceNow incident, the old link superseded
    for _ in range(6):  # past the in-flight lease of the blocked resolve
        await _cycle(coordinator, clock, INTERVAL_S + 1)
    assert bp.incidents[bp_id].active
    link = await store.live_link_for_bp(bp_id)
    assert link is not None and link.state == LinkState.LINKED and link.sn_sys_id != old_sys_id


async def test_a_revert_within_the_second_of_a_seen_snapshot_is_synced(
    store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock
) -> None:
    """team a (seen) -> bpsync writes b (from ServiceNow) -> a person sets a again, all in
    one second: the snapshot has the key of the one already seen; bpsync forgets the keys
    of incidents it wrote to, so the poll does not drop it."""
    coordinator = _coordinator(store, sn, bp, clock)
    bp_id, sys_id = await _linked(store, sn, bp, coordinator, clock)  # link tag at t
    sn.change(sys_id, u_team="b")
    await _cycle(coordinator, clock, 0)  # sees {team: a, link tag} at t, writes team=b at t
    bp.change_tag(bp_id, "team", "a")  # same second again
    await _cycle(coordinator, clock, INTERVAL_S + 1)
    assert sn.incidents[sys_id]["u_team"] == "a"


async def test_a_pair_is_not_planned_from_stale_state_while_its_write_waits(
    store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock
) -> None:
    """The values a waiting write will record are not recorded yet, so a new change of
    the pair planned at once would be planned from stale last-synced values: here a tag
    write that landed in part (set_tags ok, delete_tag failed) would make the next plan
    echo urgency to ServiceNow. The pair is held until the write is done."""
    coordinator = _coordinator(store, sn, bp, clock)
    _, sys_id = await _linked(store, sn, bp, coordinator, clock)
    sn.change(sys_id, u_team="", urgency="1")
    bp.fail_next("delete_tag", _down("bigpanda"))
    await _cycle(coordinator, clock)  # set_tags sev=high landed, delete_tag failed
    await _cycle(coordinator, clock)  # sees sev=high as a BigPanda change
    await _cycle(coordinator, clock, INTERVAL_S + 1)
    assert sn.echoes == []


async def test_a_resolve_and_reopen_while_held_leave_both_sides_open(
    store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock
) -> None:
    """BigPanda is resolved and reopened while a ServiceNow write of the pair waits for
    its retry. Released, the pair's prelude (BigPanda as seen resolved) plans a resolve,
    which is stale by the time it is sent (BigPanda is active again) and dropped: both
    sides stay open and agree, ServiceNow does not flap, the field change arrives."""
    coordinator = _coordinator(store, sn, bp, clock)
    bp_id, sys_id = await _linked(store, sn, bp, coordinator, clock)
    sn.fail_next("update_incident", _down("servicenow"))
    bp.change_tag(bp_id, "team", "b")
    await _cycle(coordinator, clock)  # the PATCH u_team=b fails: waits for its retry
    bp.resolve(bp_id)
    await _cycle(coordinator, clock)  # held: seen resolved
    bp.reopen(bp_id)
    await _cycle(coordinator, clock)  # held: seen active again
    await _cycle(coordinator, clock, INTERVAL_S + 1)  # retry sent, the pair released
    record = sn.incidents[sys_id]
    assert record["u_team"] == "b"
    assert record["state"] == "1"
    assert bp.incidents[bp_id].active
    link = await store.live_link_for_bp(bp_id)
    assert link is not None and link.state == LinkState.LINKED and link.sn_sys_id == sys_id
    for _ in range(3):  # and then quiet (B5)
        writes = len(sn.writes) + len(bp.writes)
        await _cycle(coordinator, clock)
        assert len(sn.writes) + len(bp.writes) == writes


async def test_a_resolve_after_a_reopen_that_waits_behind_a_retry_is_not_lost(
    store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock
) -> None:
    """Found by a 5 x 1,000-example run of the state machine. BigPanda is reopened with a
    field change; the PATCH fails and the planned reopen of ServiceNow queues behind it
    (the link is live again at once). BigPanda is resolved once more before the retry.
    While held, ServiceNow still reads Resolved, but only because bpsync's own reopen
    has not gone out: that is not a person's resolve, and replaying it as one marked the
    link resolved and left ServiceNow open for good."""
    coordinator = _coordinator(store, sn, bp, clock, **{"incidents.resolve_bigpanda": False})
    bp_id, sys_id = await _linked(store, sn, bp, coordinator, clock)
    bp.resolve(bp_id)
    await _cycle(coordinator, clock)  # ServiceNow resolved, the link resolved
    assert sn.incidents[sys_id]["state"] == "6"
    bp.reopen(bp_id)
    bp.change_tag(bp_id, "team", "b")
    sn.fail_next("update_incident", _down("servicenow"))
    await _cycle(coordinator, clock)  # the PATCH fails, the reopen queues behind it
    await _cycle(coordinator, clock)
    bp.resolve(bp_id)
    for _ in range(4):
        await _cycle(coordinator, clock, INTERVAL_S + 1)  # the retry, the reopen, then...
    record = sn.incidents[sys_id]
    assert record["u_team"] == "b"
    assert record["state"] == "6", "BigPanda is resolved: so must ServiceNow be"
