"""The benchmarks' ``--quick --json`` runs work (CI): each script starts the emulators and
the daemon (or ``bpsync backfill``) in subprocesses and prints one JSON object with the
expected keys and sane values. The figures are not asserted against the targets: a
benchmark is a script that prints figures, not a timed test (issue 8)."""

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


def run_quick(script: str, timeout_s: float = 90) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BPSYNC_")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--quick", "--json"],
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
    data = run_quick("cost.py")
    assert data["benchmark"] == "cost"
    (idle,) = data["idle"]
    assert idle["cycles"] >= 3
    assert idle["active_incidents"] == 10
    for key in ("sn_reads", "bp_reads"):
        assert 0 < idle[key] < 50
    for key in ("sn_writes", "bp_writes", "cpu_ms_per_cycle", "cycle_ms"):
        assert idle[key] >= 0
    kinds = {c["kind"]: c for c in data["per_change"]}
    assert set(kinds) == {"bp_to_sn", "sn_to_bp"}
    for change in kinds.values():
        assert change["changes"] > 0
        assert change["propagated"] == change["changes"]
    assert kinds["bp_to_sn"]["sn_writes"] > 0
    assert kinds["sn_to_bp"]["bp_writes"] > 0


def test_backfill_quick() -> None:
    data = run_quick("backfill.py")
    assert data["benchmark"] == "backfill"
    runs = {r["mode"]: r for r in data["runs"]}
    assert set(runs) == {"limited", "unlimited"}
    for run in runs.values():
        assert run["exit_code"] == 0
        assert run["created"] == run["incidents"] > 0
        assert run["incidents_per_s"] > 0
        assert run["cpu_ms_per_incident"] > 0
        assert run["bp_requests"] >= run["incidents"]
        assert run["bp_429"] >= 0
    assert 0 < runs["limited"]["ceiling_fraction"] <= 1.5
    assert runs["limited"]["busiest_endpoint"]


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
