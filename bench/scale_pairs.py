"""Many pairs, many replicas (issue 16): ``bench/scale.py --pairs``.

Usage::

    python bench/scale.py --pairs               # 50 pairs x 2,000 links; 3 replicas x 12 pairs
    python bench/scale.py --pairs --quick       # 4 pairs x 200 links; 3 replicas x 6 pairs
    python bench/scale.py --pairs --json        # one JSON object
    python bench/scale.py --pairs --phase one-process   # or: replicas (Postgres)
    python bench/scale.py --pairs --phase one-process --count 1 --changes-per-min 600 \
        --profile OUT                           # cProfile of the change phase (bench/_profile.py)
    python bench/scale.py --pairs --phase one-process --change-seconds 0 \
        --profile OUT --profile-phase idle      # cProfile of 50 pairs' idle cycles

**One process** (this module). The emulators are one ``bench/_emu_host.py`` process
serving one ServiceNow instance and one BigPanda organisation per pair, each on its own
ports and with its own request counters. Each pair's store (embedded SQLite,
``<state_dir>/pairs/pNN/bpsync.db``) is a copy of one store filled by bulk ``INSERT``
(as ``bench/scale.py``) with L linked links; a pool of them (default 10 per pair) is
real on both sides. The daemon (``python -m sync run``, poll 5 s, rate limits off in the
emulator and in bpsync's pacer, ``cursor_overlap`` 5 s) runs the pairs; the same run is
made first with one pair (a configuration without ``[[pairs]]``: the single-pair
figures, measured the same way on the same machine), then with P pairs. Per run:

- **settle**: rounds in which every pair ran a cycle, until two make no write;
- **idle**: after twice ``cursor_overlap`` (the polls' window leaves the last writes),
  every emulator's ``/_emulator/stats`` and every pair's cycle count
  (``bpsync_cycle_duration_seconds_count{pair}``) are read, K poll intervals pass
  (nothing scrapes ``/metrics`` meanwhile: it costs the daemon CPU), and they are read
  again: per pair, requests per cycle per side (reads and writes); the daemon's CPU
  (``/proc/<pid>/stat`` utime + stime) over that window, as CPU seconds per minute;
- **changes**: R changes per minute for S seconds, spread evenly in time and
  round-robin over the pairs, each on a different pool incident (odd ones: a BigPanda
  tag write, even ones: a ServiceNow field write; so the single pair's run stops after
  its pool's 20 changes), then every change is looked for on
  the other side until all arrived (or 6 poll intervals + 30 s have passed: the rest
  are **missed**). **CPU per carried change** = (daemon CPU from the first change to
  the moment every change was seen on the other side, minus the idle CPU rate times
  that window) / changes carried;
- **peak RSS**: the daemon's ``VmHWM`` at the end (the whole run, start-up included).

**Replicas** (``bench/scale_replicas.py``): 3 ``bpsync run`` replicas on Postgres with
12 pairs; see there.

Targets: per-pair idle requests per cycle the same as the single pair's (within one
request over the K cycles: a window edge), peak RSS <= 250 MB at 50 x 2,000, 0 missed
changes; replicas: every pair led exactly once, takeover within 2 poll intervals, 0
duplicates.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _harness as h
from bench import _pairs as p
from bench import scale_replicas
from bench._fill import create_pool, populate

TEMPLATE_SN_URL = "http://template.invalid"
CHANGE_VALUES = ("high", "medium")  # the pool starts at "low": a change is always seen


@dataclass
class Idle:
    cycles_per_pair: list[int]
    seconds: float
    cpu_s_per_min: float
    sn_reads_per_cycle: list[float]
    """per pair, in pair order"""
    bp_reads_per_cycle: list[float]
    sn_writes_per_cycle: list[float]
    bp_writes_per_cycle: list[float]
    #: every pair's reads per second of the idle window, by "<side> reads" (what the
    #: change window's reads are measured beyond)
    reads_per_s: dict[str, float] = field(default_factory=dict)


@dataclass
class Changes:
    per_min: int
    made: int
    carried: int
    missed: int
    seconds_to_all_carried: float | None
    cpu_s: float
    cpu_ms_per_change: float | None
    #: the daemon's requests over the change window, per carried change (the benchmark's
    #: own changes and look-ups not counted): "servicenow writes", "bigpanda reads"...
    requests_per_change: dict[str, float] = field(default_factory=dict)
    #: the reads of the window beyond the idle polls' (``Idle.reads_per_s`` over the
    #: window), per carried change: what a change costs in reads, which the whole
    #: window's figure hides under every pair's polls when there are many pairs
    reads_beyond_idle_per_change: dict[str, float] = field(default_factory=dict)


@dataclass
class Run:
    pairs: int
    links_per_pair: int
    pool_per_pair: int
    poll_interval_s: float
    setup_s: float = 0.0
    settle_s: float = 0.0
    peak_rss_mb: float = 0.0
    failed_cycles: int = 0
    daemon_exit_code: int | None = None
    idle: Idle | None = None
    changes: Changes | None = None
    pair_names: list[str] = field(default_factory=list)


def fill_stores(template: Path, state: Path, names: list[str], sets: list[h.Emulators]) -> None:
    """Each pair's store: a copy of ``template`` whose link tags name the pair's instance."""
    for name, emus in zip(names, sets, strict=True):
        path = state / "bpsync.db" if name == "default" else state / "pairs" / name / "bpsync.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, path)
        with sqlite3.connect(path) as conn:
            conn.execute(
                "UPDATE field_state SET value = replace(value, ?, ?) WHERE name = ?",
                (TEMPLATE_SN_URL, emus.sn_url, "servicenow_link"),
            )


async def measure_idle(
    apis: list[h.Api], daemon: h.Daemon, names: list[str], args: argparse.Namespace
) -> Idle:
    await asyncio.sleep(2 * args.cursor_overlap + 2)
    http = apis[0].http
    await p.wait_every_pair(daemon, http, names, 1, 60)  # start on a cycle boundary
    if daemon.profile is not None and args.profile_phase == "idle":
        os.kill(daemon.pid, signal.SIGUSR1)
    c0, s0, cpu0, t0 = (
        await p.pair_cycles(daemon, http),
        await p.snapshots(apis),
        daemon.cpu_s(),
        time.monotonic(),
    )
    # no /metrics scrape inside the window: rendering every pair's series costs the
    # daemon CPU that an idle daemon does not spend
    await asyncio.sleep(args.idle_cycles * args.poll_interval)
    c1, s1, cpu1, t1 = (
        await p.pair_cycles(daemon, http),
        await p.snapshots(apis),
        daemon.cpu_s(),
        time.monotonic(),
    )
    idle = Idle(
        cycles_per_pair=[],
        seconds=round(t1 - t0, 1),
        cpu_s_per_min=round(60 * (cpu1 - cpu0) / (t1 - t0), 3),
        sn_reads_per_cycle=[],
        bp_reads_per_cycle=[],
        sn_writes_per_cycle=[],
        bp_writes_per_cycle=[],
    )
    reads: Counter[str] = Counter()
    for name, before, after in zip(names, s0, s1, strict=True):
        n = c1[name] - c0.get(name, 0)
        if n < args.idle_cycles - 1:
            raise RuntimeError(f"pair {name} ran {n:g} cycles in {args.idle_cycles} intervals")
        sn, bp = after["servicenow"] - before["servicenow"], after["bigpanda"] - before["bigpanda"]
        idle.cycles_per_pair.append(int(n))
        idle.sn_reads_per_cycle.append(round(sn.reads / n, 3))
        idle.bp_reads_per_cycle.append(round(bp.reads / n, 3))
        idle.sn_writes_per_cycle.append(round(sn.writes / n, 3))
        idle.bp_writes_per_cycle.append(round(bp.writes / n, 3))
        reads["servicenow reads"] += sn.reads
        reads["bigpanda reads"] += bp.reads
    idle.reads_per_s = {k: round(v / (t1 - t0), 4) for k, v in sorted(reads.items())}
    return idle


def plan_changes(pairs: int, total: int) -> list[tuple[int, int, str]]:
    """Change k: (pair, pool incident, value); round-robin over the pairs, each on a
    different incident (1, 2, 3... of its pair)."""
    return [(k % pairs, k // pairs + 1, CHANGE_VALUES[(k // pairs) % 2]) for k in range(total)]


async def make_change(api: h.Api, incident: int, value: str) -> None:
    if incident % 2:
        await api.bp_set_tag(h.bp_id(incident), "impact_level", value)
    else:
        await api.sn_patch(h.sn_sys_id(incident), {"impact": h.IMPACT_MAP[value]})


async def arrived(api: h.Api, changes: list[tuple[int, str]]) -> set[int]:
    """The pool incidents of ``changes`` whose value is on the other side."""
    out: set[int] = set()
    bp_changed = [(i, v) for i, v in changes if i % 2]
    sn_changed = [(i, v) for i, v in changes if not i % 2]
    if bp_changed:
        impact: dict[str, Any] = {}
        for start in range(0, len(bp_changed), 100):  # a URL stays under 8 KB
            ids = ",".join(h.sn_sys_id(i) for i, _ in bp_changed[start : start + 100])
            rows = await api.sn_query(f"sys_idIN{ids}", "sys_id,impact")
            impact |= {row["sys_id"]: row.get("impact") for row in rows}
        out |= {i for i, v in bp_changed if impact.get(h.sn_sys_id(i)) == h.IMPACT_MAP[v]}
    if sn_changed:
        tags = {str(inc.get("id")): h.tag_values(inc) for inc in await api.bp_dump()}
        out |= {i for i, v in sn_changed if tags.get(h.bp_id(i), {}).get("impact_level") == v}
    return out


async def daemon_requests(apis: list[h.Api]) -> Counter[str]:
    """Every pair's requests so far, by "<side> reads|writes", less the benchmark's own."""
    out: Counter[str] = Counter()
    for api, snap in zip(apis, await p.snapshots(apis), strict=True):
        for side, stats in snap.items():
            theirs = stats - api.own[side]
            out[f"{side} reads"] += theirs.reads
            out[f"{side} writes"] += theirs.writes
    return out


async def run_changes(
    apis: list[h.Api], daemon: h.Daemon, idle: Idle, args: argparse.Namespace
) -> Changes:
    # one change per pool incident at most: the single pair's run stops after its pool
    total = min(int(args.change_seconds * args.changes_per_min / 60), len(apis) * args.pool)
    plan = plan_changes(len(apis), total)
    gap = 60.0 / args.changes_per_min
    if daemon.profile is not None and args.profile_phase == "changes":
        os.kill(daemon.pid, signal.SIGUSR1)
    before, r0 = await daemon_requests(apis), time.monotonic()
    cpu0, t0 = daemon.cpu_s(), time.monotonic()
    tasks = []
    for k, (pair, incident, value) in enumerate(plan):
        await asyncio.sleep(max(0.0, t0 + k * gap - time.monotonic()))
        tasks.append(asyncio.create_task(make_change(apis[pair], incident, value)))
    await asyncio.gather(*tasks)
    wanted: dict[int, list[tuple[int, str]]] = {}
    for pair, incident, value in plan:
        wanted.setdefault(pair, []).append((incident, value))
    deadline = time.monotonic() + 6 * args.poll_interval + 30
    seen: dict[int, set[int]] = {pair: set() for pair in wanted}
    done_at: float | None = None
    while True:
        found = await asyncio.gather(*(arrived(apis[pair], c) for pair, c in wanted.items()))
        for pair, got in zip(wanted, found, strict=True):
            seen[pair] |= got
        if all(len(seen[pair]) == len(c) for pair, c in wanted.items()):
            done_at = time.monotonic()
            break
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    t1 = done_at if done_at is not None else time.monotonic()
    cpu1 = daemon.cpu_s()
    requests, r1 = await daemon_requests(apis) - before, time.monotonic()
    carried = sum(len(s) for s in seen.values())
    cpu = cpu1 - cpu0 - idle.cpu_s_per_min / 60 * (t1 - t0)
    beyond = {k: requests[k] - rate * (r1 - r0) for k, rate in idle.reads_per_s.items()}
    return Changes(
        per_min=args.changes_per_min,
        made=total,
        carried=carried,
        missed=total - carried,
        seconds_to_all_carried=round(t1 - t0, 1) if done_at is not None else None,
        cpu_s=round(cpu1 - cpu0, 3),
        cpu_ms_per_change=round(1000 * cpu / carried, 2) if carried else None,
        requests_per_change={k: round(n / carried, 2) for k, n in sorted(requests.items())}
        if carried
        else {},
        # (+ 0.0: a difference rounded to zero prints as 0, not -0)
        reads_beyond_idle_per_change={k: round(n / carried, 2) + 0.0 for k, n in beyond.items()}
        if carried
        else {},
    )


async def measure(pairs: int, args: argparse.Namespace, template: Path, tmp: Path) -> Run:
    """One daemon with ``pairs`` pairs (1: a configuration without ``[[pairs]]``)."""
    many = pairs > 1
    names = [p.pair_name(n) for n in range(pairs)] if many else ["default"]
    run = Run(pairs, args.links, args.pool, args.poll_interval, pair_names=names)
    work = tmp / f"run-{pairs}"
    state = work / "state"
    state.mkdir(parents=True)
    host = p.EmuHost(work, pairs)
    daemon: h.Daemon | None = None
    async with aiohttp.ClientSession() as http:
        try:
            setup_started = time.monotonic()
            apis = await host.start(http)
            fill_stores(template, state, names, host.sets)
            for api, emus in zip(apis, host.sets, strict=True):
                await create_pool(api, emus, args.pool)
            run.setup_s = round(time.monotonic() - setup_started, 1)
            top = {
                "poll_interval": args.poll_interval,
                "retrieval_count": 100,
                "cursor_overlap": args.cursor_overlap,
            }
            config = p.write_config(work, top, host.sets, pairs=many)
            profile = args.profile if pairs == args.count else None
            daemon = h.Daemon(work, p.process_env(config, state, h.free_port()), profile=profile)
            await daemon.start(http, timeout_s=120 + pairs)
            h.log(f"  {pairs} pair(s) x {args.links:,} links up in {run.setup_s}s; settling")
            settle_s = await p.settle_pairs(apis, daemon, names, timeout_s=300)
            run.settle_s = round(settle_s, 1)
            run.idle = await measure_idle(apis, daemon, names, args)
            h.log(
                f"  idle: {run.idle.cpu_s_per_min} CPU s/min; SN reads/cycle "
                f"{min(run.idle.sn_reads_per_cycle)}..{max(run.idle.sn_reads_per_cycle)}, "
                f"BP {min(run.idle.bp_reads_per_cycle)}..{max(run.idle.bp_reads_per_cycle)}"
            )
            run.changes = await run_changes(apis, daemon, run.idle, args)
            h.log(
                f"  changes: {run.changes.carried}/{run.changes.made} carried, "
                f"{run.changes.cpu_ms_per_change} CPU ms each; daemon requests per change "
                f"{run.changes.requests_per_change}, reads beyond the idle polls' "
                f"{run.changes.reads_beyond_idle_per_change}"
            )
            run.peak_rss_mb = round(daemon.mem()["peak_rss_mb"], 1)
            run.failed_cycles = int(await p.failed_cycles(daemon, http))
        finally:
            if daemon is not None:
                run.daemon_exit_code = daemon.stop()
            host.stop()
    return run


async def one_process(args: argparse.Namespace) -> list[Run]:
    with tempfile.TemporaryDirectory(prefix="bpsync-bench-pairs-") as tmp_name:
        tmp = Path(tmp_name)
        template = tmp / "template.db"
        await populate(f"sqlite+aiosqlite:///{template.as_posix()}", args.links, TEMPLATE_SN_URL)
        runs = []
        for pairs in dict.fromkeys((1, args.count)):  # --count 1: the one run
            h.log(f"one process, {pairs} pair(s):")
            runs.append(await measure(pairs, args, template, tmp))
        return runs


def spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "max": max(values)}


def verdict(runs: list[Run], args: argparse.Namespace) -> dict[str, Any]:
    single, many = runs[0], runs[-1]
    assert single.idle is not None
    assert many.idle is not None
    edge = 1 / args.idle_cycles  # one request more or less at a window's edge
    same = {
        side: max(abs(v - getattr(single.idle, key)[0]) for v in getattr(many.idle, key)) <= edge
        for side, key in (
            ("servicenow", "sn_reads_per_cycle"),
            ("bigpanda", "bp_reads_per_cycle"),
        )
    }
    no_idle_writes = not any(
        any(getattr(r.idle, key))
        for r in runs
        if r.idle is not None
        for key in ("sn_writes_per_cycle", "bp_writes_per_cycle")
    )
    big = many.pairs >= 50 and many.links_per_pair >= 2_000
    return {
        "idle_requests_same_as_single": same,
        "idle_writes_zero": no_idle_writes,
        "rss_target_mb": 250,
        "rss_target_met": (many.peak_rss_mb <= 250) if big else None,
        "missed_changes": sum(r.changes.missed for r in runs if r.changes is not None),
    }


def report(result: dict[str, Any]) -> None:
    info = result["machine"]
    print(
        f"many pairs in one process (poll {result['poll_interval_s']:g} s), machine: "
        f"{info['nproc']} x {info['cpu_model']}, load average at start {result['load_avg_start']}"
    )
    rows = []
    for r in result["one_process"]:
        idle, ch = r["idle"], r["changes"]
        rows.append(
            (
                r["pairs"],
                r["links_per_pair"],
                r["peak_rss_mb"],
                idle["cpu_s_per_min"],
                ch["cpu_ms_per_change"],
                " / ".join(
                    f"{ch['reads_beyond_idle_per_change'].get(k, 0):g}"
                    for k in ("servicenow reads", "bigpanda reads")
                ),
                f"{min(idle['sn_reads_per_cycle']):g}..{max(idle['sn_reads_per_cycle']):g}",
                f"{min(idle['bp_reads_per_cycle']):g}..{max(idle['bp_reads_per_cycle']):g}",
                f"{ch['carried']}/{ch['made']}",
                ch["missed"],
                r["failed_cycles"],
            )
        )
    h.print_table(
        (
            "pairs",
            "links/pair",
            "peak RSS MB",
            "idle CPU s/min",
            "CPU ms/change",
            "SN / BP reads/change",
            "SN req/cycle/pair",
            "BP req/cycle/pair",
            "carried",
            "missed",
            "failed cycles",
        ),
        rows,
    )
    v = result["verdict"]
    print(f"per-pair idle requests = the single pair's: {v['idle_requests_same_as_single']}")
    if v["rss_target_met"] is not None:
        print(f"peak RSS <= 250 MB: {'met' if v['rss_target_met'] else 'MISSED'}")
    rep = result.get("replicas")
    if rep:
        print()
        scale_replicas.report(rep)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/scale.py --pairs", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="4 x 200 links; 3 replicas x 6 pairs")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--phase", choices=("both", "one-process", "replicas"), default="both", help="what to run"
    )
    parser.add_argument(
        "--count",
        type=int,
        default=50,
        help="pairs in one process (1: only the single-pair run, e.g. for its CPU per change)",
    )
    parser.add_argument("--links", type=int, default=2_000, help="links per pair")
    parser.add_argument("--pool", type=int, default=20, help="real incidents per pair")
    parser.add_argument("--changes-per-min", type=int, default=100)
    parser.add_argument("--change-seconds", type=float, default=60.0)
    parser.add_argument("--idle-cycles", type=int, default=6, help="idle cycles of every pair")
    parser.add_argument("--poll-interval", type=float, default=5.0)
    parser.add_argument("--cursor-overlap", type=float, default=5.0)
    parser.add_argument(
        "--profile",
        type=Path,
        help="cProfile the one-process daemon into this file (bench/_profile.py)",
    )
    parser.add_argument(
        "--profile-phase",
        choices=("changes", "idle"),
        default="changes",
        help="what --profile covers: the change phase, or from the idle window on "
        "(with --change-seconds 0: the idle cycles only)",
    )
    scale_replicas.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.count, args.links, args.change_seconds = 4, 200, 9.0
        args.idle_cycles, args.poll_interval, args.cursor_overlap = 3, 1.0, 3.0
        args.replica_pairs = 6
    if args.profile is not None:
        args.profile = args.profile.resolve()  # the daemon runs in a temporary directory
    needed = -(-int(args.change_seconds * args.changes_per_min / 60) // args.count)
    args.pool = max(args.pool, needed)
    return args


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {
        "benchmark": "scale_pairs",
        "quick": args.quick,
        "machine": h.machine(),
        "load_avg_start": [round(x, 2) for x in os.getloadavg()],
        "poll_interval_s": args.poll_interval,
        "one_process": [],
        "verdict": None,
        "replicas": None,
    }
    if args.phase in ("both", "one-process"):
        runs = await one_process(args)
        result["one_process"] = [asdict(r) for r in runs]
        result["verdict"] = verdict(runs, args)
    if args.phase in ("both", "replicas"):
        result["replicas"] = await scale_replicas.run(args)
    result["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    started = time.perf_counter()
    result = asyncio.run(main_async(args))
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(result))
    else:
        if result["one_process"]:
            report(result)
        elif result["replicas"]:
            scale_replicas.report(result["replicas"])
        print(
            f"\n(total {result['elapsed_s']:.1f} s, load average at end {result['load_avg_end']})"
        )


if __name__ == "__main__":
    main()
