"""Backfill throughput: ``bpsync backfill`` over N BigPanda incidents, limited and unlimited.

Usage::

    python bench/backfill.py                          # 10,000 incidents, both runs
    python bench/backfill.py --limited 1000           # fewer incidents for the 5 req/s run
    python bench/backfill.py --quick                  # 30 limited + 100 unlimited (< 30 s)
    python bench/backfill.py --json                   # one JSON object
    python bench/backfill.py --limited 0 --unlimited 1000 --profile OUT
                                                      # + cProfile (bench/_profile.py)

Each run: fresh emulators, N active BigPanda incidents loaded as fixtures (started within
the last day, one critical alert each), then ``python -m sync backfill --since 2d`` with a
fresh embedded SQLite store and the tag mapping ``impact_level`` <-> ``impact``. Every
incident is created in ServiceNow and gets its link tag.

(a) limited: the BigPanda emulator limits each endpoint to BigPanda's documented 5
    requests/s per token (``--rate-limit 5``) and bpsync paces at its default 5 req/s.
    Reported: the rate of the busiest BigPanda endpoint (its requests over the span from
    its first to its last request, from the emulator's request log) as a fraction of the
    5 req/s ceiling, and the 429 answers (``/_emulator/stats`` statuses). Target: >= 95 %
    of the ceiling with 0 answers 429.
(b) unlimited: no limit in the emulator, bpsync's pacer at 10^6 req/s. Reported:
    incidents per second (wall time of the backfill process, start-up included) and CPU
    seconds per incident (the backfill process's user + system time, from ``wait4``).
    Target: >= 300 incidents/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _harness as h

CEILING = 5.0


@dataclass
class Run:
    mode: str  # limited | unlimited
    incidents: int
    created: int
    exit_code: int
    wall_s: float
    cpu_s: float
    incidents_per_s: float
    cpu_ms_per_incident: float
    peak_rss_mb: float
    bp_requests: int
    bp_429: int
    sn_requests: int
    busiest_endpoint: str = ""
    busiest_rate_per_s: float = 0.0
    ceiling_fraction: float | None = None
    target_met: bool = False
    endpoints: dict[str, dict[str, float]] = field(default_factory=dict)
    summary: str = ""


def endpoint_rates(log: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per ``METHOD template``: count and rate over its first..last request span."""
    times: dict[str, list[float]] = defaultdict(list)
    for entry in log:
        times[f"{entry['method']} {entry['template']}"].append(float(entry["t"]))
    out = {}
    for name, ts in times.items():
        span = max(ts) - min(ts)
        out[name] = {
            "count": len(ts),
            "span_s": round(span, 2),
            "rate_per_s": round((len(ts) - 1) / span, 3) if span > 0 and len(ts) > 1 else 0.0,
        }
    return out


async def one_run(mode: str, n: int, seed: int, profile: Path | None = None) -> Run:
    limited = mode == "limited"
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix=f"bpsync-bench-backfill-{mode}-") as tmp_name:
        tmp = Path(tmp_name)
        emus = h.Emulators(tmp, rate_limit=CEILING if limited else None)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
            api = h.Api(http, emus)
            await emus.start(api)
            try:
                now = int(time.time())
                levels = ("low", "medium", "high")
                fixtures = [
                    h.bp_fixture(
                        i,
                        tags={"impact_level": rng.choice(levels)},
                        start=now - rng.randrange(60, 86_400),
                        prefix="bf",
                    )
                    for i in range(n)
                ]
                loaded = time.monotonic()
                await api.bp_fixtures(fixtures)
                h.log(f"  {mode}: {n:,} fixtures loaded in {time.monotonic() - loaded:.1f}s")
                before = await api.snapshot()
                config = h.write_config(tmp / "bpsync.toml", {}, h.MAPPING)
                env = h.daemon_env(
                    emus,
                    tmp / "state",
                    poll_interval=15,
                    config=config,
                    extra={"BPSYNC_BIGPANDA__RATE_LIMIT_PER_S": CEILING if limited else 1_000_000},
                )
                out_path = tmp / "backfill.out"
                started = time.monotonic()
                cmd = [h.PYTHON, "-m", "sync", "backfill", "--since", "2d"]
                if profile is not None and not limited:
                    cmd[1:1] = [str(h.ROOT / "bench" / "_profile.py"), str(profile)]
                proc = h.spawn(cmd, tmp, env, out_path)
                _, status, usage = await asyncio.to_thread(os.wait4, proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(status)
                wall = time.monotonic() - started
                cpu = usage.ru_utime + usage.ru_stime
                peak_mb = usage.ru_maxrss / 1024
                after = await api.snapshot()
                stats_log = (await api.stats("bigpanda", with_log=True)).get("log", [])
                created = await api.sn_count("correlation_idISNOTEMPTY")
                summary = out_path.read_text(errors="replace")
            finally:
                emus.stop()
    bp, sn = after["bigpanda"] - before["bigpanda"], after["servicenow"] - before["servicenow"]
    if proc.returncode != 0:
        h.log(f"  {mode}: backfill exited with {proc.returncode}:\n{summary[-3000:]}")
    run = Run(
        mode=mode,
        incidents=n,
        created=created,
        exit_code=proc.returncode,
        wall_s=round(wall, 2),
        cpu_s=round(cpu, 2),
        incidents_per_s=round(created / wall, 2),
        cpu_ms_per_incident=round(1000 * cpu / max(1, created), 2),
        peak_rss_mb=round(peak_mb, 1),
        bp_requests=bp.total,
        bp_429=int(bp.statuses.get("429", 0)),
        sn_requests=sn.total,
        summary=summary[-2500:],
    )
    rates = endpoint_rates([e for e in stats_log if e.get("template") != "unmatched"])
    run.endpoints = rates
    if rates:
        # the busiest endpoint bounds the throughput: requests over its active span
        name, busiest = max(rates.items(), key=lambda kv: (kv[1]["count"], kv[1]["rate_per_s"]))
        run.busiest_endpoint = name
        run.busiest_rate_per_s = busiest["rate_per_s"]
    if limited:
        run.ceiling_fraction = round(run.busiest_rate_per_s / CEILING, 3)
        run.target_met = (
            run.exit_code == 0
            and run.created == n
            and run.ceiling_fraction >= 0.95
            and run.bp_429 == 0
        )
    else:
        run.target_met = run.exit_code == 0 and run.created == n and run.incidents_per_s >= 300
    return run


def report(runs: list[Run], info: dict[str, Any]) -> None:
    print(f"backfill (bpsync backfill --since 2d), machine: {info['nproc']} x {info['cpu_model']}")
    h.print_table(
        (
            "run",
            "incidents",
            "created",
            "exit",
            "wall s",
            "inc/s",
            "CPU ms/inc",
            "peak RSS MB",
            "BP req",
            "BP 429",
            "SN req",
            "busiest BP endpoint req/s",
            "of 5/s",
            "target",
        ),
        [
            (
                r.mode,
                r.incidents,
                r.created,
                r.exit_code,
                r.wall_s,
                r.incidents_per_s,
                r.cpu_ms_per_incident,
                r.peak_rss_mb,
                r.bp_requests,
                r.bp_429,
                r.sn_requests,
                r.busiest_rate_per_s,
                None if r.ceiling_fraction is None else f"{100 * r.ceiling_fraction:.1f} %",
                ("met" if r.target_met else "MISSED")
                + (" (>=95 %, 0 x 429)" if r.mode == "limited" else " (>=300/s)"),
            )
            for r in runs
        ],
    )
    for r in runs:
        print(f"\n{r.mode}: BigPanda requests per endpoint (count, rate over its span)")
        for name, e in sorted(r.endpoints.items(), key=lambda kv: -kv[1]["count"]):
            print(f"  {name:85} {int(e['count']):>7,}  {e['rate_per_s']:>8.2f}/s")


async def main_async(args: argparse.Namespace) -> list[Run]:
    limited_n = 30 if args.quick else args.limited
    unlimited_n = 100 if args.quick else args.unlimited
    runs = []
    if limited_n:
        h.log(f"(a) limited at {CEILING:g} req/s: {limited_n:,} incidents")
        runs.append(await one_run("limited", limited_n, args.seed))
    if unlimited_n:
        h.log(f"(b) unlimited: {unlimited_n:,} incidents")
        runs.append(await one_run("unlimited", unlimited_n, args.seed, args.profile))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30 limited + 100 unlimited incidents")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of tables"
    )
    parser.add_argument(
        "--limited", type=int, default=10_000, help="incidents of the 5 req/s run (0: skip)"
    )
    parser.add_argument(
        "--unlimited", type=int, default=10_000, help="incidents of the unlimited run (0: skip)"
    )
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="write a cProfile of the unlimited backfill process to this file",
    )
    args = parser.parse_args()
    if args.profile is not None:
        args.profile = args.profile.resolve()  # the backfill runs in a temporary directory
    started = time.perf_counter()
    runs = asyncio.run(main_async(args))
    info = h.machine()
    if args.json:
        payload = {
            "benchmark": "backfill",
            "quick": args.quick,
            "machine": info,
            "runs": [{k: v for k, v in asdict(r).items() if k != "summary"} for r in runs],
            "target_met": all(r.target_met for r in runs),
            "elapsed_s": round(time.perf_counter() - started, 1),
        }
        print(json.dumps(payload))
    else:
        report(runs, info)
        print(f"\n(total {time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
