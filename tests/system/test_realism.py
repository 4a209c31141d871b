"""The whole sync under each realism switch of the emulators (the storm issue, item 6).

The emulators are strict by default; where the vendor docs leave a behaviour open they
offer the plausible variants by switch (``/_emulator/config``). A workload that uses
every path (creates, field changes both ways, a conflict-free edit on each side, a
resolve each way) must converge, with no duplicate, under each of them. The BigPanda
limiter shapes are run by ``test_storm.py`` with a real storm and kills.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from sync.clock import FakeClock
from sync.emulators import servicenow as sn_emulator

from .conftest import World
from .helpers import SYSTEM_MAPPING, Emu

SN_SWITCHES: list[tuple[str, dict[str, Any]]] = [
    ("rows in no stable order without ORDERBY", {"shuffle_unordered": True}),
    ("short pages (rows hidden after the limit)", {"short_pages": 0.3}),
    ("an integration user in Los Angeles time", {"user_time_zone": "America/Los_Angeles"}),
    ("an integration user in Kolkata time", {"user_time_zone": "Asia/Kolkata"}),
    ("a saturated semaphore pool", {"semaphores": 1, "semaphore_queue": 0}),
    ("an hourly rate-limit rule", {"rate_limit_per_hour": 400}),
]

BP_SWITCHES: list[tuple[str, dict[str, Any]]] = [
    ("sliding-window limiter, per organisation", {"rate_limit_shape": "sliding_window"}),
    ("fixed-window limiter, per token and route", {"rate_limit_shape": "fixed_window"}),
]


async def _workload(
    world: World, emu: Emu, switch_on: Callable[[], Awaitable[None]] | None = None
) -> None:
    clock = world.clock
    assert isinstance(clock, FakeClock)
    # small pages: short pages and unstable order show on every poll
    await world.build(tag_mapping=SYSTEM_MAPPING, **{"servicenow.page_size": 3})
    ids = [await emu.new_incident(f"realism-{n}", check="disk") for n in range(10)]
    if switch_on is not None:
        await switch_on()
    await world.settle(max_cycles=10)
    clock.advance(1.5)  # the test's own reads must not meet a limiter window bpsync filled
    assert world.engine is not None
    sys_ids = []
    for bp_id in ids:
        link = await world.engine.store.live_link_for_bp(bp_id)
        assert link is not None and link.sn_sys_id, f"{bp_id} was not linked"
        sys_ids.append(link.sn_sys_id)
    # rows an ACL hides (short_pages) are in no list, for bpsync as for anyone: the
    # ServiceNow-side edits are made on rows a list shows
    listed = [n for n, bp_id in enumerate(ids) if await emu.sn_for(bp_id)]
    assert len(listed) >= 2, "too few listed rows for the test"
    sn_edit, sn_resolve = listed[0], listed[1]
    bp_edit, bp_resolve = [n for n in range(len(ids)) if n not in (sn_edit, sn_resolve)][:2]
    await emu.set_tags(ids[bp_edit], service_area="storage")
    await emu.sn_patch(sys_ids[sn_edit], {"subcategory": "from-servicenow"})
    await emu.resolve(ids[bp_resolve])
    await emu.sn_patch(
        sys_ids[sn_resolve],
        {"state": "6", "close_code": "Solution provided", "close_notes": "fixed"},
    )
    clock.advance(1)
    await world.settle(max_cycles=10)
    clock.advance(1.5)
    assert (await emu.sn_get(sys_ids[bp_edit]))["category"] == "storage"
    assert (await emu.tags(ids[sn_edit]))["sn_subcategory"] == "from-servicenow"
    assert (await emu.sn_get(sys_ids[bp_resolve]))["state"] == "6"
    assert not (await emu.incident(ids[sn_resolve]))["active"]
    rows = world.sn_app[sn_emulator.STATE_KEY].tables["incident"].values()
    tickets = Counter(row.get("correlation_id") for row in rows)
    assert all(tickets[bp_id] == 1 for bp_id in ids), tickets  # no duplicate, none lost
    failed = [r for r in world.reports if not r.ok]
    assert not failed, [str(r.error) for r in failed]


@pytest.mark.parametrize(("what", "switches"), SN_SWITCHES, ids=[w for w, _ in SN_SWITCHES])
async def test_the_sync_converges_under_a_servicenow_switch(
    world: World, emu: Emu, what: str, switches: dict[str, Any]
) -> None:
    await world.control("servicenow", "POST", "config", switches)
    await _workload(world, emu)


@pytest.mark.parametrize(("what", "switches"), BP_SWITCHES, ids=[w for w, _ in BP_SWITCHES])
async def test_the_sync_converges_under_a_bigpanda_limiter(
    world: World, emu: Emu, what: str, switches: dict[str, Any]
) -> None:
    # bpsync paces at 1,000 req/s here: every burst meets the limiter and is throttled
    scope = "org_route" if "organisation" in what else "token_route"

    async def switch_on() -> None:
        config = {**switches, "rate_limit_scope": scope, "rate_limit_per_s": 3}
        await world.control("bigpanda", "POST", "config", config)

    await _workload(world, emu, switch_on)
    stats = await world.stats("bigpanda")
    assert stats["statuses"].get("429"), "the limiter never answered 429: nothing was tested"
