"""Merge and split over loopback, through both emulators (issue 14 item 5).

BigPanda merges and splits asynchronously (202, applied ``async_delay_s`` later): each
test asks for one through the public API, moves the shared clock past the delay and
lets bpsync settle. "Exactly one ticket" is read from both sides: the ServiceNow
incidents (their ``correlation_id`` and state) and the link store.
"""

from __future__ import annotations

from typing import Any

import pytest

from sync.clock import FakeClock
from sync.constants import SNState
from sync.model import Link
from sync.store import open_store

from .conftest import World
from .helpers import SYSTEM_MAPPING, SYSTEM_TAGS, Emu, link_value, settle

#: only incidents tagged service_area = database get a ticket (or a person asks: snow)
SHARE = {"share.filter": "service_area = database", "share.manual_tag": "snow"}


@pytest.fixture
async def emu(world: World) -> Emu:
    helper = Emu(world)
    await helper.define_tags(*SYSTEM_TAGS, "snow")
    return helper


async def start(world: World, on_merge: str) -> None:
    await world.build(tag_mapping=SYSTEM_MAPPING, **SHARE, **{"incidents.on_merge": on_merge})


async def merge(world: World, emu: Emu, destination: str, *sources: str) -> None:
    """Ask BigPanda to merge (202), then let its delay pass."""
    await emu.merge(destination, *sources)
    assert isinstance(world.clock, FakeClock)
    world.clock.advance(2)


async def split(world: World, emu: Emu, incident: str, *alerts: str) -> None:
    await emu.split(incident, *alerts)
    assert isinstance(world.clock, FakeClock)
    world.clock.advance(2)


async def live_links(world: World, *bp_ids: str) -> dict[str, Link]:
    store = await open_store(world.settings.effective_database_url)
    try:
        return await store.live_links_for_bp(bp_ids)
    finally:
        await store.close()


async def shared_pair(world: World, emu: Emu, tag: str) -> tuple[str, str, dict[str, Any]]:
    """A linked source (tagged to share) and an unlinked destination; the source's ticket."""
    source = await emu.new_incident(f"{tag}-src", check="cpu")
    await emu.set_tags(source, service_area="database")
    destination = await emu.new_incident(f"{tag}-dst", check="disk")
    await settle(world)
    assert await emu.sn_for(destination) == []
    return source, destination, await emu.sn_one_for(source)


async def test_adopt_the_destination_takes_the_sources_ticket(world: World, emu: Emu) -> None:
    await start(world, "adopt")
    source, destination, ticket = await shared_pair(world, emu, "m01")
    await emu.sn_patch(ticket["sys_id"], {"subcategory": "disk"})
    await settle(world)
    assert (await emu.tags(source))["sn_subcategory"] == "disk"
    await merge(world, emu, destination, source)
    await settle(world)

    links = await live_links(world, source, destination)
    assert source not in links
    assert links[destination].sn_sys_id == ticket["sys_id"]  # the ticket follows D
    after = await emu.sn_get(ticket["sys_id"])
    assert int(after["state"]) not in (SNState.RESOLVED, SNState.CLOSED)  # left open
    notes = [n for n in await emu.journal(ticket["sys_id"]) if "merged" in n]
    assert len(notes) == 1
    assert destination in notes[0]
    assert await emu.sn_for(destination) == []  # no ticket of its own
    rows = await emu.sn_query("correlation_idISNOTEMPTY")
    assert len(rows) == 1  # one ticket for the one problem
    want = link_value(world.sn_url, ticket["number"], ticket["sys_id"])
    tags = await emu.tags(destination)
    assert tags[world.settings.incidents.link_tag] == want
    # reconciled as a new link: the ticket's values reached the destination's empty
    # tags, and nothing on the ticket was emptied
    assert (tags["service_area"], tags["sn_subcategory"]) == ("database", "disk")
    after = await emu.sn_get(ticket["sys_id"])
    assert (after["category"], after["subcategory"]) == ("database", "disk")

    # the destination syncs through its adopted ticket from now on
    await emu.set_tags(destination, impact_level="high")
    await settle(world)
    assert (await emu.sn_get(ticket["sys_id"]))["impact"] == "1"
    before = await world.writes()
    await world.cycle(2)
    assert await world.writes() == before  # quiet: nothing echoed back and forth


async def test_resolve_source_resolves_the_ticket_as_a_duplicate(world: World, emu: Emu) -> None:
    await start(world, "resolve_source")
    source, destination, ticket = await shared_pair(world, emu, "m02")
    await merge(world, emu, destination, source)
    await settle(world)

    after = await emu.sn_get(ticket["sys_id"])
    assert int(after["state"]) == SNState.RESOLVED
    assert after["close_code"] == "Duplicate"
    assert destination in after["close_notes"]
    notes = [n for n in await emu.journal(ticket["sys_id"]) if "merged" in n]
    assert len(notes) == 1
    assert destination in notes[0]
    # the destination is a new incident for the share rules: not tagged, no ticket
    assert await emu.sn_for(destination) == []
    assert destination not in await live_links(world, destination)
    # ... until it matches them
    await emu.set_tags(destination, service_area="database")
    await settle(world)
    assert len(await emu.sn_for(destination)) == 1


@pytest.mark.parametrize("on_merge", ["adopt", "resolve_source"])
async def test_two_linked_incidents_the_destination_keeps_its_own(
    world: World, emu: Emu, on_merge: str
) -> None:
    await start(world, on_merge)
    source = await emu.new_incident("m03-src", check="cpu")
    destination = await emu.new_incident("m03-dst", check="disk")
    await emu.set_tags(source, service_area="database")
    await emu.set_tags(destination, service_area="database")
    await settle(world)
    src_ticket = await emu.sn_one_for(source)
    dst_ticket = await emu.sn_one_for(destination)

    await merge(world, emu, destination, source)
    await settle(world)

    links = await live_links(world, source, destination)
    assert links[destination].sn_sys_id == dst_ticket["sys_id"]
    assert len(await emu.sn_for(destination)) == 1
    assert int((await emu.sn_get(dst_ticket["sys_id"]))["state"]) not in (6, 7)
    after = await emu.sn_get(src_ticket["sys_id"])
    notes = [n for n in await emu.journal(src_ticket["sys_id"]) if "merged" in n]
    assert len(notes) == 1
    assert destination in notes[0]
    assert dst_ticket["number"] in notes[0]
    if on_merge == "adopt":
        assert int(after["state"]) not in (SNState.RESOLVED, SNState.CLOSED)
        assert source not in links  # superseded: no longer synced
    else:
        assert int(after["state"]) == SNState.RESOLVED
        assert after["close_code"] == "Duplicate"
    # quiet afterwards: nothing more is written
    before = await world.writes()
    await world.cycle(2)
    assert await world.writes() == before


async def test_a_split_is_a_new_incident_for_the_share_rules(world: World, emu: Emu) -> None:
    await start(world, "adopt")
    await emu.ingest(host="s01", check="cpu")
    await emu.ingest(host="s01", check="disk")
    incident = await emu.incident_for("s01")
    await emu.set_tags(incident["id"], service_area="database")
    await settle(world)
    ticket = await emu.sn_one_for(incident["id"])
    alert_ids = [a["alert_id"] for a in incident["alerts"]]
    assert len(alert_ids) == 2

    await split(world, emu, incident["id"], alert_ids[1])
    await settle(world)
    split_off = [i for i in await emu.search('host = "s01"') if i["id"] != incident["id"]]
    assert len(split_off) == 1
    new_id = split_off[0]["id"]
    assert await emu.sn_for(new_id) == []  # no tags: the share filter says no
    assert (await emu.sn_one_for(incident["id"]))["sys_id"] == ticket["sys_id"]

    await emu.set_tags(new_id, snow="true")  # a person asks for a ticket
    await settle(world)
    assert len(await emu.sn_for(new_id)) == 1
    assert len(await emu.sn_for(incident["id"])) == 1


async def test_a_split_matching_the_rules_gets_its_ticket(world: World, emu: Emu) -> None:
    await world.build(tag_mapping=SYSTEM_MAPPING)  # no [share] rules: every incident
    await emu.ingest(host="s02", check="cpu")
    await emu.ingest(host="s02", check="disk")
    incident = await emu.incident_for("s02")
    await settle(world)
    await split(world, emu, incident["id"], incident["alerts"][1]["alert_id"])
    await settle(world)
    found = await emu.search('host = "s02"')
    assert len(found) == 2
    for item in found:
        assert len(await emu.sn_for(item["id"])) == 1


async def test_a_merge_costs_one_activities_read_and_an_idle_cycle_none(
    world: World, emu: Emu
) -> None:
    await start(world, "adopt")
    source, destination, _ = await shared_pair(world, emu, "m04")
    other = await emu.new_incident("m04-other", check="mem")
    await emu.set_tags(other, service_area="database")
    await settle(world)

    def activity_reads(log: list[dict[str, object]]) -> dict[str, int]:
        reads: dict[str, int] = {}
        for entry in log:
            path = str(entry["path"])
            if path.endswith("/activities"):
                incident = path.rsplit("/", 2)[-2]
                reads[incident] = reads.get(incident, 0) + 1
        return reads

    before = len(await emu.request_log("bigpanda"))
    await world.cycle(3)  # idle: no activities read at all
    assert activity_reads((await emu.request_log("bigpanda"))[before:]) == {}

    await merge(world, emu, destination, source)
    await settle(world)
    reads = activity_reads((await emu.request_log("bigpanda"))[before:])
    # the merged incident: its merge read and the journal's comment read (a changed
    # linked pair); the destination: the journal's read once it is linked; the
    # untouched incident: nothing
    assert reads.get(source, 0) == 2
    assert reads.get(destination, 0) <= 1
    assert other not in reads
    print(f"\nactivities reads for one merge: {reads}")
