"""Tag mapping rules: conversions, read-only names, create values, look-ups, validation."""

from __future__ import annotations

from typing import Any

import pytest

from sync.actions import RefLookup
from sync.mapping import (
    UNMAPPED,
    FieldRule,
    bp_value,
    compile_rules,
    mapped_create_values,
    static_fields,
    static_lookups,
    updatable_after_create,
    validate_mapping,
)
from sync.model import BPAlert, BPIncident
from sync.settings import Settings, TagMappingRule

SEVERITY_MAP = {"critical": "1", "warning": "2", "unknown": "3"}


def settings(rows: list[dict[str, Any]], **incidents: Any) -> Settings:
    return Settings(tag_mapping=[TagMappingRule(**row) for row in rows], incidents=incidents)


def incident(**tags: str) -> BPIncident:
    return BPIncident(id="a" * 24, status="Critical", active=True, severity="Warning", tags=tags)


# ------------------------------------------------------------------ conversions


def test_text_rule_passes_values_through_and_syncs_emptiness() -> None:
    rule = FieldRule.build("owner", "assigned_to", to_servicenow=True, to_bigpanda=True)
    assert rule.to_sn("Bob") == "Bob"
    assert rule.to_bp("Bob") == "Bob"
    # "" and None are the same empty value: an empty source clears the target
    assert rule.to_sn("") is None
    assert rule.to_bp(None) is None
    assert rule.agree("", None)
    assert not rule.agree("bob", "Bob")  # text is compared exactly


def test_value_map_forward_exact_then_any_case() -> None:
    rule = FieldRule.build(
        "severity", "impact", to_servicenow=True, to_bigpanda=True, value_map=SEVERITY_MAP
    )
    assert rule.to_sn("critical") == "1"
    assert rule.to_sn("Critical") == "1"  # BigPanda mixes cases
    assert rule.to_bp("2") == "warning"


def test_value_missing_from_map_is_not_written() -> None:
    rule = FieldRule.build(
        "severity", "impact", to_servicenow=True, to_bigpanda=True, value_map=SEVERITY_MAP
    )
    assert rule.to_sn("ok") is UNMAPPED
    assert rule.to_bp("5") is UNMAPPED
    # an empty value is unmapped too: choice fields cannot be cleared through the API
    assert rule.to_sn(None) is UNMAPPED
    assert rule.to_bp("") is UNMAPPED


def test_inverse_of_non_injective_map_takes_first_listed() -> None:
    rule = FieldRule.build(
        "severity",
        "impact",
        to_servicenow=True,
        to_bigpanda=True,
        value_map={"unknown": "3", "ok": "3"},
    )
    assert rule.to_bp("3") == "unknown"
    assert rule.agree("ok", "3")  # ok -> 3 corresponds, although 3 maps back to unknown
    assert rule.agree("Unknown", "3")
    assert not rule.agree("unknown", "2")


# ------------------------------------------------------------------ rules


def test_compile_rules_keeps_order_and_narrows_directions() -> None:
    s = settings(
        [
            {"bigpanda_tag": "severity", "servicenow_field": "impact", "direction": "both"},
            {"bigpanda_tag": "owner", "servicenow_field": "assigned_to", "direction": "sn_to_bp"},
            {"bigpanda_tag": "servicenow_link", "servicenow_field": "number"},
            {"bigpanda_tag": "priority", "servicenow_field": "urgency", "direction": "bp_to_sn"},
            {
                "bigpanda_tag": "priority",
                "servicenow_field": "u_prio",
                "direction": "both",
                "value_map": {"P1": "1", "P2": "2"},
            },
            {"bigpanda_tag": "sn_priority", "servicenow_field": "priority", "direction": "both"},
        ]
    )
    rules = compile_rules(s)
    assert [(r.tag, r.field, r.to_servicenow, r.to_bigpanda) for r in rules] == [
        ("severity", "impact", True, False),  # severity is the incident attribute: read-only
        ("owner", "assigned_to", False, True),
        # the link tag row is dropped: the executor owns that tag
        ("priority", "urgency", True, False),
        ("priority", "u_prio", True, True),  # the Priority tag: written through its levels
        ("sn_priority", "priority", False, True),  # ServiceNow derives priority
    ]


def test_compile_rules_compiles_once_per_settings_sizes_and_labels() -> None:
    row = {"bigpanda_tag": "team", "servicenow_field": "u_team", "direction": "both"}
    s = settings([row])
    first = compile_rules(s)
    assert compile_rules(s) is first  # the same objects: compiled once
    labels = {"u_team": {"Database": "db"}}
    assert compile_rules(s, labels=labels) is not first  # other labels: their own rules
    other = settings([{**row, "direction": "sn_to_bp"}])
    assert [r.to_servicenow for r in compile_rules(other)] == [False]  # a new configuration
    assert [r.to_servicenow for r in compile_rules(s)] == [True]


def test_a_row_writing_the_priority_tag_without_levels_is_refused() -> None:
    with pytest.raises(ValueError, match="priority is BigPanda's Priority-type tag"):
        settings([{"bigpanda_tag": "priority", "servicenow_field": "urgency", "direction": "both"}])


def test_bp_value_reads_tags_and_lowercased_attributes() -> None:
    inc = incident(owner="bob", empty="")
    assert bp_value(inc, "owner") == "bob"
    assert bp_value(inc, "empty") is None
    assert bp_value(inc, "missing") is None
    assert bp_value(inc, "severity") == "warning"
    assert bp_value(inc, "status") == "critical"


def test_update_fields_limits_updates_after_create() -> None:
    assert updatable_after_create(settings([]).incidents, "impact")  # None: every field
    limited = settings([], update_fields="impact, description").incidents
    assert updatable_after_create(limited, "impact")
    assert not updatable_after_create(limited, "urgency")


def test_mapped_create_values_severity_to_impact_and_urgency() -> None:
    s = settings(
        [
            {
                "bigpanda_tag": "severity",
                "servicenow_field": "impact",
                "direction": "bp_to_sn",
                "value_map": SEVERITY_MAP,
            },
            {
                "bigpanda_tag": "severity",
                "servicenow_field": "urgency",
                "direction": "bp_to_sn",
                "value_map": SEVERITY_MAP,
            },
            {"bigpanda_tag": "team", "servicenow_field": "u_team", "direction": "both"},
            {"bigpanda_tag": "owner", "servicenow_field": "assigned_to", "direction": "sn_to_bp"},
            {"bigpanda_tag": "region", "servicenow_field": "u_region", "direction": "both"},
        ]
    )
    values = mapped_create_values(incident(team="db", owner="x"), compile_rules(s))
    assert values.fields == {"impact": "2", "urgency": "2", "u_team": "db"}
    assert values.record_bp == {"severity": "warning", "team": "db", "owner": "x", "region": None}
    # fields not written are recorded as empty, so ServiceNow's own value shows as a change
    assert values.record_sn == {
        "impact": "2",
        "urgency": "2",
        "u_team": "db",
        "assigned_to": None,
        "u_region": None,
    }


def test_static_fields_and_lookups() -> None:
    assert static_fields("b" * 24) == {
        "correlation_id": "b" * 24,
        "correlation_display": "BigPanda",
    }
    opts = settings(
        [],
        assignment_group="DevOps",
        caller_id_email="caller@example.com",
        opened_by_email="opener@example.com",
        cmdb_ci_tag="host",
    ).incidents
    primary = BPAlert(id="1", status="critical", tags={"Host": "db-1"})
    assert static_lookups(opts, primary) == {
        "assignment_group": RefLookup("sys_user_group", "name", "DevOps"),
        "caller_id": RefLookup("sys_user", "email", "caller@example.com"),
        "opened_by": RefLookup("sys_user", "email", "opener@example.com"),
        "cmdb_ci": RefLookup("cmdb_ci", "name", "db-1"),  # tag name matched in any case
    }
    # no primary alert, or it lacks the tag: no CI look-up; unset settings: no look-ups
    assert "cmdb_ci" not in static_lookups(opts, None)
    assert "cmdb_ci" not in static_lookups(opts, BPAlert(id="2", status="ok"))
    assert static_lookups(settings([]).incidents, primary) == {}


# ------------------------------------------------------------------ validation


def test_valid_mapping_has_no_problems() -> None:
    s = settings(
        [
            {
                "bigpanda_tag": "severity",
                "servicenow_field": "impact",
                "direction": "bp_to_sn",
                "value_map": {"critical": "1", "warning": "2", "unknown": "3", "ok": "3"},
            },
            {
                "bigpanda_tag": "severity",
                "servicenow_field": "urgency",
                "direction": "bp_to_sn",
                "value_map": SEVERITY_MAP,
            },
            {
                "bigpanda_tag": "group",
                "servicenow_field": "assignment_group",
                "direction": "sn_to_bp",
            },
            {"bigpanda_tag": "team", "servicenow_field": "u_team"},
        ],
        update_fields=["impact", "description"],
    )
    assert validate_mapping(s) == []


@pytest.mark.parametrize(
    ("rows", "incidents", "expected"),
    [
        (
            [
                {"bigpanda_tag": "team", "servicenow_field": "u_a", "direction": "sn_to_bp"},
                {"bigpanda_tag": "team", "servicenow_field": "u_b", "direction": "both"},
            ],
            {},
            "tag team already receives values from row 0",
        ),
        (
            [
                {"bigpanda_tag": "a", "servicenow_field": "u_team", "direction": "bp_to_sn"},
                {"bigpanda_tag": "b", "servicenow_field": "u_team"},
            ],
            {},
            "field u_team already receives values from row 0",
        ),
        (
            [
                {"bigpanda_tag": "team", "servicenow_field": "u_team", "direction": "bp_to_sn"},
                {"bigpanda_tag": "team", "servicenow_field": "u_team", "direction": "sn_to_bp"},
            ],
            {},
            "the same pair is already mapped by row 0",
        ),
        (
            [{"bigpanda_tag": "servicenow_link", "servicenow_field": "u_link"}],
            {},
            "is the link tag",
        ),
        (
            [{"bigpanda_tag": "my_link", "servicenow_field": "u_link"}],
            {"link_tag": "my_link"},
            "is the link tag",
        ),
        (
            [{"bigpanda_tag": "severity", "servicenow_field": "u_sev", "direction": "both"}],
            {},
            "severity is an incident attribute (read-only)",
        ),
        (
            [{"bigpanda_tag": "severity", "servicenow_field": "impact", "direction": "sn_to_bp"}],
            {},
            "severity is an incident attribute",
        ),
        (
            [{"bigpanda_tag": "p", "servicenow_field": "priority", "direction": "bp_to_sn"}],
            {},
            "map impact and urgency instead",
        ),
        (
            [{"bigpanda_tag": "s", "servicenow_field": "sys_updated_on", "direction": "both"}],
            {},
            "is set by ServiceNow or by bpsync",
        ),
        (
            [{"bigpanda_tag": "notes", "servicenow_field": "work_notes"}],
            {},
            "journal field",
        ),
        (
            [
                {
                    "bigpanda_tag": "sev",
                    "servicenow_field": "impact",
                    "value_map": {"unknown": "3", "ok": "3"},
                }
            ],
            {},
            "cannot be mapped back",
        ),
        (
            [{"bigpanda_tag": "team", "servicenow_field": "u_team", "direction": "sn_to_bp"}],
            {"update_fields": ["u_team"]},
            "update_fields lists u_team, which no bp_to_sn/both",
        ),
        (
            [],
            {"update_fields": ["work_notes"]},
            "description_to_work_notes is off",
        ),
    ],
)
def test_mapping_problems(
    rows: list[dict[str, Any]], incidents: dict[str, Any], expected: str
) -> None:
    problems = validate_mapping(settings(rows, **incidents))
    assert any(expected in p for p in problems), problems
    assert all(p.startswith(("tag_mapping[", "incidents.")) for p in problems)


def test_reference_lookups_send_names_as_look_ups_and_clear_with_empty() -> None:
    from sync.actions import RefLookup
    from sync.mapping import display_column, reference_lookups

    refs = {"assignment_group": "sys_user_group", "cmdb_ci": "cmdb_ci", "parent": "incident"}
    fields, lookups = reference_lookups(
        {"assignment_group": "Network", "cmdb_ci": None, "category": "db", "parent": "INC1"},
        refs,
    )
    assert fields == {"cmdb_ci": "", "category": "db"}
    assert lookups == {
        "assignment_group": RefLookup("sys_user_group", "name", "Network"),
        "parent": RefLookup("incident", "number", "INC1"),
    }
    assert display_column("u_custom_table") == "name"
