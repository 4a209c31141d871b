"""The event-log workload: every incident becomes a sequence of real changes."""

from __future__ import annotations

from sync.constants import SNState
from sync.workload import close_code_for, load_histories


def test_loads_every_incident_with_real_changes() -> None:
    histories = load_histories()
    assert len(histories) == 445
    total = sum(len(h.versions) for h in histories)
    assert 1500 < total < 3000
    for history in histories:
        assert history.versions
        pairs = list(zip(history.versions, history.versions[1:], strict=False))
        assert all((a.state, a.fields) != (b.state, b.fields) for a, b in pairs)
        assert all(v.state != SNState.CLOSED for v in history.versions[:-1])
    assert sum(h.resolved_at_end for h in histories) > 300


def test_patch_bodies_are_table_api_values() -> None:
    history = next(h for h in load_histories() if h.resolved_at_end)
    patch = history.versions[-1].patch()
    assert patch["state"] in {"6", "7"}
    assert patch["close_code"]
    assert patch["close_notes"]
    assert patch.get("impact", "1") in {"1", "2", "3"}
    on_hold = [v for h in load_histories() for v in h.versions if v.state == SNState.ON_HOLD]
    assert on_hold
    assert all(v.patch()["hold_reason"] in {"1", "3", "4"} for v in on_hold)


def test_close_codes_are_stable_and_valid() -> None:
    assert close_code_for("code 6") == close_code_for("code 6")
    assert close_code_for("?") == "Solution provided"


def test_limit() -> None:
    assert len(load_histories(limit=10)) == 10
