"""Propagation latency: how long a change on one side takes to show on the other.

Usage::

    python bench/latency.py                 # poll_interval 1 s and 15 s
    python bench/latency.py --quick         # poll_interval 1 s only, few changes (< 30 s)
    python bench/latency.py --json          # one JSON object
    python bench/latency.py --push          # push mode: poll 15 s, webhooks on (then 20 % lost)
    python bench/latency.py --push --journal 40   # and a run of 40 BigPanda comments

For each poll interval: both emulators (BigPanda rate-limited at its documented
5 requests/s per endpoint, the daemon pacing itself at the same figure) and a daemon
(``python -m sync run``) mapping the BigPanda tag ``impact_level`` <-> the ServiceNow field
``impact`` (high/medium/low <-> 1/2/3, direction both). A set of BigPanda incidents is
loaded as fixtures and synced (each gets its ServiceNow incident), then changes are made
at random times (uniform over a window), alternating sides at random, each on an incident
with no change in flight:

- BigPanda -> ServiceNow: ``POST .../incidents/{id}/tags/impact_level`` (User API key);
  done when ``GET /api/now/table/incident`` shows the mapped ``impact``;
- ServiceNow -> BigPanda: ``PATCH /api/now/table/incident/{sys_id}`` (Basic); done when
  the incident's ``impact_level`` tag shows the mapped value (read from the emulator's
  ``GET /_emulator/incidents``, which is neither rate limited nor counted, so the
  benchmark's own polling does not eat the daemon's rate budget).

The benchmark polls every 50 ms; a latency is from just before the write request to the
first poll that shows the value. Target: p99 <= poll_interval + 2 s in both directions.

``--push``: push mode (``[push] enabled``, the poll reconciling every 15 s): the BigPanda
emulator's webhook and the ServiceNow emulator's business rule call the daemon's
receivers with its bearer tokens (the incidents are loaded shared, as AutoShare would
have them). Two runs: every delivery arrives (target p99 < 1 s both ways), then 20 % of
the deliveries are dropped (``--drop``; target: every change arrives, the latest within
``reconcile_interval`` + 2 s). Both: 0 duplicate writes (each change makes exactly one
write on the other side; ``extra_writes`` counts any other).

``--push --journal N``: one more push run of N BigPanda comments (``POST .../comments``,
its ``incident#commented`` webhook on, as the README's set-up says) on the same 20
incidents; done when the comment's work note shows in ServiceNow's
``sys_journal_field``. No target (the journal entry's own latency, reported apart).
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

POLL_S = 0.05
DIRECTIONS = ("bp_to_sn", "sn_to_bp")
#: the direction of a BigPanda comment carried to a ServiceNow work note (``--journal``)
COMMENT = "bp_comment_to_sn"


@dataclass
class Run:
    poll_interval_s: float
    incidents: int
    changes: dict[str, int]
    missed: dict[str, int]
    p50_s: dict[str, float | None]
    p95_s: dict[str, float | None]
    p99_s: dict[str, float | None]
    max_s: dict[str, float | None]
    target_s: float
    target_met: bool
    daemon_cpu_s: float
    daemon_peak_rss_mb: float
    bp_429: int
    samples: dict[str, list[float]] = field(default_factory=dict)
    push: bool = False
    drop: float = 0.0
    extra_writes: int = 0
    """writes beyond one per change on each side (the benchmark's own and the daemon's)"""


@dataclass
class Pending:
    direction: str
    key: str  # sys_id (bp_to_sn) or BigPanda id (sn_to_bp)
    expected: str
    started: float
    done: asyncio.Future[float]


class Watcher:
    """One loop polling both sides every 50 ms for the changes in flight."""

    def __init__(self, api: h.Api) -> None:
        self.api = api
        self.pending: list[Pending] = []

    def add(self, p: Pending) -> None:
        self.pending.append(p)

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self._poll()
            except (aiohttp.ClientError, TimeoutError) as exc:
                h.log(f"watcher: {exc}")
            await asyncio.sleep(max(0.0, POLL_S - (time.monotonic() - started)))

    async def _poll(self) -> None:
        to_sn = [p for p in self.pending if p.direction == "bp_to_sn"]
        to_bp = [p for p in self.pending if p.direction == "sn_to_bp"]
        notes = [p for p in self.pending if p.direction == COMMENT]
        if notes:
            rows = await self.api.sn_journal(sorted({p.key for p in notes}))
            seen = time.monotonic()
            for p in notes:
                if any(r["element_id"] == p.key and p.expected in r["value"] for r in rows):
                    self._finish(p, seen)
        if to_sn:
            rows = await self.api.sn_query(
                "sys_idIN" + ",".join(p.key for p in to_sn), "sys_id,impact"
            )
            seen = time.monotonic()
            values = {r["sys_id"]: r.get("impact") for r in rows}
            for p in to_sn:
                if values.get(p.key) == p.expected:
                    self._finish(p, seen)
        if to_bp:
            dump = await self.api.bp_dump()
            seen = time.monotonic()
            values = {str(i["id"]): h.tag_values(i).get("impact_level") for i in dump}
            for p in to_bp:
                if values.get(p.key) == p.expected:
                    self._finish(p, seen)

    def _finish(self, p: Pending, seen: float) -> None:
        self.pending.remove(p)
        if not p.done.done():
            p.done.set_result(seen - p.started)


BP_TOKEN, SN_TOKEN = "bench-bigpanda-webhook", "bench-servicenow-rule"
TRIGGERS_WITH_COMMENTS = {
    "incident#new",
    "incident#updated",
    "incident#reopen",
    "incident#closed",
    "incident#commented",
    "incident-tag#upserted",
    "incident-tag#removed",
}


async def hook(
    api: h.Api, daemon: h.Daemon, drop: float, seed: int, *, comments: bool = False
) -> None:
    """Both emulators push to the daemon's receivers (``drop``: the share lost;
    ``comments``: BigPanda's comment updates on too)."""
    base = f"http://127.0.0.1:{daemon.http_port}/webhooks"
    faults = {"drop": drop, "seed": seed}
    for url, path, body in (
        (api.emus.bp_url, "webhook", {"url": f"{base}/bigpanda", "token": BP_TOKEN}),
        (api.emus.sn_url, "business_rule", {"url": f"{base}/servicenow", "token": SN_TOKEN}),
    ):
        config: dict[str, Any] = {
            "url": body["url"],
            "headers": {"Authorization": f"Bearer {body['token']}"},
            "faults": faults,
        }
        if comments and path == "webhook":
            config["triggers"] = sorted(TRIGGERS_WITH_COMMENTS)
        async with api.http.post(f"{url}/_emulator/{path}", json=config) as resp:
            if resp.status >= 300:
                raise RuntimeError(f"{path}: {resp.status} {await resp.text()}")


async def measure(
    poll_interval: float,
    *,
    incidents: int,
    changes: int,
    window_s: float,
    seed: int,
    push: bool = False,
    drop: float = 0.0,
    comments: int = 0,
) -> Run:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="bpsync-bench-latency-") as tmp_name:
        tmp = Path(tmp_name)
        emus = h.Emulators(tmp, rate_limit=5.0)
        async with aiohttp.ClientSession() as http:
            api = h.Api(http, emus)
            await emus.start(api)
            daemon: h.Daemon | None = None
            try:
                fixtures = [
                    h.bp_fixture(i, tags={"impact_level": "low"}, prefix="lat")
                    for i in range(incidents)
                ]
                for fixture in fixtures:
                    fixture["shared"] = push  # AutoShare's (only shared ones get webhooks)
                extra: dict[str, Any] = {"BPSYNC_BIGPANDA__RATE_LIMIT_PER_S": 5}
                if push:
                    extra.update(
                        BPSYNC_PUSH__ENABLED="true",
                        BPSYNC_PUSH__BIGPANDA_TOKEN=BP_TOKEN,
                        BPSYNC_PUSH__SERVICENOW_TOKEN=SN_TOKEN,
                    )
                bp_ids = await api.bp_fixtures(fixtures)
                # the benchmark rewrites one field of each incident every few seconds,
                # which the flip-flop guard would (rightly) freeze as a loop
                guard = {"guard": {"flip_flop_changes": 1000}}
                config = h.write_config(tmp / "bpsync.toml", guard, h.MAPPING)
                env = h.daemon_env(
                    emus,
                    tmp / "state",
                    poll_interval=poll_interval,
                    config=config,
                    extra=extra,
                )
                daemon = h.Daemon(tmp, env)
                await daemon.start(http)
                sys_ids: dict[str, str] = {}

                async def all_linked() -> bool:
                    rows = await api.sn_query(
                        "correlation_idIN" + ",".join(bp_ids), "sys_id,correlation_id"
                    )
                    sys_ids.update({r["correlation_id"]: r["sys_id"] for r in rows})
                    return len(sys_ids) == len(bp_ids)

                settled = await h.settle(
                    api, daemon, quiet_cycles=2, timeout_s=60 + 4 * poll_interval, done=all_linked
                )
                h.log(
                    f"  poll {poll_interval:g}s: {incidents} incidents linked "
                    f"and settled in {settled:.1f}s"
                )
                if push:
                    await hook(api, daemon, drop, seed, comments=bool(comments))
                cpu0 = daemon.cpu_s()
                stats0 = await api.snapshot()
                if comments:
                    samples, missed = await _comments(
                        api, rng, bp_ids=bp_ids, sys_ids=sys_ids, count=comments, window_s=window_s
                    )
                else:
                    samples, missed = await _changes(
                        api,
                        rng,
                        bp_ids=bp_ids,
                        sys_ids=sys_ids,
                        poll_interval=poll_interval,
                        changes=changes,
                        window_s=window_s,
                    )
                if push:
                    await asyncio.sleep(1.0)  # a late echo would show as an extra write
                cpu = daemon.cpu_s() - cpu0
                stats1 = await api.snapshot()
                bp_429 = (stats1["bigpanda"] - stats0["bigpanda"]).statuses.get("429", 0)
                writes = sum((stats1[side] - stats0[side]).writes for side in stats1)
                made = sum(len(samples[d]) + missed[d] for d in samples)
                mem = daemon.mem()
            finally:
                if daemon is not None:
                    daemon.stop()
                emus.stop()
    target = poll_interval + 2.0
    if push and not drop:
        target = 1.0
    directions = (COMMENT,) if comments else DIRECTIONS
    p99 = {d: h.rnd(h.percentile(samples[d], 99)) for d in directions}
    worst = {d: h.rnd(max(samples[d], default=None)) for d in directions}
    judged = worst if drop else p99  # with deliveries lost: the last one must arrive too
    extra_writes = int(writes - 2 * made)
    return Run(
        poll_interval_s=poll_interval,
        incidents=incidents,
        changes={d: len(samples[d]) + missed[d] for d in directions},
        missed=missed,
        p50_s={d: h.rnd(h.percentile(samples[d], 50)) for d in directions},
        p95_s={d: h.rnd(h.percentile(samples[d], 95)) for d in directions},
        p99_s=p99,
        max_s=worst,
        target_s=target,
        target_met=all(not missed[d] and (judged[d] or float("inf")) <= target for d in directions)
        and (not push or extra_writes == 0),
        daemon_cpu_s=round(cpu, 2),
        daemon_peak_rss_mb=round(mem["peak_rss_mb"], 1),
        bp_429=int(bp_429),
        samples={d: [round(s, 3) for s in samples[d]] for d in directions},
        push=push,
        drop=drop,
        extra_writes=extra_writes,
    )


async def _changes(
    api: h.Api,
    rng: random.Random,
    *,
    bp_ids: list[str],
    sys_ids: dict[str, str],
    poll_interval: float,
    changes: int,
    window_s: float,
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """``changes`` changes at uniform random times over ``window_s``; latencies per direction."""
    watcher = Watcher(api)
    watch_task = asyncio.create_task(watcher.run())
    current = dict.fromkeys(bp_ids, "low")
    busy: set[str] = set()
    samples: dict[str, list[float]] = {d: [] for d in DIRECTIONS}
    missed = dict.fromkeys(DIRECTIONS, 0)
    timeout_s = 3 * poll_interval + 30
    directions = [DIRECTIONS[i % 2] for i in range(changes)]
    rng.shuffle(directions)
    times = sorted(rng.uniform(0, window_s) for _ in range(changes))
    loop_start = time.monotonic()

    async def one(direction: str) -> None:
        while True:
            idle = [i for i in bp_ids if i not in busy]
            if idle:
                break
            await asyncio.sleep(POLL_S)
        bp = rng.choice(idle)
        busy.add(bp)
        try:
            value = rng.choice([v for v in h.IMPACT_MAP if v != current[bp]])
            current[bp] = value
            done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
            started = time.monotonic()
            if direction == "bp_to_sn":
                await api.bp_set_tag(bp, "impact_level", value)
                watcher.add(Pending(direction, sys_ids[bp], h.IMPACT_MAP[value], started, done))
            else:
                await api.sn_patch(sys_ids[bp], {"impact": h.IMPACT_MAP[value]})
                watcher.add(Pending(direction, bp, value, started, done))
            try:
                samples[direction].append(await asyncio.wait_for(done, timeout_s))
            except TimeoutError:
                missed[direction] += 1
                watcher.pending = [p for p in watcher.pending if p.done is not done]
                h.log(f"  missed: {direction} on {bp} not seen within {timeout_s:.0f}s")
        finally:
            busy.discard(bp)

    tasks = []
    for at, direction in zip(times, directions, strict=True):
        await asyncio.sleep(max(0.0, loop_start + at - time.monotonic()))
        tasks.append(asyncio.create_task(one(direction)))
    await asyncio.gather(*tasks)
    watch_task.cancel()
    return samples, missed


async def _comments(
    api: h.Api,
    rng: random.Random,
    *,
    bp_ids: list[str],
    sys_ids: dict[str, str],
    count: int,
    window_s: float,
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """``count`` BigPanda comments at uniform random times over ``window_s``, on any
    incident; the latency until each one's work note is in ServiceNow."""
    watcher = Watcher(api)
    watch_task = asyncio.create_task(watcher.run())
    samples: dict[str, list[float]] = {COMMENT: []}
    missed = {COMMENT: 0}
    times = sorted(rng.uniform(0, window_s) for _ in range(count))
    loop_start = time.monotonic()

    async def one(n: int) -> None:
        bp = rng.choice(bp_ids)
        token = f"bench comment {n} {rng.getrandbits(32):08x}"
        done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        started = time.monotonic()
        await api.bp_comment(bp, token)
        watcher.add(Pending(COMMENT, sys_ids[bp], token, started, done))
        try:
            samples[COMMENT].append(await asyncio.wait_for(done, 75))
        except TimeoutError:
            missed[COMMENT] += 1
            watcher.pending = [p for p in watcher.pending if p.done is not done]
            h.log(f"  missed: comment {n} on {bp}")

    tasks = []
    for n, at in enumerate(times):
        await asyncio.sleep(max(0.0, loop_start + at - time.monotonic()))
        tasks.append(asyncio.create_task(one(n)))
    await asyncio.gather(*tasks)
    watch_task.cancel()
    return samples, missed


def report(runs: list[Run], info: dict[str, Any]) -> None:
    print(f"propagation latency (s), machine: {info['nproc']} x {info['cpu_model']}")
    rows = []
    for r in runs:
        for d in r.changes:
            poll = f"{r.poll_interval_s:g} s"
            if r.push:
                poll += f" + push ({r.drop:.0%} lost)" if r.drop else " + push"
            rows.append(
                (
                    poll,
                    d.replace("_to_", " -> ")
                    .replace("bp_comment", "BigPanda comment")
                    .replace("bp", "BigPanda")
                    .replace("sn", "ServiceNow"),
                    r.changes[d],
                    r.missed[d],
                    r.p50_s[d],
                    r.p95_s[d],
                    r.p99_s[d],
                    r.max_s[d],
                    "-" if d == COMMENT else f"{'max' if r.drop else 'p99'} <= {r.target_s:g}",
                    "" if d == COMMENT else "met" if r.target_met else "MISSED",
                )
            )
    h.print_table(
        ("poll", "direction", "changes", "missed", "p50", "p95", "p99", "max", "target", ""),
        rows,
    )
    for r in runs:
        print(
            f"poll {r.poll_interval_s:g} s: daemon CPU {r.daemon_cpu_s:.2f} s during the changes, "
            f"peak RSS {r.daemon_peak_rss_mb:.1f} MB, BigPanda 429s {r.bp_429}, "
            f"extra writes {r.extra_writes}"
        )


async def main_async(args: argparse.Namespace) -> list[Run]:
    # poll, incidents, changes, window, drop, comments
    plans: list[tuple[float, int, int, float, float, int]] = []
    if args.push and args.quick:
        plans.append((3.0, 6, 16, 8.0, 0.0, 0))
    elif args.push:
        plans.append((15.0, 20, args.changes, 60.0, 0.0, 0))
        plans.append((15.0, 20, args.changes, 90.0, args.drop, 0))
        if args.journal:
            plans.append((15.0, 20, 0, 60.0, 0.0, args.journal))
    elif args.quick:
        plans.append((1.0, 6, 16, 8.0, 0.0, 0))
    else:
        plans.append((1.0, 20, args.changes, 60.0, 0.0, 0))
        plans.append((15.0, 20, args.changes_slow, 90.0, 0.0, 0))
    runs = []
    for poll, incidents, changes, window, drop, comments in plans:
        mode = (f", push ({drop:.0%} lost)" if drop else ", push") if args.push else ""
        what = f"{changes} changes"
        if comments:
            mode, what = ", push", f"{comments} BigPanda comments"
        h.log(f"poll_interval {poll:g}s{mode}: {what} over {window:g}s on {incidents} incidents")
        runs.append(
            await measure(
                poll,
                incidents=incidents,
                changes=changes,
                window_s=window,
                seed=args.seed,
                push=args.push,
                drop=drop,
                comments=comments,
            )
        )
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="poll_interval 1 s only, few changes")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of tables"
    )
    parser.add_argument("--changes", type=int, default=100, help="changes at poll_interval 1 s")
    parser.add_argument(
        "--changes-slow", type=int, default=40, help="changes at poll_interval 15 s"
    )
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument(
        "--push", action="store_true", help="push mode: poll 15 s, webhooks on both sides"
    )
    parser.add_argument(
        "--drop", type=float, default=0.2, help="--push: share of deliveries lost, 2nd run"
    )
    parser.add_argument(
        "--journal", type=int, default=0, help="--push: a 3rd run of N BigPanda comments"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    runs = asyncio.run(main_async(args))
    info = h.machine()
    if args.json:
        print(
            json.dumps(
                {
                    "benchmark": "latency",
                    "quick": args.quick,
                    "push": args.push,
                    "machine": info,
                    "runs": [asdict(r) for r in runs],
                    "target_met": all(r.target_met for r in runs),
                    "elapsed_s": round(time.perf_counter() - started, 1),
                }
            )
        )
    else:
        report(runs, info)
        print(f"\n(total {time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
