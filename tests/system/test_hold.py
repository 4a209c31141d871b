"""ServiceNow On Hold <-> BigPanda snooze over loopback (issue 14 item 3)."""

from __future__ import annotations

from .conftest import World
from .helpers import ENV, SYSTEM_MAPPING, Emu, quiet, settle

V2 = "/resources/v2.0"


async def snoozed(emu: Emu, bp_id: str) -> bool:
    return bool((await emu.incident(bp_id))["snooze"]["snoozed"])


async def test_on_hold_snoozes_and_a_snooze_holds(world: World, emu: Emu) -> None:
    await world.build(tag_mapping=SYSTEM_MAPPING, **{"incidents.hold_to_snooze": True})
    bp_id = await emu.new_incident("hold-01", check="cpu")
    await settle(world)
    sn = await emu.sn_one_for(bp_id)

    # ServiceNow On Hold -> the BigPanda incident is snoozed (89 days), and stays polled
    await emu.sn_patch(sn["sys_id"], {"state": "3", "hold_reason": "4"})
    await settle(world)
    incident = await emu.incident(bp_id)
    assert incident["snooze"]["snoozed"] is True
    assert incident["snooze"]["end_time"] - int(world.clock.now().timestamp()) > 88 * 86400
    await quiet(world, "an echo of a hold or a snooze")
    await emu.set_tags(bp_id, impact_level="high")  # a snoozed incident keeps syncing
    await settle(world)
    assert (await emu.sn_get(sn["sys_id"]))["impact"] == "1"

    # leaving On Hold unsnoozes it
    await emu.sn_patch(sn["sys_id"], {"state": "2"})
    await settle(world)
    assert not await snoozed(emu, bp_id)
    await quiet(world, "an echo of a hold or a snooze")

    # a person snoozes in BigPanda -> On Hold with the configured reason; unsnooze -> back
    path = f"{V2}/environments/{ENV}/incidents/{bp_id}/snooze"
    end = int(world.clock.now().timestamp()) + 3600
    await emu._bp("PUT", path, json={"end_time": end}, expect=204)
    await settle(world)
    after = await emu.sn_get(sn["sys_id"])
    assert (after["state"], after["hold_reason"]) == ("3", "1")
    await quiet(world, "an echo of a hold or a snooze")
    await emu._bp("DELETE", path, expect=204)
    await settle(world)
    assert (await emu.sn_get(sn["sys_id"]))["state"] == "2"
    await quiet(world, "an echo of a hold or a snooze")


async def test_without_the_setting_holds_and_snoozes_stay_apart(world: World, emu: Emu) -> None:
    await world.build(tag_mapping=SYSTEM_MAPPING)
    bp_id = await emu.new_incident("hold-02", check="cpu")
    await settle(world)
    sn = await emu.sn_one_for(bp_id)
    await emu.sn_patch(sn["sys_id"], {"state": "3", "hold_reason": "4"})
    await settle(world)
    assert not await snoozed(emu, bp_id)
