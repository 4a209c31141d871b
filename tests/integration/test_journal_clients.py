"""Journals through the real clients over the emulators: ServiceNow's
``sys_journal_field`` as entries (``list_journal``), BigPanda's comments as activities
(``list_activities(types=["incident_commented"])``), docs 3.5 and 4.3/4.6."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from sync.clients.base import BPActivity
from sync.clients.servicenow.journal import journal_entry
from sync.clock import FakeClock
from sync.errors import PermanentError
from sync.journal_reads import comment_entries
from tests.integration.test_sn_client import Env, _env, emulator_app


@pytest.fixture
async def small_pages(clock: FakeClock) -> AsyncIterator[Env]:
    async for e in _env(emulator_app(clock), clock, page_size=2):
        yield e


async def test_list_journal_is_every_entry_of_the_kinds_oldest_first(small_pages: Env) -> None:
    client = small_pages.client
    created = await client.create_incident({"short_description": "a", "work_notes": "n0"})
    sys_id = created.sys_id
    other = (await client.create_incident({"short_description": "b", "work_notes": "x"})).sys_id
    small_pages.clock.advance(2)
    # three entries in one second, and more: every page (size 2), in the order written
    await client.update_incident(sys_id, {"comments": "c1", "work_notes": "n1"})
    await client.update_incident(sys_id, {"work_notes": "n2"})
    small_pages.clock.advance(1)
    await client.update_incident(sys_id, {"comments": "c2"})
    entries = await client.list_journal(sys_id, ["work_notes", "comments"])
    assert [(e.kind, e.text) for e in entries] == [
        ("work_notes", "n0"),
        ("comments", "c1"),
        ("work_notes", "n1"),
        ("work_notes", "n2"),
        ("comments", "c2"),
    ]
    assert entries[0].author == "bpsync"
    assert entries[0].at.tzinfo == UTC
    assert entries[-1].at > entries[0].at
    assert len({e.id for e in entries}) == 5
    notes = await client.list_journal(sys_id, ["work_notes"])
    assert [e.text for e in notes] == ["n0", "n1", "n2"]
    assert [e.text for e in await client.list_journal(other, ["work_notes"])] == ["x"]
    assert await client.list_journal(sys_id, []) == []


def test_a_malformed_journal_row_is_a_permanent_error() -> None:
    row = {"sys_id": "a" * 32, "element": "work_notes", "value": "v"}
    with pytest.raises(PermanentError, match="sys_journal_field"):
        journal_entry({**row, "sys_created_on": "yesterday"})
    with pytest.raises(PermanentError):
        journal_entry({**row, "element": "", "sys_created_on": "2026-01-01 00:00:00"})
    entry = journal_entry({**row, "sys_created_on": "2026-01-01 00:00:00", "sys_created_by": ""})
    assert (entry.author, entry.at) == ("", datetime(2026, 1, 1, tzinfo=UTC))


def test_comment_activities_newest_first_become_entries_oldest_first() -> None:
    activities = [
        BPActivity("b" * 32, "incident_commented", 20, "u2", {"comment": "second"}),
        BPActivity("c" * 32, "incident_tag_updated", 15, "u1", {"tag_id": "x"}),
        BPActivity("a" * 32, "incident_commented", 10, None, {"comment": "first"}),
    ]
    entries = comment_entries(activities)
    assert [(e.id, e.text, e.author, e.kind) for e in entries] == [
        ("a" * 32, "first", "", "comment"),
        ("b" * 32, "second", "u2", "comment"),
    ]
    assert entries[0].at == datetime.fromtimestamp(10, UTC)
