"""Every field as a person sees it (issue 13), over loopback through both emulators.

Changes are made the way people and tools make them (the vendors' HTTP APIs); outcomes
and request counts are read back from the emulators.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sync.clock import FakeClock
from sync.emulators.bigpanda import STATE_KEY as BP_STATE_KEY
from sync.errors import ConfigError
from sync.store.base import OutboxState

from .conftest import World, open_world
from .helpers import ENV, SYSTEM_MAPPING, Emu, settle

V2 = "/resources/v2.0"

TEXTS = {
    "incidents.update_fields": ["impact", "category", "description", "short_description"],
    "incidents.priority_in_short_description": True,
    "incidents.description_incident_tags": ["service_area"],
    "incidents.links_in_description": False,
    "incidents.description_to_work_notes": False,
}


async def start(world: World, **overrides: Any) -> None:
    await world.build(tag_mapping=SYSTEM_MAPPING, **overrides)


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


# --------------------------------------------------------------------------- items 2, 3


async def test_a_fresh_org_gets_the_tags_bpsync_writes_defined(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    fresh = Emu(world)  # no tag defined by the test: a fresh organisation
    before = await fresh._bp("GET", f"{V2}/incidents/tags/definitions", expect=200)
    assert {d["id"] for d in before} == {"priority"}
    await world.build(
        tag_mapping=SYSTEM_MAPPING, **{"incidents.link_tag": "x_bp_ticket"}
    )  # the seed's responseIncidentTag case
    after = await fresh._bp("GET", f"{V2}/incidents/tags/definitions", expect=200)
    types = {d["id"]: d["type"] for d in after}
    # the link tag and every tag a sn_to_bp/both row writes; not the bp_to_sn-only ones
    assert types == {
        "priority": "Priority",
        "x_bp_ticket": "Text",
        "impact_level": "Text",
        "service_area": "Text",
        "sn_subcategory": "Text",
    }
    bp_id = await fresh.new_incident("db06", check="cpu")
    await settle(world)
    sn = await fresh.sn_one_for(bp_id)
    assert (await fresh.tags(bp_id))["x_bp_ticket"].startswith(sn["number"])
    await fresh.sn_patch(sn["sys_id"], {"subcategory": "disk"})
    await settle(world)
    assert (await fresh.tags(bp_id))["sn_subcategory"] == "disk"
    assert world.engine is not None
    assert await world.engine.store.count_outbox([OutboxState.DEAD]) == 0

    await world.build()  # a restart finds them all: nothing created twice
    again = await fresh._bp("GET", f"{V2}/incidents/tags/definitions", expect=200)
    assert len(again) == len(after)


async def test_a_row_writing_a_tag_of_another_type_is_refused_at_start(world: World) -> None:
    bp_state = world.bp_app[BP_STATE_KEY]
    bp_state.define_tag("team", type_="ClosedListValuesSingle", values=["db", "web"])
    mapping = [{"bigpanda_tag": "team", "servicenow_field": "category", "direction": "both"}]
    with pytest.raises(ConfigError, match="team is of type ClosedListValuesSingle"):
        await world.build(tag_mapping=mapping)


async def test_priority_is_written_through_its_levels(world: World, emu: Emu) -> None:
    mapping = [
        {
            "bigpanda_tag": "priority",
            "servicenow_field": "urgency",
            "direction": "both",
            "value_map": {"P1": "1", "P2": "2", "P3": "3"},
        }
    ]
    await world.build(tag_mapping=mapping)
    bp_id = await emu.new_incident("db07", check="cpu")
    await emu.set_tags(bp_id, priority="P2")
    await settle(world)
    sn = await emu.sn_one_for(bp_id)
    assert sn["urgency"] == "2"
    await emu.sn_patch(sn["sys_id"], {"urgency": "1"})
    await settle(world)
    assert (await emu.tags(bp_id))["priority"] == "P1"
    await emu.sn_patch(sn["sys_id"], {"urgency": "3"})
    await settle(world)
    assert (await emu.tags(bp_id))["priority"] == "P3"


async def test_priority_levels_outside_the_definition_are_refused(world: World) -> None:
    mapping = [
        {
            "bigpanda_tag": "priority",
            "servicenow_field": "urgency",
            "direction": "both",
            "value_map": {"P1": "1", "Sev2": "2"},
        }
    ]
    with pytest.raises(ConfigError, match="Sev2 is not a level of the Priority tag priority"):
        await world.build(tag_mapping=mapping)


async def test_a_narrowed_row_is_named_at_start(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    mapping = [
        *SYSTEM_MAPPING,
        {"bigpanda_tag": "severity", "servicenow_field": "impact", "direction": "both"},
        {"bigpanda_tag": "owner", "servicenow_field": "number", "direction": "both"},
    ]
    await world.build(tag_mapping=mapping)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("severity is an incident attribute" in w for w in warnings), warnings
    assert any("number is set by ServiceNow" in w for w in warnings), warnings


# --------------------------------------------------------------------------- item 6


async def test_static_fields_opened_at_and_primary_alert_tags_at_create(
    world: World, emu: Emu
) -> None:
    mapping = [
        SYSTEM_MAPPING[0],
        {
            "bigpanda_tag": "primary_alert.region",
            "servicenow_field": "subcategory",
            "direction": "bp_to_sn",
        },
    ]
    await world.build(
        tag_mapping=mapping,
        **{"incidents.static_fields": {"contact_type": "monitoring", "u_source": "BigPanda"}},
    )
    assert isinstance(world.clock, FakeClock)
    bp_id = await emu.new_incident("db08", check="cpu", region="eu-west")
    start = int((await emu.incident(bp_id))["start"])
    world.clock.advance(30)
    await settle(world)
    sn = await emu.sn_one_for(bp_id)
    assert sn["contact_type"] == "monitoring"
    assert "u_source" not in sn  # a field the table lacks is dropped, as ServiceNow does
    assert sn["subcategory"] == "eu-west"
    opened = datetime.strptime(sn["opened_at"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    assert int(opened.timestamp()) == start


async def test_a_primary_alert_tag_follows_when_the_primary_alert_changes(
    world: World, emu: Emu
) -> None:
    mapping = [
        {
            "bigpanda_tag": "primary_alert.region",
            "servicenow_field": "subcategory",
            "direction": "bp_to_sn",
        }
    ]
    await world.build(tag_mapping=mapping)
    assert isinstance(world.clock, FakeClock)
    bp_id = await emu.new_incident("db09", check="cpu", region="eu", status="warning")
    await settle(world)
    sn = await emu.sn_one_for(bp_id)
    assert sn["subcategory"] == "eu"
    # a critical alert joins: the primary alert (oldest critical) is now this one
    world.clock.advance(5)
    await emu.ingest(host="db09", check="disk", region="us", status="critical")
    await settle(world)
    assert (await emu.sn_get(sn["sys_id"]))["subcategory"] == "us"
    # an unrelated tag change of the incident: the subcategory stays
    await emu.set_tags(bp_id, service_area="x")
    await settle(world)
    assert (await emu.sn_get(sn["sys_id"]))["subcategory"] == "us"


def test_static_fields_refuse_fields_bpsync_or_servicenow_own(tmp_path: Any) -> None:
    from sync.settings import load_settings

    with pytest.raises(ConfigError, match="static_fields: correlation_id is set by"):
        load_settings(None, {"incidents.static_fields": {"correlation_id": "x"}}, env_file=None)


async def test_a_tag_definition_deleted_while_running_is_defined_again(
    world: World, emu: Emu, caplog: pytest.LogCaptureFixture
) -> None:
    await start(world)
    bp_id, _ = await _linked(world, emu, "db10")
    bp_state = world.bp_app[BP_STATE_KEY]
    del bp_state.tag_definitions["servicenow_link"]  # an admin removes it
    del bp_state.tag_definitions["impact_level"]
    second = await emu.new_incident("db11", check="cpu")
    sn = await emu.sn_one_for(bp_id)
    await emu.sn_patch(sn["sys_id"], {"impact": "1"})
    await settle(world)
    assert "is not defined (any more)" in caplog.text
    assert {"servicenow_link", "impact_level"} <= set(bp_state.tag_definitions)
    assert (await emu.tags(second))["servicenow_link"].startswith("INC")
    assert (await emu.tags(bp_id))["impact_level"] == "high"
    assert world.engine is not None
    assert await world.engine.store.count_outbox([OutboxState.DEAD]) == 0


async def _linked(world: World, emu: Emu, host: str) -> tuple[str, dict[str, str]]:
    bp_id = await emu.new_incident(host, check="cpu")
    await settle(world)
    return bp_id, await emu.sn_one_for(bp_id)


# --------------------------------------------------------------------------- item 4


async def test_the_ai_summary_reaches_the_description_when_it_arrives(
    tmp_path: Path, clock: FakeClock
) -> None:
    options = {"rate_limit_per_s": None, "aia_delay_s": 90}
    async with open_world(tmp_path, clock, bp_options=options) as aia_world:
        emu = Emu(aia_world)
        await aia_world.build(
            tag_mapping=SYSTEM_MAPPING,
            **{**TEXTS, "incidents.aia_in_description": True},
        )
        bp_id = await emu.new_incident("db12", check="cpu")
        await settle(aia_world)
        sn = await emu.sn_one_for(bp_id)
        assert "AI incident analysis" not in sn["description"]  # not there yet

        clock.advance(91)  # BigPanda's analysis arrives (1-3 minutes in reality)
        await settle(aia_world)
        tags = await emu.tags(bp_id)
        assert tags["ai_summary"].startswith("1 of 1 alerts active")
        after = await emu.sn_get(sn["sys_id"])
        assert after["description"].startswith(f"AI incident analysis:\n{tags['ai_summary']}")


# --------------------------------------------------------------------------- item 5

GROUP_ROW = {
    "bigpanda_tag": "support_group",
    "servicenow_field": "assignment_group",
    "direction": "both",
}


async def test_reference_fields_carry_names_both_ways_never_sys_ids(
    world: World, emu: Emu, caplog: pytest.LogCaptureFixture
) -> None:
    await emu.define_tags("support_group")
    await world.build(tag_mapping=[GROUP_ROW])
    groups = {
        name: await emu.sn_id("sys_user_group", "name", name)
        for name in ("Network", "Database", "Software")
    }

    # at the create: a name from BigPanda becomes the group's record
    bp_id = await emu.new_incident("db13", check="cpu")
    await emu.set_tags(bp_id, support_group="Software")
    await settle(world)
    sn = await emu.sn_one_for(bp_id)
    assert sn["assignment_group"] == groups["Software"]

    # ServiceNow -> BigPanda: the group's name, not its sys_id
    await emu.sn_patch(sn["sys_id"], {"assignment_group": groups["Network"]})
    await settle(world)
    assert (await emu.tags(bp_id))["support_group"] == "Network"

    # BigPanda -> ServiceNow: a name becomes the reference
    await emu.set_tags(bp_id, support_group="Database")
    await settle(world)
    assert (await emu.sn_get(sn["sys_id"]))["assignment_group"] == groups["Database"]

    # a name without a record: the field stays, one warning, and no loop
    await emu.set_tags(bp_id, support_group="No Such Team")
    await settle(world)
    assert (await emu.sn_get(sn["sys_id"]))["assignment_group"] == groups["Database"]
    assert (await emu.tags(bp_id))["support_group"] == "No Such Team"
    assert caplog.text.count("'No Such Team': no record matches") == 1
    writes = await world.writes()
    for _ in range(3):
        assert isinstance(world.clock, FakeClock)
        world.clock.advance(1)
        assert (await world.cycle()).ok
    assert await world.writes() == writes
    for tags in [await emu.tags(bp_id)]:
        assert all(not re.fullmatch(r"[0-9a-f]{32}", v) for v in tags.values()), tags


async def test_a_reference_to_a_record_that_cannot_be_read_leaves_the_tag(
    world: World, emu: Emu
) -> None:
    await emu.define_tags("support_group")
    await world.build(tag_mapping=[GROUP_ROW])
    bp_id = await emu.new_incident("db14", check="cpu")
    await emu.set_tags(bp_id, support_group="Network")
    await settle(world)
    sn = await emu.sn_one_for(bp_id)
    await emu.sn_patch(sn["sys_id"], {"assignment_group": "0" * 32})  # no such group
    await settle(world)
    assert (await emu.tags(bp_id))["support_group"] == "Network"


async def test_a_choice_field_by_label_when_the_row_says_so(world: World, emu: Emu) -> None:
    await emu.define_tags("impact_label", "category_value")
    mapping = [
        {
            "bigpanda_tag": "impact_label",
            "servicenow_field": "impact",
            "direction": "both",
            "label": True,
        },
        {"bigpanda_tag": "category_value", "servicenow_field": "category", "direction": "sn_to_bp"},
    ]
    await world.build(tag_mapping=mapping)
    bp_id = await emu.new_incident("db15", check="cpu")
    await emu.set_tags(bp_id, impact_label="1 - High")
    await settle(world)
    sn = await emu.sn_one_for(bp_id)
    assert sn["impact"] == "1"  # the label's value

    await emu.sn_patch(sn["sys_id"], {"impact": "2", "category": "network"})
    await settle(world)
    tags = await emu.tags(bp_id)
    assert tags["impact_label"] == "2 - Medium"  # by label
    assert tags["category_value"] == "network"  # a row without label: by value

    await emu.set_tags(bp_id, impact_label="No Such Level")  # not a label: left alone
    await settle(world)
    assert (await emu.sn_get(sn["sys_id"]))["impact"] == "2"


# --------------------------------------------------------------------------- loops


async def test_a_field_two_rules_fight_over_is_frozen_then_released(
    world: World, emu: Emu, caplog: pytest.LogCaptureFixture
) -> None:
    await start(world)
    assert isinstance(world.clock, FakeClock)
    bp_id = await emu.new_incident("loop-01", check="cpu")
    await emu.set_tags(bp_id, impact_level="high")
    await settle(world)
    sn = await emu.sn_one_for(bp_id)
    writes_per_step: list[int] = []
    for step in range(16):  # a ServiceNow rule and a BigPanda enrichment fight
        before = await world.writes()
        if step % 2 == 0:
            await emu.sn_patch(sn["sys_id"], {"impact": "3"})
        else:
            await emu.set_tags(bp_id, impact_level="high")
        world.clock.advance(5)
        assert (await world.cycle()).ok
        writes_per_step.append(await world.writes() - before - 1)  # minus the rule's own
    # bpsync wrote 1, low, 1, low, ...: from the 3rd write on each is a flip back; the
    # 7th flip is not made (the field freezes, its comment the one write of that step)
    assert sum(1 for w in writes_per_step if w) == 9, writes_per_step
    assert writes_per_step[-4:] == [0, 0, 0, 0], writes_per_step
    assert caplog.text.count("impact frozen for this pair") == 1
    comments = [t for t in await _comments(emu, bp_id) if "bpsync stopped syncing impact" in t]
    assert len(comments) == 1
    assert world.engine is not None
    link = await world.engine.store.live_link_for_bp(bp_id)
    assert link is not None

    # released: the field syncs again (the ServiceNow value of the last step wins... or
    # the BigPanda one: whichever changed since the freeze)
    from sync.constants import Side
    from sync.flipflop import released

    await world.engine.store.record_field_states(
        link.id, Side.SERVICENOW, released(["impact"]), world.clock.now()
    )
    await emu.set_tags(bp_id, impact_level="medium")
    world.clock.advance(700)  # the old writes leave the window
    await settle(world)
    assert (await emu.sn_get(sn["sys_id"]))["impact"] == "2"


async def _comments(emu: Emu, bp_id: str) -> list[str]:
    activities = await emu.activities(bp_id, ["incident_commented"])
    return [str(a["params"].get("comment", "")) for a in activities]
