"""HTTP cost: requests per idle cycle per side, and requests per synced change.

Usage::

    python bench/cost.py                   # 10, 100 and 250 active incidents
    python bench/cost.py --quick           # 10 active incidents, 5 cycles (< 30 s)
    python bench/cost.py --json            # one JSON object

Both emulators (rate limits off: counts do not depend on pacing) and a daemon
(``poll_interval`` 1 s, ``retrieval_count`` 100 = BigPanda's largest search page, the tag
mapping ``impact_level`` <-> ``impact``). Request counts are differences of the
emulators' ``GET /_emulator/stats`` snapshots; the benchmark's own requests are
subtracted.

1. Idle: with A active BigPanda incidents (each linked to its ServiceNow incident), the
   daemon is left to settle (3 cycles without a write, then twice ``cursor_overlap``
   more seconds, so that the last writes are out of the polls' window), then the requests
   of N cycles are counted (cycles from the daemon's ``bpsync_cycles_total``) and
   divided by N, per side and kind (read = GET/HEAD, write = the rest), with the
   daemon's CPU seconds per idle cycle.
2. Per change (at the second A, or the only one): K changes of one kind at once on K
   incidents (BigPanda tag ``impact_level``, or ServiceNow field ``impact``), then the
   daemon settles; the requests beyond the idle cycles' (reads) are divided by K, per
   side and kind, and so is the daemon's CPU time beyond its idle cycles' (CPU ms per
   carried field change, ``/proc/<pid>/stat``; target <= 1 ms, printed, not asserted).

3. With ``--assignee`` (``incidents.sync_assignee`` on), two more kinds: K incidents
   assigned in BigPanda to one person (Abel Tuter, in both emulators), and K others
   assigned to him in ServiceNow (``assigned_to``).
4. With ``--journal``, two more: K BigPanda comments (each carried as one ServiceNow
   work note, ``[journal] to_servicenow``) and K ServiceNow work notes (each carried as
   one BigPanda comment, ``from_servicenow``); verified: each entry once on the other
   side. A carried entry costs 1 write on the other side and no read beyond the changed
   pair's journal read (ServiceNow's ``sys_journal_field`` read counts as a read there).

Targets: an idle cycle makes 1 list request on ServiceNow and 1 per 100 active incidents
on BigPanda, 0 writes; a change costs at most 1 write per changed field on the other
side, 0 writes back (no echo), and no read beyond the poll and the changed pair's
journal read (``[journal]``, at the defaults BigPanda's comments of the changed
incident: ``journal_reads``, reported apart). An assignee change costs the same, plus
the look-ups of its person once (cached: at most 2 reads for all K changes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _harness as h
from sync.emulators.bigpanda.users import SEED_USERS

SIDES = ("servicenow", "bigpanda")
#: the person assignee changes name: Abel Tuter, known to both emulators
ABEL_BP = next(u.id for u in SEED_USERS if u.email == "abel.tuter@example.com")
ABEL_SN = "abel.tuter"  # his sys_user.user_name
#: the changed pair's journal read (sync.journal): BigPanda's comments of the incident
JOURNAL_READ = "GET /resources/v2.0/incidents/{incident_id}/activities"


@dataclass
class Idle:
    active_incidents: int
    cycles: int
    sn_reads: float
    sn_writes: float
    bp_reads: float
    bp_writes: float
    cpu_ms_per_cycle: float
    cycle_ms: float
    expected_bp_reads: int
    target_met: bool
    requests: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class PerChange:
    kind: str  # bp_to_sn | sn_to_bp | assign_... | journal_bp_to_sn | journal_sn_to_bp
    changes: int
    propagated: int
    cycles: int
    sn_reads: float
    sn_writes: float
    bp_reads: float
    bp_writes: float
    target_met: bool
    requests: dict[str, dict[str, float]] = field(default_factory=dict)
    journal_reads: float = 0.0
    """BigPanda comment reads per change (the changed pair's journal read), apart."""
    cpu_ms_per_change: float = 0.0
    """The daemon's CPU (user + system) over the window beyond its idle cycles', per change."""


def per(stats: h.Stats, n: float) -> dict[str, float]:
    return {k: round(v / n, 3) for k, v in sorted(stats.requests.items())}


async def idle_cost(
    api: h.Api, daemon: h.Daemon, active: int, *, cycles: int, page: int, overlap_s: float
) -> Idle:
    await h.settle(api, daemon, quiet_cycles=3, timeout_s=180)
    # idle for two overlaps: a poll reaches back one overlap before its watermark, and
    # an idle watermark trails now by one overlap, so the last burst (the creates and
    # link tags) leaves the polls' window only then (measured apart, see the README)
    await asyncio.sleep(2 * overlap_s + 2)
    await daemon.wait_cycles(api.http, 1, 30)  # start on a cycle boundary
    before, c0, cpu0 = await api.snapshot(), await daemon.cycles(api.http), daemon.cpu_s()
    c1 = await daemon.wait_cycles(api.http, cycles, 30 + 5 * cycles)
    after, cpu1 = await api.snapshot(), daemon.cpu_s()
    n = c1.count - c0.count
    sn, bp = after["servicenow"] - before["servicenow"], after["bigpanda"] - before["bigpanda"]
    expected_bp = max(1, math.ceil(active / page))
    result = Idle(
        active_incidents=active,
        cycles=int(n),
        sn_reads=round(sn.reads / n, 3),
        sn_writes=round(sn.writes / n, 3),
        bp_reads=round(bp.reads / n, 3),
        bp_writes=round(bp.writes / n, 3),
        cpu_ms_per_cycle=round(1000 * (cpu1 - cpu0) / n, 1),
        cycle_ms=round(1000 * (c1.sum_s - c0.sum_s) / n, 1),
        expected_bp_reads=expected_bp,
        target_met=False,
        requests={"servicenow": per(sn, n), "bigpanda": per(bp, n)},
    )
    result.target_met = (
        result.sn_reads <= 1
        and result.sn_writes == 0
        and result.bp_writes == 0
        and result.bp_reads <= expected_bp
    )
    return result


async def change_cost(
    api: h.Api,
    daemon: h.Daemon,
    idle: Idle,
    *,
    kind: str,
    targets: list[tuple[str, str]],
    current: dict[str, str],
    sn_journal: bool = False,
) -> PerChange:
    """K changes of ``kind`` at once on the (bp_id, sys_id) ``targets``."""
    await h.settle(api, daemon, quiet_cycles=2, timeout_s=120)
    before, c0, cpu0 = await api.snapshot(), await daemon.cycles(api.http), daemon.cpu_s()
    own0 = {s: api.own[s].by_method.copy() for s in SIDES}
    wanted: dict[str, str] = {}
    abel = await api.sn_user(ABEL_SN) if kind.startswith("assign") else ""
    for bp, sys_id in targets:
        value = "high" if current[bp] != "high" else "medium"
        current[bp] = value
        if kind == "journal_bp_to_sn":
            await api.bp_comment(bp, f"bench comment {bp}")
            wanted[sys_id] = f"bench comment {bp}"
        elif kind == "journal_sn_to_bp":
            await api.sn_patch(sys_id, {"work_notes": f"bench note {sys_id}"})
            wanted[bp] = f"bench note {sys_id}"
        elif kind == "assign_bp_to_sn":
            await api.bp_assign(bp, ABEL_BP)
            wanted[sys_id] = abel
        elif kind == "assign_sn_to_bp":
            await api.sn_patch(sys_id, {"assigned_to": abel})
            wanted[bp] = ABEL_BP
        elif kind == "bp_to_sn":
            await api.bp_set_tag(bp, "impact_level", value)
            wanted[sys_id] = h.IMPACT_MAP[value]
        else:
            await api.sn_patch(sys_id, {"impact": h.IMPACT_MAP[value]})
            wanted[bp] = value
    own = {s: h.Stats(by_method=api.own[s].by_method - own0[s]) for s in SIDES}
    await h.settle(api, daemon, quiet_cycles=3, timeout_s=120)
    after, c1, cpu1 = await api.snapshot(), await daemon.cycles(api.http), daemon.cpu_s()
    n_cycles = c1.count - c0.count
    k = len(targets)
    # the daemon's CPU beyond what its idle cycles (polls) cost over the same cycles
    cpu_ms = (1000 * (cpu1 - cpu0) - idle.cpu_ms_per_cycle * n_cycles) / k
    delta = {s: after[s] - before[s] for s in SIDES}
    # the daemon's own: minus what this benchmark sent, minus the idle cycles' polls
    reads = {
        "servicenow": (
            delta["servicenow"].reads - own["servicenow"].reads - idle.sn_reads * n_cycles
        )
        / k,
        "bigpanda": (delta["bigpanda"].reads - own["bigpanda"].reads - idle.bp_reads * n_cycles)
        / k,
    }
    writes = {s: (delta[s].writes - own[s].writes) / k for s in SIDES}
    journal_reads = delta["bigpanda"].requests.get(JOURNAL_READ, 0) / k
    reads["bigpanda"] -= journal_reads
    # verify (after the snapshot: these reads are not counted)
    if kind == "journal_bp_to_sn":  # each comment once among the ticket's work notes
        rows = await api.sn_journal(list(wanted))
        propagated = sum(
            1
            for sys_id, text in wanted.items()
            if sum(1 for r in rows if r["element_id"] == sys_id and text in r["value"]) == 1
        )
    elif kind == "journal_sn_to_bp":  # each work note once among the incident's comments
        propagated = 0
        for bp, text in wanted.items():
            found = [a for a in await api.bp_activities(bp) if text in json.dumps(a)]
            propagated += len(found) == 1
    elif kind == "assign_bp_to_sn":
        rows = await api.sn_query("sys_idIN" + ",".join(wanted), "sys_id,assigned_to")
        propagated = sum(1 for r in rows if wanted.get(r["sys_id"]) == r.get("assigned_to"))
    elif kind == "assign_sn_to_bp":
        dump = {str(i["id"]): (i.get("assignee") or {}).get("user_id") for i in await api.bp_dump()}
        propagated = sum(1 for bp, v in wanted.items() if dump.get(bp) == v)
    elif kind == "bp_to_sn":
        rows = await api.sn_query("sys_idIN" + ",".join(wanted), "sys_id,impact")
        propagated = sum(1 for r in rows if wanted.get(r["sys_id"]) == r.get("impact"))
    else:
        dump = {str(i["id"]): h.tag_values(i).get("impact_level") for i in await api.bp_dump()}
        propagated = sum(1 for bp, v in wanted.items() if dump.get(bp) == v)
    target_side, source_side = (
        ("servicenow", "bigpanda") if kind.endswith("bp_to_sn") else ("bigpanda", "servicenow")
    )
    # an assignee's person is looked up once (cached): at most 2 reads for all K changes;
    # with [journal] from_servicenow on, every change of a pair (the person's, or the echo
    # of bpsync's write) has its ServiceNow journal read: 1 per change (BigPanda's, the
    # activities read, is reported apart as journal_reads)
    # (a carried BigPanda comment's author is looked up the same way: SCIM, cached)
    lookups = 2 / k if kind.startswith("assign") or kind == "journal_bp_to_sn" else 0.0
    if sn_journal:  # from_servicenow on: the changed pair's ServiceNow journal read
        lookups += 1.0
    met = (
        propagated == k
        and writes[target_side] <= 1.0 + 1e-9
        and writes[source_side] <= 1e-9
        and reads[target_side] + reads[source_side] <= lookups + 0.1
    )
    return PerChange(
        kind=kind,
        changes=k,
        propagated=propagated,
        cycles=int(n_cycles),
        sn_reads=round(reads["servicenow"], 3),
        sn_writes=round(writes["servicenow"], 3),
        bp_reads=round(reads["bigpanda"], 3),
        bp_writes=round(writes["bigpanda"], 3),
        target_met=met,
        requests={s: per(delta[s], k) for s in SIDES},
        journal_reads=round(journal_reads, 3),
        cpu_ms_per_change=round(cpu_ms, 2),
    )


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    levels = [10] if args.quick else args.active
    cycles = 5 if args.quick else args.cycles
    k = 5 if args.quick else args.changes
    overlap = 3.0 if args.quick else args.cursor_overlap
    per_change_level = levels[min(1, len(levels) - 1)]
    idles: list[Idle] = []
    changes: list[PerChange] = []
    with tempfile.TemporaryDirectory(prefix="bpsync-bench-cost-") as tmp_name:
        tmp = Path(tmp_name)
        emus = h.Emulators(tmp, rate_limit=None)
        async with aiohttp.ClientSession() as http:
            api = h.Api(http, emus)
            await emus.start(api)
            daemon: h.Daemon | None = None
            try:
                config = h.write_config(tmp / "bpsync.toml", {}, h.MAPPING)
                env = h.daemon_env(
                    emus,
                    tmp / "state",
                    poll_interval=args.poll_interval,
                    config=config,
                    extra={
                        "BPSYNC_BIGPANDA__RATE_LIMIT_PER_S": 1000,
                        "BPSYNC_RETRIEVAL_COUNT": args.retrieval_count,
                        "BPSYNC_CURSOR_OVERLAP": overlap,
                        "BPSYNC_INCIDENTS__SYNC_ASSIGNEE": str(args.assignee).lower(),
                        # work notes carried both ways (to_servicenow is on by default)
                        "BPSYNC_JOURNAL__FROM_SERVICENOW": "work_notes" if args.journal else "",
                    },
                )
                bp_ids: list[str] = []
                for level in levels:
                    new = [
                        h.bp_fixture(i, tags={"impact_level": "low"}, prefix="cost")
                        for i in range(len(bp_ids), level)
                    ]
                    bp_ids += await api.bp_fixtures(new)
                    if daemon is None:
                        daemon = h.Daemon(tmp, env)
                        await daemon.start(http)
                    idle = await idle_cost(
                        api,
                        daemon,
                        level,
                        cycles=cycles,
                        page=args.retrieval_count,
                        overlap_s=overlap,
                    )
                    idles.append(idle)
                    h.log(
                        f"  idle with {level} active incidents: "
                        f"{idle.sn_reads} SN + {idle.bp_reads} BP reads/cycle"
                    )
                    if level == per_change_level:
                        rows = await api.sn_query(
                            "correlation_idIN" + ",".join(bp_ids), "sys_id,correlation_id"
                        )
                        sys_ids = {r["correlation_id"]: r["sys_id"] for r in rows}
                        current = dict.fromkeys(bp_ids, "low")
                        pairs = [(bp, sys_ids[bp]) for bp in bp_ids if bp in sys_ids]
                        kinds = ["bp_to_sn", "sn_to_bp"]
                        if args.assignee:
                            kinds += ["assign_bp_to_sn", "assign_sn_to_bp"]
                        if args.journal:
                            kinds += ["journal_bp_to_sn", "journal_sn_to_bp"]
                        half = max(1, min(k, len(pairs) // len(kinds)))
                        for i, kind in enumerate(kinds):
                            chosen = pairs[i * half : (i + 1) * half]
                            changes.append(
                                await change_cost(
                                    api,
                                    daemon,
                                    idle,
                                    kind=kind,
                                    targets=chosen,
                                    current=current,
                                    sn_journal=args.journal,
                                )
                            )
                            h.log(
                                f"  {kind}: {changes[-1].sn_writes} SN + "
                                f"{changes[-1].bp_writes} BP writes/change"
                            )
            finally:
                if daemon is not None:
                    daemon.stop()
                emus.stop()
    return {
        "idle": [asdict(i) for i in idles],
        "per_change": [asdict(c) for c in changes],
        "target_met": all(i.target_met for i in idles) and all(c.target_met for c in changes),
    }


def report(result: dict[str, Any], args: argparse.Namespace, info: dict[str, Any]) -> None:
    print(
        f"HTTP requests per idle cycle (poll {args.poll_interval:g} s, retrieval_count "
        f"{args.retrieval_count}), machine: {info['nproc']} x {info['cpu_model']}"
    )
    h.print_table(
        (
            "active BP incidents",
            "cycles",
            "SN reads",
            "SN writes",
            "BP reads",
            "target BP reads",
            "BP writes",
            "CPU ms/cycle",
            "cycle ms",
            "target",
        ),
        [
            (
                i["active_incidents"],
                i["cycles"],
                i["sn_reads"],
                i["sn_writes"],
                i["bp_reads"],
                f"<= {i['expected_bp_reads']}",
                i["bp_writes"],
                i["cpu_ms_per_cycle"],
                i["cycle_ms"],
                "met" if i["target_met"] else "MISSED",
            )
            for i in result["idle"]
        ],
    )
    print(
        "\nHTTP requests per synced change "
        "(beyond the idle polls; the benchmark's own writes excluded)"
    )
    h.print_table(
        (
            "change",
            "changes",
            "propagated",
            "SN reads",
            "SN writes",
            "BP reads",
            "BP writes",
            "journal reads",
            "CPU ms/change",
            "target",
        ),
        [
            (
                c["kind"].replace("_to_", " -> ").replace("assign_", "assignee ").replace("_", " "),
                c["changes"],
                c["propagated"],
                c["sn_reads"],
                c["sn_writes"],
                c["bp_reads"],
                c["bp_writes"],
                c["journal_reads"],
                c["cpu_ms_per_change"],
                "met" if c["target_met"] else "MISSED",
            )
            for c in result["per_change"]
        ],
    )
    for c in result["per_change"]:
        print(
            f"  {c['kind']} requests per change, all of the window "
            "(incl. idle polls and the bench's own):"
        )
        for side in SIDES:
            for name, n in c["requests"][side].items():
                print(f"    {side:10} {name:80} {n:>7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="10 active incidents, 5 cycles, 5 changes"
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of tables"
    )
    parser.add_argument(
        "--active", type=int, nargs="+", default=[10, 100, 250], help="active incident counts"
    )
    parser.add_argument("--cycles", type=int, default=10, help="idle cycles counted")
    parser.add_argument("--changes", type=int, default=10, help="changes per kind")
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument(
        "--assignee",
        action="store_true",
        help="incidents.sync_assignee on, and the assignee change kinds",
    )
    parser.add_argument(
        "--journal",
        action="store_true",
        help="the journal kinds too: a BigPanda comment carried to ServiceNow as a work "
        "note, a ServiceNow work note carried to BigPanda as a comment",
    )
    parser.add_argument(
        "--cursor-overlap",
        type=float,
        default=30.0,
        help="setting cursor_overlap (s); idle is measured once it has passed (--quick: 3)",
    )
    parser.add_argument(
        "--retrieval-count",
        type=int,
        default=100,
        help="BigPanda page size (setting retrieval_count)",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    result = asyncio.run(main_async(args))
    info = h.machine()
    if args.json:
        print(
            json.dumps(
                {
                    "benchmark": "cost",
                    "quick": args.quick,
                    "machine": info,
                    "poll_interval_s": args.poll_interval,
                    "retrieval_count": args.retrieval_count,
                    "cursor_overlap_s": 3.0 if args.quick else args.cursor_overlap,
                    **result,
                    "elapsed_s": round(time.perf_counter() - started, 1),
                }
            )
        )
    else:
        report(result, args, info)
        print(f"\n(total {time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
