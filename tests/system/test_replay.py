"""Replay of the real ServiceNow event log (``sync/data``) through the loopback world.

At least 100 incidents of the sample are driven through their real state sequences:
each gets a BigPanda incident first (an alert through the ingest API), bpsync links it to
a ServiceNow incident, then every audited version of the log is applied in time order
through the Table API (PATCH), with a sync cycle between batches. After each cycle every
mapped ServiceNow change must be on BigPanda (tags) and every resolution too (the
BigPanda incident resolved, the close code in its comment).

What "must be on BigPanda" means follows the planner's table (SPEC B4, B8): while the
link is live every mapped field follows; once both sides are resolved the fields still
follow while ServiceNow stays Resolved, and nothing moves while ServiceNow is reopened
(BigPanda has no reopen API) or Closed (frozen).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

import pytest

from sync.clock import FakeClock
from sync.constants import SNState
from sync.workload import MAPPABLE_FIELDS, IncidentHistory, load_histories

from .conftest import World
from .helpers import Emu

INCIDENTS = 120
BATCH = 60

REPLAY_MAPPING: list[dict[str, Any]] = [
    {"bigpanda_tag": f"sn_{name}", "servicenow_field": name, "direction": "sn_to_bp"}
    for name in MAPPABLE_FIELDS
]


@dataclass
class Replayed:
    """One incident of the log, its two sides, and what BigPanda must show."""

    history: IncidentHistory
    host: str
    bp_id: str = ""
    sys_id: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    """ServiceNow's current values of the mapped fields (what the PATCHes left)."""
    expected_tags: dict[str, str] = field(default_factory=dict)
    live: bool = True
    """The link is live (not yet resolved on both sides)."""
    close_code: str | None = None
    """The close code BigPanda was told about when it was resolved."""

    def apply(self, body: dict[str, str], state: SNState) -> None:
        """Account for one PATCH and the sync cycle after it."""
        self.fields.update({k: v for k, v in body.items() if k in MAPPABLE_FIELDS})
        resolved = state in (SNState.RESOLVED, SNState.CLOSED)
        if self.live:
            self.expected_tags = self._tags()
            if resolved:
                self.live = False
                self.close_code = body["close_code"]
        elif state == SNState.RESOLVED:
            self.expected_tags = self._tags()  # both resolved: fields still follow

    def _tags(self) -> dict[str, str]:
        return {f"sn_{k}": v for k, v in self.fields.items() if v}


def _batches(items: list[Replayed]) -> list[list[tuple[Replayed, int]]]:
    """Every version of every incident in time order, per incident in log order; one
    incident at most once per batch (each version is seen by a cycle)."""
    heap: list[tuple[Any, str, int]] = []
    by_number = {item.history.number: item for item in items}
    for item in items:
        first = item.history.versions[0]
        heapq.heappush(heap, (first.updated_at, item.history.number, 0))
    batches: list[list[tuple[Replayed, int]]] = []
    current: list[tuple[Replayed, int]] = []
    in_batch: set[str] = set()
    while heap:
        when, number, index = heapq.heappop(heap)
        if number in in_batch or len(current) >= BATCH:
            batches.append(current)
            current, in_batch = [], set()
        item = by_number[number]
        current.append((item, index))
        in_batch.add(number)
        if index + 1 < len(item.history.versions):
            nxt = item.history.versions[index + 1]
            heapq.heappush(heap, (max(when, nxt.updated_at or when), number, index + 1))
    if current:
        batches.append(current)
    return batches


@pytest.mark.slow
async def test_replay_event_log_reaches_bigpanda(world: World) -> None:
    assert isinstance(world.clock, FakeClock)
    emu = Emu(world)
    await emu.define_tags(*(row["bigpanda_tag"] for row in REPLAY_MAPPING))
    histories = [h for h in load_histories() if len(h.versions) >= 2][:INCIDENTS]
    assert len(histories) >= 100
    items = [Replayed(h, host=f"replay-{h.number.lower()}") for h in histories]

    # the BigPanda incidents first (one alert each, one batch request), then the links
    await emu.ingest(alerts=[{"host": i.host, "check": "replay", "status": "critical"}
                             for i in items])  # fmt: skip
    await world.build(tag_mapping=REPLAY_MAPPING)
    await world.settle(max_cycles=4)
    records = await emu.sn_query("correlation_idISNOTEMPTY")
    by_title = {r["short_description"]: r for r in records}
    assert len(records) == len(items)
    for item in items:
        record = by_title[f"{item.host} / replay"]
        item.bp_id, item.sys_id = record["correlation_id"], record["sys_id"]
        item.fields = {name: record[name] for name in MAPPABLE_FIELDS}
        item.expected_tags = item._tags()
    await _check(emu, items)

    batches = _batches(items)
    patched = 0
    for batch in batches:
        world.clock.advance(10)
        for item, index in batch:
            version = item.history.versions[index]
            body = version.patch()
            await emu.sn_patch(item.sys_id, body)
            item.apply(body, version.state)
            patched += 1
        report = await world.cycle()
        assert report.ok, f"cycle failed: {report.error!r}"
        await _check(emu, items)
    assert patched == sum(len(i.history.versions) for i in items)

    # every resolution reached BigPanda, with its close code (send_closure_code)
    resolved = [i for i in items if i.close_code is not None]
    assert len(resolved) >= 100
    for item in resolved:
        activities = await emu.activities(item.bp_id, types=["incident_resolved_api"])
        assert len(activities) == 1, item.history.number
        assert f"Close code: {item.close_code}" in str(activities[0]["params"])
    # and nothing echoes once the replay is over
    before = await world.writes()
    for _ in range(3):
        world.clock.advance(1)
        assert (await world.cycle()).ok
    assert await world.writes() == before


async def _check(emu: Emu, items: list[Replayed]) -> None:
    """Every BigPanda incident shows what its ServiceNow incident says (one search)."""
    incidents = {inc["id"]: inc for inc in await emu.search()}
    problems = []
    for item in items:
        incident = incidents[item.bp_id]
        tags = {
            t["tag_id"]: t["tag_value"]
            for t in incident["incident_tags"]
            if t["tag_id"].startswith("sn_")
        }
        if tags != item.expected_tags:
            problems.append(f"{item.history.number}: tags {tags} != {item.expected_tags}")
        if incident["active"] is not item.live:
            problems.append(f"{item.history.number}: active {incident['active']}, live {item.live}")
    assert not problems, "\n".join(problems[:10])
