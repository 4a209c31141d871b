"""The LinkStore contract: every implementation (memory, SQLite, Postgres) passes this suite.

The semantics tested here are listed in ``sync/store/base.py``'s docstring.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone

import pytest

from sync.constants import Side
from sync.errors import StoreError
from sync.model import LIVE_LINK_STATES, LinkState
from sync.store.base import (
    PERMANENT_ERROR_PREFIX,
    CarriedRecord,
    Cursor,
    DuplicateLinkError,
    FencedError,
    FieldStates,
    LinkConfirmation,
    LinkStore,
    NewAuditEntry,
    NewOutboxItem,
    OutboxHead,
    OutboxState,
)
from tests.store.conftest import Backend

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
BP1 = "a" * 24
BP2 = "b" * 24
BP3 = "c" * 24
SYS1 = "1" * 32
SYS2 = "2" * 32


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def linked(store: LinkStore, bp: str = BP1, sys_id: str = SYS1, number: str = "INC001"):
    link = await store.create_pending_link(bp, T0)
    return await store.confirm_link(link.id, sys_id, number, at(1))


# --------------------------------------------------------------------------- lifecycle


async def test_ping(store: LinkStore) -> None:
    await store.ping()


# --------------------------------------------------------------------------- links


async def test_create_pending_link_and_look_it_up(store: LinkStore) -> None:
    link = await store.create_pending_link(BP1, T0)
    assert link.bp_incident_id == BP1
    assert link.state == LinkState.PENDING
    assert link.sn_sys_id is None
    assert link.bp_environment_id is None
    assert link.sn_number is None
    assert link.created_at == T0
    assert link.updated_at == T0
    assert link.created_at.tzinfo == UTC
    assert link.previous_link_id is None
    assert await store.get_link(link.id) == link
    assert await store.live_link_for_bp(BP1) == link
    assert await store.live_link_for_bp(BP2) is None
    assert await store.get_link(link.id + 1000) is None


async def test_second_live_link_for_one_incident_is_refused(store: LinkStore) -> None:
    await store.create_pending_link(BP1, T0)
    with pytest.raises(DuplicateLinkError):
        await store.create_pending_link(BP1, at(1))
    # another incident is fine
    await store.create_pending_link(BP2, at(2))
    assert await store.count_links() == 2


@pytest.mark.parametrize("state", [LinkState.LINKED, LinkState.RESOLVED])
async def test_linked_and_resolved_links_are_live(store: LinkStore, state: LinkState) -> None:
    link = await linked(store)
    await store.set_link_state(link.id, state, at(2))
    with pytest.raises(DuplicateLinkError):
        await store.create_pending_link(BP1, at(3))


async def test_superseded_link_frees_the_incident_and_history_is_kept(store: LinkStore) -> None:
    old = await linked(store)
    await store.set_link_state(old.id, LinkState.RESOLVED, at(2), reopen_deadline=at(60))
    await store.set_link_state(old.id, LinkState.SUPERSEDED, at(100))
    new = await store.create_pending_link(BP1, at(100), previous_link_id=old.id)
    assert new.previous_link_id == old.id
    assert new.id != old.id
    assert await store.live_link_for_bp(BP1) == new
    history = await store.links_for_bp(BP1)
    assert [x.id for x in history] == [new.id, old.id]
    assert history[1].state == LinkState.SUPERSEDED
    assert await store.links_for_bp(BP2) == []
    # the old sys_id is no longer live: the new link can be confirmed with another one
    confirmed = await store.confirm_link(new.id, SYS2, "INC002", at(101))
    assert await store.live_link_for_sn(SYS1) is None
    assert await store.live_link_for_sn(SYS2) == confirmed


async def test_links_for_sn_finds_history_by_sys_id(store: LinkStore) -> None:
    old = await linked(store, BP1, SYS1)
    await store.set_link_state(old.id, LinkState.SUPERSEDED, at(5))
    new = await store.create_pending_link(BP1, at(6), previous_link_id=old.id)
    await store.confirm_link(new.id, SYS1, "INC001", at(7))  # the same incident, reopened
    found = await store.links_for_sn(SYS1)  # type: ignore[attr-defined]
    assert [x.id for x in found] == [new.id, old.id]
    assert await store.links_for_sn(SYS2) == []  # type: ignore[attr-defined]


async def test_previous_link_must_exist(store: LinkStore) -> None:
    with pytest.raises(StoreError, match="no link"):
        await store.create_pending_link(BP1, T0, previous_link_id=4242)
    assert await store.count_links() == 0


async def test_confirm_link(store: LinkStore) -> None:
    link = await store.create_pending_link(BP1, T0)
    confirmed = await store.confirm_link(link.id, SYS1, "INC001", at(5))
    assert confirmed.state == LinkState.LINKED
    assert confirmed.sn_sys_id == SYS1
    assert confirmed.sn_number == "INC001"
    assert confirmed.created_at == T0
    assert confirmed.updated_at == at(5)
    assert await store.get_link(link.id) == confirmed
    assert await store.live_link_for_sn(SYS1) == confirmed
    assert await store.live_link_for_sn(SYS2) is None
    # confirming again (a retry) is harmless
    again = await store.confirm_link(link.id, SYS1, "INC001", at(6))
    assert again.state == LinkState.LINKED


async def test_the_environment_is_kept_from_create_through_confirm_and_states(
    store: LinkStore,
) -> None:
    link = await store.create_pending_link(BP1, T0, bp_environment_id="env-1")
    assert link.bp_environment_id == "env-1"
    assert (await store.get_link(link.id)) == link
    confirmed = await store.confirm_link(link.id, SYS1, "INC001", at(1))
    assert confirmed.bp_environment_id == "env-1"
    resolved = await store.set_link_state(link.id, LinkState.RESOLVED, at(2))
    assert resolved.bp_environment_id == "env-1"
    assert (await store.live_link_for_sn(SYS1)) == resolved
    assert (await store.live_links_for_bp([BP1]))[BP1].bp_environment_id == "env-1"
    superseded = await store.set_link_state(link.id, LinkState.SUPERSEDED, at(3))
    newer = await store.create_pending_link(BP1, at(4), previous_link_id=link.id)
    assert superseded.bp_environment_id == "env-1" and newer.bp_environment_id is None
    assert [x.bp_environment_id for x in await store.links_for_bp(BP1)] == [None, "env-1"]


async def test_confirm_keeps_resolved_state(store: LinkStore) -> None:
    link = await linked(store)
    await store.set_link_state(link.id, LinkState.RESOLVED, at(2))
    again = await store.confirm_link(link.id, SYS1, "INC001", at(3))
    assert again.state == LinkState.RESOLVED


async def test_one_servicenow_incident_cannot_have_two_live_links(store: LinkStore) -> None:
    await linked(store, BP1, SYS1)
    other = await store.create_pending_link(BP2, at(2))
    with pytest.raises(DuplicateLinkError):
        await store.confirm_link(other.id, SYS1, "INC001", at(3))
    assert (await store.get_link(other.id)).state == LinkState.PENDING  # type: ignore[union-attr]


async def test_confirm_unknown_or_superseded_link_fails(store: LinkStore) -> None:
    with pytest.raises(StoreError, match="no link"):
        await store.confirm_link(999, SYS1, "INC001", T0)
    link = await store.create_pending_link(BP1, T0)
    await store.set_link_state(link.id, LinkState.SUPERSEDED, at(1))
    with pytest.raises(StoreError, match="superseded"):
        await store.confirm_link(link.id, SYS1, "INC001", at(2))


async def test_set_link_state_resolved_then_reopened(store: LinkStore) -> None:
    link = await linked(store)
    resolved = await store.set_link_state(
        link.id, LinkState.RESOLVED, at(10), reopen_deadline=at(1810)
    )
    assert resolved.state == LinkState.RESOLVED
    assert resolved.resolved_at == at(10)  # defaults to now
    assert resolved.reopen_deadline == at(1810)
    assert resolved.updated_at == at(10)
    explicit = await store.set_link_state(
        link.id, LinkState.RESOLVED, at(11), resolved_at=at(9), reopen_deadline=at(1809)
    )
    assert explicit.resolved_at == at(9)
    assert explicit.reopen_deadline == at(1809)
    reopened = await store.set_link_state(link.id, LinkState.LINKED, at(20))
    assert reopened.state == LinkState.LINKED
    assert reopened.resolved_at is None
    assert reopened.reopen_deadline is None
    assert await store.get_link(link.id) == reopened


async def test_superseding_keeps_resolution_times(store: LinkStore) -> None:
    link = await linked(store)
    await store.set_link_state(link.id, LinkState.RESOLVED, at(10), reopen_deadline=at(70))
    superseded = await store.set_link_state(link.id, LinkState.SUPERSEDED, at(100))
    assert superseded.resolved_at == at(10)
    assert superseded.reopen_deadline == at(70)
    assert await store.live_link_for_bp(BP1) is None
    assert await store.live_link_for_sn(SYS1) is None


async def test_superseded_link_cannot_come_back_while_another_is_live(store: LinkStore) -> None:
    old = await store.create_pending_link(BP1, T0)
    await store.set_link_state(old.id, LinkState.SUPERSEDED, at(1))
    await store.create_pending_link(BP1, at(2), previous_link_id=old.id)
    with pytest.raises(DuplicateLinkError):
        await store.set_link_state(old.id, LinkState.LINKED, at(3))
    assert (await store.get_link(old.id)).state == LinkState.SUPERSEDED  # type: ignore[union-attr]


async def test_move_link_hands_the_link_to_another_incident(store: LinkStore) -> None:
    link = await linked(store)
    await store.record_field_states(link.id, Side.BIGPANDA, {"team": "db"}, at(2))
    moved = await store.move_link(link.id, BP2, at(3), bp_environment_id="env-2")
    assert (moved.id, moved.bp_incident_id, moved.bp_environment_id) == (link.id, BP2, "env-2")
    assert (moved.state, moved.sn_sys_id, moved.sn_number) == (link.state, SYS1, "INC001")
    assert moved.updated_at == at(3)
    assert await store.live_link_for_bp(BP1) is None
    assert await store.live_link_for_bp(BP2) == moved
    assert await store.live_link_for_sn(SYS1) == moved
    assert await store.links_for_bp(BP1) == []
    states = await store.field_states(link.id)
    assert states[(Side.BIGPANDA, "team")].value == "db"  # kept with the link
    # the source is free again; moving once more is a no-op
    assert (await store.move_link(link.id, BP2, at(4))) == moved
    fresh = await store.create_pending_link(BP1, at(5))
    assert fresh.bp_incident_id == BP1


async def test_move_link_keeps_the_environment_when_none_is_given(store: LinkStore) -> None:
    pending = await store.create_pending_link(BP1, T0, bp_environment_id="env-1")
    link = await store.confirm_link(pending.id, SYS1, "INC001", at(1))
    moved = await store.move_link(link.id, BP2, at(2))
    assert moved.bp_environment_id == "env-1"


async def test_move_link_to_an_incident_with_a_live_link_is_refused(store: LinkStore) -> None:
    link = await linked(store)
    other = await linked(store, BP2, SYS2, "INC002")
    with pytest.raises(DuplicateLinkError):
        await store.move_link(link.id, BP2, at(3))
    assert await store.live_link_for_bp(BP1) == await store.get_link(link.id)
    assert await store.live_link_for_bp(BP2) == other


async def test_only_a_live_link_moves(store: LinkStore) -> None:
    link = await linked(store)
    await store.set_link_state(link.id, LinkState.SUPERSEDED, at(2))
    with pytest.raises(StoreError):
        await store.move_link(link.id, BP2, at(3))
    with pytest.raises(StoreError):
        await store.move_link(9999, BP2, at(3))


async def test_set_state_of_unknown_link_fails(store: LinkStore) -> None:
    with pytest.raises(StoreError, match="no link"):
        await store.set_link_state(77, LinkState.RESOLVED, T0)


async def test_list_and_count_links(store: LinkStore) -> None:
    ids = []
    for i in range(5):
        link = await store.create_pending_link(f"{i:024x}", at(i))
        ids.append(link.id)
    await store.confirm_link(ids[1], SYS1, "INC1", at(10))
    await store.confirm_link(ids[3], SYS2, "INC2", at(10))
    await store.set_link_state(ids[3], LinkState.RESOLVED, at(11))
    assert [x.id for x in await store.list_links()] == ids[::-1]  # newest first
    assert [x.id for x in await store.list_links(limit=2)] == [ids[4], ids[3]]
    assert [x.id for x in await store.list_links(limit=2, offset=2)] == [ids[2], ids[1]]
    assert [x.id for x in await store.list_links([LinkState.PENDING])] == [ids[4], ids[2], ids[0]]
    live = await store.list_links(LIVE_LINK_STATES)
    assert len(live) == 5
    assert await store.count_links() == 5
    assert await store.count_links([LinkState.LINKED]) == 1
    assert await store.count_links([LinkState.LINKED, LinkState.RESOLVED]) == 2
    assert await store.count_links([LinkState.SUPERSEDED]) == 0
    assert await store.list_links([]) == []
    assert await store.count_links([]) == 0


# --------------------------------------------------------------------------- field state


async def test_field_states_round_trip_and_upsert(store: LinkStore) -> None:
    link = await linked(store)
    assert await store.field_states(link.id) == {}
    await store.record_field_states(
        link.id, Side.SERVICENOW, {"short_description": "disk full", "assignment_group": None}, T0
    )
    await store.record_field_states(link.id, Side.BIGPANDA, {"short_description": "x"}, at(1))
    states = await store.field_states(link.id)
    assert set(states) == {
        (Side.SERVICENOW, "short_description"),
        (Side.SERVICENOW, "assignment_group"),
        (Side.BIGPANDA, "short_description"),
    }
    sd = states[(Side.SERVICENOW, "short_description")]
    assert sd.value == "disk full"
    assert sd.link_id == link.id
    assert sd.side == Side.SERVICENOW
    assert sd.synced_at == T0
    assert sd.synced_at.tzinfo == UTC
    assert states[(Side.SERVICENOW, "assignment_group")].value is None
    # upsert: overwrite one, keep the others
    await store.record_field_states(link.id, Side.SERVICENOW, {"short_description": "ok"}, at(5))
    states = await store.field_states(link.id)
    assert states[(Side.SERVICENOW, "short_description")].value == "ok"
    assert states[(Side.SERVICENOW, "short_description")].synced_at == at(5)
    assert states[(Side.BIGPANDA, "short_description")].value == "x"
    assert len(states) == 3
    # empty mapping: nothing changes
    await store.record_field_states(link.id, Side.SERVICENOW, {}, at(6))
    assert await store.field_states(link.id) == states
    # field states belong to one link
    other = await store.create_pending_link(BP2, at(7))
    assert await store.field_states(other.id) == {}


async def test_field_states_for_several_links_in_one_read(store: LinkStore) -> None:
    first = await linked(store)
    second = await store.create_pending_link(BP2, at(1))
    bare = await store.create_pending_link(BP3, at(2))
    await store.record_field_states(first.id, Side.SERVICENOW, {"impact": "2", "urgency": None}, T0)
    await store.record_field_states(first.id, Side.BIGPANDA, {"impact_level": "high"}, at(3))
    await store.record_field_states(second.id, Side.BIGPANDA, {"impact_level": "low"}, at(4))
    states = await store.field_states_for([second.id, first.id, bare.id, 9_999, first.id])
    assert set(states) == {first.id, second.id, bare.id, 9_999}
    assert states[first.id] == await store.field_states(first.id)
    assert set(states[first.id]) == {
        (Side.SERVICENOW, "impact"),
        (Side.SERVICENOW, "urgency"),
        (Side.BIGPANDA, "impact_level"),
    }
    assert states[first.id][(Side.BIGPANDA, "impact_level")].synced_at == at(3)
    assert states[first.id][(Side.SERVICENOW, "urgency")].value is None
    low = states[second.id][(Side.BIGPANDA, "impact_level")]
    assert (low.link_id, low.value, low.synced_at) == (second.id, "low", at(4))
    assert len(states[second.id]) == 1
    assert states[bare.id] == {}
    assert states[9_999] == {}
    assert await store.field_states_for([]) == {}


async def test_field_states_of_unknown_link_fail(store: LinkStore) -> None:
    with pytest.raises(StoreError, match="no link"):
        await store.record_field_states(31337, Side.BIGPANDA, {"a": "b"}, T0)


async def test_field_state_keeps_unicode_and_long_text(store: LinkStore) -> None:
    link = await linked(store)
    text = "Ünïcødé ✓ " * 500 + "'; DROP TABLE links; --"
    await store.record_field_states(link.id, Side.SERVICENOW, {"description": text}, T0)
    states = await store.field_states(link.id)
    assert states[(Side.SERVICENOW, "description")].value == text


# --------------------------------------------------------------------------- outbox


async def test_enqueue_records_a_pending_item(store: LinkStore) -> None:
    link = await store.create_pending_link(BP1, T0)
    payload = {"short_description": "x", "nested": {"list": [1, 2, None], "ok": True}}
    item = await store.enqueue(
        "sn.create",
        f"servicenow:{BP1}",
        payload,
        "create:" + BP1,
        T0,
        link_id=link.id,
        bp_incident_id=BP1,
    )
    assert item.kind == "sn.create"
    assert item.target == f"servicenow:{BP1}"
    assert dict(item.payload) == payload
    assert item.idempotency_key == "create:" + BP1
    assert item.state == OutboxState.PENDING
    assert item.attempts == 0
    assert item.next_attempt_at == T0
    assert item.created_at == T0
    assert item.updated_at == T0
    assert item.link_id == link.id
    assert item.bp_incident_id == BP1
    assert item.sn_sys_id is None
    assert item.last_error is None
    assert await store.list_outbox() == [item]
    payload["short_description"] = "changed after enqueue"
    assert (await store.list_outbox())[0].payload["short_description"] == "x"


async def test_enqueue_is_idempotent_on_key_until_done(store: LinkStore) -> None:
    first = await store.enqueue("sn.update", "servicenow:x", {"a": 1}, "k1", T0)
    again = await store.enqueue("sn.update", "servicenow:x", {"a": 2}, "k1", at(5))
    assert again == first
    assert await store.count_outbox() == 1
    # in flight: still the same item
    [claimed] = await store.claim_due(at(6), limit=10, lease_s=60)
    assert (await store.enqueue("sn.update", "servicenow:x", {"a": 3}, "k1", at(7))).id == first.id
    # done: the key is free again
    await store.complete(claimed.id, at(8))
    fresh = await store.enqueue("sn.update", "servicenow:x", {"a": 4}, "k1", at(9))
    assert fresh.id != first.id
    assert fresh.state == OutboxState.PENDING
    assert dict(fresh.payload) == {"a": 4}
    assert await store.count_outbox() == 2
    assert await store.count_outbox([OutboxState.DONE]) == 1


async def test_enqueue_returns_a_dead_item_with_that_key(store: LinkStore) -> None:
    item = await store.enqueue("bp.tags", "bigpanda:x", {}, "k", T0)
    dead = await store.dead_letter(item.id, "HTTP 400: bad", at(1))
    assert await store.enqueue("bp.tags", "bigpanda:x", {}, "k", at(2)) == dead


async def test_enqueue_for_unknown_link_fails(store: LinkStore) -> None:
    with pytest.raises(StoreError, match="no link"):
        await store.enqueue("sn.update", "servicenow:x", {}, "k", T0, link_id=999)
    assert await store.count_outbox() == 0


async def test_claim_due_takes_due_items_in_order(store: LinkStore) -> None:
    a = await store.enqueue("k", "t", {}, "a", at(10))
    b = await store.enqueue("k", "t", {}, "b", at(5))
    c = await store.enqueue("k", "t", {}, "c", at(5))
    late = await store.enqueue("k", "t", {}, "late", at(100))
    assert await store.claim_due(at(4), limit=10, lease_s=60) == []
    claimed = await store.claim_due(at(20), limit=2, lease_s=60)
    assert [x.id for x in claimed] == [b.id, c.id]  # by next_attempt_at, then id
    assert all(x.state == OutboxState.IN_FLIGHT for x in claimed)
    assert all(x.updated_at == at(20) for x in claimed)
    assert all(x.attempts == 0 for x in claimed)
    assert [x.id for x in await store.claim_due(at(20), limit=10, lease_s=60)] == [a.id]
    assert await store.claim_due(at(21), limit=10, lease_s=60) == []
    assert await store.count_outbox([OutboxState.IN_FLIGHT]) == 3
    assert await store.claim_due(at(100), limit=0, lease_s=60) == []
    assert [x.id for x in await store.claim_due(at(100), limit=10, lease_s=600)] == [late.id]
    stored = {x.id: x for x in await store.list_outbox()}
    assert stored[b.id].state == OutboxState.IN_FLIGHT
    assert stored[b.id].updated_at == at(20)


async def test_in_flight_item_is_reclaimed_after_its_lease(store: LinkStore) -> None:
    item = await store.enqueue("k", "t", {}, "a", T0)
    [first] = await store.claim_due(T0, limit=1, lease_s=30)
    assert first.id == item.id
    assert await store.claim_due(at(29), limit=1, lease_s=30) == []
    [again] = await store.claim_due(at(30), limit=1, lease_s=30)  # the claimer crashed
    assert again.id == item.id
    assert again.updated_at == at(30)
    assert await store.claim_due(at(31), limit=1, lease_s=30) == []


async def test_fail_counts_the_attempt_and_schedules_a_retry(store: LinkStore) -> None:
    item = await store.enqueue("k", "t", {}, "a", T0)
    [claimed] = await store.claim_due(T0, limit=1, lease_s=30)
    failed = await store.fail(claimed.id, "HTTP 503: busy", at(900), at(1))
    assert failed.id == item.id
    assert failed.state == OutboxState.PENDING
    assert failed.attempts == 1
    assert failed.last_error == "HTTP 503: busy"
    assert failed.next_attempt_at == at(900)
    assert failed.updated_at == at(1)
    assert await store.claim_due(at(899), limit=1, lease_s=30) == []
    [again] = await store.claim_due(at(900), limit=1, lease_s=30)
    assert (await store.fail(again.id, "timeout", at(1800), at(901))).attempts == 2


async def test_outbox_heads_items_and_one_targets_items(store: LinkStore) -> None:
    """What a cycle reads of its open writes: every open item's head (no payload),
    queue order; the whole items of some ids; one target's items."""
    link = await linked(store)
    a = await store.enqueue("sn.update", "servicenow:1", {"x": 1}, "a", T0, link_id=link.id)
    b = await store.enqueue("bp.tags", "bigpanda:2", {"x": 2}, "b", T0)
    c = await store.enqueue("sn.update", "servicenow:1", {"x": 3}, "c", T0)
    d = await store.enqueue("sn.update", "servicenow:3", {"x": 4}, "d", T0)
    await store.dead_letter(b.id, "permanent: HTTP 400", at(5))
    await store.complete(d.id, at(6))
    open_states = [OutboxState.PENDING, OutboxState.IN_FLIGHT, OutboxState.DEAD]
    heads = await store.outbox_heads(open_states)
    assert heads == [
        OutboxHead(a.id, "sn.update", "servicenow:1", OutboxState.PENDING, 0, T0, link.id),
        OutboxHead(
            b.id, "bp.tags", "bigpanda:2", OutboxState.DEAD, 1, at(5), None, "permanent: HTTP 400"
        ),
        OutboxHead(c.id, "sn.update", "servicenow:1", OutboxState.PENDING, 0, T0),
    ]
    assert heads[1].updated_at.tzinfo is not None
    assert [h.id for h in await store.outbox_heads([OutboxState.DONE])] == [d.id]
    assert await store.outbox_heads([]) == []
    everything = {x.id: x for x in await store.list_outbox()}
    assert await store.outbox_items([c.id, a.id, 424242, a.id]) == [
        everything[a.id],
        everything[c.id],
    ]
    assert await store.outbox_items([]) == []
    one = await store.list_outbox(open_states, target="servicenow:1")
    assert [x.id for x in one] == [a.id, c.id]
    assert [x.id for x in await store.list_outbox(target="servicenow:3")] == [d.id]
    assert [x.id for x in await store.list_outbox(target="servicenow:1", limit=1)] == [a.id]
    assert await store.list_outbox([OutboxState.DEAD], target="servicenow:1") == []


async def test_dead_letter_list_retry_and_drop(store: LinkStore) -> None:
    a = await store.enqueue("sn.update", "servicenow:1", {"x": 1}, "a", T0)
    b = await store.enqueue("sn.update", "servicenow:2", {"x": 2}, "b", T0)
    c = await store.enqueue("sn.update", "servicenow:3", {"x": 3}, "c", T0)
    await store.fail(a.id, "first", at(1), at(1))
    dead_a = await store.dead_letter(a.id, "HTTP 400: invalid field", at(2))
    assert dead_a.state == OutboxState.DEAD
    assert dead_a.attempts == 2  # the attempt that gave up counts
    assert dead_a.last_error == "HTTP 400: invalid field"
    assert dead_a.updated_at == at(2)
    await store.dead_letter(b.id, "HTTP 403", at(3))
    assert [x.id for x in await store.list_outbox([OutboxState.DEAD])] == [a.id, b.id]
    assert await store.count_outbox([OutboxState.DEAD]) == 2
    assert [x.id for x in await store.list_outbox([OutboxState.PENDING])] == [c.id]
    assert len(await store.list_outbox(limit=2)) == 2
    # dead items are never claimed
    assert [x.id for x in await store.claim_due(at(100), limit=10, lease_s=1)] == [c.id]
    # retry one
    assert await store.retry_dead(a.id, at(50)) == 1
    retried = {x.id: x for x in await store.list_outbox()}[a.id]
    assert retried.state == OutboxState.PENDING
    assert retried.attempts == 0
    assert retried.next_attempt_at == at(50)
    assert retried.last_error == "HTTP 400: invalid field"
    assert await store.retry_dead(a.id, at(51)) == 0  # not dead any more
    assert await store.retry_dead(c.id, at(51)) == 0  # never dead
    assert await store.retry_dead(424242, at(51)) == 0
    # drop
    assert await store.drop_dead(c.id) is False
    assert await store.drop_dead(b.id) is True
    assert await store.drop_dead(b.id) is False
    assert b.id not in {x.id for x in await store.list_outbox()}
    # retry all
    await store.dead_letter(a.id, "again", at(60))
    await store.dead_letter(c.id, "again", at(60))
    assert await store.retry_dead(None, at(70)) == 2
    assert await store.count_outbox([OutboxState.DEAD]) == 0
    assert await store.count_outbox([OutboxState.PENDING]) == 2


async def test_open_writes_of_some_targets_in_one_read(store: LinkStore) -> None:
    pending = await store.enqueue("sn.update", "servicenow:1", {}, "pending", T0)
    in_flight = await store.enqueue("sn.reopen", "servicenow:1", {}, "in-flight", T0)
    await store.claim_due(T0, limit=1, lease_s=60)  # the oldest: `pending` is in flight
    await store.enqueue("bp.tags", "bigpanda:1", {}, "retry", T0)
    done = await store.enqueue("bp.comment", "bigpanda:2", {}, "done", T0)
    await store.complete(done.id, at(1))
    once_dead = await store.enqueue("sn.resolve", "servicenow:3", {}, "dead-1", T0)
    await store.dead_letter(once_dead.id, "HTTP 503", at(1))  # 1 attempt: more to come
    spent = await store.enqueue("sn.update", "servicenow:4", {}, "dead-3", T0)
    for second in (1, 2, 3):  # its last attempt failed: waits for an operator
        await store.dead_letter(spent.id, "HTTP 503", at(second))
    refused = await store.enqueue("bp.tags", "bigpanda:5", {}, "refused", T0)
    await store.dead_letter(refused.id, PERMANENT_ERROR_PREFIX + "HTTP 400: no", at(1))
    await store.enqueue("sn.update", "servicenow:other", {}, "not-asked", T0)
    targets = ["servicenow:1", "bigpanda:1", "bigpanda:2", "servicenow:3", "servicenow:4"]
    targets += ["bigpanda:5", "servicenow:none", "bigpanda:1"]
    assert await store.open_writes(targets, attempts=3) == {
        "servicenow:1": frozenset({"sn.update", "sn.reopen"}),
        "bigpanda:1": frozenset({"bp.tags"}),
        "servicenow:3": frozenset({"sn.resolve"}),
    }
    assert await store.open_writes(["servicenow:3"], attempts=1) == {}
    assert await store.open_writes([], attempts=3) == {}
    assert pending.id < in_flight.id


async def test_unknown_outbox_items_fail(store: LinkStore) -> None:
    with pytest.raises(StoreError, match="no outbox item"):
        await store.complete(5, T0)
    with pytest.raises(StoreError, match="no outbox item"):
        await store.fail(5, "x", T0, T0)
    with pytest.raises(StoreError, match="no outbox item"):
        await store.dead_letter(5, "x", T0)


# --------------------------------------------------------------------------- audit


async def test_audit_record_and_list(store: LinkStore) -> None:
    link = await linked(store)
    await store.record_audit(
        NewAuditEntry("action", "sn.create ok", link_id=link.id, bp_incident_id=BP1), T0
    )
    conflict_entry = NewAuditEntry(
        "conflict",
        "bigpanda wins",
        link_id=link.id,
        bp_incident_id=BP1,
        sn_sys_id=SYS1,
        field="priority",
        bp_value="1",
        sn_value="3",
        detail={"policy": "newest", "times": [1, 2]},
    )
    await store.record_audit(conflict_entry, at(1))
    await store.record_audit(NewAuditEntry("action", "bp.tags ok", bp_incident_id=BP2), at(2))
    entries = await store.list_audit()
    assert [e.outcome for e in entries] == ["bp.tags ok", "bigpanda wins", "sn.create ok"]
    conflict = entries[1]
    assert conflict.kind == "conflict"
    assert conflict.at == at(1)
    assert conflict.at.tzinfo == UTC
    assert conflict.link_id == link.id
    assert conflict.sn_sys_id == SYS1
    assert conflict.field == "priority"
    assert (conflict.bp_value, conflict.sn_value) == ("1", "3")
    assert dict(conflict.detail) == {"policy": "newest", "times": [1, 2]}
    assert dict(entries[0].detail) == {}
    assert entries[0].link_id is None
    assert [e.outcome for e in await store.list_audit(link_id=link.id)] == [
        "bigpanda wins",
        "sn.create ok",
    ]
    assert [e.outcome for e in await store.list_audit(kind="action")] == [
        "bp.tags ok",
        "sn.create ok",
    ]
    assert [e.kind for e in await store.list_audit(link_id=link.id, kind="conflict")] == [
        "conflict"
    ]
    assert len(await store.list_audit(limit=1)) == 1


async def test_record_audit_keeps_every_field_of_the_entry(store: LinkStore) -> None:
    link = await linked(store)
    entry = NewAuditEntry(
        "conflict",
        "bigpanda wins",
        link_id=link.id,
        bp_incident_id=BP1,
        sn_sys_id=SYS1,
        field="priority",
        bp_value="1",
        sn_value="3",
        detail={"policy": "newest"},
    )
    await store.record_audit(entry, at(1))
    await store.record_audit(NewAuditEntry("action", "bp.tags ok"), at(2))
    newest, recorded = await store.list_audit()
    assert (newest.kind, newest.outcome, dict(newest.detail)) == ("action", "bp.tags ok", {})
    assert newest.link_id is None and newest.at == at(2)
    assert (recorded.kind, recorded.outcome, recorded.at) == ("conflict", "bigpanda wins", at(1))
    assert (recorded.link_id, recorded.bp_incident_id, recorded.sn_sys_id) == (link.id, BP1, SYS1)
    assert (recorded.field, recorded.bp_value, recorded.sn_value) == ("priority", "1", "3")
    assert dict(recorded.detail) == {"policy": "newest"}


# --------------------------------------------------------------------------- cursors


async def test_cursors_round_trip(store: LinkStore) -> None:
    empty = await store.get_cursor(Side.SERVICENOW)
    assert empty == Cursor(side=Side.SERVICENOW, watermark=None, seen=frozenset())
    cursor = Cursor(Side.SERVICENOW, at(10), frozenset({"abc:3", "def:1"}))
    await store.advance_cursor(cursor, at(11))
    assert await store.get_cursor(Side.SERVICENOW) == cursor
    assert (await store.get_cursor(Side.SERVICENOW)).watermark.tzinfo == UTC  # type: ignore[union-attr]
    assert await store.get_cursor(Side.BIGPANDA) == Cursor(Side.BIGPANDA, None)
    later = Cursor(Side.SERVICENOW, at(20), frozenset())
    await store.advance_cursor(later, at(21))
    assert await store.get_cursor(Side.SERVICENOW) == later
    await store.advance_cursor(Cursor(Side.BIGPANDA, at(5), frozenset({"x"})), at(21))
    assert (await store.get_cursor(Side.BIGPANDA)).seen == frozenset({"x"})
    assert await store.get_cursor(Side.SERVICENOW) == later


async def test_checkpoints(store: LinkStore) -> None:
    assert await store.get_checkpoint("backfill") is None
    await store.set_checkpoint("backfill", '{"page": 3}', T0)
    assert await store.get_checkpoint("backfill") == '{"page": 3}'
    await store.set_checkpoint("backfill", '{"page": 4}', at(1))
    assert await store.get_checkpoint("backfill") == '{"page": 4}'
    assert await store.get_checkpoint("other") is None


# --------------------------------------------------------------------------- time


async def test_timestamps_come_back_as_the_same_instant_in_utc(store: LinkStore) -> None:
    plus2 = timezone(timedelta(hours=2))
    local = datetime(2026, 6, 1, 14, 30, 15, 654321, tzinfo=plus2)
    link = await store.create_pending_link(BP1, local)
    fetched = await store.get_link(link.id)
    assert fetched is not None
    assert fetched.created_at == local
    assert fetched.created_at.tzinfo == UTC
    assert fetched.created_at.hour == 12
    assert link.created_at.tzinfo == UTC
    await store.set_link_state(link.id, LinkState.RESOLVED, local, reopen_deadline=local)
    again = await store.get_link(link.id)
    assert again is not None
    assert again.reopen_deadline == local
    assert again.reopen_deadline.tzinfo == UTC  # type: ignore[union-attr]
    item = await store.enqueue("k", "t", {}, "key", local)
    assert (await store.list_outbox())[0].next_attempt_at == item.next_attempt_at == local
    # comparisons in the database are by instant, not by the text of the offset
    assert await store.claim_due(local - timedelta(microseconds=1), limit=1, lease_s=1) == []
    assert len(await store.claim_due(local.astimezone(UTC), limit=1, lease_s=1)) == 1


async def test_naive_datetimes_are_refused(store: LinkStore) -> None:
    with pytest.raises(ValueError, match="naive"):
        await store.create_pending_link(BP1, datetime(2026, 1, 1))
    assert await store.count_links() == 0


# --------------------------------------------------------------------------- concurrency


async def test_two_writers_cannot_create_two_live_links(backend: Backend) -> None:
    first = await backend.open()
    second = await backend.open()
    for round_no in range(5):
        bp = f"{round_no:024x}"
        results = await asyncio.gather(
            first.create_pending_link(bp, at(round_no)),
            second.create_pending_link(bp, at(round_no)),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 1, results
        assert isinstance(errors[0], DuplicateLinkError), errors
        assert len(await first.links_for_bp(bp)) == 1


async def test_concurrent_claims_never_hand_out_an_item_twice(backend: Backend) -> None:
    first = await backend.open()
    second = await backend.open()
    for i in range(20):
        await first.enqueue("k", "t", {"i": i}, f"key{i}", T0)
    batches = await asyncio.gather(
        *(s.claim_due(at(1), limit=3, lease_s=60) for s in (first, second) * 4)
    )
    ids = [item.id for batch in batches for item in batch]
    assert len(ids) == len(set(ids)) == 20


async def test_concurrent_enqueue_of_one_key_makes_one_item(backend: Backend) -> None:
    first = await backend.open()
    second = await backend.open()
    items = await asyncio.gather(
        first.enqueue("k", "t", {}, "same", T0), second.enqueue("k", "t", {}, "same", T0)
    )
    assert items[0].id == items[1].id
    assert await first.count_outbox() == 1


# --------------------------------------------------------------------------- fencing


async def test_take_epoch_increments_and_fences(backend: Backend) -> None:
    leader = await backend.open()
    follower = await backend.open()
    assert await leader.take_epoch("replica-a", T0) == 1
    await leader.create_pending_link(BP1, T0)  # the leader writes
    assert await follower.take_epoch("replica-b", at(30)) == 2  # b takes over
    await follower.create_pending_link(BP2, at(31))
    # a's epoch is stale: every kind of write is refused, reads still work
    with pytest.raises(FencedError):
        await leader.create_pending_link("c" * 24, at(32))
    with pytest.raises(FencedError):
        await leader.enqueue("k", "t", {}, "key", at(32))
    with pytest.raises(FencedError):
        await leader.claim_due(at(32), limit=1, lease_s=1)
    with pytest.raises(FencedError):
        await leader.record_audit(NewAuditEntry("action", "x"), at(32))
    with pytest.raises(FencedError):
        await leader.advance_cursor(Cursor(Side.BIGPANDA, at(1)), at(32))
    with pytest.raises(FencedError):
        await leader.set_checkpoint("x", "y", at(32))
    assert await leader.count_links() == 2
    assert await follower.count_outbox() == 0
    # a takes the lead back: it writes again and b is fenced out
    assert await leader.take_epoch("replica-a", at(60)) == 3
    await leader.set_checkpoint("x", "y", at(61))
    with pytest.raises(FencedError):
        await follower.set_checkpoint("x", "z", at(62))


async def test_fence_by_epoch_and_unfenced_stores(backend: Backend) -> None:
    daemon = await backend.open()
    cli = await backend.open()
    epoch = await daemon.take_epoch("replica-a", T0)
    cli.fence(epoch)
    await cli.set_checkpoint("a", "1", T0)
    cli.fence(epoch + 1)
    with pytest.raises(FencedError):
        await cli.set_checkpoint("a", "2", T0)
    cli.fence(None)  # unfenced (the CLI, a single SQLite daemon): no check
    await cli.set_checkpoint("a", "3", T0)
    assert await daemon.get_checkpoint("a") == "3"


# --- several steps in one transaction (the executor's hot paths)


def _new(
    key: str, link_id: int | None = None, target: str = "servicenow:create:x"
) -> NewOutboxItem:
    return NewOutboxItem("sn.create", target, {"link_id": link_id, "k": key}, key, link_id, BP1)


async def test_create_pending_link_and_enqueue_writes_both(store: LinkStore) -> None:
    link, item = await store.create_pending_link_and_enqueue(
        BP1, T0, lambda link: _new("create-1", link.id), bp_environment_id="env-1"
    )
    assert link.state is LinkState.PENDING and link.bp_incident_id == BP1
    assert link.bp_environment_id == "env-1"
    assert (await store.live_link_for_bp(BP1)) == link
    assert item.state is OutboxState.PENDING and item.attempts == 0
    assert item.link_id == link.id and item.payload == {"link_id": link.id, "k": "create-1"}
    assert item.next_attempt_at == T0 and item.bp_incident_id == BP1
    assert [i.id for i in await store.list_outbox([OutboxState.PENDING])] == [item.id]


async def test_create_pending_link_and_enqueue_writes_nothing_on_a_duplicate(
    store: LinkStore,
) -> None:
    first = await store.create_pending_link(BP1, T0)
    with pytest.raises(DuplicateLinkError):
        await store.create_pending_link_and_enqueue(
            BP1, at(1), lambda link: _new("create-2", link.id), bp_environment_id="e"
        )
    assert await store.links_for_bp(BP1) == [first]
    assert await store.count_outbox() == 0


async def test_create_pending_link_and_enqueue_supersedes_nothing_itself(
    store: LinkStore,
) -> None:
    old = await linked(store)
    await store.set_link_state(old.id, LinkState.SUPERSEDED, at(2))
    link, item = await store.create_pending_link_and_enqueue(
        BP1, at(3), lambda link: _new("create-3", link.id), previous_link_id=old.id
    )
    assert link.previous_link_id == old.id and item.link_id == link.id
    assert [x.id for x in await store.links_for_bp(BP1)] == [link.id, old.id]


async def test_confirm_link_and_record_writes_link_audit_and_field_states(
    store: LinkStore,
) -> None:
    link = await store.create_pending_link(BP1, T0)
    confirmed = await store.confirm_link_and_record(
        link.id,
        SYS1,
        "INC001",
        at(1),
        audit_outcome="created",
        field_states=[
            FieldStates(link.id, Side.BIGPANDA, {"impact_level": "high"}),
            FieldStates(link.id, Side.SERVICENOW, {"impact": "1", "urgency": None}),
        ],
    )
    assert confirmed.state is LinkState.LINKED and confirmed.sn_sys_id == SYS1
    assert confirmed.sn_number == "INC001" and confirmed.updated_at == at(1)
    [entry] = await store.list_audit(link_id=link.id, kind="action")
    assert (entry.outcome, entry.bp_incident_id, entry.sn_sys_id) == ("created", BP1, SYS1)
    states = await store.field_states(link.id)
    assert {k: v.value for k, v in states.items()} == {
        (Side.BIGPANDA, "impact_level"): "high",
        (Side.SERVICENOW, "impact"): "1",
        (Side.SERVICENOW, "urgency"): None,
    }
    assert all(v.synced_at == at(1) for v in states.values())


async def test_confirm_link_and_record_writes_nothing_when_refused(store: LinkStore) -> None:
    other = await linked(store, BP2, SYS1)
    link = await store.create_pending_link(BP1, T0)
    with pytest.raises(DuplicateLinkError):  # SYS1 is BP2's
        await store.confirm_link_and_record(
            link.id,
            SYS1,
            "INC9",
            at(2),
            audit_outcome="adopted",
            field_states=[FieldStates(link.id, Side.BIGPANDA, {"a": "b"})],
        )
    assert (await store.get_link(link.id)) == link
    assert await store.list_audit(link_id=link.id) == []
    assert await store.field_states(link.id) == {}
    with pytest.raises(StoreError):
        await store.confirm_link_and_record(999, SYS2, "INC2", at(3), audit_outcome="created")
    assert (await store.get_link(other.id)) == other


async def test_complete_and_enqueue_records_follow_ups_before_done(store: LinkStore) -> None:
    link = await linked(store)
    item = await store.enqueue("sn.create", "servicenow:create:x", {}, "create", T0)
    [tag, comment] = await store.complete_and_enqueue(
        item.id,
        at(5),
        follow_ups=[
            _new("tag", link.id, "bigpanda:x"),
            NewOutboxItem("bp.comment", "bigpanda:x", {"text": "hi"}, "comment"),
        ],
        field_states=[FieldStates(link.id, Side.BIGPANDA, {"snow": "INC001 url"})],
    )
    assert [i.state for i in (tag, comment)] == [OutboxState.PENDING, OutboxState.PENDING]
    assert tag.id < comment.id and tag.link_id == link.id and comment.link_id is None
    assert tag.created_at == at(5) and comment.payload == {"text": "hi"}
    assert [i.id for i in await store.list_outbox([OutboxState.DONE])] == [item.id]
    assert [i.id for i in await store.list_outbox([OutboxState.PENDING])] == [tag.id, comment.id]
    states = await store.field_states(link.id)
    assert states[(Side.BIGPANDA, "snow")].value == "INC001 url"
    # a follow-up whose key is still open is that item (enqueue's idempotence)
    other = await store.enqueue("bp.resolve", "bigpanda:y", {}, "other", at(6))
    [again] = await store.complete_and_enqueue(
        other.id, at(7), follow_ups=[_new("tag", link.id, "bigpanda:x")]
    )
    assert again == tag


async def test_complete_and_enqueue_writes_nothing_when_refused(store: LinkStore) -> None:
    link = await linked(store)
    with pytest.raises(StoreError):  # no such item
        await store.complete_and_enqueue(
            999,
            at(1),
            follow_ups=[_new("tag", link.id, "bigpanda:x")],
            field_states=[FieldStates(link.id, Side.BIGPANDA, {"snow": "v"})],
        )
    item = await store.enqueue("sn.update", "servicenow:1", {}, "u", T0)
    with pytest.raises(StoreError):  # a follow-up for an unknown link
        await store.complete_and_enqueue(item.id, at(2), follow_ups=[_new("tag", 999)])
    assert await store.count_outbox() == 1
    assert (await store.list_outbox())[0].state is OutboxState.PENDING
    assert await store.field_states(link.id) == {}


async def test_complete_and_enqueue_confirms_a_create_with_its_completion(
    store: LinkStore,
) -> None:
    link, item = await store.create_pending_link_and_enqueue(
        BP1, T0, lambda link: _new("create", link.id)
    )
    [tag] = await store.complete_and_enqueue(
        item.id,
        at(5),
        follow_ups=[_new("tag", link.id, "bigpanda:x")],
        field_states=[FieldStates(link.id, Side.SERVICENOW, {"impact": "1"})],
        confirm=LinkConfirmation(link.id, SYS1, "INC001", "created"),
    )
    confirmed = await store.get_link(link.id)
    assert confirmed is not None and confirmed.state is LinkState.LINKED
    assert (confirmed.sn_sys_id, confirmed.sn_number, confirmed.updated_at) == (
        SYS1,
        "INC001",
        at(5),
    )
    assert await store.live_link_for_sn(SYS1) == confirmed
    [entry] = await store.list_audit(link_id=link.id, kind="action")
    assert (entry.outcome, entry.bp_incident_id, entry.sn_sys_id) == ("created", BP1, SYS1)
    assert (await store.field_states(link.id))[(Side.SERVICENOW, "impact")].value == "1"
    assert [i.id for i in await store.list_outbox([OutboxState.DONE])] == [item.id]
    assert [i.id for i in await store.list_outbox([OutboxState.PENDING])] == [tag.id]
    # without an audit outcome: no audit entry
    link2, item2 = await store.create_pending_link_and_enqueue(
        BP2, at(6), lambda link: _new("create-2", link.id)
    )
    await store.complete_and_enqueue(
        item2.id, at(7), confirm=LinkConfirmation(link2.id, SYS2, "INC002")
    )
    assert (await store.get_link(link2.id)).state is LinkState.LINKED  # type: ignore[union-attr]
    assert await store.list_audit(link_id=link2.id) == []


async def test_complete_and_enqueue_with_a_refused_confirm_writes_nothing(
    store: LinkStore,
) -> None:
    other = await linked(store, BP2, SYS1)
    link, item = await store.create_pending_link_and_enqueue(
        BP1, T0, lambda link: _new("create", link.id)
    )
    with pytest.raises(DuplicateLinkError):  # SYS1 is BP2's
        await store.complete_and_enqueue(
            item.id,
            at(2),
            follow_ups=[_new("tag", link.id, "bigpanda:x")],
            field_states=[FieldStates(link.id, Side.BIGPANDA, {"a": "b"})],
            confirm=LinkConfirmation(link.id, SYS1, "INC9", "adopted"),
        )
    with pytest.raises(StoreError):  # an unknown link
        await store.complete_and_enqueue(item.id, at(3), confirm=LinkConfirmation(999, SYS2, "X"))
    assert (await store.get_link(link.id)) == link
    assert (await store.get_link(other.id)) == other
    assert await store.list_audit(link_id=link.id) == []
    assert await store.field_states(link.id) == {}
    assert [(i.id, i.state) for i in await store.list_outbox()] == [(item.id, OutboxState.PENDING)]
    # a superseded link cannot be confirmed
    await store.set_link_state(link.id, LinkState.SUPERSEDED, at(4))
    with pytest.raises(StoreError):
        await store.complete_and_enqueue(
            item.id, at(5), confirm=LinkConfirmation(link.id, SYS2, "X")
        )
    assert (await store.list_outbox())[0].state is OutboxState.PENDING


async def test_combined_writes_are_fenced(backend: Backend) -> None:
    leader = await backend.open()
    other = await backend.open()
    await leader.take_epoch("replica-a", T0)
    item = await leader.enqueue("k", "t", {}, "key", T0)
    link = await leader.create_pending_link(BP2, T0)
    await other.take_epoch("replica-b", at(1))
    with pytest.raises(FencedError):
        await leader.create_pending_link_and_enqueue(BP1, at(2), lambda x: _new("c", x.id))
    with pytest.raises(FencedError):
        await leader.confirm_link_and_record(link.id, SYS1, "INC1", at(2), audit_outcome="x")
    with pytest.raises(FencedError):
        await leader.complete_and_enqueue(item.id, at(2), follow_ups=[_new("f")])
    with pytest.raises(FencedError):
        await leader.complete_and_enqueue(
            item.id, at(2), confirm=LinkConfirmation(link.id, SYS1, "INC1", "created")
        )
    assert await other.live_link_for_bp(BP1) is None
    assert (await other.get_link(link.id)).state is LinkState.PENDING  # type: ignore[union-attr]
    assert [i.state for i in await other.list_outbox()] == [OutboxState.PENDING]


async def test_live_links_for_bp_reads_several_at_once(store: LinkStore) -> None:
    one = await linked(store, BP1, SYS1)
    await store.set_link_state(one.id, LinkState.SUPERSEDED, at(2))
    again = await store.create_pending_link(BP1, at(3), previous_link_id=one.id)
    two = await linked(store, BP2, SYS2)
    found = await store.live_links_for_bp([BP1, BP2, "c" * 24, BP1])
    assert found == {BP1: again, BP2: two}
    assert await store.live_links_for_bp([]) == {}
    assert await store.live_links_for_bp(["c" * 24]) == {}


async def test_live_links_for_sn_reads_several_at_once(store: LinkStore) -> None:
    one = await linked(store, BP1, SYS1)
    two = await linked(store, BP2, SYS2)
    found = await store.live_links_for_sn([SYS1, SYS2, "d" * 32, SYS1])
    assert found == {SYS1: one, SYS2: two}
    await store.set_link_state(one.id, LinkState.SUPERSEDED, at(2))  # history: not live
    assert await store.live_links_for_sn([SYS1, SYS2]) == {SYS2: two}
    assert await store.live_links_for_sn([]) == {}


# --------------------------------------------------------------------------- push events


async def test_push_events_are_one_row_per_incident(store: LinkStore) -> None:
    assert await store.pending_push_events(limit=10) == []
    first = await store.record_push_event(Side.BIGPANDA, BP1, T0, environment_id="env-1")
    assert (first.side, first.object_id, first.deliveries) == (Side.BIGPANDA, BP1, 1)
    assert (first.version, first.environment_id, first.received_at) == (None, "env-1", T0)
    await store.record_push_event(Side.SERVICENOW, SYS1, at(1), version="3")
    # delivered again: one row, counted, the newest time; a given version replaces,
    # what a delivery does not say is kept
    again = await store.record_push_event(Side.BIGPANDA, BP1, at(2), version="1700000000")
    assert (again.deliveries, again.received_at) == (2, at(2))
    assert (again.version, again.environment_id) == ("1700000000", "env-1")
    assert again.received_at.tzinfo == UTC
    pending = await store.pending_push_events(limit=10)
    assert [(e.side, e.object_id) for e in pending] == [
        (Side.SERVICENOW, SYS1),
        (Side.BIGPANDA, BP1),
    ]  # oldest received first
    assert pending[1] == again
    assert await store.pending_push_events(limit=1) == pending[:1]
    assert await store.count_push_events() == 2


async def test_ack_keeps_push_events_delivered_again_since(store: LinkStore) -> None:
    await store.record_push_event(Side.BIGPANDA, BP1, T0)
    await store.record_push_event(Side.SERVICENOW, SYS1, T0)
    taken = await store.pending_push_events(limit=10)
    await store.record_push_event(Side.BIGPANDA, BP1, at(1))  # while the engine works
    await store.ack_push_events(taken)
    left = await store.pending_push_events(limit=10)
    assert [(e.object_id, e.deliveries) for e in left] == [(BP1, 2)]
    await store.ack_push_events(left)
    assert await store.count_push_events() == 0
    await store.ack_push_events(left)  # acknowledged twice: nothing to do
    await store.ack_push_events([])


async def test_push_events_are_recorded_by_any_replica_and_acked_by_the_leader(
    backend: Backend,
) -> None:
    leader = await backend.open()
    standby = await backend.open()
    standby.fence(await leader.take_epoch("replica-a", T0))
    await leader.take_epoch("replica-a", at(1))  # the standby's epoch is stale
    await standby.record_push_event(Side.SERVICENOW, SYS1, at(2))  # not fenced
    taken = await leader.pending_push_events(limit=10)
    assert [e.object_id for e in taken] == [SYS1]
    with pytest.raises(FencedError):
        await standby.ack_push_events(taken)
    await leader.ack_push_events(taken)
    assert await standby.count_push_events() == 0


# --------------------------------------------------------------------------- journal ledger


async def test_journal_ledger_records_each_entry_once(store: LinkStore) -> None:
    link = await linked(store)
    assert await store.carried_entries([BP1]) == {}
    assert await store.record_carried(link.id, Side.BIGPANDA, "c1", "d1", at(2)) is True
    # recorded before sent: a second record (a retry, another item) changes nothing
    assert await store.record_carried(link.id, Side.BIGPANDA, "c1", "other", at(3)) is False
    # the same id read from the other side is another entry
    assert await store.record_carried(link.id, Side.SERVICENOW, "c1", "d2", at(4)) is True
    rows = (await store.carried_entries([BP1, BP2]))[BP1]
    assert [(r.side, r.entry_id, r.digest, r.at) for r in rows] == [
        (Side.BIGPANDA, "c1", "d1", at(2)),
        (Side.SERVICENOW, "c1", "d2", at(4)),
    ]
    assert {r.link_id for r in rows} == {link.id}
    assert rows[0].at.tzinfo == UTC
    assert BP2 not in await store.carried_entries([BP1, BP2])
    assert await store.carried_entries([]) == {}


async def test_journal_ledger_spans_the_links_of_an_incident(store: LinkStore) -> None:
    old = await linked(store, BP1, SYS1)
    other = await linked(store, BP2, SYS2, "INC002")
    await store.record_carried(old.id, Side.BIGPANDA, "c1", "d1", at(2))
    await store.record_carried(other.id, Side.BIGPANDA, "c9", "d9", at(2))
    await store.set_link_state(old.id, LinkState.SUPERSEDED, at(3))
    new = await store.create_pending_link(BP1, at(4), previous_link_id=old.id)
    await store.record_carried(new.id, Side.SERVICENOW, "history", "", at(5))
    found = await store.carried_entries([BP1, BP2])
    assert [(r.link_id, r.entry_id) for r in found[BP1]] == [(old.id, "c1"), (new.id, "history")]
    assert [(r.link_id, r.entry_id) for r in found[BP2]] == [(other.id, "c9")]


async def test_journal_ledger_records_a_batch_in_one_go(store: LinkStore) -> None:
    one = await linked(store, BP1, SYS1)
    two = await linked(store, BP2, SYS2, "INC002")
    await store.record_carried(one.id, Side.BIGPANDA, "history", "", at(1))
    fresh = await store.record_carried_many(
        [
            CarriedRecord(one.id, Side.BIGPANDA, "history", ""),  # recorded already
            CarriedRecord(one.id, Side.SERVICENOW, "history", ""),
            CarriedRecord(two.id, Side.BIGPANDA, "history", ""),
            CarriedRecord(two.id, Side.BIGPANDA, "history", "again"),  # twice in the batch
        ],
        at(2),
    )
    assert fresh == [False, True, True, False]
    found = await store.carried_entries([BP1, BP2])
    assert [(r.side, r.at) for r in found[BP1]] == [
        (Side.BIGPANDA, at(1)),
        (Side.SERVICENOW, at(2)),
    ]
    assert [(r.side, r.digest) for r in found[BP2]] == [(Side.BIGPANDA, "")]
    assert await store.record_carried_many([], at(3)) == []
    # all or nothing: an unknown link records none of the batch
    with pytest.raises(StoreError, match="no link"):
        await store.record_carried_many(
            [
                CarriedRecord(two.id, Side.SERVICENOW, "history", ""),
                CarriedRecord(4242, Side.BIGPANDA, "history", ""),
            ],
            at(4),
        )
    assert [r.side for r in (await store.carried_entries([BP2]))[BP2]] == [Side.BIGPANDA]


async def test_journal_ledger_needs_a_link_and_the_lead(backend: Backend) -> None:
    store = await backend.open()
    with pytest.raises(StoreError, match="no link"):
        await store.record_carried(4242, Side.BIGPANDA, "c1", "d1", T0)
    link = await linked(store)
    standby = await backend.open()
    standby.fence(await store.take_epoch("replica-a", T0))
    await store.take_epoch("replica-b", at(1))  # the standby's epoch is stale
    with pytest.raises(FencedError):
        await standby.record_carried(link.id, Side.BIGPANDA, "c1", "d1", at(2))
    with pytest.raises(FencedError):
        await standby.record_carried_many(
            [CarriedRecord(link.id, Side.BIGPANDA, "c1", "d1")], at(2)
        )
    assert await store.carried_entries([BP1]) == {}
