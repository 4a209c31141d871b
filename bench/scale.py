"""Scale: peak RSS and cycle time of the daemon with 10,000 and 100,000 links in the store.

Usage::

    python bench/scale.py                  # 10k and 100k links; 0, 100, 1,000 changes/min
    python bench/scale.py --quick          # 10k links, 0 and 100 changes/min (< 30 s)
    python bench/scale.py --json           # one JSON object
    python bench/scale.py --pairs [...]    # many pairs, many replicas (bench/scale_pairs.py)

For each store size L: a fresh embedded SQLite store is upgraded and filled directly
(bulk ``INSERT`` as ``bench/store.py`` does) with L linked links and their field states
(``impact_level``/``impact``/``servicenow_link``, what the daemon records after a create).
A pool of P of them (default 1,000) is real on both sides: an active BigPanda incident
loaded as a fixture and a ServiceNow incident created through the Table API with the
same ids; the other links point at incidents that do not change (the daemon only reads
a link when its incidents change). Then the daemon starts (``poll_interval`` 5 s; rate
limits off in the emulator and in bpsync's pacer: this measures the daemon, not the API
ceiling), settles, and for each change rate R (changes per minute, spread evenly, half
BigPanda tag writes, half ServiceNow field writes, on pool incidents) the cycles of a
phase are measured: mean cycle time (``bpsync_cycle_duration_seconds`` sum/count over
the phase), max cycle time (the daemon's ``/metrics`` sampled every 0.25 s: each
increment of the count is one cycle), daemon CPU and RSS.

1 % of 100,000 links per minute is 1,000 changes/min; the same 1,000 changes/min is run
at 10,000 links, so that the cycle time can be compared at the same change rate.
Targets: RSS <= 100 MB at 100,000 links; cycle time grows with the changes, not with the
links (the cycle time at 1,000 changes/min is about the same at 10k and at 100k links).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _harness as h
from bench._fill import create_pool, populate


@dataclass
class Phase:
    links: int
    changes_per_min: int
    changes_made: int
    seconds: float
    cycles: int
    cycle_mean_ms: float | None
    cycle_max_ms: float | None
    cpu_pct: float
    rss_mb: float
    errors: int


@dataclass
class Size:
    links: int
    pool: int
    setup_s: float
    settle_s: float
    peak_rss_mb: float
    phases: list[Phase] = field(default_factory=list)


async def make_changes(
    api: h.Api, rng: random.Random, pool: int, per_min: int, seconds: float
) -> int:
    """``per_min`` changes per minute for ``seconds``: odd pool incidents change on
    BigPanda, even ones on ServiceNow (so that no change meets a change of the other side)."""
    if per_min <= 0:
        await asyncio.sleep(seconds)
        return 0
    gap = 60.0 / per_min
    total = int(seconds / gap)
    started = time.monotonic()
    tasks: set[asyncio.Task[None]] = set()
    sem = asyncio.Semaphore(32)
    values = ("high", "medium", "low")

    async def one(k: int) -> None:
        async with sem:
            value = values[k % 3]
            if k % 2:
                i = rng.randrange(1, pool + 1, 2)
                await api.bp_set_tag(h.bp_id(i), "impact_level", value)
            else:
                i = rng.randrange(2, pool + 1, 2) if pool > 1 else 1
                await api.sn_patch(h.sn_sys_id(i), {"impact": h.IMPACT_MAP[value]})

    for k in range(total):
        await asyncio.sleep(max(0.0, started + k * gap - time.monotonic()))
        task = asyncio.create_task(one(k))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.sleep(max(0.0, started + seconds - time.monotonic()))
    if tasks:
        await asyncio.gather(*tasks)
    return total


async def measure_size(
    links: int, args: argparse.Namespace, rates: list[int], seconds: float
) -> Size:
    rng = random.Random(args.seed)
    pool = min(args.pool, links)
    with tempfile.TemporaryDirectory(prefix="bpsync-bench-scale-") as tmp_name:
        tmp = Path(tmp_name)
        emus = h.Emulators(tmp, rate_limit=None)
        async with aiohttp.ClientSession() as http:
            api = h.Api(http, emus)
            await emus.start(api)
            daemon: h.Daemon | None = None
            try:
                setup_started = time.monotonic()
                state = tmp / "state"
                state.mkdir()
                await populate(
                    f"sqlite+aiosqlite:///{(state / 'bpsync.db').as_posix()}", links, emus.sn_url
                )
                await create_pool(api, emus, pool)
                setup = time.monotonic() - setup_started
                h.log(f"  {links:,} links (pool {pool:,}) ready in {setup:.1f}s")
                config = h.write_config(
                    tmp / "bpsync.toml",
                    {"guard": {"empty_side_check": False, "min_links": 10_000_000}},
                    h.MAPPING,
                )
                env = h.daemon_env(
                    emus,
                    state,
                    poll_interval=args.poll_interval,
                    config=config,
                    extra={
                        "BPSYNC_BIGPANDA__RATE_LIMIT_PER_S": 1_000_000,
                        "BPSYNC_RETRIEVAL_COUNT": 100,
                    },
                )
                daemon = h.Daemon(tmp, env)
                await daemon.start(http, timeout_s=120)
                settle_s = await h.settle(api, daemon, quiet_cycles=2, timeout_s=300)
                h.log(f"  daemon settled in {settle_s:.1f}s, RSS {daemon.mem()['rss_mb']:.1f} MB")
                result = Size(
                    links=links,
                    pool=pool,
                    setup_s=round(setup, 1),
                    settle_s=round(settle_s, 1),
                    peak_rss_mb=0.0,
                )
                sampler = h.CycleSampler(daemon, http)
                sampler.start()
                for rate in rates:
                    c0, cpu0, t0 = await daemon.cycles(http), daemon.cpu_s(), time.monotonic()
                    made = await make_changes(api, rng, pool, rate, seconds)
                    c1, cpu1, t1 = await daemon.cycles(http), daemon.cpu_s(), time.monotonic()
                    n = c1.count - c0.count
                    durations = sampler.between(t0, t1)
                    mem = daemon.mem()
                    phase = Phase(
                        links=links,
                        changes_per_min=rate,
                        changes_made=made,
                        seconds=round(t1 - t0, 1),
                        cycles=int(n),
                        cycle_mean_ms=round(1000 * (c1.sum_s - c0.sum_s) / n, 1) if n else None,
                        cycle_max_ms=round(1000 * max(durations), 1) if durations else None,
                        cpu_pct=round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
                        rss_mb=round(mem["rss_mb"], 1),
                        errors=int(c1.errors - c0.errors),
                    )
                    result.phases.append(phase)
                    h.log(
                        f"  {rate:,} changes/min: {n:.0f} cycles, mean {phase.cycle_mean_ms} ms, "
                        f"max {phase.cycle_max_ms} ms, CPU {phase.cpu_pct} %, RSS {phase.rss_mb} MB"
                    )
                await sampler.stop()
                result.peak_rss_mb = round(daemon.mem()["peak_rss_mb"], 1)
            finally:
                if daemon is not None:
                    daemon.stop()
                emus.stop()
    return result


async def main_async(args: argparse.Namespace) -> list[Size]:
    if args.quick:
        sizes, rates, seconds = [10_000], [0, 100], 6.0
        args.poll_interval, args.pool = 1.0, min(args.pool, 200)
    else:
        sizes, rates, seconds = args.links, args.rates, args.phase_seconds
    out = []
    for links in sizes:
        h.log(
            f"{links:,} links: change rates {rates} per minute, {seconds:g}s each, "
            f"poll {args.poll_interval:g}s"
        )
        out.append(await measure_size(links, args, rates, seconds))
    return out


def verdict(sizes: list[Size]) -> dict[str, Any]:
    """RSS at the largest size; cycle time at the same change rate across sizes."""
    largest = max(sizes, key=lambda s: s.links)
    rss_ok = largest.links < 100_000 or largest.peak_rss_mb <= 100
    by_rate: dict[int, dict[int, float | None]] = {}
    for s in sizes:
        for p in s.phases:
            by_rate.setdefault(p.changes_per_min, {})[s.links] = p.cycle_mean_ms
    growth = {}
    for rate, per_size in by_rate.items():
        if len(per_size) >= 2:
            lo, hi = min(per_size), max(per_size)
            a, b = per_size[lo], per_size[hi]
            growth[rate] = None if not a or b is None else round(b / a, 2)
    flat = all(g is not None and g <= 1.5 for g in growth.values()) if growth else None
    return {
        "rss_target_mb": 100,
        "peak_rss_mb_at_largest": largest.peak_rss_mb,
        "largest_links": largest.links,
        "rss_target_met": rss_ok if largest.links >= 100_000 else None,
        "cycle_ratio_largest_vs_smallest_by_rate": growth,
        "cycle_flat_in_links": flat,
    }


def report(
    sizes: list[Size], v: dict[str, Any], args: argparse.Namespace, info: dict[str, Any]
) -> None:
    print(
        f"daemon at scale (poll {args.poll_interval:g} s, pool {args.pool:,} changing "
        f"incidents), machine: {info['nproc']} x {info['cpu_model']}"
    )
    rows = []
    for s in sizes:
        for p in s.phases:
            rows.append(
                (
                    s.links,
                    p.changes_per_min,
                    p.changes_made,
                    p.cycles,
                    p.cycle_mean_ms,
                    p.cycle_max_ms,
                    p.cpu_pct,
                    p.rss_mb,
                    s.peak_rss_mb,
                    p.errors,
                )
            )
    h.print_table(
        (
            "links",
            "changes/min",
            "changes",
            "cycles",
            "cycle mean ms",
            "cycle max ms",
            "CPU %",
            "RSS MB",
            "peak RSS MB",
            "failed cycles",
        ),
        rows,
    )
    print()
    if v["rss_target_met"] is not None:
        print(
            f"RSS at {v['largest_links']:,} links: peak {v['peak_rss_mb_at_largest']} MB "
            f"(target <= 100 MB): {'met' if v['rss_target_met'] else 'MISSED'}"
        )
    for rate, ratio in v["cycle_ratio_largest_vs_smallest_by_rate"].items():
        print(f"cycle time at {rate:,} changes/min, largest / smallest store: x{ratio}")
    if v["cycle_flat_in_links"] is not None:
        print(
            "cycle time grows with the changes, not with the links: "
            f"{'met' if v['cycle_flat_in_links'] else 'MISSED'} (ratio <= 1.5)"
        )


def main() -> None:
    if "--pairs" in sys.argv[1:]:  # many pairs, many replicas: bench/scale_pairs.py
        from bench import scale_pairs

        scale_pairs.main([a for a in sys.argv[1:] if a != "--pairs"])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="10k links, 0 and 100 changes/min, 6 s phases"
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of tables"
    )
    parser.add_argument(
        "--links", type=int, nargs="+", default=[10_000, 100_000], help="store sizes"
    )
    parser.add_argument(
        "--rates", type=int, nargs="+", default=[0, 100, 1_000], help="changes per minute"
    )
    parser.add_argument(
        "--phase-seconds", type=float, default=60.0, help="length of each change-rate phase"
    )
    parser.add_argument(
        "--pool", type=int, default=1_000, help="links whose incidents are real and change"
    )
    parser.add_argument("--poll-interval", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=8)
    args = parser.parse_args()
    started = time.perf_counter()
    sizes = asyncio.run(main_async(args))
    info = h.machine()
    v = verdict(sizes)
    if args.json:
        print(
            json.dumps(
                {
                    "benchmark": "scale",
                    "quick": args.quick,
                    "machine": info,
                    "poll_interval_s": args.poll_interval,
                    "sizes": [asdict(s) for s in sizes],
                    **v,
                    "elapsed_s": round(time.perf_counter() - started, 1),
                }
            )
        )
    else:
        report(sizes, v, args, info)
        print(f"\n(total {time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
