"""The BigPanda emulator's kept search results (``sync.emulators.bigpanda.search``): after
any sequence of changes, a search answers what a full pass over every incident answers."""

from __future__ import annotations

import random

import pytest

from sync.clock import FakeClock
from sync.emulators.bigpanda.model import ApiError
from sync.emulators.bigpanda.search import SearchIndex
from sync.emulators.bigpanda.state import State

ENV, FILTERED = "5e1f0b1a2c3d4e5f60718293", "5e1f0b1a2c3d4e5f60718300"
START = int(FakeClock().now().timestamp())

#: (query, from_s, to_s, sort_by, folder): each kind of filter and every sort
SEARCHES = [
    (None, None, None, "last_change", None),
    (None, None, None, "start", None),
    (None, START + 50, None, "start", None),
    (None, None, START + 100, "status", None),
    ("status = critical", None, None, "alerts", None),
    ("impact = high OR host = h3", None, None, "last_change", None),
    (None, None, None, "start", "active"),
    (None, None, None, "last_change", "snoozed"),
]


def _state(clock: FakeClock) -> State:
    return State(
        clock=clock,
        seed=7,
        correlation_tag="host",
        correlation_window_s=7200,
        reopen_window_s=1800,
        max_alerts_per_incident=300,
        environments=[(ENV, "Production", "*"), (FILTERED, "High", "impact = high")],
        lowercase_status=False,
        async_delay_s=1.0,
    )


def _full_pass(st: State, env: str, search: tuple[object, ...]) -> list[str]:
    kept = st.search_index
    st.search_index = SearchIndex()
    try:
        return _search(st, env, search)
    finally:
        st.search_index = kept


def _search(st: State, env: str, search: tuple[object, ...]) -> list[str]:
    query, from_s, to_s, sort_by, folder = search
    return st.search(
        env,
        query=query,  # type: ignore[arg-type]
        from_s=from_s,  # type: ignore[arg-type]
        to_s=to_s,  # type: ignore[arg-type]
        sort_by=sort_by,  # type: ignore[arg-type]
        folder=folder,  # type: ignore[arg-type]
    )


def _change(st: State, rnd: random.Random, clock: FakeClock) -> None:
    ids = list(st.incidents)
    pick = rnd.choice(ids) if ids else None
    kind = rnd.randrange(10)
    clock.advance(rnd.choice([0, 1, 7]))
    try:
        if kind <= 1 or pick is None:
            host = f"h{rnd.randrange(8)}"
            status = rnd.choice(["critical", "warning", "ok"])
            st.ingest({"app_key": "a", "status": status, "host": host})
        elif kind == 2:
            st.set_tag(pick, "impact", rnd.choice(["high", "low"]))
        elif kind == 3:
            st.resolve(pick, "done")
        elif kind == 4:
            st.comment(pick, "a note")
        elif kind == 5:
            st.snooze(pick, int(clock.now().timestamp()) + rnd.choice([1, 60]))
        elif kind == 6 and len(ids) >= 2:
            st.merge(pick, [i for i in rnd.sample(ids, 2) if i != pick][:1], "merged")
        elif kind == 7:
            inc = st.incidents[pick]
            if len(inc.alert_ids) >= 2:
                st.split(pick, inc.alert_ids[:1], "split")
        elif kind == 8:
            st.delete_tag(pick, "impact")
        else:  # a fixture (``POST /_emulator/incidents``)
            st.load_incident({"status": "warning", "alerts": [{"tags": {"host": "h3"}}]})
    except (ApiError, ValueError, KeyError):
        pass  # refused (resolved already, no such tag...): nothing changed


@pytest.mark.parametrize("seed", range(12))
def test_kept_results_answer_what_a_full_pass_answers(seed: int) -> None:
    clock = FakeClock()
    st = _state(clock)
    rnd = random.Random(seed)
    for i in range(12):
        st.load_incident({"status": "critical", "alerts": [{"tags": {"host": f"h{i % 5}"}}]})
    for _ in range(60):
        for _ in range(rnd.randrange(1, 4)):
            _change(st, rnd, clock)
        for env in (ENV, FILTERED):
            for search in rnd.sample(SEARCHES, 4):
                assert _search(st, env, search) == _full_pass(st, env, search)


def test_a_page_after_one_change_works_out_only_that_incident() -> None:
    index = SearchIndex()
    keys = {f"{i:024x}": (i,) for i in range(1000)}
    asked: list[str] = []

    def matches(inc_id: str) -> tuple[int, ...] | None:
        asked.append(inc_id)
        return keys.get(inc_id)

    first = index.search("q", matches, lambda: list(keys))
    assert first[0] == f"{999:024x}" and len(first) == 1000 and len(asked) == 1000
    asked.clear()
    assert index.search("q", matches, lambda: list(keys)) is first and asked == []
    moved, gone = f"{5:024x}", f"{7:024x}"
    keys[moved] = (2000,)
    del keys[gone]
    index.touched(moved)
    index.touched(gone)
    again = index.search("q", matches, lambda: list(keys))
    assert sorted(asked) == sorted([moved, gone])
    assert again[0] == moved and gone not in again and len(again) == 999
