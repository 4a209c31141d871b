"""Journals (``sync.journal``), pure: what to read, what to carry, how it reads there."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sync.actions import (
    CarryEntryToBigPanda,
    CarryEntryToServiceNow,
    CommentBigPanda,
    CreateServiceNowIncident,
    PlanInput,
    ResolveServiceNow,
    SetLinkTag,
)
from sync.constants import BP_COMMENT_MAX, MIRROR_MARKER, SN_JOURNAL_MAX, Side, SNState
from sync.errors import ConfigError
from sync.journal import (
    HISTORY,
    Ledger,
    bigpanda_text,
    carries_nothing,
    digest,
    entries_of,
    fields_first,
    is_own,
    normalise,
    reads_all,
    reads_wanted,
    servicenow_text,
)
from sync.model import (
    BPIncident,
    CarriedEntry,
    JournalEntry,
    JournalInput,
    Link,
    LinkState,
    SNIncident,
)
from sync.planner import plan
from sync.settings import Settings, load_settings
from sync.sizes import MARKER, FieldSizes

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
BP_ID = "65a0b1c2d3e4f5a6b7c8d9e0"
SYS_ID = "0123456789abcdef0123456789abcdef"
ENV = "env-prod"


def settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {"servicenow.url": "https://sn.example.com"}
    return load_settings(None, {**base, **overrides}, env_file=None)


def link(state: LinkState = LinkState.LINKED, **kw: Any) -> Link:
    values: dict[str, Any] = {
        "id": 7,
        "bp_incident_id": BP_ID,
        "sn_sys_id": SYS_ID,
        "sn_number": "INC0010001",
        "state": state,
        "created_at": NOW - timedelta(hours=1),
        "bp_environment_id": ENV,
    }
    values.update(kw)
    return Link(**values)


def bp_entry(n: int, text: str | None = None, *, at: datetime | None = None) -> JournalEntry:
    return JournalEntry(
        f"{n:032x}", "comment", text or f"bp {n}", "u1", at or NOW - timedelta(minutes=60 - n)
    )


def sn_entry(
    n: int, text: str | None = None, kind: str = "work_notes", *, at: datetime | None = None
) -> JournalEntry:
    return JournalEntry(
        f"{n + 1000:032x}", kind, text or f"sn {n}", "jane", at or NOW - timedelta(minutes=60 - n)
    )


def carried(side: Side, entry_id: str, text: str = "", *, at: datetime = NOW) -> CarriedEntry:
    return CarriedEntry(7, side, entry_id, digest(text), at)


def bp_incident(**kw: Any) -> BPIncident:
    values: dict[str, Any] = {"id": BP_ID, "status": "critical", "active": True}
    values.update({"updated_at": int(NOW.timestamp()), "environments": (ENV,), **kw})
    return BPIncident(**values)


def sn_incident(state: int = 2, **kw: Any) -> SNIncident:
    return SNIncident(SYS_ID, "INC0010001", state, True, 3, NOW, BP_ID, **kw)


def journal_plan(
    journal: JournalInput | None,
    cfg: Settings | None = None,
    *,
    the_link: Link | None = None,
    sn: SNIncident | None = None,
    bp: BPIncident | None = None,
    sizes: FieldSizes | None = None,
) -> list[Any]:
    inp = PlanInput(
        bp=bp,
        sn=sn,
        link=the_link or link(),
        environment_id=ENV,
        journal=journal,
        **({"sizes": sizes} if sizes is not None else {}),
    )
    return plan(inp, cfg or settings(), NOW)


def carries(actions: list[Any]) -> list[Any]:
    return [a for a in actions if isinstance(a, CarryEntryToServiceNow | CarryEntryToBigPanda)]


BOTH = {"journal.from_servicenow": "work_notes,comments"}


# --------------------------------------------------------------------------- texts


def test_normalised_text_ignores_line_endings_and_trailing_blanks() -> None:
    assert normalise("a  \r\nb\t\rc \n\n") == "a\nb\nc"
    assert digest("a\r\nb  ") == digest("a\nb") != digest("a b")


@given(st.text())
def test_normalise_is_idempotent(text: str) -> None:
    assert normalise(normalise(text)) == normalise(text)
    assert digest(text) == digest(normalise(text))


def test_own_texts_start_with_the_marker() -> None:
    assert is_own(f"{MIRROR_MARKER} ServiceNow refused the sn.update write")
    assert is_own(f"  {MIRROR_MARKER} x")
    assert not is_own(f"quoting {MIRROR_MARKER} in passing")


def test_texts_name_author_kind_and_time() -> None:
    entry = sn_entry(1, "checked", at=datetime(2024, 5, 1, 11, 1, 2, tzinfo=UTC))
    assert bigpanda_text(entry) == (
        f"{MIRROR_MARKER} ServiceNow work note by jane at 2024-05-01 11:01:02 UTC:\nchecked"
    )
    comment = sn_entry(2, "hello", "comments", at=datetime(2024, 5, 1, 11, 2, tzinfo=UTC))
    assert bigpanda_text(comment).startswith(f"{MIRROR_MARKER} ServiceNow additional comment")
    anonymous = JournalEntry("a" * 32, "comment", "hi", "", NOW)
    assert servicenow_text(anonymous) == (
        f"{MIRROR_MARKER} BigPanda comment at 2024-05-01 12:00:00 UTC:\nhi"
    )


def test_long_texts_are_cut_with_the_marker() -> None:
    to_sn = servicenow_text(bp_entry(1, "x" * 5000))
    assert len(to_sn) == SN_JOURNAL_MAX
    assert to_sn.endswith(MARKER)
    to_bp = bigpanda_text(sn_entry(1, "y" * 1500))
    assert len(to_bp) == BP_COMMENT_MAX
    assert to_bp.endswith(MARKER)


# --------------------------------------------------------------------------- the ledger


def test_the_ledger_skips_carried_own_empty_and_history() -> None:
    cutoff = NOW - timedelta(minutes=30)
    rows = [
        carried(Side.BIGPANDA, bp_entry(1).id, servicenow_text(bp_entry(1))),
        CarriedEntry(7, Side.BIGPANDA, HISTORY, "", cutoff - timedelta(hours=1)),
        CarriedEntry(7, Side.BIGPANDA, HISTORY, "", cutoff),  # the latest cutoff counts
    ]
    ledger = Ledger.of(rows)
    assert not ledger.wanted(Side.BIGPANDA, bp_entry(1))  # carried already
    assert not ledger.wanted(Side.BIGPANDA, bp_entry(2, f"{MIRROR_MARKER} B14"))  # own
    assert not ledger.wanted(Side.BIGPANDA, bp_entry(3, " \n "))  # empty
    assert not ledger.wanted(Side.BIGPANDA, bp_entry(4, at=cutoff - timedelta(seconds=1)))
    assert ledger.wanted(Side.BIGPANDA, bp_entry(5, at=cutoff))
    # another side's cutoff does not apply; the same id read from the other side is new
    assert ledger.wanted(Side.SERVICENOW, sn_entry(4, at=cutoff - timedelta(hours=2)))
    assert ledger.wanted(Side.SERVICENOW, JournalEntry(bp_entry(1).id, "work_notes", "x", "", NOW))


def test_a_copy_as_the_target_stored_it_is_never_carried_back() -> None:
    copy = servicenow_text(bp_entry(1))
    ledger = Ledger.of([carried(Side.BIGPANDA, bp_entry(1).id, copy)])
    assert ledger.written[Side.SERVICENOW] == {digest(copy)}
    stored = "\ufeff" + copy.replace("\n", "\r\n") + "  "  # rewritten by the target
    assert not is_own(stored)
    assert not ledger.wanted(Side.SERVICENOW, sn_entry(9, stored.removeprefix("\ufeff")))
    assert ledger.wanted(Side.SERVICENOW, sn_entry(9, "a person's own words"))


# --------------------------------------------------------------------------- reads


def test_reads_only_the_changed_sides_of_live_links() -> None:
    both = settings(**BOTH).journal
    bp, sn = bp_incident(), sn_incident()
    assert reads_wanted(both, link(), bp, sn) == (True, True)
    assert reads_wanted(both, link(), bp, None) == (True, False)
    assert reads_wanted(both, link(), None, sn) == (False, True)
    assert reads_wanted(both, link(LinkState.RESOLVED), bp, sn) == (True, True)
    for no in (None, link(LinkState.PENDING), link(LinkState.SUPERSEDED), link(sn_sys_id=None)):
        assert reads_wanted(both, no, bp, sn) == (False, False)
    # journals off for a direction: that side is not read
    assert reads_wanted(settings().journal, link(), bp, sn) == (True, False)
    off = settings(**{"journal.to_servicenow": "off"}).journal
    assert reads_wanted(off, link(), bp, sn) == (False, False)


def test_the_first_change_of_a_new_link_is_bpsyncs_own() -> None:
    """A new incident's create and link tag: no read (a storm costs what it did); a
    change after it, or one of an incident bpsync did not just create, is read."""
    both = settings(**BOTH).journal
    created = NOW.timestamp() + 0.5
    bp, sn = bp_incident(), sn_incident()
    assert reads_wanted(both, link(), bp, sn, fresh_until=created) == (False, False)
    later = bp_incident(updated_at=int(NOW.timestamp()) + 1)
    assert reads_wanted(both, link(), later, sn, fresh_until=created) == (True, False)


def test_a_backfill_reads_both_sides_whatever_changed() -> None:
    assert reads_all(settings(**BOTH).journal, link()) == (True, True)
    assert reads_all(settings().journal, link()) == (True, False)
    assert reads_all(settings().journal, link(LinkState.PENDING)) == (False, False)


# --------------------------------------------------------------------------- the plan


def test_bigpanda_comments_become_work_notes_oldest_first() -> None:
    journal = JournalInput(bigpanda=(bp_entry(2), bp_entry(1)))
    actions = journal_plan(journal)
    assert [a.entry_id for a in actions] == [bp_entry(1).id, bp_entry(2).id]
    first = actions[0]
    assert isinstance(first, CarryEntryToServiceNow)
    assert (first.link_id, first.sys_id, first.element) == (7, SYS_ID, "work_notes")
    assert first.text == servicenow_text(bp_entry(1))
    assert first.digest == digest(first.text)
    # a ServiceNow write: the link tag back after an error, B14 when refused
    assert first.on_success == (
        SetLinkTag(BP_ID, ENV, "servicenow_link", None, 7, only_after_error=True),
    )
    [comment, tag] = first.on_refused
    assert isinstance(comment, CommentBigPanda)
    assert comment.text.startswith(MIRROR_MARKER)
    assert isinstance(tag, SetLinkTag)


def test_comments_go_where_to_servicenow_says() -> None:
    journal = JournalInput(bigpanda=(bp_entry(1),))
    [action] = journal_plan(journal, settings(**{"journal.to_servicenow": "comments"}))
    assert isinstance(action, CarryEntryToServiceNow)
    assert action.element == "comments"
    assert journal_plan(journal, settings(**{"journal.to_servicenow": "off"})) == []


def test_the_journal_size_comes_from_the_dictionary() -> None:
    journal = JournalInput(bigpanda=(bp_entry(1, "z" * 500),))
    sizes = FieldSizes.from_dictionary({"work_notes": 100})
    [action] = journal_plan(journal, sizes=sizes)
    assert len(action.text) == 100
    assert action.text.endswith(MARKER)


def test_servicenow_entries_of_the_kinds_asked_for_become_comments() -> None:
    journal = JournalInput(
        servicenow=(sn_entry(1), sn_entry(2, kind="comments"), sn_entry(3, kind="other"))
    )
    assert journal_plan(journal) == []  # from_servicenow is empty by default
    actions = journal_plan(journal, settings(**BOTH))
    assert [a.entry_id for a in actions] == [sn_entry(1).id, sn_entry(2).id]
    assert all(isinstance(a, CarryEntryToBigPanda) for a in actions)
    assert actions[0].environment_id == ENV
    assert actions[1].text.startswith(f"{MIRROR_MARKER} ServiceNow additional comment by jane")
    only = journal_plan(journal, settings(**{"journal.from_servicenow": "comments"}))
    assert [a.entry_id for a in only] == [sn_entry(2).id]


def test_nothing_is_carried_twice_or_back() -> None:
    copy = servicenow_text(bp_entry(1))
    journal = JournalInput(
        bigpanda=(bp_entry(1), bp_entry(2, bigpanda_text(sn_entry(5)))),
        servicenow=(sn_entry(5), sn_entry(6, copy)),
        carried=(
            carried(Side.BIGPANDA, bp_entry(1).id, copy),
            carried(Side.SERVICENOW, sn_entry(5).id, bigpanda_text(sn_entry(5))),
        ),
    )
    assert carries(journal_plan(journal, settings(**BOTH))) == []


def test_entries_come_before_the_pairs_other_actions() -> None:
    journal = JournalInput(bigpanda=(bp_entry(1),))
    actions = journal_plan(journal, bp=bp_incident(active=False, status="ok"))
    assert isinstance(actions[0], CarryEntryToServiceNow)
    assert isinstance(actions[-1], ResolveServiceNow)  # the note reads before the resolve


def test_only_a_plan_of_field_writes_goes_before_its_entries() -> None:
    """Field writes may go before the conversation is read (and its entries after them);
    a resolve (or a reopen, a comment, a create) still reads after its entries."""
    team = settings(tag_mapping=[{"bigpanda_tag": "team", "servicenow_field": "u_team"}])
    fields = journal_plan(None, team, bp=bp_incident(tags={"team": "db"}))
    assert fields
    assert fields_first(fields)
    assert not fields_first([])
    resolve = journal_plan(None, bp=bp_incident(active=False, status="ok"))
    assert any(isinstance(a, ResolveServiceNow) for a in resolve)
    assert not fields_first(resolve)
    journal = JournalInput(bigpanda=(bp_entry(1),))
    full = journal_plan(journal, team, bp=bp_incident(tags={"team": "db"}))
    assert entries_of(full) == full[: len(full) - len(fields)]  # the same fields after
    assert full[len(full) - len(fields) :] == fields


def test_a_closed_servicenow_incident_gets_no_journal() -> None:
    journal = JournalInput(bigpanda=(bp_entry(1),), servicenow=(sn_entry(1),))
    for state in (SNState.CLOSED, SNState.CANCELED):
        sn = sn_incident(int(state), fields={"close_code": "x", "close_notes": "y"})
        actions = carries(journal_plan(journal, settings(**BOTH), sn=sn))
        # what was written there still reaches BigPanda
        assert [type(a) for a in actions] == [CarryEntryToBigPanda]


def test_resolved_links_carry_their_conversation() -> None:
    journal = JournalInput(bigpanda=(bp_entry(1),))
    resolved = link(LinkState.RESOLVED, reopen_deadline=NOW + timedelta(minutes=5))
    actions = journal_plan(journal, the_link=resolved)
    assert [type(a) for a in actions] == [CarryEntryToServiceNow]


def test_a_replaced_link_carries_nothing_now() -> None:
    """BigPanda reopened past the window: a new incident; its entries follow the new link
    (the ledger of every link of the incident: none twice)."""
    journal = JournalInput(bigpanda=(bp_entry(1),))
    resolved = link(LinkState.RESOLVED, reopen_deadline=NOW - timedelta(minutes=5))
    actions = journal_plan(journal, the_link=resolved, bp=bp_incident())
    assert any(isinstance(a, CreateServiceNowIncident) for a in actions)
    assert carries(actions) == []


@pytest.mark.parametrize("state", [LinkState.PENDING, LinkState.SUPERSEDED])
def test_no_journal_without_a_live_pair(state: LinkState) -> None:
    journal = JournalInput(bigpanda=(bp_entry(1),))
    assert carries(journal_plan(journal, the_link=link(state))) == []


def test_nothing_read_nothing_carried() -> None:
    assert carries(journal_plan(None, settings(**BOTH))) == []
    assert carries(journal_plan(JournalInput(), settings(**BOTH))) == []
    assert carries_nothing(None) and carries_nothing(JournalInput(bigpanda=(), servicenow=()))
    assert not carries_nothing(JournalInput(bigpanda=(bp_entry(1),)))
    assert not carries_nothing(JournalInput(servicenow=(sn_entry(1),)))


# --------------------------------------------------------------------------- settings


def test_journal_settings_defaults_and_checks() -> None:
    cfg = settings().journal
    assert (cfg.to_servicenow, cfg.from_servicenow) == ("work_notes", [])  # as before
    both = settings(**{"journal.from_servicenow": "comments, work_notes, comments"}).journal
    assert both.from_servicenow == ["comments", "work_notes"]
    with pytest.raises(ConfigError, match=r"journal\.from_servicenow"):
        settings(**{"journal.from_servicenow": ["notes"]})
    with pytest.raises(ConfigError, match=r"journal\.to_servicenow"):
        settings(**{"journal.to_servicenow": "both"})
