"""Field sizes and the visible cut (sync.sizes) and the mapping rules that use them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sync.mapping import FieldRule
from sync.sizes import MARKER, SN_DEFAULT_SIZES, FieldSizes, fit


@given(st.text(max_size=300), st.integers(min_value=0, max_value=200))
def test_fit_stays_within_the_limit_and_says_so(text: str, limit: int) -> None:
    cut = fit(text, limit)
    assert len(cut) <= limit
    if len(text) <= limit:
        assert cut == text
    elif limit > len(MARKER):
        assert cut.endswith(MARKER)
        assert text.startswith(cut[: -len(MARKER)])
    assert fit(cut, limit) == cut  # a cut value is stable: never rewritten


def test_fit_without_a_limit_keeps_everything() -> None:
    assert fit("x" * 10_000, None) == "x" * 10_000


def test_sizes_from_the_dictionary_keep_the_documented_defaults() -> None:
    sizes = FieldSizes.from_dictionary({"short_description": 255, "category": 40, "odd": 0})
    assert sizes.sn("short_description") == 255
    assert sizes.sn("category") == 40
    assert sizes.sn("description") == SN_DEFAULT_SIZES["description"]
    assert sizes.sn("odd") is None
    assert FieldSizes().sn("short_description") == 160


def test_a_rule_cuts_both_ways_and_a_cut_value_agrees_with_its_source() -> None:
    rule = FieldRule.build(
        "area", "category", to_servicenow=True, to_bigpanda=True, sn_max=40, bp_max=50
    )
    long = "a" * 100
    to_sn = rule.to_sn(long)
    assert isinstance(to_sn, str)
    assert len(to_sn) == 40
    assert to_sn.endswith(MARKER)
    assert rule.agree(long, to_sn)
    to_bp = rule.to_bp(long)
    assert isinstance(to_bp, str)
    assert len(to_bp) == 50
    assert rule.agree(to_bp, long)
    assert not rule.agree(long, "b")
    assert rule.to_sn(None) is None
