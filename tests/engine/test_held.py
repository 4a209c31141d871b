"""Held pairs (``sync.held``): a pair is held while the store's outbox has open writes
for it, whatever this process has driven, and released once they are done."""

from __future__ import annotations

import json
from datetime import timedelta

from sync.actions import (
    CommentBigPanda,
    CreateServiceNowIncident,
    ReopenServiceNow,
    ResolveBigPanda,
    ResolveServiceNow,
    SetLinkTag,
    UpdateBigPandaTags,
    UpdateServiceNowFields,
)
from sync.clock import FakeClock
from sync.coordinator import Coordinator
from sync.executor import PERMANENT_PREFIX, Executor, target_of
from sync.held import write_targets
from sync.pairs import HELD_CHECKPOINT
from sync.store.memory import MemoryStore
from tests.engine.conftest import make_settings
from tests.fakes import FakeBigPanda, FakeServiceNow

BP = "b" * 24
SYS = "c" * 32


def test_write_targets_are_the_targets_of_the_pairs_writes() -> None:
    writes = [
        CreateServiceNowIncident(BP, "env1", {}),
        UpdateServiceNowFields(1, BP, SYS, {"u_team": "a"}),
        ResolveServiceNow(1, BP, SYS, "Solved", "notes"),
        ReopenServiceNow(1, BP, SYS, "reopened"),
        UpdateBigPandaTags(1, BP, "env1", {"team": "a"}),
        ResolveBigPanda(1, BP, "env1", "resolved"),
        CommentBigPanda(BP, "env1", "x"),
        SetLinkTag(BP, "env1", "servicenow_link", "x"),
    ]
    assert {target_of(w) for w in writes} == set(write_targets(BP, SYS))
    assert write_targets(BP, None) == [f"bigpanda:{BP}", f"servicenow:create:{BP}"]


def _coordinator(
    store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock
) -> Coordinator:
    settings = make_settings(
        **{
            "bigpanda.environments": "env1",
            "tag_mapping": [
                {"bigpanda_tag": "team", "servicenow_field": "u_team", "direction": "both"}
            ],
        }
    )
    executor = Executor(store, sn, bp, settings, clock)
    return Coordinator(store, sn, bp, executor, settings, clock=clock)


async def _cycle(coordinator: Coordinator, clock: FakeClock) -> None:
    clock.advance(1)
    report = await coordinator.run_cycle()
    assert report.ok, report.error


async def test_a_pair_is_held_while_the_store_has_an_open_write_for_it(
    store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock
) -> None:
    """Another process's write waits for its retry (due in an hour, so this process
    never drives it): the pair is held on the store's word, and released once done."""
    coordinator = _coordinator(store, sn, bp, clock)
    incident = bp.add_incident(tags={"team": "a"})
    await _cycle(coordinator, clock)
    link = await store.live_link_for_bp(incident.id)
    assert link is not None and link.sn_sys_id is not None
    sys_id = link.sn_sys_id
    other = await store.enqueue("sn.update", f"servicenow:{sys_id}", {}, "other", clock.now())
    later = clock.now() + timedelta(hours=1)
    await store.fail(other.id, "HTTP 503", later, clock.now())
    bp.change_tag(incident.id, "team", "b")
    await _cycle(coordinator, clock)
    assert sn.incidents[sys_id]["u_team"] == "a"  # held
    assert json.loads(await store.get_checkpoint(HELD_CHECKPOINT) or "{}") == {str(link.id): []}
    await store.complete(other.id, clock.now())
    await _cycle(coordinator, clock)
    assert sn.incidents[sys_id]["u_team"] == "b"  # released: read and planned as it is
    assert await store.get_checkpoint(HELD_CHECKPOINT) == "{}"


async def test_a_write_refused_for_good_holds_nothing(
    store: MemoryStore, sn: FakeServiceNow, bp: FakeBigPanda, clock: FakeClock
) -> None:
    coordinator = _coordinator(store, sn, bp, clock)
    incident = bp.add_incident(tags={"team": "a"})
    await _cycle(coordinator, clock)
    link = await store.live_link_for_bp(incident.id)
    assert link is not None and link.sn_sys_id is not None
    refused = await store.enqueue(
        "sn.update", f"servicenow:{link.sn_sys_id}", {}, "refused", clock.now()
    )
    await store.dead_letter(refused.id, PERMANENT_PREFIX + "HTTP 400: no", clock.now())
    bp.change_tag(incident.id, "team", "b")
    await _cycle(coordinator, clock)
    assert sn.incidents[link.sn_sys_id]["u_team"] == "b"
