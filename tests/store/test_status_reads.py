"""The status page's read-only views (``StatusReads``), on memory, SQLite and Postgres."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sync.constants import Side
from sync.model import Link, LinkState
from sync.store.base import Cursor, LinkStore, OutboxState
from tests.store.conftest import Backend

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
BP1, BP2, BP3 = "a" * 24, "b" * 24, "c" * 24


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def linked_resolved_pending(store: LinkStore) -> tuple[Link, Link]:
    """Three links: linked, resolved (returned) and pending."""
    one = await store.create_pending_link(BP1, T0)
    await store.confirm_link(one.id, "1" * 32, "INC0010001", at(1))
    two = await store.create_pending_link(BP2, T0)
    await store.confirm_link(two.id, "2" * 32, "INC0010002", at(1))
    two = await store.set_link_state(two.id, LinkState.RESOLVED, at(2))
    await store.create_pending_link(BP3, T0)
    return one, two


async def test_count_links_by_state_names_every_state(store: LinkStore) -> None:
    assert await store.count_links_by_state() == dict.fromkeys(LinkState, 0)
    await linked_resolved_pending(store)
    counts = await store.count_links_by_state()
    assert counts == {
        LinkState.PENDING: 1,
        LinkState.LINKED: 1,
        LinkState.RESOLVED: 1,
        LinkState.SUPERSEDED: 0,
    }


async def test_count_links_by_state_of_some_states(store: LinkStore) -> None:
    await linked_resolved_pending(store)
    live = await store.count_links_by_state([LinkState.LINKED, LinkState.PENDING])
    assert live == {
        LinkState.PENDING: 1,
        LinkState.LINKED: 1,
        LinkState.RESOLVED: 0,
        LinkState.SUPERSEDED: 0,
    }
    assert await store.count_links_by_state([]) == dict.fromkeys(LinkState, 0)


async def test_recent_outbox_is_newest_first_and_filters_by_link(store: LinkStore) -> None:
    one = await store.create_pending_link(BP1, T0)
    two = await store.create_pending_link(BP2, T0)
    first = await store.enqueue("sn.create", "servicenow:x", {"a": 1}, "k1", T0, link_id=one.id)
    second = await store.enqueue("bp.tags", "bigpanda:y", {"b": 2}, "k2", at(1), link_id=two.id)
    third = await store.enqueue("sn.update", "servicenow:x", {"c": 3}, "k3", at(2), link_id=one.id)
    await store.complete(first.id, at(3))
    await store.dead_letter(second.id, "permanent: refused", at(4))
    recent = await store.recent_outbox(limit=10)
    assert [x.id for x in recent] == [third.id, second.id, first.id]
    assert [x.state for x in recent] == [OutboxState.PENDING, OutboxState.DEAD, OutboxState.DONE]
    assert recent[1].last_error == "permanent: refused"
    assert [x.id for x in await store.recent_outbox(limit=2)] == [third.id, second.id]
    mine = await store.recent_outbox(limit=10, link_ids=[one.id])
    assert [x.id for x in mine] == [third.id, first.id]
    assert await store.recent_outbox(limit=10, link_ids=[]) == []
    assert await store.recent_outbox(limit=0) == []


async def test_links_for_sn_number_keeps_history(store: LinkStore) -> None:
    old = await store.create_pending_link(BP1, T0)
    await store.confirm_link(old.id, "1" * 32, "INC0010001", at(1))
    await store.set_link_state(old.id, LinkState.SUPERSEDED, at(2))
    new = await store.create_pending_link(BP1, at(3), previous_link_id=old.id)
    await store.confirm_link(new.id, "1" * 32, "INC0010001", at(4))
    other = await store.create_pending_link(BP2, T0)
    await store.confirm_link(other.id, "2" * 32, "INC0010002", at(1))
    found = await store.links_for_sn_number("INC0010001")
    assert [x.id for x in found] == [new.id, old.id]
    assert all(x.bp_incident_id == BP1 for x in found)
    assert await store.links_for_sn_number("INC0099999") == []
    assert await store.links_for_sn_number("inc0010001") == []  # numbers are exact


async def test_leader_record(backend: Backend) -> None:
    store = await backend.open()
    assert await store.leader_record() is None
    await store.take_epoch("host-a:1", T0)
    other = await backend.open()
    await other.take_epoch("host-b:2", at(30))
    record = await store.leader_record()
    assert record is not None
    assert (record.epoch, record.holder, record.at) == (2, "host-b:2", at(30))
    assert record.at.tzinfo is not None


async def test_summary_is_the_single_reads_at_once(store: LinkStore) -> None:
    empty = await store.summary()
    assert (empty.outbox_depth, empty.dead_letters) == (0, 0)
    assert await store.cursors() == empty.cursors
    assert empty.cursors == {side: Cursor(side=side, watermark=None) for side in Side}
    one, two = await linked_resolved_pending(store)
    done = await store.enqueue("sn.create", "servicenow:x", {"a": 1}, "k1", T0, link_id=one.id)
    dead = await store.enqueue("bp.tags", "bigpanda:y", {"b": 2}, "k2", at(1), link_id=two.id)
    await store.enqueue("sn.update", "servicenow:x", {"c": 3}, "k3", at(2), link_id=one.id)
    await store.enqueue("sn.update", "servicenow:z", {"d": 4}, "k4", at(2), link_id=two.id)
    claimed = await store.claim_due(at(3), limit=1, lease_s=60)
    assert len(claimed) == 1
    await store.complete(done.id, at(3))
    await store.dead_letter(dead.id, "permanent: refused", at(4))
    bp = Cursor(side=Side.BIGPANDA, watermark=at(5), seen=frozenset({"x:1:5"}))
    await store.advance_cursor(bp, at(5))
    summary = await store.summary()
    assert summary.outbox_depth == await store.count_outbox(
        [OutboxState.PENDING, OutboxState.IN_FLIGHT]
    )
    assert summary.outbox_depth == 2
    assert summary.dead_letters == await store.count_outbox([OutboxState.DEAD]) == 1
    assert summary.cursors == {side: await store.get_cursor(side) for side in Side}
    assert await store.cursors() == summary.cursors
    assert summary.cursors[Side.BIGPANDA] == bp
