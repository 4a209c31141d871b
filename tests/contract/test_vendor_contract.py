"""One model of each vendor (issue 12 item 5): the same scenarios, the same answers.

Every scenario runs on ``world`` twice (``conftest.py``): on the fakes the engine tests
use, and on the real clients over the emulators. It asks only through the
``ServiceNowAPI`` / ``BigPandaAPI`` protocols and asserts what the engine relies on, so
a fake that answers differently from the emulator (which follows
docs/servicenow-api.md and docs/bigpanda-api.md) fails here, not in production.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC

import pytest

from sync.clients.base import BPTagDefinition, IncidentRow, MalformedRow, SNRecord
from sync.clients.servicenow.parsing import MalformedRecord
from sync.clock import epoch_s
from sync.constants import SN_DATETIME_FORMAT
from sync.errors import MissingTagError, NotFoundError, PermanentError, TransientError
from sync.model import BPIncident, SNFieldInfo, SNIncident
from tests.contract.conftest import VendorWorld

SYS_ID = re.compile(r"^[0-9a-f]{32}$")
NUMBER = re.compile(r"^INC\d{7}$")
UNKNOWN_SYS_ID = "0" * 32
UNKNOWN_BP_ID = "0" * 24
CLOSE = {"close_code": "Solution provided", "close_notes": "fixed"}


def sn_now(world: VendorWorld) -> str:
    return world.clock.now().strftime(SN_DATETIME_FORMAT)


def bp_now(world: VendorWorld) -> int:
    return epoch_s(world.clock.now())


def field(record: IncidentRow, name: str) -> str:
    """A field as the engine reads it: a missing field reads as empty (an incident's
    fields as the client parsed them, a malformed row of list_changed as it came)."""
    values = record.fields if isinstance(record, SNIncident) else record.record
    return str(values.get(name) or "")


def ids(records: Sequence[IncidentRow]) -> list[str]:
    return [field(r, "sys_id") for r in records]


async def correlated(world: VendorWorld, correlation_id: str, **fields: str) -> SNIncident:
    return await world.sn.create_incident(
        {"correlation_id": correlation_id, "correlation_display": "BigPanda", **fields}
    )


# ====================================================================== ServiceNow


async def test_sn_create_returns_the_stored_record(world: VendorWorld) -> None:
    record = await correlated(world, "bp-1", short_description="disk full", impact="2", urgency="2")
    assert SYS_ID.match(record.sys_id)
    assert NUMBER.match(record.number)
    assert field(record, "correlation_id") == "bp-1"
    assert field(record, "correlation_display") == "BigPanda"
    assert field(record, "short_description") == "disk full"
    assert (field(record, "state"), field(record, "active")) == ("1", "true")
    assert field(record, "priority") == "3"  # impact x urgency (docs 3.3)
    assert field(record, "sys_mod_count") == "0"
    assert field(record, "sys_created_on") == field(record, "sys_updated_on") == sn_now(world)
    # the typed incident, as the engine reads it, is the same from both
    assert isinstance(record, SNIncident)
    assert (record.state, record.active, record.resolved) == (1, True, False)
    assert (record.sys_mod_count, record.correlation_id) == (0, "bp-1")
    assert record.sys_updated_on.tzinfo is UTC
    assert record.sys_updated_on.strftime(SN_DATETIME_FORMAT) == sn_now(world)
    second = await world.sn.create_incident({"short_description": "other"})
    assert second.sys_id != record.sys_id
    assert int(second.number[3:]) == int(record.number[3:]) + 1
    # the table's defaults (docs 3.1): a mapped field bpsync did not write has a value
    defaults = {"impact": "3", "urgency": "3", "priority": "5", "category": "inquiry"}
    assert {name: field(second, name) for name in defaults} == defaults
    # a field of the table that nobody wrote is there, empty (the engine tells a field
    # it did not read from an empty one by its presence)
    for name in ("correlation_id", "subcategory", "assignment_group", "close_code"):
        assert second.fields.get(name) == "", name


async def test_sn_create_ignores_sys_fields_and_cuts_to_the_field_size(
    world: VendorWorld,
) -> None:
    record = await world.sn.create_incident(
        {"short_description": "x" * 200, "sys_mod_count": "7", "work_notes": "first note"}
    )
    assert field(record, "short_description") == "x" * 160
    assert field(record, "sys_mod_count") == "0"
    assert field(record, "work_notes") == ""  # a journal entry, never a stored value


async def test_sn_get_incident_answers_what_create_stored(world: VendorWorld) -> None:
    record = await correlated(world, "bp-2", short_description="cpu", impact="1")
    got = await world.sn.get_incident(record.sys_id)
    for name in ("sys_id", "number", "correlation_id", "short_description", "impact", "state"):
        assert field(got, name) == field(record, name), name
    with pytest.raises(NotFoundError):
        await world.sn.get_incident(UNKNOWN_SYS_ID)
    with pytest.raises(PermanentError) as caught:  # refused before it is sent
        await world.sn.get_incident("INC0010001")
    assert not isinstance(caught.value, NotFoundError)


async def test_sn_update_changes_only_the_given_fields(world: VendorWorld) -> None:
    record = await correlated(
        world, "bp-3", short_description="before", description="keep", impact="2", urgency="3"
    )
    world.clock.advance(10)
    updated = await world.sn.update_incident(record.sys_id, {"short_description": "after"})
    assert field(updated, "short_description") == "after"
    for name in ("description", "impact", "urgency", "correlation_id", "number", "state"):
        assert field(updated, name) == field(record, name), name
    assert field(updated, "sys_mod_count") == "1"
    assert field(updated, "sys_updated_on") == sn_now(world)
    assert updated.sys_mod_count == 1 and updated.sys_updated_on > record.sys_updated_on
    assert field(updated, "sys_created_on") == field(record, "sys_created_on")
    got = await world.sn.get_incident(record.sys_id)
    assert field(got, "short_description") == "after"
    assert field(got, "description") == "keep"
    # priority follows impact and urgency when either is written (docs 3.3)
    raised = await world.sn.update_incident(record.sys_id, {"urgency": "1"})
    assert (field(raised, "impact"), field(raised, "priority")) == ("2", "2")
    with pytest.raises(NotFoundError):
        await world.sn.update_incident(UNKNOWN_SYS_ID, {"short_description": "x"})


async def test_sn_update_with_unchanged_values_is_not_a_change(world: VendorWorld) -> None:
    record = await correlated(world, "bp-4", short_description="same", impact="2")
    world.clock.advance(30)
    again = await world.sn.update_incident(
        record.sys_id, {"short_description": "same", "impact": "2"}
    )
    assert field(again, "sys_mod_count") == "0"
    assert field(again, "sys_updated_on") == field(record, "sys_updated_on")
    assert await world.sn.list_changed(world.clock.now(), overlap_s=5) == []
    # a journal entry alone is a change (docs 3.5), though the record keeps no value
    noted = await world.sn.update_incident(record.sys_id, {"work_notes": "a note"})
    assert field(noted, "work_notes") == ""
    assert field(noted, "sys_mod_count") == "1"
    assert field(noted, "sys_updated_on") == sn_now(world)
    assert ids(await world.sn.list_changed(world.clock.now(), overlap_s=5)) == [record.sys_id]


async def test_sn_resolve_needs_close_code_and_notes_and_stamps_the_api_user(
    world: VendorWorld,
) -> None:
    person = await world.sn_add_user("jane.doe", "Jane Doe", "jane.doe@example.net")
    record = await correlated(world, "bp-5", short_description="x")
    for refused in ({"state": "6"}, {"state": "6", "close_notes": "fixed"}):
        with pytest.raises(PermanentError) as caught:
            await world.sn.update_incident(record.sys_id, refused)
        assert not isinstance(caught.value, NotFoundError)
    with pytest.raises(PermanentError):  # not a valid close code: as if missing (docs 3.4)
        await world.sn.update_incident(
            record.sys_id, {"state": "6", "close_code": "Fixed it", "close_notes": "x"}
        )
    unchanged = await world.sn.get_incident(record.sys_id)
    assert (field(unchanged, "state"), field(unchanged, "sys_mod_count")) == ("1", "0")
    world.clock.advance(5)
    resolved = await world.sn.update_incident(
        record.sys_id, {"state": "6", **CLOSE, "resolved_by": person}
    )
    assert (field(resolved, "state"), field(resolved, "active")) == ("6", "true")
    assert (resolved.state, resolved.active, resolved.resolved) == (6, True, True)
    assert field(resolved, "resolved_at") == sn_now(world)
    # the Resolved business rule stamps the API user on the state change (B7): the
    # engine writes resolved_by again when it wants someone else
    stamped = field(resolved, "resolved_by")
    assert SYS_ID.match(stamped) and stamped != person
    again = await world.sn.update_incident(record.sys_id, {"resolved_by": person})
    assert field(again, "resolved_by") == person
    # reopen: Resolved -> In Progress counts a reopen
    reopened = await world.sn.update_incident(record.sys_id, {"state": "2"})
    assert (field(reopened, "state"), field(reopened, "active")) == ("2", "true")
    assert field(reopened, "reopen_count") == "1"


async def test_sn_closed_is_terminal_and_on_hold_needs_a_reason(world: VendorWorld) -> None:
    record = await correlated(world, "bp-6", short_description="x")
    with pytest.raises(PermanentError):
        await world.sn.update_incident(record.sys_id, {"state": "3"})
    held = await world.sn.update_incident(record.sys_id, {"state": "3", "hold_reason": "1"})
    assert (field(held, "state"), field(held, "active")) == ("3", "true")
    closed = await world.sn.update_incident(record.sys_id, {"state": "7", **CLOSE})
    assert (field(closed, "state"), field(closed, "active")) == ("7", "false")
    assert (closed.state, closed.active, closed.resolved) == (7, False, True)
    assert field(closed, "closed_at") == sn_now(world)
    assert field(closed, "resolved_at") == sn_now(world)
    with pytest.raises(PermanentError) as caught:
        await world.sn.update_incident(record.sys_id, {"state": "2"})
    assert not isinstance(caught.value, NotFoundError)
    assert field(await world.sn.get_incident(record.sys_id), "state") == "7"
    # other fields of a closed incident may still change
    noted = await world.sn.update_incident(record.sys_id, {"description": "post mortem"})
    assert field(noted, "description") == "post mortem"


async def test_sn_a_row_that_is_not_an_incident_is_named_not_failing_a_list(
    world: VendorWorld,
) -> None:
    """A state no choice list has (a broken import): a read of the incident names it; a
    listing holds it as a MalformedRow in its place, so a duplicate check still counts
    its correlation_id and the poll skips it, named."""
    good = await correlated(world, "bp-15", short_description="fine")
    world.clock.advance(1)
    odd = await correlated(world, "bp-15", short_description="imported")
    await world.sn_edit_by_hand(odd.sys_id, state="resolved-ish")
    with pytest.raises(MalformedRecord, match=f"{odd.sys_id}: bad state 'resolved-ish'"):
        await world.sn.get_incident(odd.sys_id)
    for found in (
        await world.sn.find_by_correlation_id("bp-15"),
        await world.sn.find_by_correlation_ids(["bp-15"]),
        await world.sn.list_changed(None, overlap_s=0),
    ):
        assert ids(found) == [good.sys_id, odd.sys_id]
        first, second = found
        assert isinstance(first, SNIncident)
        assert isinstance(second, MalformedRow)
        assert (second.name, second.correlation_id) == (odd.sys_id, "bp-15")
        assert second.problem == f"ServiceNow record {odd.sys_id}: bad state 'resolved-ish'"


async def test_sn_find_by_correlation_id_with_active_only(world: VendorWorld) -> None:
    first = await correlated(world, "bp-7", short_description="first")
    world.clock.advance(1)
    resolved = await correlated(world, "bp-7", short_description="resolved")
    await world.sn.update_incident(resolved.sys_id, {"state": "6", **CLOSE})
    world.clock.advance(1)
    closed = await correlated(world, "bp-7", short_description="closed")
    await world.sn.update_incident(closed.sys_id, {"state": "7", **CLOSE})
    other = await correlated(world, "bp-8", short_description="other")
    await world.sn.create_incident({"short_description": "not correlated"})

    # oldest first (ORDERBYsys_created_on); Resolved is still active, Closed is not
    all_of_7 = [first.sys_id, resolved.sys_id, closed.sys_id]
    assert ids(await world.sn.find_by_correlation_id("bp-7")) == all_of_7
    active_7 = [first.sys_id, resolved.sys_id]
    assert ids(await world.sn.find_by_correlation_id("bp-7", active_only=True)) == active_7
    assert await world.sn.find_by_correlation_id("bp-9") == []

    found = await world.sn.find_by_correlation_ids(["bp-8", "bp-7", "bp-9"])
    assert sorted(ids(found)) == sorted([*all_of_7, other.sys_id])
    found = await world.sn.find_by_correlation_ids(["bp-7", "bp-8"], active_only=True)
    assert sorted(ids(found)) == sorted([*active_7, other.sys_id])
    assert await world.sn.find_by_correlation_ids([]) == []
    with pytest.raises(PermanentError):  # an id bpsync could not have written
        await world.sn.find_by_correlation_id("bp 7^ORDERBYnumber")


async def test_sn_list_changed_after_the_cursor_with_its_overlap(world: VendorWorld) -> None:
    start = world.clock.now()
    old = await correlated(world, "bp-10", short_description="old")
    at_14 = await correlated(world, "bp-11", short_description="edited at 14")
    at_15 = await correlated(world, "bp-12", short_description="edited at 15")
    uncorrelated = await world.sn.create_incident({"short_description": "no correlation"})
    world.clock.advance(14)
    await world.sn_edit_by_hand(at_14.sys_id, impact="1")
    world.clock.advance(1)
    await world.sn_edit_by_hand(at_15.sys_id, impact="1")
    world.clock.advance(5)
    cursor = world.clock.now()  # t+20; overlap 5: changes from t+15 on count
    world.clock.advance(5)
    new = await correlated(world, "bp-13", short_description="created at 25")
    await world.sn_edit_by_hand(uncorrelated.sys_id, impact="1")

    changed = await world.sn.list_changed(cursor, overlap_s=5)
    assert ids(changed) == [at_15.sys_id, new.sys_id]
    first, second = changed
    assert isinstance(first, SNIncident) and isinstance(second, SNIncident)
    assert (first.sys_mod_count, second.sys_updated_on) == (1, new.sys_updated_on)
    assert field(changed[0], "sys_updated_on") < field(changed[1], "sys_updated_on")
    assert field(changed[0], "impact") == "1"
    assert field(changed[0], "sys_mod_count") == "1"

    everything = await world.sn.list_changed(None, overlap_s=5)
    assert set(ids(everything)) == {old.sys_id, at_14.sys_id, at_15.sys_id, new.sys_id}
    stamps = [(field(r, "sys_updated_on"), field(r, "sys_id")) for r in everything]
    assert stamps == sorted(stamps)
    assert ids(everything)[0] == old.sys_id
    assert ids(await world.sn.list_changed(start, overlap_s=0))[-2:] == ids(changed)

    narrowed = await world.sn.list_changed(cursor, overlap_s=5, fields=["impact"])
    assert ids(narrowed) == ids(changed)
    for record in narrowed:  # the keys the poll needs come whatever the fields asked
        assert isinstance(record, SNIncident)
        assert set(record.fields) == {"sys_id", "sys_updated_on", "sys_mod_count", "impact"}


async def test_sn_query_sys_user_by_email(world: VendorWorld) -> None:
    ann = await world.sn_add_user("ann.ops", "Ann Ops", "ops@example.net")
    bob = await world.sn_add_user("bob.ops", "Bob Ops", "ops@example.net")
    await world.sn_add_user("cy.dev", "Cy Dev", "dev@example.net")
    rows = await world.sn.query(
        "sys_user", {"email": "ops@example.net"}, fields=["sys_id", "name"], limit=10
    )
    assert sorted(rows, key=lambda r: r["name"]) == [
        {"sys_id": ann, "name": "Ann Ops"},
        {"sys_id": bob, "name": "Bob Ops"},
    ]

    async def by_email(email: str, limit: int) -> list[SNRecord]:
        return await world.sn.query("sys_user", {"email": email}, fields=["sys_id"], limit=limit)

    assert len(await by_email("ops@example.net", 1)) == 1
    assert await by_email("nobody@example.net", 5) == []
    both = await world.sn.query(
        "sys_user", {"email": "ops@example.net", "name": "Bob Ops"}, fields=["sys_id"], limit=5
    )
    assert both == [{"sys_id": bob}]
    # a condition on a field the table does not have is dropped (docs 2): every row
    # matches, which a look-up reads as ambiguous
    loose = await world.sn.query("sys_user", {"u_badge": "7"}, fields=["sys_id"], limit=2)
    assert len(loose) == 2
    with pytest.raises(PermanentError):  # 400 Invalid table
        await world.sn.query("u_no_such_table", {"name": "x"}, fields=["sys_id"], limit=1)


#: what the engine reads from the dictionary: sizes (sync.sizes) and reference tables
#: (display names of mapped reference fields), as the emulator seeds them from docs 3.1
DICTIONARY: dict[str, SNFieldInfo] = {
    "short_description": SNFieldInfo("string", 160),
    "description": SNFieldInfo("string", 4000),
    "close_notes": SNFieldInfo("string", 4000),
    "correlation_id": SNFieldInfo("string", 100),
    "correlation_display": SNFieldInfo("string", 100),
    "work_notes": SNFieldInfo("journal_input", 4000),
    "comments": SNFieldInfo("journal_input", 4000),
    "assignment_group": SNFieldInfo("reference", 255, "sys_user_group"),
    "assigned_to": SNFieldInfo("reference", 255, "sys_user"),
    "caller_id": SNFieldInfo("reference", 255, "sys_user"),
    "resolved_by": SNFieldInfo("reference", 255, "sys_user"),
    "cmdb_ci": SNFieldInfo("reference", 255, "cmdb_ci"),
    "state": SNFieldInfo("integer", 255),
    "impact": SNFieldInfo("integer", 255),
    "urgency": SNFieldInfo("integer", 255),
}


async def test_sn_field_dictionary_has_sizes_and_reference_fields(world: VendorWorld) -> None:
    dictionary = await world.sn.field_dictionary()
    assert {name: dictionary.get(name) for name in DICTIONARY} == DICTIONARY


async def test_sn_delete_then_the_incident_is_gone(world: VendorWorld) -> None:
    record = await correlated(world, "bp-14", short_description="x")
    await world.sn.delete_incident(record.sys_id)
    with pytest.raises(NotFoundError):
        await world.sn.get_incident(record.sys_id)
    with pytest.raises(NotFoundError):
        await world.sn.delete_incident(record.sys_id)
    assert await world.sn.find_by_correlation_id("bp-14") == []
    assert await world.sn.list_changed(None, overlap_s=5) == []


async def test_sn_check_auth(world: VendorWorld) -> None:
    await world.sn.check_auth()


async def test_sn_a_retry_after_past_the_outage_window_holds_the_instance(
    world: VendorWorld,
) -> None:
    """The caller hears of a Retry-After longer than the pacing's outage window at once,
    and the instance stays held for it (what the executor asks before a write): until
    it has passed, a request is refused, not sent."""
    record = await correlated(world, "bp-ra")
    sys_id = str(record.sys_id)
    assert world.sn.held_for() == 0.0
    await world.sn_rate_rule(3600)
    with pytest.raises(TransientError) as limited:
        await world.sn.update_incident(sys_id, {"impact": "1"})
    assert limited.value.retry_after_s == 3600.0
    assert world.sn.held_for() == 3600.0
    world.clock.advance(600)
    with pytest.raises(TransientError) as held:
        await world.sn.get_incident(sys_id)  # the rule refused once: this one was not sent
    assert held.value.retry_after_s == 3000.0
    world.clock.advance(3000)
    assert world.sn.held_for() == 0.0
    assert field(await world.sn.update_incident(sys_id, {"impact": "1"}), "impact") == "1"


# ====================================================================== BigPanda


async def test_bp_list_environments_and_check_auth(world: VendorWorld) -> None:
    await world.bp.check_auth()
    environments = await world.bp.list_environments()
    assert world.environment_id in [e.id for e in environments]
    assert all(e.id and e.name for e in environments)


async def test_bp_get_incident_with_and_without_alerts(world: VendorWorld) -> None:
    incident_id = await world.bp_incident("db-1", "disk")
    now = bp_now(world)
    incident = await world.bp.get_incident(world.environment_id, incident_id)
    assert incident.id == incident_id
    assert (incident.status, incident.severity, incident.active) == ("critical", "critical", True)
    assert (incident.start, incident.end) == (now, None)
    assert incident.changed_at == incident.updated_at == now
    assert world.environment_id in incident.environments
    assert "active" in incident.folders and "resolved" not in incident.folders
    assert dict(incident.tags) == {}
    assert len(incident.alerts) == 1
    alert = incident.alerts[0]
    assert incident.alert_ids == (alert.id,)
    assert (alert.status, alert.active, alert.start) == ("critical", True, now)
    assert (alert.primary_property, alert.secondary_property) == ("host", "check")
    assert alert.incident_key == "db-1|disk"
    assert dict(alert.tags) == {"host": "db-1", "check": "disk"}

    bare = await world.bp.get_incident(world.environment_id, incident_id, expand_alerts=False)
    assert bare.alerts == ()
    assert bare.alert_ids == incident.alert_ids
    assert (bare.status, bare.active, bare.updated_at) == ("critical", True, now)

    with pytest.raises(NotFoundError):
        await world.bp.get_incident(world.environment_id, UNKNOWN_BP_ID)
    with pytest.raises(NotFoundError):
        await world.bp.get_incident(UNKNOWN_BP_ID, incident_id)


async def test_bp_tag_definitions_of_a_fresh_organisation(world: VendorWorld) -> None:
    definitions = await world.bp.list_tag_definitions()
    assert [(d.id, d.type) for d in definitions] == [("priority", "Priority")]
    assert definitions[0].ordered_list == ("P1", "P2", "P3", "P4", "P5")
    created = await world.bp.create_tag_definition("team", description="owning team")
    assert created == BPTagDefinition("team", "team", "Text", True, "owning team")
    assert {d.id for d in await world.bp.list_tag_definitions()} == {"priority", "team"}
    assert [d.id for d in await world.bp.list_tag_definitions(tag_type="Text")] == ["team"]
    assert await world.bp.list_tag_definitions(active=False) == []
    with pytest.raises(PermanentError):  # exists already (409): tagdefs.py re-reads
        await world.bp.create_tag_definition("team")
    with pytest.raises(PermanentError):  # a name is 1 to 20 characters (docs 4.5)
        await world.bp.create_tag_definition("x" * 21)
    paused = await world.bp.create_tag_definition("paused", active=False)
    assert paused.active is False
    assert [d.id for d in await world.bp.list_tag_definitions(active=False)] == ["paused"]


async def test_bp_tags_round_trip(world: VendorWorld) -> None:
    await world.bp.create_tag_definition("team")
    incident_id = await world.bp_incident("db-2")
    env = world.environment_id
    world.clock.advance(10)
    await world.bp.set_tags(env, incident_id, {"team": "db", "priority": "P2"})
    assert await world.bp.get_tags(env, incident_id) == {"team": "db", "priority": "P2"}
    await world.bp.set_tag(env, incident_id, "team", "network")
    assert await world.bp.get_tags(env, incident_id) == {"team": "network", "priority": "P2"}
    incident = await world.bp.get_incident(env, incident_id, expand_alerts=False)
    assert dict(incident.tags) == {"team": "network", "priority": "P2"}
    assert incident.updated_at == bp_now(world)
    assert incident.changed_at == incident.start  # tag edits move updated_at only

    world.clock.advance(10)
    await world.bp.set_tag(env, incident_id, "team", "network")  # the same value again
    echoed = await world.bp.get_incident(env, incident_id, expand_alerts=False)
    assert echoed.updated_at == bp_now(world)  # is still a change: echoes show in polls

    world.clock.advance(10)
    await world.bp.delete_tag(env, incident_id, "team")
    assert await world.bp.get_tags(env, incident_id) == {"priority": "P2"}
    removed = await world.bp.get_incident(env, incident_id, expand_alerts=False)
    assert removed.updated_at == bp_now(world)  # a removal is a change too
    world.clock.advance(10)
    await world.bp.delete_tag(env, incident_id, "team")  # defined, not set: nothing to do
    assert (await world.bp.get_incident(env, incident_id)).updated_at == removed.updated_at
    await world.bp.set_tags(env, incident_id, {})  # nothing to write: no change either
    assert (await world.bp.get_incident(env, incident_id)).updated_at == removed.updated_at
    with pytest.raises(NotFoundError):
        await world.bp.get_tags(env, UNKNOWN_BP_ID)


async def test_bp_tag_that_is_not_defined_is_refused_alike(world: VendorWorld) -> None:
    await world.bp.create_tag_definition("team")
    incident_id = await world.bp_incident("db-3")
    env = world.environment_id
    before = await world.bp.get_incident(env, incident_id)
    world.clock.advance(10)
    for write in (
        world.bp.set_tags(env, incident_id, {"nope": "x"}),
        world.bp.set_tags(env, incident_id, {"team": "db", "nope": "x"}),
        world.bp.set_tag(env, incident_id, "nope", "x"),
        world.bp.delete_tag(env, incident_id, "nope"),
    ):
        with pytest.raises(MissingTagError):  # not NotFoundError: the incident exists
            await write
    after = await world.bp.get_incident(env, incident_id)
    assert dict(after.tags) == {}  # a refused batch writes none of its tags
    assert after.updated_at == before.updated_at


async def test_bp_tag_value_a_definition_refuses(world: VendorWorld) -> None:
    await world.bp.create_tag_definition("paused", active=False)
    incident_id = await world.bp_incident("db-4")
    env = world.environment_id
    for tags in ({"priority": "P9"}, {"paused": "x"}):
        with pytest.raises(PermanentError) as caught:
            await world.bp.set_tags(env, incident_id, tags)
        assert not isinstance(caught.value, NotFoundError), tags
    await world.bp.set_tag(env, incident_id, "priority", "P1")
    assert await world.bp.get_tags(env, incident_id) == {"priority": "P1"}


async def test_bp_list_changed_finds_an_incident_whose_only_change_is_a_tag(
    world: VendorWorld,
) -> None:
    await world.bp.create_tag_definition("team")
    first = await world.bp_incident("db-5")
    second = await world.bp_incident("db-6")
    env = world.environment_id
    world.clock.advance(60)
    cursor = bp_now(world)
    world.clock.advance(30)
    await world.bp_tag_by_hand(first, "team", "db")
    changed = await world.bp.list_changed(env, cursor, overlap_s=5, page_size=100)
    assert [i.id for i in changed] == [first]
    assert changed[0].updated_at == bp_now(world)
    assert changed[0].changed_at == changed[0].start  # only updated_at moved
    assert dict(changed[0].tags) == {"team": "db"}

    everything = await world.bp.list_changed(env, None, overlap_s=5, page_size=1)
    assert [i.id for i in everything] == [second, first]  # by (updated_at, id)


async def test_bp_list_changed_window_edges(world: VendorWorld) -> None:
    incident_id = await world.bp_incident("db-7")
    env = world.environment_id
    start = bp_now(world)

    async def listed(since: int, overlap: float) -> bool:
        found = await world.bp.list_changed(env, since, overlap_s=overlap, page_size=10)
        return incident_id in [i.id for i in found]

    assert await listed(start + 5, 5)  # updated exactly at the floor
    assert not await listed(start + 6, 5)
    assert await listed(start + 1, 0.5)  # a fractional floor is rounded down
    assert not await listed(start + 2, 0.5)


@pytest.mark.fake_diverges(
    reason="FakeBigPanda.list_changed still lists an incident resolved before the floor "
    "whose tag changed later; the client's search (active during [from, now]) does not, "
    "and the engine has no other path to such a change, which test_sync_machine expects "
    "to sync"
)
async def test_bp_list_changed_leaves_out_incidents_resolved_before_the_window(
    world: VendorWorld,
) -> None:
    await world.bp.create_tag_definition("team")
    early = await world.bp_incident("db-8")
    late = await world.bp_incident("db-9")
    env = world.environment_id
    world.clock.advance(10)
    await world.bp.resolve_incident(env, early, "done")
    world.clock.advance(100)
    cursor = bp_now(world)
    await world.bp.resolve_incident(env, late, "done")
    await world.bp_tag_by_hand(early, "team", "db")  # after its end: outside the search
    changed = await world.bp.list_changed(env, cursor, overlap_s=5, page_size=100)
    assert [i.id for i in changed] == [late]
    assert (changed[0].active, changed[0].end) == (False, bp_now(world))


async def test_bp_resolve_then_already_resolved(world: VendorWorld) -> None:
    incident_id = await world.bp_incident("db-10")
    env = world.environment_id
    world.clock.advance(20)
    assert await world.bp.resolve_incident(env, incident_id, "resolved in ServiceNow") is True
    resolved = await world.bp.get_incident(env, incident_id)
    assert (resolved.active, resolved.status, resolved.severity) == (False, "ok", "critical")
    assert resolved.end == resolved.updated_at == resolved.changed_at == bp_now(world)
    assert "resolved" in resolved.folders
    assert [(a.status, a.active) for a in resolved.alerts] == [("ok", False)]
    world.clock.advance(5)
    assert await world.bp.resolve_incident(env, incident_id, "again") is False
    assert (await world.bp.get_incident(env, incident_id)).updated_at == resolved.updated_at
    activities = await world.bp.list_activities(incident_id)
    assert [a.type for a in activities] == ["incident_resolved_api", "incident_created"]
    assert activities[0].params["annotation"] == "resolved in ServiceNow"
    with pytest.raises(NotFoundError):
        await world.bp.resolve_incident(env, UNKNOWN_BP_ID, "x")


async def test_bp_comment_then_activities_show_it(world: VendorWorld) -> None:
    await world.bp.create_tag_definition("team")
    incident_id = await world.bp_incident("db-11")
    env = world.environment_id
    start = bp_now(world)
    world.clock.advance(10)
    await world.bp.set_tag(env, incident_id, "team", "db")
    world.clock.advance(10)
    await world.bp.add_comment(env, incident_id, "ticket INC0010001 opened")
    commented = await world.bp.get_incident(env, incident_id)
    assert (commented.updated_at, commented.changed_at) == (bp_now(world), start)
    changed = await world.bp.list_changed(env, bp_now(world), overlap_s=1, page_size=10)
    assert [i.id for i in changed] == [incident_id]  # bpsync sees its own comment

    activities = await world.bp.list_activities(incident_id)  # newest first
    assert [a.type for a in activities] == [
        "incident_commented",
        "incident_tag_updated",
        "incident_created",
    ]
    assert activities[0].params["comment"] == "ticket INC0010001 opened"
    assert activities[0].timestamp == bp_now(world)
    assert activities[1].params == {"tag_id": "team", "tag_value": "db"}
    comments = await world.bp.list_activities(incident_id, types=["incident_commented"])
    assert [a.params["comment"] for a in comments] == ["ticket INC0010001 opened"]

    with pytest.raises(PermanentError):
        await world.bp.add_comment(env, incident_id, "")
    with pytest.raises(NotFoundError):
        await world.bp.add_comment(env, UNKNOWN_BP_ID, "x")
    with pytest.raises(NotFoundError):
        await world.bp.list_activities(UNKNOWN_BP_ID)


async def test_bp_incident_resolved_by_its_alerts_then_reopened(world: VendorWorld) -> None:
    incident_id = await world.bp_incident("db-12")
    env = world.environment_id
    start = bp_now(world)
    world.clock.advance(60)
    await world.bp_alert_recovers(incident_id)
    resolved = await world.bp.get_incident(env, incident_id)
    assert (resolved.active, resolved.status, resolved.end) == (False, "ok", bp_now(world))
    assert [(a.status, a.active) for a in resolved.alerts] == [("ok", False)]
    assert await world.bp.resolve_incident(env, incident_id, "x") is False
    world.clock.advance(60)
    cursor = bp_now(world)
    await world.bp_alert_returns(incident_id)
    reopened = await world.bp.get_incident(env, incident_id)
    assert (reopened.active, reopened.status, reopened.end) == (True, "critical", None)
    assert reopened.start == start
    assert reopened.updated_at == reopened.changed_at == bp_now(world)
    assert [(a.status, a.active) for a in reopened.alerts] == [("critical", True)]
    changed = await world.bp.list_changed(env, cursor, overlap_s=0, page_size=10)
    assert [i.id for i in changed] == [incident_id]
    types = [a.type for a in await world.bp.list_activities(incident_id)]
    assert types == ["incident_reopen", "incident_resolved_by_alerts", "incident_created"]


async def test_bp_search_sorts_and_windows(world: VendorWorld) -> None:
    await world.bp.create_tag_definition("team")
    env = world.environment_id
    t0 = bp_now(world)
    oldest = await world.bp_incident("db-13")
    world.clock.advance(10)
    middle = await world.bp_incident("db-14")
    world.clock.advance(10)
    newest = await world.bp_incident("db-15")
    world.clock.advance(5)
    await world.bp.resolve_incident(env, middle, "done")  # ends at t0 + 25
    world.clock.advance(5)
    await world.bp_tag_by_hand(oldest, "team", "db")  # updated_at, not changed_at

    def order(page: list[BPIncident]) -> list[str]:
        return [i.id for i in page]

    by_start = await world.bp.search_incidents(env, sort_by="start", page_size=10)
    assert (by_start.total, order(by_start.items)) == (3, [newest, middle, oldest])
    # sort_by=last_change (the default) is changed_at, newest first: a tag edit does not
    # move an incident up; middle's resolve does
    by_change = await world.bp.search_incidents(env, page_size=10)
    assert order(by_change.items) == [middle, newest, oldest]
    # "active at some point in [from, to]"
    after = await world.bp.search_incidents(env, from_s=t0 + 26, sort_by="start")
    assert (after.total, order(after.items)) == (2, [newest, oldest])
    before = await world.bp.search_incidents(env, to_s=t0 + 15, sort_by="start")
    assert order(before.items) == [middle, oldest]
    resolved = await world.bp.search_incidents(env, folder="resolved")
    assert order(resolved.items) == [middle]
    active = await world.bp.search_incidents(env, folder="active", sort_by="start")
    assert order(active.items) == [newest, oldest]
    second = await world.bp.search_incidents(env, sort_by="start", page=2, page_size=1)
    assert (second.total, order(second.items)) == (3, [middle])
    expanded = await world.bp.search_incidents(
        env, sort_by="start", page_size=10, expand_alerts=True
    )
    assert [len(i.alerts) for i in expanded.items] == [1, 1, 1]
    assert [len(i.alerts) for i in by_start.items] == [0, 0, 0]
    with pytest.raises(PermanentError):  # at most 10 per page with expand=alerts (docs 4.1)
        await world.bp.search_incidents(env, page_size=11, expand_alerts=True)
    with pytest.raises(NotFoundError):
        await world.bp.search_incidents(UNKNOWN_BP_ID)


async def test_bp_users_by_e_mail_and_by_id(world: VendorWorld) -> None:
    [abel] = await world.bp.find_user("Abel.Tuter@example.com")  # userName: case-insensitive
    assert (abel.name, abel.email, abel.active) == ("Abel Tuter", "abel.tuter@example.com", True)
    assert await world.bp.find_user("nobody@example.com") == []
    [dana] = await world.bp.find_user("dana.reyes@example.com")
    assert dana.active is False  # deactivated: still listed
    assert await world.bp.get_user(abel.id) == abel
    with pytest.raises(NotFoundError):
        await world.bp.get_user(UNKNOWN_BP_ID)


async def test_bp_assign_then_unassign(world: VendorWorld) -> None:
    [abel] = await world.bp.find_user("abel.tuter@example.com")
    incident_id = await world.bp_incident("db-30")
    env = world.environment_id
    world.clock.advance(5)
    await world.bp.assign_incident(env, incident_id, abel.id)
    assigned = await world.bp.get_incident(env, incident_id)
    assert (assigned.assignee_id, assigned.assignee_email) == (abel.id, abel.email)
    assert assigned.updated_at == bp_now(world)
    world.clock.advance(5)
    assert await world.bp.unassign_incident(env, incident_id) is True
    unassigned = await world.bp.get_incident(env, incident_id)
    assert (unassigned.assignee_id, unassigned.updated_at) == (None, bp_now(world))
    assert await world.bp.unassign_incident(env, incident_id) is False  # not assigned
