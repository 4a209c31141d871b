"""Every field as a person sees it (issue 13), over loopback through both emulators.

Changes are made the way people and tools make them (the vendors' HTTP APIs); outcomes
and request counts are read back from the emulators.
"""

from __future__ import annotations

from typing import Any

import pytest

from sync.clock import FakeClock

from .conftest import World
from .helpers import ENV, SYSTEM_MAPPING, SYSTEM_TAGS, Emu

V2 = "/resources/v2.0"

TEXTS = {
    "incidents.update_fields": ["impact", "category", "description", "short_description"],
    "incidents.priority_in_short_description": True,
    "incidents.description_incident_tags": ["service_area"],
    "incidents.links_in_description": False,
    "incidents.description_to_work_notes": False,
}


@pytest.fixture
async def emu(world: World) -> Emu:
    helper = Emu(world)
    await helper.define_tags(*SYSTEM_TAGS)
    return helper


async def start(world: World, **overrides: Any) -> None:
    await world.build(tag_mapping=SYSTEM_MAPPING, **overrides)


async def settle(world: World) -> None:
    await world.settle()
    assert all(r.ok for r in world.reports), [r.error for r in world.reports if not r.ok]


async def bp_reads(emu: Emu) -> int:
    """GET requests BigPanda received for incidents (search and single reads)."""
    log = await emu.request_log("bigpanda", method="GET")
    return sum(1 for entry in log if f"/environments/{ENV}/incidents" in entry["path"])


# --------------------------------------------------------------------------- item 1


async def test_descriptions_follow_tags_priority_and_alerts_once(world: World, emu: Emu) -> None:
    await start(world, **TEXTS)
    assert isinstance(world.clock, FakeClock)
    bp_id = await emu.new_incident("db01", check="cpu")
    await emu.set_tags(bp_id, service_area="database", priority="P2")
    await settle(world)
    sn = await emu.sn_one_for(bp_id)
    assert sn["short_description"] == "[P2] db01 / cpu"
    assert "service_area: database" in sn["description"]
    assert "1 Critical, 0 Warning" in sn["description"]

    # a tag and the priority change: both texts follow, once
    await emu.set_tags(bp_id, service_area="network", priority="P1")
    await settle(world)
    after = await emu.sn_get(sn["sys_id"])
    assert after["short_description"] == "[P1] db01 / cpu"
    assert "service_area: network" in after["description"]
    mods = int(after["sys_mod_count"])

    # a second alert joins the incident: the status line follows
    world.clock.advance(5)
    await emu.ingest(host="db01", check="disk", status="warning")
    await settle(world)
    after = await emu.sn_get(sn["sys_id"])
    assert "1 Critical, 1 Warning" in after["description"]
    assert int(after["sys_mod_count"]) == mods + 1  # one write for the change

    # idle: no write, and no read of alerts for an unchanged pair
    reads = await bp_reads(emu)
    writes = await world.writes()
    for _ in range(3):
        world.clock.advance(1)
        assert (await world.cycle()).ok
    assert await world.writes() == writes
    polls = await bp_reads(emu) - reads
    assert polls == 3, f"an idle cycle read more than its poll page: {polls} reads in 3 cycles"


async def test_a_hand_edit_of_the_description_stays_until_the_incident_changes(
    world: World, emu: Emu
) -> None:
    await start(world, **TEXTS)
    bp_id = await emu.new_incident("db02", check="cpu")
    await settle(world)
    sn = await emu.sn_one_for(bp_id)
    await emu.sn_patch(sn["sys_id"], {"description": "edited by hand"})
    await settle(world)
    assert (await emu.sn_get(sn["sys_id"]))["description"] == "edited by hand"

    await emu.set_tags(bp_id, service_area="storage")
    await settle(world)
    assert "service_area: storage" in (await emu.sn_get(sn["sys_id"]))["description"]


async def test_without_texts_in_update_fields_a_changed_pair_reads_no_alerts(
    world: World, emu: Emu
) -> None:
    await start(world, **{**TEXTS, "incidents.update_fields": ["impact", "category"]})
    bp_id = await emu.new_incident("db03", check="cpu")
    await settle(world)
    sn = await emu.sn_one_for(bp_id)
    before = await emu.request_log("bigpanda", method="GET")

    await emu.set_tags(bp_id, service_area="network", priority="P1")
    await settle(world)

    log = await emu.request_log("bigpanda", method="GET")
    single = [e for e in log[len(before) :] if e["path"].endswith(f"/incidents/{bp_id}")]
    assert single == []
    assert (await emu.sn_get(sn["sys_id"]))["short_description"] == sn["short_description"]


# --------------------------------------------------------------------------- item 7

MARKER = " ... [truncated by bpsync]"


@pytest.mark.parametrize("overlong", ["truncate", "reject"])
async def test_a_value_longer_than_the_field_is_cut_with_a_marker_once(
    world: World, emu: Emu, overlong: str
) -> None:
    await world.control("servicenow", "POST", "config", {"overlong": overlong})
    await start(world)
    long_area = "storage-and-backup-" * 5  # 95 characters; category holds 40
    bp_id = await emu.new_incident("db04", check="cpu")
    await emu.set_tags(bp_id, service_area=long_area)
    await settle(world)
    sn = await emu.sn_one_for(bp_id)
    assert sn["category"] == long_area[: 40 - len(MARKER)].rstrip() + MARKER
    assert len(sn["category"]) == 40
    assert (await emu.tags(bp_id))["service_area"] == long_area  # the source stays whole
    writes = await world.writes()
    for _ in range(3):
        assert isinstance(world.clock, FakeClock)
        world.clock.advance(1)
        assert (await world.cycle()).ok
    assert await world.writes() == writes, "a cut value was rewritten"

    await emu.sn_patch(sn["sys_id"], {"category": "network"})  # the other way still works
    await settle(world)
    assert (await emu.tags(bp_id))["service_area"] == "network"


async def test_a_servicenow_value_longer_than_a_tag_value_is_cut(world: World, emu: Emu) -> None:
    await emu.define_tags("sn_notes")
    mapping = [
        *SYSTEM_MAPPING,
        {"bigpanda_tag": "sn_notes", "servicenow_field": "close_notes", "direction": "sn_to_bp"},
    ]
    await world.build(tag_mapping=mapping)
    bp_id = await emu.new_incident("db05", check="cpu")
    await settle(world)
    sn = await emu.sn_one_for(bp_id)
    await emu.sn_patch(sn["sys_id"], {"close_notes": "n" * 1500})
    await settle(world)
    tag = (await emu.tags(bp_id))["sn_notes"]
    assert len(tag) == 512
    assert tag.endswith(MARKER)


@pytest.mark.parametrize("access", ["hidden", "forbidden"])
async def test_an_unreadable_dictionary_means_the_documented_sizes(
    world: World, emu: Emu, access: str, caplog: pytest.LogCaptureFixture
) -> None:
    await world.control("servicenow", "POST", "config", {"dictionary_access": access})
    await start(world)
    assert "documented field sizes used" in caplog.text
    bp_id = await emu.new_incident("x" * 300, check="cpu")
    await settle(world)
    sn = await emu.sn_one_for(bp_id)
    assert len(sn["short_description"]) == 160
    assert sn["short_description"].endswith(MARKER)
