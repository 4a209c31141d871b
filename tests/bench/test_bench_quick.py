"""The benchmarks' ``--quick --json`` runs work (CI): each script starts the emulators and
the daemon (or ``bpsync backfill``) in subprocesses and prints one JSON object with the
expected keys and sane values.

Times are not asserted (no wall-clock figure, no ratio of one): a benchmark is a script
that prints figures, not a timed test (issue 8). The targets' *shape* is: every count a
target wants at zero is asserted zero (an idle cycle's writes, missed changes, echoes,
duplicates, lost incidents, failed cycles, 429s where the target allows none), and every
request count a target bounds is asserted within its bound."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def run_quick(script: str, *extra: str, timeout_s: float = 90) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BPSYNC_")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--quick", "--json", *extra],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"{script} --json must print one JSON object:\n{proc.stdout[-2000:]}"
    data: dict[str, Any] = json.loads(lines[0])
    assert data["quick"] is True
    assert data["machine"]["nproc"] >= 1
    assert isinstance(data["machine"]["cpu_model"], str)
    assert data["elapsed_s"] > 0
    return data


def test_latency_quick() -> None:
    data = run_quick("latency.py")
    assert data["benchmark"] == "latency"
    (run,) = data["runs"]
    assert run["poll_interval_s"] == 1.0
    for direction in ("bp_to_sn", "sn_to_bp"):
        assert run["changes"][direction] > 0
        assert run["missed"][direction] == 0
        p50, p95, p99 = run["p50_s"][direction], run["p95_s"][direction], run["p99_s"][direction]
        assert 0 < p50 <= p95 <= p99 < 60
        assert len(run["samples"][direction]) == run["changes"][direction]
    assert run["daemon_peak_rss_mb"] > 10
    assert isinstance(data["target_met"], bool)


def test_cost_quick() -> None:
    data = run_quick("cost.py", "--journal", timeout_s=150)
    assert data["benchmark"] == "cost"
    (idle,) = data["idle"]
    assert idle["cycles"] >= 3
    assert idle["active_incidents"] == 10
    # an idle cycle: 1 list request on ServiceNow, 1 per 100 active incidents on
    # BigPanda, 0 writes
    assert 0 < idle["sn_reads"] <= 1
    assert 0 < idle["bp_reads"] <= idle["expected_bp_reads"] == 1
    assert idle["sn_writes"] == 0
    assert idle["bp_writes"] == 0
    assert idle["cpu_ms_per_cycle"] > 0
    assert idle["cycle_ms"] > 0
    kinds = {c["kind"]: c for c in data["per_change"]}
    assert set(kinds) == {"bp_to_sn", "sn_to_bp", "journal_bp_to_sn", "journal_sn_to_bp"}
    for change in kinds.values():
        assert change["changes"] > 0
        assert change["propagated"] == change["changes"]  # 0 missed changes
    # at most 1 write per changed field on the other side, 0 writes back (no echo)
    assert 0 < kinds["bp_to_sn"]["sn_writes"] <= 1
    assert kinds["bp_to_sn"]["bp_writes"] == 0
    assert 0 < kinds["sn_to_bp"]["bp_writes"] <= 1
    assert kinds["sn_to_bp"]["sn_writes"] == 0
    # journals (the defaults: BigPanda comments to work notes): no read beyond the
    # changed pair's own comment read, reported apart
    for name in ("bp_to_sn", "sn_to_bp"):
        assert 0 <= kinds[name]["journal_reads"] <= 2
        assert kinds[name]["bp_reads"] <= 0.05
    # a carried journal entry (--journal: work notes both ways) costs 1 write on the other
    # side, none back, and no read beyond the changed pair's journal reads (and a comment
    # author's cached look-up); each entry lands exactly once (the bench verifies it)
    for change in kinds.values():
        assert change["target_met"], change
    assert 0 < kinds["journal_bp_to_sn"]["sn_writes"] <= 1
    assert kinds["journal_bp_to_sn"]["bp_writes"] == 0
    assert 0 < kinds["journal_sn_to_bp"]["bp_writes"] <= 1
    assert kinds["journal_sn_to_bp"]["sn_writes"] == 0


def _backfill_run(run: dict[str, Any], database: str) -> None:
    assert run["database"] == database
    assert run["exit_code"] == 0
    assert run["created"] == run["incidents"] > 0
    assert run["incidents_per_s"] > 0
    assert run["cpu_ms_per_incident"] > 0
    # the start-up's CPU, at the first create, and what the incidents after it cost
    assert 0 < run["startup_cpu_s"] < run["cpu_s"]
    assert run["cpu_ms_per_incident_after_start"] > 0
    assert run["bp_requests"] >= run["incidents"]
    assert run["bp_429"] == 0  # paced under the limit (limited); no limit (unlimited)


def test_backfill_quick() -> None:
    data = run_quick("backfill.py")
    assert data["benchmark"] == "backfill"
    runs = {r["mode"]: r for r in data["runs"]}
    assert set(runs) == {"limited", "unlimited"}
    for run in runs.values():
        _backfill_run(run, "sqlite")
    assert 0 < runs["limited"]["ceiling_fraction"] <= 1.5
    assert runs["limited"]["busiest_endpoint"]


@pytest.mark.postgres
def test_backfill_quick_on_postgres(postgres_url: str) -> None:
    """The unlimited backfill with its links on Postgres (a fresh schema, dropped after)."""
    data = run_quick("backfill.py", "--limited", "0", "--postgres-url", postgres_url)
    [run] = data["runs"]
    assert run["mode"] == "unlimited"
    _backfill_run(run, "postgres")


def test_instructions_quick() -> None:
    """Its plumbing (CPU seconds in the quick run: no valgrind in CI's time)."""
    data = run_quick("instructions.py")
    assert data["benchmark"] == "instructions"
    assert data["counter"] == "cpu"
    assert data["changes"] == 20
    assert data["carried"] == 20
    assert data["missed"] == 0
    assert len(data["idle_runs"]) == len(data["change_runs"]) == 2
    assert all(v > 0 for v in data["idle_runs"] + data["change_runs"])
    assert data["per_change"] is not None


def test_scale_quick() -> None:
    data = run_quick("scale.py")
    assert data["benchmark"] == "scale"
    (size,) = data["sizes"]
    assert size["links"] == 10_000
    assert size["peak_rss_mb"] > 10
    rates = [p["changes_per_min"] for p in size["phases"]]
    assert rates == [0, 100]
    for phase in size["phases"]:
        assert phase["cycles"] >= 2
        assert phase["errors"] == 0
        assert phase["cycle_mean_ms"] > 0
    assert size["phases"][1]["changes_made"] > 0


def test_storm_quick() -> None:
    data = run_quick("storm.py", "--shapes", "sliding_window,fixed_window,saturated", timeout_s=240)
    assert data["benchmark"] == "storm"
    assert data["incidents"] == 50
    runs = {r["name"]: r for r in data["runs"]}
    assert set(runs) == {"sliding_window", "fixed_window", "saturated"}
    for run in runs.values():
        # every incident has exactly one ticket and its link tag: 0 lost, 0 duplicates
        assert run["linked"] == run["incidents"] == 50
        assert run["seconds"] is not None  # linked within the bounded wait
        assert run["lost"] == 0
        assert run["mislinked"] == 0
        assert run["duplicates"] == 0
        assert run["failed_cycles"] == 0
        assert run["cycles"] >= 1
        assert run["settled"] is True
        assert run["daemon_exit_code"] == 0
        # BigPanda: paced under every limiter shape, 429s <= 1 %
        assert run["bigpanda"]["share_429"] <= 0.01
        assert run["targets"]["failed_cycles"] and run["targets"]["duplicates"]
        assert run["targets"]["lost"]
        # one create per incident, one link-tag write per incident
        assert run["link_writes"]["count"] == 50
        assert run["servicenow"]["endpoints_per_incident"]["POST /api/now/table/{table}"] >= 1
    for run in runs.values():
        # the request budgets in a storm, and 429s <= 1 % on both sides (the
        # saturated pool included: ServiceNow starts at two requests at once and grows)
        # (target 1.2; at 50 incidents one more poll page is 0.02 per incident)
        assert run["bigpanda"]["per_incident"] <= 1.25
        assert run["servicenow"]["per_incident"] <= 1.3
        assert run["servicenow"]["share_429"] <= 0.01
        assert run["targets"]["share_429"]
    saturated = runs["saturated"]
    assert saturated["sn_pool"] == {"semaphores": 2, "semaphore_queue": 2, "processing_s": 0.05}


def test_scale_pairs_quick() -> None:
    """Many pairs in one process (4 x 200 links) against the same daemon with one pair."""
    data = run_quick("scale.py", "--pairs", "--phase", "one-process", timeout_s=240)
    assert data["benchmark"] == "scale_pairs"
    single, many = data["one_process"]
    assert (single["pairs"], many["pairs"]) == (1, 4)
    assert single["pair_names"] == ["default"]
    assert many["pair_names"] == ["p00", "p01", "p02", "p03"]
    for run in (single, many):
        assert run["links_per_pair"] == 200
        assert run["peak_rss_mb"] > 10
        assert run["failed_cycles"] == 0
        assert run["daemon_exit_code"] == 0
        idle = run["idle"]
        assert len(idle["sn_reads_per_cycle"]) == run["pairs"]
        assert all(n >= 2 for n in idle["cycles_per_pair"])  # 3 intervals of 1 s
        # an idle cycle of every pair: 1 list request per side, 0 writes
        assert all(0 < r <= 1.25 for r in idle["sn_reads_per_cycle"] + idle["bp_reads_per_cycle"])
        assert not any(idle["sn_writes_per_cycle"] + idle["bp_writes_per_cycle"])
        # an idle daemon is not busy; its CPU over the 3 s window may be below one clock
        # tick (10 ms) since idle cycles cost ~0.05 CPU s a minute: 0 is a reading
        assert 0 <= idle["cpu_s_per_min"] < 30
        changes = run["changes"]
        assert changes["made"] > 0
        assert changes["carried"] == changes["made"]  # every change seen on the other side
        assert changes["missed"] == 0
        assert changes["cpu_s"] > 0
        # each carried change is one write on the other side: no echo written back
        per_change = changes["requests_per_change"]
        writes = per_change.get("servicenow writes", 0) + per_change.get("bigpanda writes", 0)
        assert writes == pytest.approx(1.0, abs=0.011)  # (each figure rounded to 0.01)
        # the reads beyond the idle polls' (too few cycles here for a bound on them)
        beyond = changes["reads_beyond_idle_per_change"]
        assert set(beyond) == {"servicenow reads", "bigpanda reads"}
        assert set(idle["reads_per_s"]) == set(beyond)
        assert all(rate > 0 for rate in idle["reads_per_s"].values())
    assert many["changes"]["made"] == 15  # 100/min for 9 s over 4 pairs
    verdict = data["verdict"]
    assert verdict["idle_requests_same_as_single"] == {"servicenow": True, "bigpanda": True}
    assert verdict["idle_writes_zero"] is True
    assert verdict["missed_changes"] == 0
    assert data["replicas"] is None


@pytest.mark.postgres
def test_scale_pairs_replicas_quick(postgres_url: str) -> None:
    """3 replicas on Postgres share 6 pairs, one is killed: every pair led exactly once
    before and after, 0 lost, 0 duplicates, the schemas dropped."""
    data = run_quick(
        "scale.py", "--pairs", "--phase", "replicas", "--postgres-url", postgres_url,
        timeout_s=240,
    )  # fmt: skip
    assert data["one_process"] == []
    rep = data["replicas"]
    assert (rep["replicas"], rep["pairs"]) == (3, 6)
    assert rep["each_pair_led_once"] is True
    assert rep["led_per_replica"] == [2, 2, 2]
    assert rep["victim_led"] == 2
    assert rep["each_pair_led_once_after_kill"] is True
    assert rep["led_per_survivor"] == [3, 3]
    assert rep["takeover_s"] is not None  # within the bench's bounded wait
    assert rep["seeded"] == 6 * 3 * 2
    assert rep["lost_before_kill"] == 0
    assert rep["lost"] == 0
    assert rep["duplicates"] == 0
    assert rep["failed_cycles"] == [0, 0]
    assert rep["survivor_exit_codes"] == [0, 0]
    assert rep["schemas_dropped"] == 6


@pytest.mark.postgres
def test_store_quick(postgres_url: str) -> None:
    """The link store bench on SQLite and Postgres: a created incident's store calls
    (3 transactions, counted on the connection), lookups by index, and a backlog of
    open writes read whole by the cycle's payload-free read (every item, none twice)."""
    data = run_quick("store.py", "--postgres-url", postgres_url, timeout_s=240)
    assert data["benchmark"] == "store"
    assert [r["backend"] for r in data["results"]] == ["sqlite", "postgres"]
    statements = {"sqlite": 11, "postgres": 9}  # SQLite: an executemany's rows one by one
    for result in data["results"]:
        create = result["create"]
        assert create["incidents"] == 500 and create["counted"] == 100
        assert create["transactions_per_incident"] == 3
        assert create["statements_per_incident"] == statements[result["backend"]]
        assert create["cpu_ms_per_incident"] > 0 and create["per_s"] > 0
        [checkpoint] = result["checkpoints"]
        assert checkpoint["links"] == 10_000
        assert checkpoint["index_used"] is True
        backlog = result["backlog"]
        assert backlog["items"] == backlog["heads_read"] == 2_000
        assert backlog["heads_cpu_ms"] > 0 and backlog["whole_cpu_ms"] > 0
