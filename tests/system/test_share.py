"""[share] rules over loopback: which incidents get a ticket, and when (issue 14 item 4)."""

from __future__ import annotations

from typing import Any

import pytest

from sync.clock import FakeClock

from .conftest import World
from .helpers import SYSTEM_MAPPING, SYSTEM_TAGS, Emu, settle


@pytest.fixture
async def emu(world: World) -> Emu:
    helper = Emu(world)
    await helper.define_tags(*SYSTEM_TAGS, "snow")
    return helper


async def start(world: World, **share: Any) -> None:
    await world.build(tag_mapping=SYSTEM_MAPPING, **{f"share.{k}": v for k, v in share.items()})


async def test_the_delay_holds_the_ticket_until_the_incident_is_old_enough(
    world: World, emu: Emu
) -> None:
    await start(world, delay="60s")
    assert isinstance(world.clock, FakeClock)
    bp_id = await emu.new_incident("sh01", check="cpu")
    for _ in range(3):
        assert (await world.cycle()).ok
        world.clock.advance(10)
    assert await emu.sn_for(bp_id) == []  # 30 s old: not yet
    world.clock.advance(31)
    await settle(world)
    assert len(await emu.sn_for(bp_id)) == 1  # once old enough, exactly one


async def test_the_filter_decides_and_a_linked_incident_keeps_syncing(
    world: World, emu: Emu
) -> None:
    await start(world, filter="service_area = database", manual_tag="snow")
    shared = await emu.new_incident("sh02", check="cpu")
    await emu.set_tags(shared, service_area="database")
    other = await emu.new_incident("sh03", check="cpu")
    await emu.set_tags(other, service_area="web")
    await settle(world)
    assert len(await emu.sn_for(shared)) == 1
    assert await emu.sn_for(other) == []

    # a person asks for a ticket: the manual tag wins over the filter
    await emu.set_tags(other, snow="true")
    await settle(world)
    assert len(await emu.sn_for(other)) == 1

    # the shared incident stops matching: it keeps its link and keeps syncing
    await emu.set_tags(shared, service_area="network", impact_level="high")
    await settle(world)
    sn = await emu.sn_one_for(shared)
    assert (sn["category"], sn["impact"]) == ("network", "1")
