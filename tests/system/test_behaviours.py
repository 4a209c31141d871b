"""System tests of the sync engine (SPEC section 3, B1-B12 and B16) over loopback.

Both emulators, the real clients, a SQLite store and the engine run in this process
(``tests/system/conftest.py``). Changes are made the way people and tools make them,
through the vendors' HTTP APIs (:mod:`tests.system.helpers`); outcomes are read back
the same way, and write counts come from the emulators' ``/_emulator/stats``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from sync.clock import FakeClock
from sync.model import LinkState

from .conftest import World, open_world
from .helpers import ENV, SYSTEM_MAPPING, SYSTEM_TAGS, Emu, link_value, settle

LINK_TAG = "servicenow_link"


# --------------------------------------------------------------------------- helpers


async def start(world: World, **overrides: Any) -> None:
    """(Re)build the engine with the system mapping plus ``overrides`` (dotted names)."""
    await world.build(tag_mapping=SYSTEM_MAPPING, **overrides)


async def cycle(world: World) -> None:
    """One cycle that must succeed."""
    report = await world.cycle()
    assert report.ok, f"cycle failed: {report.error!r}"


async def assert_quiet(world: World, cycles: int = 3) -> None:
    """SPEC B5: with no new change, further cycles make zero write requests."""
    assert isinstance(world.clock, FakeClock)
    before = await world.writes()
    for _ in range(cycles):
        world.clock.advance(1)
        await cycle(world)
    assert await world.writes() == before, "a quiet cycle wrote (an echo)"


async def linked_pair(
    world: World, emu: Emu, host: str, *, check: str = "cpu", **tags: str
) -> tuple[str, dict[str, str]]:
    """A BigPanda incident (one critical alert, ``tags``) synced to its ServiceNow incident."""
    bp_id = await emu.new_incident(host, check=check)
    if tags:
        await emu.set_tags(bp_id, **tags)
    await settle(world)
    return bp_id, await emu.sn_one_for(bp_id)


async def live_link(world: World, bp_id: str) -> Any:
    assert world.engine is not None
    link = await world.engine.store.live_link_for_bp(bp_id)
    assert link is not None, f"no live link for {bp_id}"
    return link


class UpdateSpy:
    """Records the field sets the engine PATCHes into ServiceNow (SPEC B3: only the
    changed fields). Wraps the real client method; the request still goes out."""

    def __init__(self, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
        assert world.engine is not None
        client = world.engine.servicenow
        real = client.update_incident
        self.calls: list[tuple[str, dict[str, str]]] = []

        async def update_incident(sys_id: str, fields: Any) -> Any:
            self.calls.append((sys_id, dict(fields)))
            return await real(sys_id, fields)

        monkeypatch.setattr(client, "update_incident", update_incident)


# --------------------------------------------------------------------------- B1


async def test_b1_create_with_mapped_fields_settings_and_link_tag(world: World, emu: Emu) -> None:
    await start(
        world,
        **{
            "incidents.assignment_group": "Network",
            "incidents.caller_id_email": "abel.tuter@example.com",
            "incidents.opened_by_email": "admin@example.com",
            "incidents.cmdb_ci_tag": "host",
        },
    )
    bp_id = await emu.new_incident("db01", check="cpu")
    await emu.set_tags(bp_id, impact_level="high", service_area="database")

    await cycle(world)

    sn = await emu.sn_one_for(bp_id)
    assert sn["correlation_id"] == bp_id
    assert sn["correlation_display"] == "BigPanda"
    # mapped fields
    assert sn["impact"] == "1"
    assert sn["category"] == "database"
    # [incidents] settings, looked up in ServiceNow
    assert sn["assignment_group"] == await emu.sn_id("sys_user_group", "name", "Network")
    assert sn["caller_id"] == await emu.sn_id("sys_user", "email", "abel.tuter@example.com")
    assert sn["opened_by"] == await emu.sn_id("sys_user", "email", "admin@example.com")
    assert sn["cmdb_ci"] == await emu.sn_id("cmdb_ci", "name", "db01")
    assert sn["short_description"] == "db01 / cpu"
    assert sn["state"] == "1"
    # the link is recorded, and the link tag holds the number and URL
    link = await live_link(world, bp_id)
    assert (link.state, link.sn_sys_id, link.sn_number) == (
        LinkState.LINKED,
        sn["sys_id"],
        sn["number"],
    )
    tags = await emu.tags(bp_id)
    assert tags[LINK_TAG] == link_value(world.sn_url, sn["number"], sn["sys_id"])
    assert sn["number"] in tags[LINK_TAG]
    # exactly one create went to ServiceNow
    sn_requests = await emu.requests("servicenow")
    assert sn_requests.get("POST /api/now/table/{table}") == 1
    await assert_quiet(world)


async def test_b1_only_incidents_of_shared_environments_are_created(
    tmp_path: Path, clock: FakeClock
) -> None:
    network = "5e1f0b1a2c3d4e5f607183aa"
    options = {
        "rate_limit_per_s": None,
        "environments": [{"id": network, "name": "Network", "filter": 'host = "lb01"'}],
    }
    async with open_world(tmp_path, clock, bp_options=options) as world:
        emu = Emu(world)
        await emu.define_tags(*SYSTEM_TAGS)
        await start(world, **{"bigpanda.environments": [network]})
        outside = await emu.new_incident("db01")
        inside = await emu.new_incident("lb01")

        await settle(world)

        assert await emu.sn_for(outside) == []
        assert LINK_TAG not in await emu.tags(outside)
        sn = await emu.sn_one_for(inside)
        assert sn["description"].endswith(f"/incidents/{network}/{inside}/timeline")
        await assert_quiet(world)


# --------------------------------------------------------------------------- B2


async def test_b2_existing_incident_with_the_correlation_id_is_adopted(
    world: World, emu: Emu
) -> None:
    await start(world)
    bp_id = await emu.new_incident("db01")
    await emu.set_tags(bp_id, impact_level="high")
    made_by_hand = await emu.sn_create(
        {"correlation_id": bp_id, "short_description": "opened by hand", "impact": "3"}
    )

    await settle(world)

    sn = await emu.sn_one_for(bp_id)  # still exactly one
    assert sn["sys_id"] == made_by_hand["sys_id"]
    assert sn["impact"] == "1"  # the planned fields that differed were written
    link = await live_link(world, bp_id)
    assert link.sn_sys_id == made_by_hand["sys_id"]
    assert (await emu.tags(bp_id))[LINK_TAG] == link_value(
        world.sn_url, made_by_hand["number"], made_by_hand["sys_id"]
    )
    assert world.engine is not None
    audit = await world.engine.store.list_audit(link_id=link.id, kind="action")
    assert [a.outcome for a in audit] == ["adopted"]
    sn_requests = await emu.requests("servicenow")
    assert sn_requests.get("POST /api/now/table/{table}") == 1  # the hand-made one only
    await assert_quiet(world)


async def test_b2_second_instance_with_an_empty_store_creates_no_duplicate(
    world: World, emu: Emu
) -> None:
    """A re-run from scratch (lost database, a second replica, a re-run backfill)."""
    await start(world)
    bp_id, first = await linked_pair(world, emu, "db01", impact_level="medium")

    await start(world, state_dir=str(world.tmp / "second"))
    await settle(world)

    sn = await emu.sn_one_for(bp_id)
    assert sn["sys_id"] == first["sys_id"]
    assert (await live_link(world, bp_id)).sn_sys_id == first["sys_id"]
    await assert_quiet(world)


# --------------------------------------------------------------------------- B3


async def test_b3_tag_change_patches_only_the_changed_fields(
    world: World, emu: Emu, monkeypatch: pytest.MonkeyPatch
) -> None:
    await start(world)
    bp_id, sn = await linked_pair(world, emu, "db01", impact_level="high", service_area="db")
    # someone edits an unmapped field in ServiceNow meanwhile: it must survive the update
    await emu.sn_patch(sn["sys_id"], {"urgency": "1", "short_description": "edited by hand"})
    await settle(world)
    spy = UpdateSpy(world, monkeypatch)

    await emu.set_tags(bp_id, impact_level="low", service_area="network")
    await cycle(world)

    assert spy.calls == [(sn["sys_id"], {"impact": "3", "category": "network"})]
    after = await emu.sn_get(sn["sys_id"])
    assert (after["impact"], after["category"]) == ("3", "network")
    assert (after["urgency"], after["short_description"]) == ("1", "edited by hand")
    assert int(after["sys_mod_count"]) == int(sn["sys_mod_count"]) + 2  # hand edit + sync
    await assert_quiet(world)


async def test_b3_update_fields_limits_what_is_written_after_the_create(
    world: World, emu: Emu, monkeypatch: pytest.MonkeyPatch
) -> None:
    await start(world, **{"incidents.update_fields": ["impact"]})
    bp_id, sn = await linked_pair(world, emu, "db01", impact_level="high", service_area="db")
    assert (sn["impact"], sn["category"]) == ("1", "db")  # the create writes every field
    spy = UpdateSpy(world, monkeypatch)

    await emu.set_tags(bp_id, impact_level="medium", service_area="network")
    await cycle(world)

    assert spy.calls == [(sn["sys_id"], {"impact": "2"})]
    after = await emu.sn_get(sn["sys_id"])
    assert (after["impact"], after["category"]) == ("2", "db")
    await assert_quiet(world)


# --------------------------------------------------------------------------- B4


async def test_b4_field_change_reaches_its_tag(world: World, emu: Emu) -> None:
    await start(world)
    bp_id, sn = await linked_pair(world, emu, "db01", impact_level="high", service_area="db")

    await emu.sn_patch(sn["sys_id"], {"impact": "2", "category": "storage", "subcategory": "disk"})
    await cycle(world)

    tags = await emu.tags(bp_id)
    assert tags["impact_level"] == "medium"
    assert tags["service_area"] == "storage"
    assert tags["sn_subcategory"] == "disk"
    await assert_quiet(world)

    # an emptied text field removes its tag
    await emu.sn_patch(sn["sys_id"], {"subcategory": ""})
    await cycle(world)
    assert "sn_subcategory" not in await emu.tags(bp_id)
    await assert_quiet(world)


# --------------------------------------------------------------------------- B5


async def test_b5_no_echoes_after_any_change(world: World, emu: Emu) -> None:
    """After each kind of change settles, three more cycles write nothing at all."""
    await start(world)
    bp_id, sn = await linked_pair(world, emu, "db01", impact_level="high")
    await assert_quiet(world)  # after the create and the link tag

    await emu.set_tags(bp_id, impact_level="low", service_area="db")  # BigPanda -> SN
    await settle(world)
    await assert_quiet(world)

    await emu.sn_patch(sn["sys_id"], {"impact": "2", "subcategory": "disk"})  # SN -> BP
    await settle(world)
    await assert_quiet(world)

    await emu.sn_patch(sn["sys_id"], {"urgency": "2"})  # an unmapped field
    await settle(world)
    await assert_quiet(world)

    await emu.resolve(bp_id)  # a resolve
    await settle(world)
    await assert_quiet(world)

    final = await emu.sn_get(sn["sys_id"])
    assert (final["impact"], final["category"], final["state"]) == ("2", "db", "6")
    tags = await emu.tags(bp_id)
    assert (tags["impact_level"], tags["sn_subcategory"]) == ("medium", "disk")


# --------------------------------------------------------------------------- B6


@pytest.mark.parametrize(
    ("policy", "newer", "winner"),
    [
        ("newest", "bigpanda", "bigpanda"),
        ("newest", "servicenow", "servicenow"),
        ("newest", "same second", "servicenow"),  # a tie goes to ServiceNow
        ("bigpanda", "servicenow", "bigpanda"),
        ("servicenow", "bigpanda", "servicenow"),
    ],
)
async def test_b6_conflict_follows_the_policy_and_is_audited(
    world: World, emu: Emu, policy: str, newer: str, winner: str
) -> None:
    await start(world, **{"incidents.conflict_policy": policy})
    bp_id, sn = await linked_pair(world, emu, "db01", service_area="db")
    assert isinstance(world.clock, FakeClock)

    async def change_bp() -> None:
        await emu.set_tags(bp_id, service_area="from-bigpanda")

    async def change_sn() -> None:
        await emu.sn_patch(sn["sys_id"], {"category": "from-servicenow"})

    first, second = (change_sn, change_bp) if newer == "bigpanda" else (change_bp, change_sn)
    await first()
    if newer != "same second":
        world.clock.advance(2)
    await second()
    await cycle(world)

    expected = f"from-{winner}"
    assert (await emu.tags(bp_id))["service_area"] == expected
    assert (await emu.sn_get(sn["sys_id"]))["category"] == expected
    assert world.engine is not None
    link = await live_link(world, bp_id)
    conflicts = await world.engine.store.list_audit(link_id=link.id, kind="conflict")
    assert len(conflicts) == 1
    entry = conflicts[0]
    assert (entry.field, entry.bp_value, entry.sn_value) == (
        "category",
        "from-bigpanda",
        "from-servicenow",
    )
    assert entry.outcome == f"{winner} wins"
    assert entry.detail["policy"] == policy
    assert entry.detail["bp_tag"] == "service_area"
    await assert_quiet(world)


# --------------------------------------------------------------------------- B7


async def test_b7_bigpanda_resolve_resolves_servicenow(world: World, emu: Emu) -> None:
    await start(
        world,
        **{
            "incidents.resolved_by_email": "abel.tuter@example.com",
            "incidents.close_code": "Workaround provided",
            "incidents.close_notes": "Alerts cleared in BigPanda",
        },
    )
    bp_id, sn = await linked_pair(world, emu, "db01")

    await emu.resolve(bp_id, "all clear")
    await cycle(world)

    after = await emu.sn_get(sn["sys_id"])
    assert after["state"] == "6"
    assert after["close_code"] == "Workaround provided"
    assert after["close_notes"] == "Alerts cleared in BigPanda"
    abel = await emu.sn_id("sys_user", "email", "abel.tuter@example.com")
    assert after["resolved_by"] == abel
    assert (await live_link(world, bp_id)).state == LinkState.RESOLVED
    await assert_quiet(world)


async def test_b7_resolve_servicenow_off_leaves_servicenow_open(world: World, emu: Emu) -> None:
    await start(world, **{"incidents.resolve_servicenow": False})
    bp_id, sn = await linked_pair(world, emu, "db01")

    await emu.resolve(bp_id)
    await settle(world)

    assert (await emu.sn_get(sn["sys_id"]))["state"] == "1"
    await assert_quiet(world)


# --------------------------------------------------------------------------- B8


@pytest.mark.parametrize("send_closure_code", [True, False])
async def test_b8_servicenow_resolve_resolves_bigpanda(
    world: World, emu: Emu, send_closure_code: bool
) -> None:
    await start(world, **{"incidents.send_closure_code": send_closure_code})
    bp_id, sn = await linked_pair(world, emu, "db01")

    await emu.sn_patch(
        sn["sys_id"],
        {"state": "6", "close_code": "Known error", "close_notes": "Rebooted the database"},
    )
    await cycle(world)

    incident = await emu.incident(bp_id)
    assert incident["active"] is False
    resolved = await emu.activities(bp_id, types=["incident_resolved_api"])
    assert len(resolved) == 1
    text = str(resolved[0]["params"])
    assert sn["number"] in text
    if send_closure_code:
        assert "Close code: Known error" in text
        assert "Close notes: Rebooted the database" in text
    else:
        assert "Known error" not in text
        assert "Rebooted" not in text
    assert (await live_link(world, bp_id)).state == LinkState.RESOLVED
    await assert_quiet(world)


async def test_b8_resolve_bigpanda_off_leaves_bigpanda_active(world: World, emu: Emu) -> None:
    await start(world, **{"incidents.resolve_bigpanda": False})
    bp_id, sn = await linked_pair(world, emu, "db01")

    await emu.sn_patch(
        sn["sys_id"], {"state": "6", "close_code": "Known error", "close_notes": "done"}
    )
    await settle(world)

    assert (await emu.incident(bp_id))["active"] is True
    await assert_quiet(world)


# --------------------------------------------------------------------------- B9


async def _resolve_both(world: World, emu: Emu, bp_id: str, sys_id: str) -> None:
    await emu.resolve(bp_id)
    await settle(world)
    assert (await emu.sn_get(sys_id))["state"] == "6"


async def test_b9_reopen_inside_the_window_reopens_the_same_incident(
    world: World, emu: Emu
) -> None:
    await start(world, **{"incidents.reopen_window": 600})
    bp_id, sn = await linked_pair(world, emu, "db01", check="cpu")
    await _resolve_both(world, emu, bp_id, sn["sys_id"])
    link = await live_link(world, bp_id)
    assert isinstance(world.clock, FakeClock)

    world.clock.advance(120)
    await emu.ingest(host="db01", check="cpu", status="critical")  # the alert fires again
    assert (await emu.incident(bp_id))["active"] is True  # BigPanda reopened the same one
    await cycle(world)

    again = await emu.sn_one_for(bp_id)
    assert again["sys_id"] == sn["sys_id"]
    assert again["state"] == "2"
    assert again["reopen_count"] == "1"
    relinked = await live_link(world, bp_id)
    assert (relinked.id, relinked.state) == (link.id, LinkState.LINKED)
    await assert_quiet(world)


@pytest.mark.parametrize("why", ["window over", "servicenow closed", "reopen_resolved off"])
async def test_b9_reopen_otherwise_creates_a_new_incident_linked_to_the_old(
    world: World, emu: Emu, why: str
) -> None:
    await start(
        world,
        **{
            "incidents.reopen_window": 600,
            "incidents.reopen_resolved": why != "reopen_resolved off",
        },
    )
    bp_id, old = await linked_pair(world, emu, "db01", check="cpu", impact_level="high")
    await _resolve_both(world, emu, bp_id, old["sys_id"])
    old_link = await live_link(world, bp_id)
    assert isinstance(world.clock, FakeClock)
    if why == "servicenow closed":
        await emu.sn_patch(old["sys_id"], {"state": "7"})
        await settle(world)
    world.clock.advance(900 if why == "window over" else 60)  # BigPanda's own window: 1800 s

    await emu.ingest(host="db01", check="cpu", status="critical")
    assert (await emu.incident(bp_id))["active"] is True
    await settle(world)

    both = await emu.sn_for(bp_id)
    assert len(both) == 2, "a new ServiceNow incident for the reopened BigPanda incident"
    assert both[0]["sys_id"] == old["sys_id"]
    new = both[1]
    assert new["state"] == "1"
    assert new["impact"] == "1"
    previous = await emu.sn_get(old["sys_id"])
    assert previous["state"] == ("7" if why == "servicenow closed" else "6")
    assert previous["reopen_count"] == "0"
    # the new link points at its predecessor, kept as history
    link = await live_link(world, bp_id)
    assert link.sn_sys_id == new["sys_id"]
    assert link.previous_link_id == old_link.id
    assert world.engine is not None
    history = await world.engine.store.links_for_bp(bp_id)
    states = {h.id: (h.state, h.sn_sys_id) for h in history}
    assert states[old_link.id] == (LinkState.SUPERSEDED, old["sys_id"])
    assert (await emu.tags(bp_id))[LINK_TAG] == link_value(
        world.sn_url, new["number"], new["sys_id"]
    )
    await assert_quiet(world)


# --------------------------------------------------------------------------- B10


async def _incident_with_two_alerts(world: World, emu: Emu) -> str:
    assert isinstance(world.clock, FakeClock)
    bp_id = await emu.new_incident("db01", check="cpu", region="eu", status="critical")
    world.clock.advance(10)
    await emu.ingest(host="db01", check="disk", region="us", status="warning")
    await emu.set_tags(bp_id, service_area="database", priority="P2")
    return bp_id


async def test_b10_description_holds_what_the_settings_ask_for(world: World, emu: Emu) -> None:
    ui = "https://acme.bigpanda.io"
    await start(
        world,
        **{
            "bigpanda.ui_url": ui,
            "incidents.priority_in_short_description": True,
            "incidents.aia_in_description": True,
            "incidents.description_incident_tags": ["service_area", "impact_level"],
            "incidents.description_alert_tags": ["host", "region"],
            "incidents.max_alerts_in_description": 1,
            "incidents.links_in_description": True,
            "incidents.description_to_work_notes": True,
        },
    )
    bp_id = await _incident_with_two_alerts(world, emu)

    await cycle(world)

    sn = await emu.sn_one_for(bp_id)
    base = f"{ui}/incidents/{ENV}/{bp_id}"
    expected = (
        "Alert status: 1 Critical, 1 Warning, 0 Resolved\n"
        "\n"
        "Incident tags:\n"
        "  service_area: database\n"  # impact_level is not set: no line
        "\n"
        "Alert 1 / 2: db01 / cpu (Critical)\n"  # max_alerts_in_description = 1
        "  host: db01\n"
        "  region: eu\n"
        "\n"
        f"BigPanda incident: {base}\n"
        f"Preview: {base}/preview\n"
        f"Timeline: {base}/timeline"
    )
    assert sn["short_description"] == "[P2] db01 / cpu"
    assert sn["description"] == expected
    assert await emu.journal(sn["sys_id"]) == [f"[bpsync] {expected}"]
    await settle(world)
    await assert_quiet(world)


async def test_b10_description_without_options_holds_only_the_status_line(
    world: World, emu: Emu
) -> None:
    await start(
        world,
        **{
            "incidents.priority_in_short_description": False,
            "incidents.links_in_description": False,
            "incidents.description_to_work_notes": False,
        },
    )
    bp_id = await _incident_with_two_alerts(world, emu)

    await cycle(world)

    sn = await emu.sn_one_for(bp_id)
    assert sn["short_description"] == "db01 / cpu"
    assert sn["description"] == "Alert status: 1 Critical, 1 Warning, 0 Resolved"
    assert await emu.journal(sn["sys_id"]) == []
    await settle(world)
    await assert_quiet(world)


# --------------------------------------------------------------------------- B11

#: alerts of one incident: (check, status, seconds after the first, CI name)
_ALERTS = {
    "mixed": [
        ("cpu", "warning", 0, "ci-cpu"),
        ("disk", "critical", 10, "ci-disk"),
        ("mem", "critical", 20, "ci-mem"),
    ],
    "no critical": [("cpu", "warning", 0, "ci-cpu"), ("disk", "warning", 10, "ci-disk")],
    "unknown first": [
        ("cpu", "unknown", 0, "ci-cpu"),
        ("disk", "warning", 10, "ci-disk"),
        ("mem", "warning", 20, "ci-mem"),
    ],
}


@pytest.mark.parametrize(
    ("alerts", "criteria", "chosen"),
    [
        ("mixed", "status=critical, startedOn", "disk"),  # the default: oldest critical
        ("mixed", "status=critical, -startedOn", "mem"),  # newest critical
        ("mixed", "status=warning, startedOn", "cpu"),
        ("mixed", "startedOn", "cpu"),
        ("mixed", "-startedOn", "mem"),
        ("mixed", "status=crit*, startedOn", "disk"),  # wildcard
        ("mixed", "ci=ci-m*, status=critical", "mem"),  # an alert tag
        ("no critical", "status=critical, startedOn", "cpu"),  # falls back to the oldest
        ("unknown first", "status=critical, status=warning, -startedOn", "mem"),
    ],
)
async def test_b11_primary_alert_feeds_cmdb_ci_and_title(
    world: World, emu: Emu, alerts: str, criteria: str, chosen: str
) -> None:
    await start(world, **{"incidents.primary_alert": criteria, "incidents.cmdb_ci_tag": "ci"})
    assert isinstance(world.clock, FakeClock)
    ci_ids = {}
    for _, _, _, ci in _ALERTS[alerts]:
        ci_ids[ci] = (await emu.sn_create({"name": ci}, table="cmdb_ci"))["sys_id"]
    elapsed = 0
    for check, status, offset, ci in _ALERTS[alerts]:
        world.clock.advance(offset - elapsed)
        elapsed = offset
        await emu.ingest(host="app-1", check=check, status=status, ci=ci)
    incident = await emu.incident_for("app-1")
    assert len(incident["alerts"]) == len(_ALERTS[alerts])  # one incident, several alerts

    await cycle(world)

    sn = await emu.sn_one_for(incident["id"])
    assert sn["cmdb_ci"] == ci_ids[f"ci-{chosen}"]
    assert sn["short_description"] == f"app-1 / {chosen}"
    await settle(world)
    await assert_quiet(world)


# --------------------------------------------------------------------------- B12


async def test_b12_unknown_email_leaves_the_field_empty_with_one_warning(
    world: World, emu: Emu, caplog: pytest.LogCaptureFixture
) -> None:
    await start(
        world,
        **{
            "incidents.caller_id_email": "nobody@example.com",
            "incidents.assignment_group": "Network",
        },
    )
    first = await emu.new_incident("db01")
    second = await emu.new_incident("db02")

    with caplog.at_level(logging.WARNING):
        await cycle(world)

    for bp_id in (first, second):
        sn = await emu.sn_one_for(bp_id)  # created all the same
        assert sn["caller_id"] == ""
        assert sn["assignment_group"] == await emu.sn_id("sys_user_group", "name", "Network")
    warnings = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and "nobody@example.com" in r.getMessage()
    ]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    await settle(world)
    await assert_quiet(world)


# --------------------------------------------------------------------------- B16


async def test_b16_changes_sharing_a_second_with_the_cursor_are_all_synced(
    world: World, emu: Emu
) -> None:
    await start(world)
    pairs = [
        await linked_pair(world, emu, f"db0{i}", impact_level="high", service_area="db")
        for i in range(1, 4)
    ]
    (bp1, sn1), (bp2, sn2), (bp3, sn3) = pairs
    # the clock stands still from here on: every change below shares one second
    await emu.set_tags(bp1, impact_level="medium")
    await cycle(world)  # both cursors now sit at this very second
    assert (await emu.sn_get(sn1["sys_id"]))["impact"] == "2"

    await emu.set_tags(bp2, impact_level="low")
    await emu.set_tags(bp3, service_area="network")
    await emu.sn_patch(sn1["sys_id"], {"subcategory": "cpu"})
    await emu.sn_patch(sn2["sys_id"], {"category": "storage"})
    await cycle(world)

    await emu.set_tags(bp1, impact_level="low")  # a second change of one incident
    await emu.sn_patch(sn3["sys_id"], {"subcategory": "one"})
    await emu.sn_patch(sn3["sys_id"], {"subcategory": "two"})
    await emu.sn_patch(sn2["sys_id"], {"impact": "1"})
    await cycle(world)

    assert (await emu.sn_get(sn1["sys_id"]))["impact"] == "3"
    assert (await emu.tags(bp1))["sn_subcategory"] == "cpu"
    assert (await emu.tags(bp2))["service_area"] == "storage"
    assert (await emu.tags(bp2))["impact_level"] == "high"
    assert (await emu.sn_get(sn2["sys_id"]))["impact"] == "1"
    assert (await emu.sn_get(sn3["sys_id"]))["category"] == "network"
    assert (await emu.tags(bp3))["sn_subcategory"] == "two"
    await assert_quiet(world)


# --------------------------------------------------------------------------- daemon


async def test_daemon_end_to_end(live_world: World) -> None:
    """The real daemon (scheduler, poll 0.2 s): an alert becomes a linked ServiceNow
    incident, and changes travel both ways within a few seconds."""
    world = live_world
    emu = Emu(world)
    await emu.define_tags(*SYSTEM_TAGS)
    async with world.daemon(tag_mapping=SYSTEM_MAPPING):
        bp_id = await emu.new_incident("db01", check="cpu")

        async def linked() -> bool:
            return LINK_TAG in await emu.tags(bp_id) and len(await emu.sn_for(bp_id)) == 1

        await world.wait_for(linked, timeout_s=10, what="the ServiceNow incident and link tag")
        sn = await emu.sn_one_for(bp_id)
        assert (await emu.tags(bp_id))[LINK_TAG] == link_value(
            world.sn_url, sn["number"], sn["sys_id"]
        )

        await emu.sn_patch(sn["sys_id"], {"impact": "1", "subcategory": "disk"})

        async def reached_bigpanda() -> bool:
            tags = await emu.tags(bp_id)
            return tags.get("impact_level") == "high" and tags.get("sn_subcategory") == "disk"

        await world.wait_for(reached_bigpanda, timeout_s=10, what="the field change on BigPanda")

        await emu.set_tags(bp_id, service_area="network")

        async def reached_servicenow() -> bool:
            return (await emu.sn_get(sn["sys_id"]))["category"] == "network"

        await world.wait_for(reached_servicenow, timeout_s=10, what="the tag change in ServiceNow")
    assert len(await emu.sn_for(bp_id)) == 1
