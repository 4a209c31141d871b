"""Alert storm: N new BigPanda incidents at once, each limiter shape, and a saturated ServiceNow.

Usage::

    python bench/storm.py                   # N = 500; the four runs below
    python bench/storm.py --quick           # N = 50
    python bench/storm.py --shapes sliding_window,saturated --n 200
    python bench/storm.py --json            # one JSON object

Each run: fresh emulators (``bpsync emulate both``, BigPanda limited at its documented
5 requests/s per endpoint in the run's limiter shape and scope), a fresh state dir and a
daemon (``python -m sync run``, ``poll_interval`` 1 s, every other setting at its
default: ``bigpanda.rate_limit_per_s`` 5, ``pacing.headroom`` 0.9,
``servicenow.max_concurrency`` 8, ``cycle_budget`` 60 s, ``pair_concurrency`` 10; the tag
mapping ``impact_level`` <-> ``impact``; ``log_format`` text, its log kept as
``daemon.log`` in the run directory). Once the daemon has run its first cycle, N active
BigPanda incidents are loaded at once (``POST /_emulator/incidents``), all started in the
load's second (``--start-spread S``: started over the S seconds before it).

Runs (``--shapes``): ``token_bucket``, ``sliding_window``, ``fixed_window`` (BigPanda's
limiter algorithm, scope ``--scope``), and ``saturated``: ``sliding_window`` plus the
ServiceNow node's integration semaphore pool saturated (``semaphores`` 2,
``semaphore_queue`` 2, ``processing_s`` 0.05 through ServiceNow's ``/_emulator/config``:
the daemon's 8 requests in flight meet 429s without headers until it adapts).

Per run:

- seconds from the moment the N incidents exist until every one carries its link tag
  (``servicenow_link``, naming a ServiceNow ``sys_id``; the tag is written after the
  ServiceNow create, so it implies the ticket), read every 0.5 s from BigPanda's
  ``GET /_emulator/incidents`` (neither counted nor rate limited);
- that time as a ratio of the floor: N / (headroom x ``bigpanda.rate_limit_per_s``) =
  N / 4.5 s, the paced rate of the busiest BigPanda family (one link-tag write per new
  incident);
- 429 answers as a share of the requests, and requests per incident, per side: the
  difference of the emulators' ``GET /_emulator/stats`` from just before the load to
  the moment every incident is linked (the benchmark sends no counted request then);
- failed cycles: ``bpsync_cycles_total`` with an outcome other than ``ok`` from the
  load until the daemon has settled (2 cycles without a write after the last link);
- duplicates: ServiceNow incidents beyond the first per ``correlation_id`` (Table API,
  read after the daemon stopped); lost: incidents without exactly one ServiceNow ticket
  and a link tag naming it after the bounded wait (3 x floor + 60 s) and the settling.

Targets: ratio <= 1.25 for every run, 429s <= 1 % of the requests on each side, 0 failed
cycles, 0 duplicates, 0 lost. The run directory (``daemon.log``, ``emulators.log``, both
emulators' request logs ``<side>-requests.json``) is kept when a target is missed (not
with ``--quick``), or with ``--keep``; the table names it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _harness as h
from sync.settings import BigPandaSettings, IncidentSettings, PacingSettings

SIDES = ("servicenow", "bigpanda")
CEILING = BigPandaSettings().rate_limit_per_s
"""BigPanda's documented 5 requests/s per endpoint: the emulator's limit and bpsync's."""
HEADROOM = PacingSettings().headroom
LINK_TAG = IncidentSettings().link_tag
POLL_S = 0.5
SHAPES = ("token_bucket", "sliding_window", "fixed_window")
RUN_NAMES = (*SHAPES, "saturated")

TARGET_RATIO = 1.25
TARGET_429_SHARE = 0.01

_SYS_ID_RE = re.compile(r"sys_id=([0-9a-f]{32})")


@dataclass
class Spec:
    name: str
    shape: str
    scope: str
    sn_pool: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        if self.sn_pool is None:
            return self.shape
        return (
            f"{self.shape} + SN pool {self.sn_pool['semaphores']}+"
            f"{self.sn_pool['semaphore_queue']} ({1000 * self.sn_pool['processing_s']:g} ms)"
        )


@dataclass
class Side:
    requests: int
    r429: int
    share_429: float
    per_incident: float
    endpoints_per_incident: dict[str, float] = field(default_factory=dict)


@dataclass
class Run:
    name: str
    label: str
    bp_shape: str
    bp_scope: str
    sn_pool: dict[str, Any] | None
    incidents: int
    linked: int
    seconds: float | None
    """load -> every incident linked; None: not within the bounded wait"""
    floor_s: float
    ratio: float | None
    wait_limit_s: float
    servicenow: Side
    bigpanda: Side
    cycles: int
    failed_cycles: int
    cycles_by_outcome: dict[str, int]
    duplicates: int
    duplicated_incidents: int
    lost: int
    mislinked: int
    settled: bool
    daemon_exit_code: int | None
    daemon_cpu_s: float
    daemon_peak_rss_mb: float
    throttled: dict[str, float]
    """``bpsync_throttled_total`` over the run, ``side/family`` -> count"""
    peak_backlog: dict[str, float]
    log_warnings: int
    log_errors: int
    log_excerpt: list[str]
    progress: list[tuple[float, int]]
    """(seconds since the load, incidents linked), every 5 s"""
    link_writes: dict[str, Any]
    """the busiest family from BigPanda's request log: when the link-tag writes started and
    ended (s since the load), their pace over that span, and the pauses > 1 s in it"""
    r429_at: dict[str, list[float]]
    """when the 429s were answered (s since the load, the first 20 per side)"""
    watch_ms: dict[str, float | None]
    """this benchmark's ``GET /_emulator/incidents`` every 0.5 s: its p50 and max (it runs
    in the emulators' process, so it is what the benchmark takes from them)"""
    targets: dict[str, bool]
    target_met: bool
    code: str = ""
    """the commit of the code the daemon ran (``+dirty``: ``sync/`` had changes)"""
    run_dir: str | None = None


def by_label(
    m: dict[str, list[tuple[dict[str, str], float]]], name: str, *keys: str
) -> dict[str, float]:
    """``name``'s samples summed by the values of the labels ``keys`` (``a/b``)."""
    out: dict[str, float] = {}
    for labels, value in m.get(name, []):
        key = "/".join(labels.get(k, "") for k in keys)
        out[key] = out.get(key, 0.0) + value
    return out


def side_figures(delta: h.Stats, n: int) -> Side:
    total = delta.total
    r429 = int(delta.statuses.get("429", 0))
    return Side(
        requests=total,
        r429=r429,
        share_429=round(r429 / total, 4) if total else 0.0,
        per_incident=round(total / n, 3),
        endpoints_per_incident={
            k: round(v / n, 3) for k, v in sorted(delta.requests.items(), key=lambda kv: -kv[1])
        },
    )


def code_version() -> str:
    """The commit the daemon runs (``+dirty``: ``sync/`` differs from it)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=h.ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "sync"],
            cwd=h.ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def link_write_pace(log: list[dict[str, Any]], t0: float, t1: float) -> dict[str, Any]:
    """The link-tag writes accepted between ``t0`` and ``t1`` (emulator monotonic clock,
    the same as this process's on one host): start, end, pace, pauses > 1 s."""
    times = sorted(
        float(e["t"]) - t0
        for e in log
        if e.get("method") == "POST"
        and str(e.get("template", "")).endswith("/tags/{tag_id}")
        and 200 <= int(e.get("status") or 0) < 300
        and t0 <= float(e["t"]) <= t1
    )
    if not times:
        return {"count": 0}
    gaps = [(round(a, 1), round(b - a, 1)) for a, b in itertools.pairwise(times) if b - a > 1.0]
    span = times[-1] - times[0]
    busy = span - sum(g for _, g in gaps)
    return {
        "count": len(times),
        "first_s": round(times[0], 2),
        "last_s": round(times[-1], 2),
        "rate_per_s": round((len(times) - 1) / span, 3) if span > 0 else None,
        "rate_between_pauses_per_s": round((len(times) - 1) / busy, 3) if busy > 0 else None,
        "pauses": [{"at_s": a, "s": g} for a, g in gaps],
        "paused_s": round(sum(g for _, g in gaps), 1),
    }


def r429_times(log: list[dict[str, Any]], t0: float, t1: float) -> list[float]:
    return [
        round(float(e["t"]) - t0, 2)
        for e in log
        if int(e.get("status") or 0) == 429 and t0 <= float(e["t"]) <= t1
    ][:20]


def link_sys_id(value: str | None) -> str | None:
    if not value:
        return None
    match = _SYS_ID_RE.search(value)
    return match.group(1) if match else None


async def linked_now(api: h.Api, ids: set[str]) -> dict[str, str]:
    """BigPanda id -> the sys_id its link tag names, for the incidents of ``ids`` linked."""
    out = {}
    for inc in await api.bp_dump():
        iid = str(inc.get("id"))
        if iid in ids:
            sys_id = link_sys_id(h.tag_values(inc).get(LINK_TAG))
            if sys_id:
                out[iid] = sys_id
    return out


async def sn_tickets(api: h.Api) -> list[dict[str, str]]:
    """Every ServiceNow incident with a correlation_id (429s waited out)."""
    for attempt in range(40):
        try:
            return await api.sn_query(
                "correlation_idISNOTEMPTY", "sys_id,number,correlation_id", limit=100_000
            )
        except aiohttp.ClientResponseError as exc:
            if exc.status != 429 or attempt == 39:
                raise
            await asyncio.sleep(0.5)
    raise AssertionError("unreachable")


async def one_run(spec: Spec, n: int, args: argparse.Namespace, seed: int) -> Run:
    rng = random.Random(seed)
    run_dir = Path(tempfile.mkdtemp(prefix=f"bpsync-bench-storm-{spec.name}-"))
    floor_s = n / (HEADROOM * CEILING)
    wait_limit = 3 * floor_s + 60
    emus = h.Emulators(
        run_dir, rate_limit=CEILING, rate_limit_shape=spec.shape, rate_limit_scope=spec.scope
    )
    daemon: h.Daemon | None = None
    progress: list[tuple[float, int]] = []
    watch_s: list[float] = []
    peak_backlog: dict[str, float] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        api = h.Api(http, emus)
        try:
            await emus.start(api)
            if spec.sn_pool is not None:
                await api.sn_config(**spec.sn_pool)
            config = h.write_config(run_dir / "bpsync.toml", {}, h.MAPPING)
            env = h.daemon_env(
                emus,
                run_dir / "state",
                poll_interval=args.poll_interval,
                config=config,
                extra={
                    "BPSYNC_BIGPANDA__RATE_LIMIT_PER_S": CEILING,
                    "BPSYNC_LOG_FORMAT": "text",
                    **daemon_settings(args.set),
                },
            )
            daemon = h.Daemon(run_dir, env)
            code = code_version()
            await daemon.start(http)
            m0 = await daemon.metrics(http)
            cpu0 = daemon.cpu_s()
            now = int(time.time())
            fixtures = [
                h.bp_fixture(
                    i,
                    tags={"impact_level": rng.choice(list(h.IMPACT_MAP))},
                    start=now - int(i * args.start_spread / n),
                    prefix="storm",
                )
                for i in range(n)
            ]
            stats0 = await api.snapshot()
            ids = await api.bp_fixtures(fixtures)
            t0 = time.monotonic()
            h.log(f"  {spec.name}: {n} incidents loaded; floor {floor_s:.1f}s")
            want = set(ids)
            linked: dict[str, str] = {}
            seconds: float | None = None
            next_mark = 0.0
            next_metrics = 0.0
            while True:
                elapsed = time.monotonic() - t0
                linked = await linked_now(api, want)
                watch_s.append(time.monotonic() - t0 - elapsed)
                if len(linked) == len(want):
                    seconds = time.monotonic() - t0
                    break
                if elapsed >= next_mark:
                    progress.append((round(elapsed, 1), len(linked)))
                    next_mark += 5.0
                if elapsed >= next_metrics:
                    with contextlib.suppress(aiohttp.ClientError, OSError):
                        m = await daemon.metrics(http)
                        for key, value in by_label(m, "bpsync_backlog", "side").items():
                            peak_backlog[key] = max(peak_backlog.get(key, 0.0), value)
                    next_metrics += 1.0
                if elapsed > wait_limit:
                    break
                if daemon.proc is not None and daemon.proc.poll() is not None:
                    h.log(f"  {spec.name}: the daemon exited with {daemon.proc.returncode}")
                    break
                await asyncio.sleep(max(0.0, POLL_S - (time.monotonic() - t0 - elapsed)))
            stats1 = await api.snapshot()
            t1 = time.monotonic()
            progress.append((round(time.monotonic() - t0, 1), len(linked)))
            h.log(
                f"  {spec.name}: {len(linked)}/{n} linked in "
                + (f"{seconds:.1f}s (x{seconds / floor_s:.2f} floor)" if seconds else "-")
            )
            settled = False
            if daemon.proc is not None and daemon.proc.poll() is None:
                try:
                    await h.settle(
                        api, daemon, quiet_cycles=2, timeout_s=60 + 4 * args.poll_interval
                    )
                    settled = True
                except (TimeoutError, RuntimeError) as exc:
                    h.log(f"  {spec.name}: not settled: {exc}")
            m1 = await daemon.metrics(http) if daemon.proc and daemon.proc.poll() is None else m0
            cpu = daemon.cpu_s() - cpu0 if daemon.proc and daemon.proc.poll() is None else 0.0
            mem = (
                daemon.mem() if daemon.proc and daemon.proc.poll() is None else {"peak_rss_mb": 0.0}
            )
            exit_code = daemon.stop()
            if spec.sn_pool is not None:
                await api.sn_config(semaphores=None, processing_s=0.0)
            rows = await sn_tickets(api)
            linked = await linked_now(api, want)
            logs = {side: (await api.stats(side, with_log=True)).get("log", []) for side in SIDES}
        finally:
            if daemon is not None:
                daemon.stop()
            emus.stop()

    tickets: dict[str, list[str]] = {}
    for row in rows:
        tickets.setdefault(row["correlation_id"], []).append(row["sys_id"])
    duplicates = sum(len(v) - 1 for v in tickets.values() if len(v) > 1)
    duplicated = sum(1 for v in tickets.values() if len(v) > 1)
    lost = mislinked = 0
    for iid in ids:
        mine = tickets.get(iid, [])
        tag = linked.get(iid)
        if not mine or tag is None:
            lost += 1
        elif tag not in mine:
            mislinked += 1

    cycles0 = by_label(m0, "bpsync_cycles_total", "outcome")
    cycles1 = by_label(m1, "bpsync_cycles_total", "outcome")
    cycles = {k: int(v - cycles0.get(k, 0)) for k, v in cycles1.items()}
    failed = sum(v for k, v in cycles.items() if k != "ok")
    thr0 = by_label(m0, "bpsync_throttled_total", "side", "family")
    thr1 = by_label(m1, "bpsync_throttled_total", "side", "family")
    throttled = {k: v - thr0.get(k, 0) for k, v in thr1.items() if v - thr0.get(k, 0)}

    for side in SIDES:
        (run_dir / f"{side}-requests.json").write_text(json.dumps(logs[side]), encoding="utf-8")
    log_lines = (run_dir / "daemon.log").read_text(errors="replace").splitlines()
    warnings = [ln for ln in log_lines if re.match(r"^\S+ WARNING ", ln)]
    errors = [ln for ln in log_lines if re.match(r"^\S+ (ERROR|CRITICAL) ", ln)]

    sn = side_figures(stats1["servicenow"] - stats0["servicenow"], n)
    bp = side_figures(stats1["bigpanda"] - stats0["bigpanda"], n)
    ratio = round(seconds / floor_s, 3) if seconds is not None else None
    targets = {
        "ratio": ratio is not None and ratio <= TARGET_RATIO,
        "share_429": sn.share_429 <= TARGET_429_SHARE and bp.share_429 <= TARGET_429_SHARE,
        "failed_cycles": failed == 0,
        "duplicates": duplicates == 0,
        "lost": lost == 0 and mislinked == 0,
    }
    run = Run(
        name=spec.name,
        label=spec.label,
        bp_shape=spec.shape,
        bp_scope=spec.scope,
        sn_pool=spec.sn_pool,
        incidents=n,
        linked=n - lost - mislinked,
        seconds=h.rnd(seconds, 2),
        floor_s=round(floor_s, 2),
        ratio=ratio,
        wait_limit_s=round(wait_limit, 1),
        servicenow=sn,
        bigpanda=bp,
        cycles=sum(cycles.values()),
        failed_cycles=failed,
        cycles_by_outcome=cycles,
        duplicates=duplicates,
        duplicated_incidents=duplicated,
        lost=lost,
        mislinked=mislinked,
        settled=settled,
        daemon_exit_code=exit_code,
        daemon_cpu_s=round(cpu, 2),
        daemon_peak_rss_mb=round(mem["peak_rss_mb"], 1),
        throttled=throttled,
        peak_backlog=dict(peak_backlog),
        log_warnings=len(warnings),
        log_errors=len(errors),
        log_excerpt=(errors + warnings)[:12],
        progress=progress,
        link_writes=link_write_pace(logs["bigpanda"], t0, t1),
        r429_at={side: r429_times(logs[side], t0, t1) for side in SIDES},
        watch_ms={
            "p50": h.rnd(1000 * (h.percentile(watch_s, 50) or 0), 1),
            "max": h.rnd(1000 * max(watch_s, default=0), 1),
        },
        targets=targets,
        target_met=all(targets.values()),
        code=code,
    )
    if not args.keep and (run.target_met or args.quick):
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        run.run_dir = str(run_dir)
    return run


def specs(args: argparse.Namespace) -> list[Spec]:
    names = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in names if s not in RUN_NAMES]
    if unknown:
        raise SystemExit(f"--shapes: unknown {unknown}; known: {', '.join(RUN_NAMES)}")
    out = []
    for name in names:
        if name == "saturated":
            pool = {
                "semaphores": args.sn_semaphores,
                "semaphore_queue": args.sn_queue,
                "processing_s": args.sn_processing_s,
            }
            out.append(Spec(name, "sliding_window", args.scope, pool))
        else:
            out.append(Spec(name, name, args.scope))
    return out


def _pct(share: float) -> str:
    return f"{100 * share:.2f} %"


def report(runs: list[Run], info: dict[str, Any], args: argparse.Namespace, n: int) -> None:
    print(
        f"alert storm: {n} new BigPanda incidents at once, BigPanda limited at "
        f"{CEILING:g} req/s per endpoint (scope {args.scope}), bpsync paced at "
        f"{HEADROOM:g} x {CEILING:g} req/s, poll {args.poll_interval:g} s; "
        f"machine: {info['nproc']} x {info['cpu_model']}"
    )
    h.print_table(
        (
            "run",
            "linked",
            "seconds",
            "floor s",
            "ratio",
            "SN 429",
            "BP 429",
            "SN req/inc",
            "BP req/inc",
            "failed cycles",
            "dupl.",
            "lost",
            "targets",
        ),
        [
            (
                r.label,
                f"{r.linked}/{r.incidents}",
                r.seconds,
                r.floor_s,
                r.ratio,
                f"{_pct(r.servicenow.share_429)} ({r.servicenow.r429})",
                f"{_pct(r.bigpanda.share_429)} ({r.bigpanda.r429})",
                r.servicenow.per_incident,
                r.bigpanda.per_incident,
                f"{r.failed_cycles}/{r.cycles}",
                r.duplicates,
                r.lost + r.mislinked,
                "met"
                if r.target_met
                else "MISSED: " + ", ".join(k for k, v in r.targets.items() if not v),
            )
            for r in runs
        ],
    )
    print(
        f"targets: ratio <= {TARGET_RATIO}, 429s <= {_pct(TARGET_429_SHARE)} per side, "
        "0 failed cycles, 0 duplicates, 0 lost"
    )
    for r in runs:
        print(f"\n{r.label}:")
        for side, s in (("ServiceNow", r.servicenow), ("BigPanda", r.bigpanda)):
            print(f"  {side} requests per incident ({s.requests:,} requests, {s.r429} x 429):")
            for name, v in s.endpoints_per_incident.items():
                print(f"    {name:85} {v:>7.3f}")
        print(
            f"  daemon: CPU {r.daemon_cpu_s:.1f} s, peak RSS {r.daemon_peak_rss_mb:.1f} MB, "
            f"cycles {r.cycles_by_outcome}, throttled {r.throttled or 0}, "
            f"peak backlog {r.peak_backlog or 0}, log {r.log_errors} errors / "
            f"{r.log_warnings} warnings; the benchmark's watch request p50/max "
            f"{r.watch_ms['p50']}/{r.watch_ms['max']} ms"
            + (f"; run dir {r.run_dir}" if r.run_dir else "")
        )
        lw = r.link_writes
        if lw.get("count"):
            print(
                f"  link-tag writes: first at {lw['first_s']} s, last at {lw['last_s']} s, "
                f"{lw['rate_per_s']}/s over that span, {lw['rate_between_pauses_per_s']}/s "
                f"between pauses; pauses > 1 s: {lw['paused_s']} s "
                + str([(p["at_s"], p["s"]) for p in lw["pauses"]][:10])
            )
        for side in SIDES:
            if r.r429_at[side]:
                print(f"  {side} 429s at (s): {r.r429_at[side]}")
        for line in r.log_excerpt:
            print(f"    {line[:200]}")


async def main_async(args: argparse.Namespace, n: int) -> list[Run]:
    runs = []
    for i, spec in enumerate(specs(args)):
        h.log(f"{spec.label}: {n} incidents")
        runs.append(await one_run(spec, n, args, args.seed + i))
    return runs


def daemon_settings(pairs: list[str]) -> dict[str, str]:
    """``["pacing.headroom=0.8"]`` -> ``{"BPSYNC_PACING__HEADROOM": "0.8"}``."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise SystemExit(f"--set wants NAME=VALUE, got {pair!r}")
        out["BPSYNC_" + name.strip().upper().replace(".", "__")] = value.strip()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 50")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of tables"
    )
    parser.add_argument("--n", type=int, default=None, help="incidents per storm (default 500)")
    parser.add_argument(
        "--shapes",
        default=",".join(RUN_NAMES),
        help=f"runs, comma-separated, among {', '.join(RUN_NAMES)} (default: all)",
    )
    parser.add_argument(
        "--scope",
        default="token_method_route",
        choices=("token_method_route", "token_route", "org_route"),
        help="BigPanda rate_limit_scope",
    )
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument(
        "--start-spread",
        type=float,
        default=0.0,
        help="the incidents' start times spread over this many seconds before the load "
        "(default 0: all start in the same second)",
    )
    parser.add_argument("--sn-semaphores", type=int, default=2, help="saturated run")
    parser.add_argument("--sn-queue", type=int, default=2, help="saturated run")
    parser.add_argument("--sn-processing-s", type=float, default=0.05, help="saturated run")
    parser.add_argument("--keep", action="store_true", help="keep every run directory")
    parser.add_argument(
        "--save", type=Path, default=None, help="also write the JSON object to this file"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a daemon setting, dotted (retrieval_count=100, pacing.headroom=0.8); repeatable",
    )
    parser.add_argument("--seed", type=int, default=8)
    args = parser.parse_args()
    n = args.n if args.n is not None else (50 if args.quick else 500)
    started = time.perf_counter()
    runs = asyncio.run(main_async(args, n))
    info = h.machine()
    payload = {
        "benchmark": "storm",
        "quick": args.quick,
        "machine": info,
        "incidents": n,
        "ceiling_per_s": CEILING,
        "headroom": HEADROOM,
        "poll_interval_s": args.poll_interval,
        "bp_scope": args.scope,
        "start_spread_s": args.start_spread,
        "runs": [asdict(r) for r in runs],
        "target_met": all(r.target_met for r in runs),
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    if args.save is not None:
        args.save.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(payload))
    else:
        report(runs, info, args, n)
        print(f"\n(total {time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
