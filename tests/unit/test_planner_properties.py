"""Hypothesis properties of ``plan()`` over random pairs, mappings and settings.

(a) no write carries a value equal to the target's current value (no echoes, B5);
(b) applying the plan to an in-memory model of both sides and the field state, then
    planning again, gives no further write (convergence in one step); and every mapped
    value is then recorded as last-synced exactly as it stands on its side;
(c) at most one CreateServiceNowIncident per plan;
(d) plan is deterministic;
(e) a conversation read with no entry plans as one not read (``journal.carries_nothing``:
    the cycle then keeps the plan made before the read).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sync.actions import (
    STORE_ONLY_KINDS,
    Action,
    CreateServiceNowIncident,
    MarkLinkLinked,
    MarkLinkResolved,
    PlanInput,
    RecordConflict,
    RecordSynced,
    ReopenServiceNow,
    ResolveBigPanda,
    ResolveServiceNow,
    UpdateBigPandaTags,
    UpdateServiceNowFields,
)
from sync.constants import Side
from sync.journal import carries_nothing
from sync.mapping import bp_value, compile_rules, norm, validate_mapping
from sync.model import (
    BPIncident,
    CarriedEntry,
    FieldState,
    JournalInput,
    Link,
    LinkState,
    SNIncident,
)
from sync.planner import plan
from sync.settings import Settings, TagMappingRule

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
BP_ID = "65a0b1c2d3e4f5a6b7c8d9e0"
SYS_ID = "0123456789abcdef0123456789abcdef"
ENV = "env-prod"

ROW_POOL: list[dict[str, Any]] = [
    {"bigpanda_tag": "team", "servicenow_field": "u_team", "direction": "both"},
    {"bigpanda_tag": "team", "servicenow_field": "u_team_copy", "direction": "bp_to_sn"},
    {
        "bigpanda_tag": "sev",
        "servicenow_field": "u_sev",
        "direction": "both",
        "value_map": {"high": "1", "low": "2"},
    },
    {
        "bigpanda_tag": "sev",
        "servicenow_field": "impact",
        "direction": "bp_to_sn",
        "value_map": {"high": "1", "low": "2", "mid": "2"},
    },
    {"bigpanda_tag": "owner", "servicenow_field": "assigned_to", "direction": "sn_to_bp"},
    {"bigpanda_tag": "owner_copy", "servicenow_field": "assigned_to", "direction": "sn_to_bp"},
    {
        "bigpanda_tag": "severity",
        "servicenow_field": "urgency",
        "direction": "bp_to_sn",
        "value_map": {"critical": "1", "warning": "2"},
    },
    {"bigpanda_tag": "region", "servicenow_field": "u_region", "direction": "both"},
    # rows that make the configuration invalid when combined with the ones above
    {"bigpanda_tag": "team", "servicenow_field": "u_team2", "direction": "both"},
    {"bigpanda_tag": "region", "servicenow_field": "u_team", "direction": "bp_to_sn"},
    {
        "bigpanda_tag": "region",
        "servicenow_field": "u_region_code",
        "direction": "both",
        "value_map": {"eu": "1", "emea": "1"},
    },
]
BP_VALUES = st.sampled_from([None, "", "high", "low", "mid", "High", "x", "y", "eu", "emea"])
SN_VALUES = st.sampled_from([None, "", "1", "2", "3", "x", "y"])
SEVERITIES = st.sampled_from(["critical", "warning", "ok", "Critical"])


def rule_names(rows: list[dict[str, Any]]) -> tuple[set[str], set[str]]:
    return {r["bigpanda_tag"] for r in rows}, {r["servicenow_field"] for r in rows}


@st.composite
def scenarios(draw: st.DrawFn, *, valid_only: bool = False) -> tuple[PlanInput, Settings]:
    rows = draw(st.lists(st.sampled_from(ROW_POOL), max_size=6, unique_by=id))
    tags, fields = rule_names(rows)
    update_fields = draw(
        st.none()
        | st.lists(
            st.sampled_from(
                sorted(fields | {"description", "short_description", "u_team", "impact"})
            ),
            unique=True,
        )
    )
    to_work_notes = draw(st.booleans())
    if update_fields is not None and to_work_notes and draw(st.booleans()):
        update_fields.append("work_notes")
    cfg = Settings(
        tag_mapping=[TagMappingRule(**row) for row in rows],
        incidents={
            "resolve_servicenow": draw(st.booleans()),
            "resolve_bigpanda": draw(st.booleans()),
            "send_closure_code": draw(st.booleans()),
            "reopen_resolved": draw(st.booleans()),
            "conflict_policy": draw(st.sampled_from(["newest", "bigpanda", "servicenow"])),
            "update_fields": update_fields,
            "description_to_work_notes": to_work_notes,
        },
        bigpanda={"environments": draw(st.sampled_from([[], [ENV], ["env-other"]]))},
    )
    if valid_only:
        rule_problems = [p for p in validate_mapping(cfg) if p.startswith("tag_mapping")]
        if rule_problems:  # keep the draw cheap: drop to a valid subset instead of rejecting
            cfg = cfg.model_copy(update={"tag_mapping": []})
            tags, fields = set(), set()

    bp: BPIncident | None = None
    if draw(st.booleans()):
        bp = BPIncident(
            id=BP_ID,
            status="critical",
            active=draw(st.booleans()),
            severity=draw(SEVERITIES),
            updated_at=int(NOW.timestamp()) - draw(st.integers(0, 120)),
            environments=(ENV,),
            tags={t: v for t in sorted(tags - {"severity"}) if (v := draw(BP_VALUES)) is not None},
        )
    sn: SNIncident | None = None
    if draw(st.booleans()):
        sn_fields = {f: v for f in sorted(fields) if (v := draw(SN_VALUES)) is not None}
        state = draw(st.sampled_from([1, 2, 3, 6, 7, 8]))
        sn = SNIncident(
            sys_id=SYS_ID,
            number="INC0010001",
            state=state,
            active=state not in (7, 8),
            sys_mod_count=1,
            sys_updated_on=NOW - timedelta(seconds=draw(st.integers(0, 120))),
            correlation_id=BP_ID,
            fields={**sn_fields, "close_code": "Solution provided", "close_notes": "done"},
        )
    link: Link | None = None
    if draw(st.integers(0, 4)) > 0:
        link = Link(
            id=1,
            bp_incident_id=BP_ID,
            sn_sys_id=SYS_ID,
            sn_number="INC0010001",
            state=draw(st.sampled_from(list(LinkState))),
            created_at=NOW - timedelta(days=1),
            reopen_deadline=draw(
                st.none()
                | st.sampled_from([NOW - timedelta(minutes=1), NOW + timedelta(minutes=1)])
            ),
        )
    synced: dict[tuple[Side, str], FieldState] = {}
    if link is not None:
        for side, names, values in (
            (Side.BIGPANDA, tags, BP_VALUES),
            (Side.SERVICENOW, fields, SN_VALUES),
        ):
            for name in sorted(names):
                if draw(st.booleans()):
                    value = draw(values)
                    if name == "severity" and value:  # attributes are recorded lower-cased
                        value = value.lower()
                    synced[(side, name)] = FieldState(link.id, side, name, value, NOW)
    return PlanInput(bp=bp, sn=sn, link=link, synced=synced, environment_id=ENV), cfg


def last(inp: PlanInput, side: Side, name: str) -> str | None:
    state = inp.synced.get((side, name))
    return norm(state.value) if state is not None else None


def sn_current(inp: PlanInput, name: str) -> str | None:
    if inp.sn is not None and name in inp.sn.fields:
        return norm(inp.sn.fields[name])
    return last(inp, Side.SERVICENOW, name)


def bp_current(inp: PlanInput, tag: str) -> str | None:
    return bp_value(inp.bp, tag) if inp.bp is not None else last(inp, Side.BIGPANDA, tag)


def writes(actions: list[Action]) -> list[Action]:
    return [a for a in actions if a.kind not in STORE_ONLY_KINDS]


FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- (a), (c), (d)


@FAST
@given(scenarios())
def test_no_write_equals_the_target_value(case: tuple[PlanInput, Settings]) -> None:
    inp, cfg = case
    for action in plan(inp, cfg, NOW):
        if isinstance(action, UpdateServiceNowFields):
            assert action.fields, action
            for name, value in action.fields.items():
                assert norm(value) != sn_current(inp, name), (name, action)
        elif isinstance(action, UpdateBigPandaTags):
            assert action.tags or action.remove_tags, action
            for tag, value in action.tags.items():
                assert value and value != bp_current(inp, tag), (tag, action)
            for tag in action.remove_tags:
                assert bp_current(inp, tag) is not None, (tag, action)


@FAST
@given(scenarios())
def test_at_most_one_create_and_deterministic(case: tuple[PlanInput, Settings]) -> None:
    inp, cfg = case
    first = plan(inp, cfg, NOW)
    assert sum(isinstance(a, CreateServiceNowIncident) for a in first) <= 1
    assert plan(inp, cfg, NOW) == first
    if inp.link is not None and inp.link.state in (LinkState.PENDING, LinkState.SUPERSEDED):
        assert first == []


#: conversations without an entry: not read, read empty on either side, with a ledger
EMPTY_CONVERSATIONS = st.sampled_from(
    [
        None,
        JournalInput(),
        JournalInput(bigpanda=()),
        JournalInput(servicenow=()),
        JournalInput(bigpanda=(), servicenow=()),
        JournalInput(
            bigpanda=(),
            servicenow=(),
            carried=(CarriedEntry(1, Side.BIGPANDA, "a1", "d" * 64, NOW),),
        ),
    ]
)


@FAST
@given(scenarios(), EMPTY_CONVERSATIONS)
def test_a_conversation_without_entries_plans_as_not_read(
    case: tuple[PlanInput, Settings], journal: JournalInput | None
) -> None:
    inp, cfg = case
    assert carries_nothing(journal)
    with_it = dataclasses.replace(inp, journal=journal)
    assert plan(with_it, cfg, NOW) == plan(dataclasses.replace(inp, journal=None), cfg, NOW)


# ---------------------------------------------------------------- (b) the model


@dataclasses.dataclass
class World:
    """Both sides as they really are, the link, and the recorded field state."""

    bp: BPIncident
    sn: SNIncident
    link: Link
    synced: dict[tuple[Side, str], FieldState]
    bp_seen: bool = True
    """The BigPanda side shows up in the next poll (it was polled, or bpsync wrote it)."""
    sn_seen: bool = True

    def record(self, side: Side, values: Mapping[str, str | None]) -> None:
        for name, value in values.items():
            self.synced[(side, name)] = FieldState(self.link.id, side, name, value, NOW)

    def plan_input(self) -> PlanInput:
        return PlanInput(
            bp=self.bp if self.bp_seen else None,
            sn=self.sn if self.sn_seen else None,
            link=self.link,
            synced=dict(self.synced),
            environment_id=ENV,
        )


def world_of(inp: PlanInput, cfg: Settings) -> World:
    """The truth behind a plan input: a side passed as None holds its last-synced values
    and the status its link state implies (what the planner assumes)."""
    assert inp.link is not None
    tags, fields = rule_names([r.model_dump() for r in cfg.tag_mapping])
    resolved = inp.link.state is LinkState.RESOLVED
    bp = inp.bp
    if bp is None:
        bp = BPIncident(
            id=BP_ID,
            status="ok" if resolved else "critical",
            active=not resolved,
            severity=last(inp, Side.BIGPANDA, "severity") or "",
            updated_at=int(NOW.timestamp()) - 3600,
            environments=(ENV,),
            alert_ids=("al-1",),  # alerts unknown: generated texts cannot be rebuilt
            tags={
                t: v
                for t in sorted(tags - {"severity"})
                if (v := last(inp, Side.BIGPANDA, t)) is not None
            },
        )
    sn = inp.sn
    if sn is None:
        sn = SNIncident(
            sys_id=SYS_ID,
            number="INC0010001",
            state=6 if resolved else 2,
            active=True,
            sys_mod_count=1,
            sys_updated_on=NOW - timedelta(hours=1),
            correlation_id=BP_ID,
            fields={f: last(inp, Side.SERVICENOW, f) or "" for f in sorted(fields)},
        )
    return World(
        bp=bp,
        sn=sn,
        link=inp.link,
        synced=dict(inp.synced),
        bp_seen=inp.bp is not None,
        sn_seen=inp.sn is not None,
    )


def apply(world: World, actions: list[Action]) -> None:
    """What the executor does when every action succeeds."""
    for action in actions:
        if isinstance(action, UpdateServiceNowFields):
            changed = {k: ("" if k == "work_notes" else v) for k, v in action.fields.items()}
            world.sn = dataclasses.replace(world.sn, fields={**world.sn.fields, **changed})
            world.sn_seen = True
            world.record(Side.BIGPANDA, action.record_bp)
            world.record(Side.SERVICENOW, action.record_sn)
        elif isinstance(action, UpdateBigPandaTags):
            tags = {**world.bp.tags, **action.tags}
            for tag in action.remove_tags:
                tags.pop(tag, None)
            world.bp = dataclasses.replace(world.bp, tags=tags)
            world.bp_seen = True
            world.record(Side.BIGPANDA, action.record_bp)
            world.record(Side.SERVICENOW, action.record_sn)
        elif isinstance(action, RecordSynced):
            world.record(Side.BIGPANDA, action.record_bp)
            world.record(Side.SERVICENOW, action.record_sn)
        elif isinstance(action, ResolveServiceNow):
            world.sn = dataclasses.replace(world.sn, state=6)
            world.sn_seen = True
            if action.reopen_deadline is not None:
                world.link = resolve_link(world.link, action.reopen_deadline)
        elif isinstance(action, ResolveBigPanda):
            world.bp = dataclasses.replace(world.bp, active=False, status="ok")
            world.bp_seen = True
            if action.reopen_deadline is not None:
                world.link = resolve_link(world.link, action.reopen_deadline)
        elif isinstance(action, MarkLinkResolved):
            world.link = resolve_link(world.link, action.reopen_deadline)
        elif isinstance(action, ReopenServiceNow | MarkLinkLinked):
            if isinstance(action, ReopenServiceNow):
                world.sn = dataclasses.replace(world.sn, state=2)
                world.sn_seen = True
            world.link = dataclasses.replace(world.link, state=LinkState.LINKED)
        elif isinstance(action, CreateServiceNowIncident):
            # a fresh incident holding exactly what was sent (look-ups found nothing)
            world.link = dataclasses.replace(
                world.link,
                id=world.link.id + 1,
                state=LinkState.LINKED,
                previous_link_id=world.link.id,
                reopen_deadline=None,
            )
            sent = {k: ("" if k == "work_notes" else v) for k, v in action.fields.items()}
            world.sn = dataclasses.replace(world.sn, state=1, fields=sent)
            world.sn_seen = True
            world.synced = {}
            world.record(Side.BIGPANDA, action.record_bp)
            world.record(Side.SERVICENOW, action.record_sn)
        else:
            assert isinstance(action, RecordConflict)


def resolve_link(link: Link, deadline: datetime) -> Link:
    return dataclasses.replace(
        link, state=LinkState.RESOLVED, resolved_at=NOW, reopen_deadline=deadline
    )


@FAST
@given(scenarios(valid_only=True))
def test_plan_converges_in_one_step(case: tuple[PlanInput, Settings]) -> None:
    inp, cfg = case
    if inp.link is None or inp.link.state not in (LinkState.LINKED, LinkState.RESOLVED):
        return
    world = world_of(inp, cfg)
    first = plan(inp, cfg, NOW)
    apply(world, first)
    again = plan(world.plan_input(), cfg, NOW)
    assert writes(again) == [], (first, again)
    # field sync ran: every mapped value is recorded exactly as it stands on its side
    field_sync_ran = world.link.state is LinkState.LINKED or (
        world.sn.state == 6 and world.bp.active is False
    )
    if field_sync_ran and not any(isinstance(a, CreateServiceNowIncident) for a in first):
        assert again == [], (first, again)
        for rule in compile_rules(cfg):
            assert last(world.plan_input(), Side.BIGPANDA, rule.tag) == bp_value(world.bp, rule.tag)
            if rule.field in world.sn.fields:  # a field the poll did not fetch is unknown
                assert last(world.plan_input(), Side.SERVICENOW, rule.field) == norm(
                    world.sn.fields[rule.field]
                )


@FAST
@given(scenarios())
def test_any_mapping_makes_no_further_writes(case: tuple[PlanInput, Settings]) -> None:
    """Even a mapping that validate_mapping rejects never makes the planner loop."""
    inp, cfg = case
    if inp.link is None or inp.link.state not in (LinkState.LINKED, LinkState.RESOLVED):
        return
    world = world_of(inp, cfg)
    apply(world, plan(inp, cfg, NOW))
    assert writes(plan(world.plan_input(), cfg, NOW)) == []
