"""Backfill throughput: ``bpsync backfill`` over N BigPanda incidents, limited and unlimited.

Usage::

    python bench/backfill.py                          # 10,000 incidents, both runs
    python bench/backfill.py --limited 1000           # fewer incidents for the 5 req/s run
    python bench/backfill.py --quick                  # 30 limited + 100 unlimited (< 30 s)
    python bench/backfill.py --json                   # one JSON object
    python bench/backfill.py --postgres-url postgresql+asyncpg://postgres@127.0.0.1:5432/test
                                                      # the store on Postgres (a fresh schema)
    python bench/backfill.py --limited 0 --unlimited 1000 --profile OUT
                                                      # + cProfile (bench/_profile.py)

Each run: fresh emulators, N active BigPanda incidents loaded as fixtures (started within
the last day, one critical alert each), then ``python -m sync backfill --since 2d`` with a
fresh embedded SQLite store (with ``--postgres-url``: a fresh Postgres schema, migrated
first as ``bpsync db upgrade`` would, dropped after) and the tag mapping ``impact_level``
<-> ``impact``. Every incident is created in ServiceNow and gets its link tag.

(a) limited: the BigPanda emulator limits each endpoint to BigPanda's documented 5
    requests/s per token (``--rate-limit 5``) and bpsync paces at its default 5 req/s.
    Reported: the rate of the busiest BigPanda endpoint (its requests over the span from
    its first to its last request, from the emulator's request log) as a fraction of the
    5 req/s ceiling, and the 429 answers (``/_emulator/stats`` statuses). Target: >= 95 %
    of the ceiling with 0 answers 429.
(b) unlimited: no limit in the emulator, bpsync's pacer at 10^6 req/s. Reported:
    incidents per second (wall time of the backfill process, start-up included) and CPU
    seconds per incident (the backfill process's user + system time, from ``wait4``).
    Target: >= 300 incidents/s. Also the start-up's CPU (the process's CPU, sampled from
    ``/proc`` every 0.1 s, at the emulator's first ServiceNow create: imports, the schema
    check, tag definitions, the ServiceNow dictionary, the first search page) and the CPU
    per incident after it (the rest over the incidents created after the first): the
    part of the figure that grows with the incidents (issue 16's 2 ms per created
    incident).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _harness as h
from sync.store import upgrade_database

CEILING = 5.0


@dataclass
class Run:
    mode: str  # limited | unlimited
    database: str  # sqlite | postgres
    incidents: int
    created: int
    exit_code: int
    wall_s: float
    cpu_s: float
    incidents_per_s: float
    cpu_ms_per_incident: float
    peak_rss_mb: float
    startup_cpu_s: float | None  # the process's CPU at the first ServiceNow create
    cpu_ms_per_incident_after_start: float | None
    bp_requests: int
    bp_429: int
    sn_requests: int
    busiest_endpoint: str = ""
    busiest_rate_per_s: float = 0.0
    ceiling_fraction: float | None = None
    target_met: bool = False
    endpoints: dict[str, dict[str, float]] = field(default_factory=dict)
    summary: str = ""


async def sample_cpu(pid: int, samples: list[tuple[float, float]], every_s: float = 0.1) -> None:
    """(monotonic time, CPU seconds) of process ``pid`` every ``every_s`` until it is gone
    (cancelled when it has been waited for)."""
    while True:
        try:
            samples.append((time.monotonic(), h.proc_cpu_s(pid)))
        except (OSError, IndexError, ValueError):  # reaped, or its stat half gone
            return
        await asyncio.sleep(every_s)


def cpu_at(samples: list[tuple[float, float]], t: float) -> float | None:
    """The sampled CPU at monotonic time ``t``: interpolated between the samples around
    it (None when ``t`` is outside them)."""
    for (t0, c0), (t1, c1) in itertools.pairwise(samples):
        if t0 <= t <= t1:
            return c0 if t1 == t0 else c0 + (c1 - c0) * (t - t0) / (t1 - t0)
    return None


def first_create_at(log: list[dict[str, Any]]) -> float | None:
    """When the ServiceNow emulator answered its first incident create (its request log
    times are ``time.monotonic()``, the same clock as this process's on Linux)."""
    times = [
        float(e["t"])
        for e in log
        if e.get("method") == "POST" and e.get("status") == 201 and "incident" in e["path"]
    ]
    return min(times) if times else None


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


@contextlib.asynccontextmanager
async def database_env(base_url: str | None) -> AsyncIterator[dict[str, str]]:
    """The environment of a backfill on a fresh, migrated Postgres schema (dropped after);
    nothing (the embedded SQLite file) without ``base_url``."""
    if not base_url:
        yield {}
        return
    async with h.postgres_schema(base_url, "bpsync_bench_backfill") as url:
        await upgrade_database(url)
        yield {"BPSYNC_DATABASE_URL": url}


async def one_run(
    mode: str, n: int, seed: int, profile: Path | None = None, postgres_url: str | None = None
) -> Run:
    limited = mode == "limited"
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix=f"bpsync-bench-backfill-{mode}-") as tmp_name:
        tmp = Path(tmp_name)
        emus = h.Emulators(tmp, rate_limit=CEILING if limited else None)
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http,
            contextlib.AsyncExitStack() as stack,
        ):
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
                database = await stack.enter_async_context(database_env(postgres_url))
                env = h.daemon_env(
                    emus,
                    tmp / "state",
                    poll_interval=15,
                    config=config,
                    extra={
                        "BPSYNC_BIGPANDA__RATE_LIMIT_PER_S": CEILING if limited else 1_000_000,
                        **database,
                    },
                )
                out_path = tmp / "backfill.out"
                started = time.monotonic()
                cmd = [h.PYTHON, "-m", "sync", "backfill", "--since", "2d"]
                if profile is not None and not limited:
                    cmd[1:1] = [str(h.ROOT / "bench" / "_profile.py"), str(profile)]
                proc = h.spawn(cmd, tmp, env, out_path)
                samples: list[tuple[float, float]] = []
                sampler = asyncio.ensure_future(sample_cpu(proc.pid, samples))
                try:
                    _, status, usage = await asyncio.to_thread(os.wait4, proc.pid, 0)
                finally:
                    sampler.cancel()
                proc.returncode = os.waitstatus_to_exitcode(status)
                wall = time.monotonic() - started
                cpu = usage.ru_utime + usage.ru_stime
                peak_mb = usage.ru_maxrss / 1024
                after = await api.snapshot()
                stats_log = (await api.stats("bigpanda", with_log=True)).get("log", [])
                sn_log = (await api.stats("servicenow", with_log=True)).get("log", [])
                created = await api.sn_count("correlation_idISNOTEMPTY")
                summary = out_path.read_text(errors="replace")
            finally:
                emus.stop()
    bp, sn = after["bigpanda"] - before["bigpanda"], after["servicenow"] - before["servicenow"]
    if proc.returncode != 0:
        h.log(f"  {mode}: backfill exited with {proc.returncode}:\n{summary[-3000:]}")
    first = first_create_at(sn_log)
    startup = None if first is None else cpu_at(samples, first)
    run = Run(
        mode=mode,
        database="postgres" if postgres_url else "sqlite",
        incidents=n,
        created=created,
        exit_code=proc.returncode,
        wall_s=round(wall, 2),
        cpu_s=round(cpu, 2),
        incidents_per_s=round(created / wall, 2),
        cpu_ms_per_incident=round(1000 * cpu / max(1, created), 2),
        peak_rss_mb=round(peak_mb, 1),
        startup_cpu_s=None if startup is None else round(startup, 2),
        cpu_ms_per_incident_after_start=(
            None
            if startup is None or created < 2
            else round(1000 * (cpu - startup) / (created - 1), 2)
        ),
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
            "store",
            "incidents",
            "created",
            "exit",
            "wall s",
            "inc/s",
            "CPU ms/inc",
            "start-up CPU s",
            "CPU ms/inc after",
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
                r.database,
                r.incidents,
                r.created,
                r.exit_code,
                r.wall_s,
                r.incidents_per_s,
                r.cpu_ms_per_incident,
                r.startup_cpu_s,
                r.cpu_ms_per_incident_after_start,
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
    limited_n = min(30, args.limited) if args.quick else args.limited
    unlimited_n = min(100, args.unlimited) if args.quick else args.unlimited
    runs = []
    if limited_n:
        h.log(f"(a) limited at {CEILING:g} req/s: {limited_n:,} incidents")
        runs.append(await one_run("limited", limited_n, args.seed, None, args.postgres_url))
    if unlimited_n:
        h.log(f"(b) unlimited: {unlimited_n:,} incidents")
        runs.append(
            await one_run("unlimited", unlimited_n, args.seed, args.profile, args.postgres_url)
        )
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="30 limited + 100 unlimited incidents (fewer when --limited / --unlimited say so)",
    )
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
        "--postgres-url",
        default=None,
        help="keep the links in a fresh schema of this Postgres (dropped after) instead of "
        "the embedded SQLite file",
    )
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
