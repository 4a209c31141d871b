"""The encoded-query builder: escaping, refusals, structure (docs/servicenow-api.md 2.5)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sync.clients.snquery import (
    EncodedQuery,
    Op,
    QueryError,
    check_correlation_id,
    check_field,
    check_sn_datetime,
    check_sys_id,
    check_table,
    equality_query,
    escape_value,
    sn_datetime,
)
from sync.errors import PermanentError


def split_terms(encoded: str) -> list[str]:
    """A reference tokenizer, as ServiceNow reads a query: ``^^`` is a literal caret,
    a single ``^`` separates terms (scanned left to right)."""
    terms: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(encoded):
        if encoded[i] == "^":
            if i + 1 < len(encoded) and encoded[i + 1] == "^":
                current.append("^")
                i += 2
                continue
            terms.append("".join(current))
            current = []
            i += 1
            continue
        current.append(encoded[i])
        i += 1
    terms.append("".join(current))
    return terms


def test_simple_and_query() -> None:
    query = EncodedQuery().eq("active", "true").where("priority", Op.LE, "2")
    assert query.build() == "active=true^priority<=2"
    assert str(query) == query.build()


def test_or_new_group_and_order_by() -> None:
    query = (
        EncodedQuery()
        .eq("state", "1")
        .or_where("state", Op.EQ, "2")
        .new_group()
        .is_empty("correlation_id")
        .order_by("sys_updated_on")
        .order_by("number", descending=True)
    )
    assert query.build() == (
        "state=1^ORstate=2^NQcorrelation_idISEMPTY^ORDERBYsys_updated_on^ORDERBYDESCnumber"
    )


def test_order_only_and_empty_query() -> None:
    assert EncodedQuery().build() == ""
    assert EncodedQuery().order_by("sys_id").build() == "ORDERBYsys_id"


@pytest.mark.parametrize(
    ("op", "expected"),
    [
        (Op.NE, "f!=v"),
        (Op.GT, "f>v"),
        (Op.GE, "f>=v"),
        (Op.LT, "f<v"),
        (Op.LIKE, "fLIKEv"),
        (Op.NOT_LIKE, "fNOT LIKEv"),
        (Op.STARTSWITH, "fSTARTSWITHv"),
        (Op.ENDSWITH, "fENDSWITHv"),
    ],
)
def test_binary_operators(op: Op, expected: str) -> None:
    assert EncodedQuery().where("f", op, "v").build() == expected


def test_in_lists() -> None:
    assert EncodedQuery().in_("state", ["1", "2", "3"]).build() == "stateIN1,2,3"
    assert EncodedQuery().where("state", Op.NOT_IN, ["6", "7"]).build() == "stateNOT IN6,7"
    assert EncodedQuery().is_not_empty("x").build() == "xISNOTEMPTY"


@pytest.mark.parametrize(
    "value",
    ["x^NQactive=true", "x^ORactive=true", "x^ORDERBYsys_id", "^", "a^^b", "tail^", "^NQ"],
)
def test_caret_is_doubled_and_cannot_add_terms(value: str) -> None:
    query = EncodedQuery().eq("short_description", value).eq("active", "true")
    encoded = query.build()
    assert split_terms(encoded) == [f"short_description={value}", "active=true"]
    assert "^NQ" not in split_terms(encoded)[1]


@given(st.text(alphabet=st.sampled_from("ab^NQOR=,^ x"), max_size=12))
def test_any_value_stays_one_term(value: str) -> None:
    if not value or value.strip().lower().startswith("javascript:"):
        return
    encoded = EncodedQuery().eq("name", value).is_not_empty("email").build()
    assert split_terms(encoded) == [f"name={value}", "emailISNOTEMPTY"]


def test_comma_refused_in_in_list() -> None:
    with pytest.raises(QueryError, match="contains ','"):
        EncodedQuery().in_("state", ["1", "2,3"])


def test_in_list_needs_values_and_a_list() -> None:
    with pytest.raises(QueryError, match="at least one value"):
        EncodedQuery().in_("state", [])
    with pytest.raises(QueryError, match="list of values"):
        EncodedQuery().where("state", Op.IN, "1,2")
    with pytest.raises(QueryError, match="empty value"):
        EncodedQuery().in_("state", ["1", ""])


def test_caret_escaped_inside_in_list() -> None:
    assert EncodedQuery().in_("name", ["a^b", "c"]).build() == "nameINa^^b,c"


@pytest.mark.parametrize(
    "value", ["javascript:gs.getUserID()", "  JavaScript:x", "JAVASCRIPT:", "\tjavascript:1"]
)
def test_javascript_values_refused(value: str) -> None:
    with pytest.raises(QueryError, match="javascript:"):
        EncodedQuery().eq("caller_id", value)
    with pytest.raises(QueryError, match="javascript:"):
        EncodedQuery().in_("caller_id", ["ok", value])


def test_javascript_inside_a_value_is_just_text() -> None:
    assert EncodedQuery().eq("d", "see javascript:x").build() == "d=see javascript:x"


@pytest.mark.parametrize(
    "field", ["", "Name", "1abc", "name^ORx", "na me", "name=", "ORDERBYx", "a-b", "état"]
)
def test_bad_field_names_refused(field: str) -> None:
    with pytest.raises(QueryError, match="invalid ServiceNow field name"):
        EncodedQuery().eq(field, "x")
    with pytest.raises(QueryError):
        EncodedQuery().order_by(field)


def test_dot_walked_field_allowed() -> None:
    assert check_field("assignment_group.name") == "assignment_group.name"


def test_empty_value_and_operator_smuggling_refused() -> None:
    with pytest.raises(QueryError, match="ISEMPTY"):
        EncodedQuery().eq("email", "")
    with pytest.raises(QueryError, match="may not start with '='"):
        EncodedQuery().where("sys_updated_on", Op.GT, "=2020-01-01 00:00:00")
    with pytest.raises(QueryError, match="takes no value"):
        EncodedQuery().where("x", Op.ISEMPTY, "y")
    with pytest.raises(QueryError, match="needs a value"):
        EncodedQuery().where("x", Op.EQ)


def test_structure_misuse_refused() -> None:
    with pytest.raises(QueryError, match="or_where"):
        EncodedQuery().or_where("a", Op.EQ, "b")
    with pytest.raises(QueryError, match="new_group"):
        EncodedQuery().new_group()


def test_query_error_is_permanent() -> None:
    with pytest.raises(PermanentError) as info:
        escape_value("f", "javascript:1")
    assert info.value.side == "servicenow"


def test_equality_query_from_mapping_and_pairs() -> None:
    assert equality_query({"email": "a@b.c", "active": "true"}).build() == (
        "email=a@b.c^active=true"
    )
    assert equality_query([("name", "x^y")]).build() == "name=x^^y"


def test_strict_id_checks() -> None:
    assert check_sys_id("0" * 32) == "0" * 32
    for bad in ["0" * 31, "G" * 32, "A" * 32, "../" + "0" * 29, ""]:
        with pytest.raises(QueryError, match="sys_id"):
            check_sys_id(bad)
    assert check_correlation_id("5f1c0a9e8b7d6c5e4f3a2b1c") == "5f1c0a9e8b7d6c5e4f3a2b1c"
    for bad in ["", "a^b", "a,b", "a@b", "a b", "x" * 101, "a\nb"]:
        with pytest.raises(QueryError, match="correlation_id"):
            check_correlation_id(bad)
    assert check_table("sys_user_group") == "sys_user_group"
    for bad in ["incident/../x", "Incident", "", "a.b"]:
        with pytest.raises(QueryError, match="table"):
            check_table(bad)
    assert check_sn_datetime("2026-01-02 03:04:05") == "2026-01-02 03:04:05"
    for bad in ["2026-01-02T03:04:05", "2026-01-02 03:04", "x"]:
        with pytest.raises(QueryError, match="date-time"):
            check_sn_datetime(bad)


def test_sn_datetime_is_utc_second_precision() -> None:
    plus2 = timezone(timedelta(hours=2))
    assert sn_datetime(datetime(2026, 3, 1, 12, 0, 5, 999_999, tzinfo=plus2)) == (
        "2026-03-01 10:00:05"
    )
    assert sn_datetime(datetime(2026, 3, 1, tzinfo=UTC)) == "2026-03-01 00:00:00"
    with pytest.raises(QueryError, match="naive"):
        sn_datetime(datetime(2026, 3, 1))
