"""BigPanda assignee <-> ServiceNow assigned_to over loopback (issue 14 item 2).

Both emulators as seeded: Abel Tuter exists on both sides; Chen Wu only in BigPanda;
Beth Anglin's e-mail is shared by two ServiceNow users; ServiceNow's login users
(admin, ...) have no BigPanda account; Dana Reyes is a deactivated BigPanda user.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sync.clock import FakeClock
from sync.emulators.bigpanda import STATE_KEY as BP_STATE_KEY
from sync.emulators.bigpanda.users import SEED_USERS

from .conftest import World, open_world
from .helpers import ENV, SYSTEM_MAPPING, Emu, quiet, settle

V2 = "/resources/v2.0"
BP_USERS = {user.email: user.id for user in SEED_USERS}
ABEL = BP_USERS["abel.tuter@example.com"]
BETH = BP_USERS["beth.anglin@example.com"]
CHEN = BP_USERS["chen.wu@example.com"]
DANA = BP_USERS["dana.reyes@example.com"]
SCIM_LIST = f"{V2}/scim/Users"
SYS_USER = "/api/now/table/sys_user"
ASSIGNEE = {"incidents.sync_assignee": True}


@pytest.fixture(params=[True, False], ids=["assignee-with-email", "assignee-without-email"])
async def world(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[World]:
    """The loopback world under each reading of the undocumented ``assignee`` object:
    with the user's e-mail (a real answer's), or without (then bpsync asks SCIM by id)."""
    options = {"rate_limit_per_s": None, "assignee_email": request.param}
    async with open_world(tmp_path, clock, bp_options=options) as w:
        yield w


async def linked(world: World, emu: Emu, host: str, **overrides: Any) -> tuple[str, str]:
    await world.build(tag_mapping=SYSTEM_MAPPING, **{**ASSIGNEE, **overrides})
    bp_id = await emu.new_incident(host, check="cpu")
    await settle(world)
    assert isinstance(world.clock, FakeClock)
    world.clock.advance(1)
    return bp_id, (await emu.sn_one_for(bp_id))["sys_id"]


def _assignment(bp_id: str) -> str:
    return f"{V2}/environments/{ENV}/incidents/{bp_id}/assignment"


async def assign(emu: Emu, bp_id: str, user_id: str) -> None:
    """A person assigns the incident in BigPanda."""
    await emu._bp("PUT", _assignment(bp_id), json={"assignee": user_id}, expect=204)


async def unassign(emu: Emu, bp_id: str) -> None:
    await emu._bp("DELETE", _assignment(bp_id), expect=204)


async def bp_assignee(emu: Emu, bp_id: str) -> str | None:
    assignee = (await emu.incident(bp_id)).get("assignee")
    return None if not assignee else str(assignee["user_id"])


async def sn_assignee(emu: Emu, sys_id: str) -> str:
    return (await emu.sn_get(sys_id))["assigned_to"]


async def test_the_assignee_follows_both_ways(world: World, emu: Emu) -> None:
    bp_id, sys_id = await linked(world, emu, "assign-01")
    abel = await emu.sn_id("sys_user", "user_name", "abel.tuter")

    # BigPanda assigns Abel -> assigned_to is the sys_user with his e-mail
    await assign(emu, bp_id, ABEL)
    await settle(world)
    assert await sn_assignee(emu, sys_id) == abel
    # his e-mail: from the incident when it carries it, else from SCIM by his id
    by_id = [e for e in await emu.request_log("bigpanda") if "/scim/Users/" in e["path"]]
    assert len(by_id) == (0 if world.bp_app[BP_STATE_KEY].assignee_email else 1)
    await quiet(world, "an echo of an assignment")

    # ServiceNow clears assigned_to -> the BigPanda incident is unassigned
    await emu.sn_patch(sys_id, {"assigned_to": ""})
    await settle(world)
    assert await bp_assignee(emu, bp_id) is None
    await quiet(world, "an echo of an assignment")

    # ServiceNow assigns Abel -> the BigPanda user with his e-mail (SCIM)
    await emu.sn_patch(sys_id, {"assigned_to": abel})
    await settle(world)
    assert await bp_assignee(emu, bp_id) == ABEL
    await quiet(world, "an echo of an assignment")

    # unassigned in BigPanda -> cleared in ServiceNow
    await unassign(emu, bp_id)
    await settle(world)
    assert await sn_assignee(emu, sys_id) == ""
    await quiet(world, "an echo of an assignment")


async def test_an_incident_assigned_before_its_ticket_exists(world: World, emu: Emu) -> None:
    await world.build(tag_mapping=SYSTEM_MAPPING, **ASSIGNEE)
    bp_id = await emu.new_incident("assign-00", check="cpu")
    await assign(emu, bp_id, ABEL)
    await settle(world)  # created, then its assignee follows
    sys_id = (await emu.sn_one_for(bp_id))["sys_id"]
    assert await sn_assignee(emu, sys_id) == await emu.sn_id("sys_user", "user_name", "abel.tuter")
    await quiet(world, "an echo of an assignment")


async def test_people_who_cannot_be_matched_leave_the_other_side_alone(
    world: World, emu: Emu, caplog: pytest.LogCaptureFixture
) -> None:
    bp_id, sys_id = await linked(world, emu, "assign-02")
    abel = await emu.sn_id("sys_user", "user_name", "abel.tuter")
    await emu.sn_patch(sys_id, {"assigned_to": abel})
    await settle(world)
    assert await bp_assignee(emu, bp_id) == ABEL
    caplog.clear()

    # Chen Wu has no ServiceNow account: assigned_to stays Abel, one WARNING
    with caplog.at_level(logging.WARNING):
        await assign(emu, bp_id, CHEN)
        await settle(world)
    assert await sn_assignee(emu, sys_id) == abel
    misses = [r for r in caplog.records if "chen.wu@example.com" in r.getMessage()]
    assert len(misses) == 1, [r.getMessage() for r in caplog.records]
    await quiet(world, "an echo of an assignment")

    # Beth Anglin's e-mail belongs to two sys_user rows: ambiguous, left as it is
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        await assign(emu, bp_id, BETH)
        await settle(world)
    assert await sn_assignee(emu, sys_id) == abel
    [ambiguous] = [r for r in caplog.records if "beth.anglin@example.com" in r.getMessage()]
    assert "several records match" in ambiguous.getMessage()
    await quiet(world, "an echo of an assignment")

    # ServiceNow assigns the admin, who has no BigPanda account: BigPanda keeps Beth
    admin = await emu.sn_id("sys_user", "user_name", "admin")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        await emu.sn_patch(sys_id, {"assigned_to": admin})
        await settle(world)
    assert await bp_assignee(emu, bp_id) == BETH
    assert any("admin@example.com" in r.getMessage() for r in caplog.records)
    await quiet(world, "an echo of an assignment")

    # back to Chen: known misses are cached and not logged again
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        await assign(emu, bp_id, CHEN)
        await settle(world)
    assert not [r for r in caplog.records if "chen.wu@example.com" in r.getMessage()]
    assert await sn_assignee(emu, sys_id) == admin


async def test_a_deactivated_bigpanda_user_is_not_assigned(world: World, emu: Emu) -> None:
    bp_id, sys_id = await linked(world, emu, "assign-03")
    dana = await emu.sn_create(
        {"user_name": "dana.reyes", "name": "Dana Reyes", "email": "dana.reyes@example.com"},
        table="sys_user",
    )
    await emu.sn_patch(sys_id, {"assigned_to": dana["sys_id"]})
    await settle(world)
    assert await bp_assignee(emu, bp_id) is None  # SCIM lists her, active: false
    await quiet(world, "an echo of an assignment")


async def test_both_changed_the_conflict_policy_decides(world: World, emu: Emu) -> None:
    bp_id, sys_id = await linked(
        world, emu, "assign-04", **{"incidents.conflict_policy": "bigpanda"}
    )
    abel = await emu.sn_id("sys_user", "user_name", "abel.tuter")
    await assign(emu, bp_id, ABEL)
    await settle(world)
    assert await sn_assignee(emu, sys_id) == abel
    assert isinstance(world.clock, FakeClock)
    world.clock.advance(1)

    # in the same cycle: unassigned in BigPanda, the admin assigned in ServiceNow
    admin = await emu.sn_id("sys_user", "user_name", "admin")
    await unassign(emu, bp_id)
    await emu.sn_patch(sys_id, {"assigned_to": admin})
    await settle(world)
    assert await sn_assignee(emu, sys_id) == ""  # BigPanda wins
    assert await bp_assignee(emu, bp_id) is None
    assert world.engine is not None
    conflicts = await world.engine.store.list_audit(kind="conflict")
    assert [(e.field, e.bp_value, e.sn_value) for e in conflicts] == [
        ("assigned_to", None, "admin@example.com")
    ]
    await quiet(world, "an echo of an assignment")


async def test_idle_cycles_and_known_people_ask_nobody(world: World, emu: Emu) -> None:
    first, first_sys = await linked(world, emu, "assign-05")
    second = await emu.new_incident("assign-06", check="cpu")
    await settle(world)
    second_sys = (await emu.sn_one_for(second))["sys_id"]
    assert isinstance(world.clock, FakeClock)
    world.clock.advance(1)
    await assign(emu, first, ABEL)
    await settle(world)
    abel = await emu.sn_id("sys_user", "user_name", "abel.tuter")
    assert await sn_assignee(emu, first_sys) == abel

    async def lookups() -> int:
        scim = await emu.request_log("bigpanda", path=SCIM_LIST)
        by_id = [e for e in await emu.request_log("bigpanda") if "/scim/Users/" in e["path"]]
        return len(scim) + len(by_id) + len(await emu.request_log("servicenow", path=SYS_USER))

    asked = await lookups()
    await quiet(world, "an echo of an assignment")  # idle: no look-up either
    assert await lookups() == asked
    # the same person on another incident: cached, no look-up
    await assign(emu, second, ABEL)
    await settle(world)
    assert await sn_assignee(emu, second_sys) == abel
    assert await lookups() == asked


async def test_a_bigpanda_comment_names_its_author(world: World, emu: Emu) -> None:
    bp_id, sys_id = await linked(world, emu, "assign-07")
    state = world.bp_app[BP_STATE_KEY]
    state.comment(bp_id, "checked the disks", by=ABEL)
    state.comment(bp_id, "from a removed user", by="5e1f0b1a2c3d4e5f60718fff")
    await settle(world)
    notes = [t for t in await emu.journal(sys_id) if "checked the disks" in t]
    assert len(notes) == 1 and "BigPanda comment by Abel Tuter at " in notes[0]
    [removed] = [t for t in await emu.journal(sys_id) if "from a removed user" in t]
    assert "comment by 5e1f0b1a2c3d4e5f60718fff at " in removed  # not found: the id


async def test_without_the_setting_assignees_stay_apart(world: World, emu: Emu) -> None:
    bp_id, sys_id = await linked(world, emu, "assign-08", **{"incidents.sync_assignee": False})
    await assign(emu, bp_id, ABEL)
    await settle(world)
    assert await sn_assignee(emu, sys_id) == ""
    assert not await emu.request_log("servicenow", path=SYS_USER)
