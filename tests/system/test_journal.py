"""Journals both ways, each entry once (issue 14 item 1), over loopback: both emulators,
the real clients, a SQLite store and the engine (``tests/system/conftest.py``).

People comment in BigPanda and write work notes and additional comments in ServiceNow
through the vendors' APIs; what reaches the other side is read back the same way
(activities, ``sys_journal_field``), request counts from ``/_emulator/stats``.
"""

from __future__ import annotations

from typing import Any

import pytest

from sync.clock import FakeClock
from sync.constants import BP_COMMENT_MAX, MIRROR_MARKER, SN_JOURNAL_MAX
from sync.sizes import MARKER

from .conftest import World
from .helpers import ENV, SYSTEM_MAPPING, SYSTEM_TAGS, V2, Emu, settle

BOTH_WAYS = {"journal.from_servicenow": ["work_notes", "comments"]}
ACTIVITIES = "GET /resources/v2.0/incidents/{incident_id}/activities"
JOURNAL_READS = "GET /api/now/table/{table}"


class People(Emu):
    """What people write: BigPanda comments, ServiceNow journal entries."""

    async def comment(self, bp_id: str, text: str) -> None:
        await self._bp(
            "POST",
            f"{V2}/environments/{ENV}/incidents/{bp_id}/comments",
            json={"comment": text},
            expect=204,
        )

    async def comments(self, bp_id: str) -> list[str]:
        """Every comment of the incident, oldest first."""
        items = await self.activities(bp_id, ["incident_commented"])
        return [str(a["params"]["comment"]) for a in reversed(items)]

    async def note(self, sys_id: str, text: str, element: str = "work_notes") -> None:
        await self.sn_patch(sys_id, {element: text})

    async def entries(self, sys_id: str) -> list[tuple[str, str]]:
        """Every (element, text) of the incident's journal, oldest first."""
        rows = await self.sn_query(
            f"element_id={sys_id}^elementINwork_notes,comments^ORDERBYsys_created_on",
            table="sys_journal_field",
        )
        return [(row["element"], row["value"]) for row in rows]


@pytest.fixture
async def people(world: World) -> People:
    helper = People(world)
    await helper.define_tags(*SYSTEM_TAGS)
    return helper


async def start(world: World, **overrides: Any) -> None:
    await world.build(tag_mapping=SYSTEM_MAPPING, **overrides)


async def linked(world: World, people: People, host: str) -> tuple[str, str]:
    """A BigPanda incident with its ServiceNow incident, settled (and a second later:
    what people write next is not in the second of bpsync's link tag)."""
    bp_id = await people.new_incident(host, check="cpu")
    await settle(world)
    assert isinstance(world.clock, FakeClock)
    world.clock.advance(1)
    return bp_id, (await people.sn_one_for(bp_id))["sys_id"]


def carried(texts: list[str], original: str) -> list[str]:
    """The copies of ``original`` bpsync wrote among ``texts``."""
    return [t for t in texts if t.startswith(MIRROR_MARKER) and original in t]


# --------------------------------------------------------------------------- BigPanda -> ServiceNow


async def test_bigpanda_comments_become_work_notes_once(world: World, people: People) -> None:
    await start(world)  # the defaults: to_servicenow = "work_notes", nothing back
    bp_id, sys_id = await linked(world, people, "journal-a")
    await people.comment(bp_id, "restarted the pool, watching")
    await settle(world)
    notes = [t for e, t in await people.entries(sys_id) if e == "work_notes"]
    [copy] = carried(notes, "restarted the pool, watching")
    assert copy.startswith(f"{MIRROR_MARKER} BigPanda comment by ")
    assert " at 20" in copy.splitlines()[0]  # its time, UTC
    assert copy.endswith("\nrestarted the pool, watching")
    # more cycles, a second comment: each comment exactly once, oldest first
    await people.comment(bp_id, "second thought\r\nwith a CRLF   ")
    await settle(world)
    world.clock.advance(5)
    await settle(world)
    notes = [t for e, t in await people.entries(sys_id) if e == "work_notes"]
    assert len(carried(notes, "restarted the pool")) == 1
    assert len(carried(notes, "second thought")) == 1
    assert notes.index(carried(notes, "restarted")[0]) < notes.index(
        carried(notes, "second thought")[0]
    )
    # nothing came back: from_servicenow is off by default
    assert not [c for c in await people.comments(bp_id) if "BigPanda comment" in c]


async def test_comments_as_additional_comments_or_off(world: World, people: People) -> None:
    await start(world, **{"journal.to_servicenow": "comments"})
    bp_id, sys_id = await linked(world, people, "journal-b")
    await people.comment(bp_id, "caller informed")
    await settle(world)
    assert [e for e, t in await people.entries(sys_id) if "caller informed" in t] == ["comments"]
    await start(world, **{"journal.to_servicenow": "off"})
    await people.comment(bp_id, "not for the ticket")
    await settle(world)
    assert not [t for _, t in await people.entries(sys_id) if "not for the ticket" in t]


# --------------------------------------------------------------------------- ServiceNow -> BigPanda


async def test_servicenow_journal_becomes_bigpanda_comments_once(
    world: World, people: People
) -> None:
    await start(world, **BOTH_WAYS)
    bp_id, sys_id = await linked(world, people, "journal-c")
    await people.note(sys_id, "checked the DB", "work_notes")
    await people.note(sys_id, "we are on it", "comments")
    await settle(world)
    comments = await people.comments(bp_id)
    [note] = carried(comments, "checked the DB")
    [reply] = carried(comments, "we are on it")
    assert note.startswith(f"{MIRROR_MARKER} ServiceNow work note by bpsync at ")
    assert reply.startswith(f"{MIRROR_MARKER} ServiceNow additional comment by bpsync at ")
    assert comments.index(note) < comments.index(reply)  # oldest first
    world.clock.advance(5)
    await settle(world)
    assert len(carried(await people.comments(bp_id), "checked the DB")) == 1
    assert len(carried(await people.comments(bp_id), "we are on it")) == 1


async def test_only_the_kinds_asked_for(world: World, people: People) -> None:
    await start(world, **{"journal.from_servicenow": ["comments"]})
    bp_id, sys_id = await linked(world, people, "journal-d")
    await people.note(sys_id, "internal only", "work_notes")
    await people.note(sys_id, "for the caller", "comments")
    await settle(world)
    comments = await people.comments(bp_id)
    assert not carried(comments, "internal only")
    assert len(carried(comments, "for the caller")) == 1


# --------------------------------------------------------------------------- no echo


async def test_both_ways_nothing_is_echoed(world: World, people: People) -> None:
    """Every entry once on the other side, and never back: bpsync's own texts (carried
    entries, the description copy, the closure comment) carry the mirror marker."""
    await start(world, **BOTH_WAYS, **{"incidents.description_to_work_notes": True})
    bp_id, sys_id = await linked(world, people, "journal-e")
    for round_ in range(3):
        await people.comment(bp_id, f"bp says {round_}")
        await people.note(sys_id, f"sn says {round_}")
        await settle(world)
        world.clock.advance(2)
    await people.sn_patch(
        sys_id,
        {"state": "6", "close_code": "Solution provided", "close_notes": "fixed"},
    )
    await settle(world)
    world.clock.advance(5)
    await settle(world)
    comments = await people.comments(bp_id)
    entries = [t for _, t in await people.entries(sys_id)]
    for round_ in range(3):
        assert len(carried(entries, f"bp says {round_}")) == 1
        assert len(carried(comments, f"sn says {round_}")) == 1
        # never back where it came from
        assert not carried(comments, f"bp says {round_}")
        assert not carried(entries, f"sn says {round_}")
    # bpsync's own entries are never carried: no copy of a copy, of the description
    # copy or of anything else bpsync wrote
    for text in (*comments, *entries):
        assert text.count(MIRROR_MARKER) <= 1, text
    # the person's entries and bpsync's copies, nothing else (the closure is in the
    # resolve activity, not a comment)
    assert len([c for c in comments if not c.startswith(MIRROR_MARKER)]) == 3
    assert len([c for c in comments if c.startswith(MIRROR_MARKER)]) == 3


# --------------------------------------------------------------------------- sizes


async def test_long_entries_are_cut_with_the_marker(world: World, people: People) -> None:
    await start(world, **BOTH_WAYS)
    bp_id, sys_id = await linked(world, people, "journal-f")
    await people.comment(bp_id, "B" * 5000)
    await people.note(sys_id, "S" * 3000)
    await settle(world)
    [to_sn] = carried([t for _, t in await people.entries(sys_id)], "BBBB")
    assert len(to_sn) == SN_JOURNAL_MAX
    assert to_sn.endswith(MARKER)
    [to_bp] = carried(await people.comments(bp_id), "SSSS")
    assert len(to_bp) == BP_COMMENT_MAX
    assert to_bp.endswith(MARKER)
    world.clock.advance(5)
    await settle(world)  # cut once, remembered: never written again
    assert len(carried([t for _, t in await people.entries(sys_id)], "BBBB")) == 1
    assert len(carried(await people.comments(bp_id), "SSSS")) == 1


# --------------------------------------------------------------------------- cost


async def test_idle_cycles_read_no_journal(world: World, people: People) -> None:
    await start(world, **BOTH_WAYS)
    bp_id, sys_id = await linked(world, people, "journal-g")
    await people.comment(bp_id, "one")
    await people.note(sys_id, "two")
    await settle(world)
    assert isinstance(world.clock, FakeClock)
    world.clock.advance(world.settings.cursor_overlap + 2)
    await settle(world)  # past the polls' overlap
    bp_before = await people.requests("bigpanda")
    sn_before = await people.requests("servicenow")
    writes = await world.writes()
    for _ in range(5):
        world.clock.advance(1)
        report = await world.cycle()
        assert report.ok
    bp_after = await people.requests("bigpanda")
    sn_after = await people.requests("servicenow")
    assert await world.writes() == writes
    assert bp_after.get(ACTIVITIES, 0) == bp_before.get(ACTIVITIES, 0)
    # ServiceNow: 1 list request per idle cycle, as without journals
    assert sum(sn_after.values()) - sum(sn_before.values()) == 5
    assert sn_after.get(JOURNAL_READS, 0) - sn_before.get(JOURNAL_READS, 0) == 5


async def test_a_new_incident_costs_no_journal_read(world: World, people: People) -> None:
    """The create and its link tag are bpsync's own change: the cycle that sees them
    reads no journal (a storm of new incidents costs what it did). (No mapping here: a
    field ServiceNow fills at the create would be written back, a change of its own.)"""
    await world.build(tag_mapping=[], **BOTH_WAYS)
    bp_id = await people.new_incident("journal-h", check="cpu")
    before = await people.requests("bigpanda")
    await settle(world)
    after = await people.requests("bigpanda")
    assert after.get(ACTIVITIES, 0) == before.get(ACTIVITIES, 0)
    # a person's comment afterwards is read and carried
    world.clock.advance(1)
    await people.comment(bp_id, "first words")
    await settle(world)
    sys_id = (await people.sn_one_for(bp_id))["sys_id"]
    assert len(carried([t for _, t in await people.entries(sys_id)], "first words")) == 1
