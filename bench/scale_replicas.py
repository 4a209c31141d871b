"""The replica phase of ``bench/scale.py --pairs``: 3 ``bpsync run`` replicas on Postgres
share 12 sync pairs (``--quick``: 6).

- The emulators: one ``bench/_emu_host.py`` process, one ServiceNow instance and one
  BigPanda organisation per pair. Each pair's schema is ``<prefix>_pNN`` (a fresh
  ``search_path`` prefix per run, ``bpsync_bench_<random>``), upgraded beforehand as
  ``bpsync db upgrade`` does, and dropped at the end.
- The replicas start one after the other; **settled** (seconds from the last one
  serving HTTP) = every pair led by exactly one replica and
  no replica above its fair share (``ceil(pairs / replicas)``), from each replica's
  ``/metrics`` (``bpsync_leader{pair} 1``), polled every 0.1 s: **pairs led per
  replica** then.
- Incidents are seeded in every pair (``--replica-seed`` each) and synced; a second
  batch is seeded, and right away one replica (the first) gets SIGKILL. **Takeover
  time** = seconds from the kill until every pair is led again by exactly one survivor.
  A third batch is seeded after the kill.
- **Duplicates** = ServiceNow tickets beyond the first for one BigPanda incident
  (``correlation_id``) over every pair's instance; **lost** = seeded incidents without
  a ticket when the wait (6 poll intervals + 60 s) ends. Both must be 0.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from bench import _harness as h
from bench import _pairs as p
from sync.pairconfig import expand_pairs
from sync.settings import load_settings
from sync.store import upgrade_database

DEFAULT_POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--replica-pairs", type=int, default=12)
    parser.add_argument("--replica-seed", type=int, default=2, help="incidents per pair per batch")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("BPSYNC_TEST_POSTGRES_URL") or DEFAULT_POSTGRES,
        help="the Postgres of the replicas (default: $BPSYNC_TEST_POSTGRES_URL or the CI one)",
    )
    parser.add_argument("--replica-poll-interval", type=float, default=1.0)


async def who_leads(replicas: list[h.Daemon], http: aiohttp.ClientSession) -> list[set[str]]:
    return list(await asyncio.gather(*(p.led_pairs(r, http) for r in replicas)))


def spread_ok(led: list[set[str]], names: list[str], share: int) -> bool:
    """Every pair led exactly once, nobody above ``share``."""
    return (
        sum(len(s) for s in led) == len(names)
        and set().union(*led) == set(names)
        and all(len(s) <= share for s in led)
    )


async def wait_spread(
    replicas: list[h.Daemon],
    http: aiohttp.ClientSession,
    names: list[str],
    timeout_s: float,
    timeline: list[tuple[float, list[int]]] | None = None,
) -> tuple[float | None, list[set[str]]]:
    """Seconds until the pairs are spread (None: not within ``timeout_s``), and who leads;
    each change of the pairs led per replica goes to ``timeline`` (seconds, counts)."""
    share = -(-len(names) // len(replicas))
    started = time.monotonic()
    while True:
        led = await who_leads(replicas, http)
        counts = [len(s) for s in led]
        if timeline is not None and (not timeline or timeline[-1][1] != counts):
            timeline.append((round(time.monotonic() - started, 2), counts))
        if spread_ok(led, names, share):
            return time.monotonic() - started, led
        if time.monotonic() - started > timeout_s:
            return None, led
        await asyncio.sleep(0.1)


async def drop_schemas(postgres_url: str, prefix: str) -> int:
    import asyncpg  # type: ignore[import-untyped]

    dsn = postgres_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE $1",
            prefix + "%",
        )
        for row in rows:
            await conn.execute(f'DROP SCHEMA "{row[0]}" CASCADE')
        return len(rows)
    finally:
        await conn.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    pairs, count, poll = args.replica_pairs, args.replicas, args.replica_poll_interval
    prefix = f"bpsync_bench_{uuid.uuid4().hex[:8]}"
    names = [p.pair_name(n) for n in range(pairs)]
    h.log(f"replicas: {count} x {pairs} pairs on Postgres (schemas {prefix}_*)")
    timeline: list[tuple[float, list[int]]]
    result: dict[str, Any] = {"replicas": count, "pairs": pairs, "poll_interval_s": poll}
    with tempfile.TemporaryDirectory(prefix="bpsync-bench-replicas-") as tmp_name:
        tmp = Path(tmp_name)
        host = p.EmuHost(tmp, pairs)
        replicas: list[h.Daemon] = []
        async with aiohttp.ClientSession() as http:
            try:
                apis = await host.start(http)
                config = tmp / "bpsync.toml"
                top = {
                    "database_url": f"{args.postgres_url}?search_path={prefix}",
                    "poll_interval": poll,
                }
                config.write_text(p.config_text(top, {}, host.sets, pairs=True))
                for pair in expand_pairs(load_settings(config, env_file=None)):
                    await upgrade_database(pair.settings.effective_database_url)
                for n in range(count):
                    work = tmp / f"r{n + 1}"
                    work.mkdir()
                    env = p.process_env(config, work / "state", h.free_port())
                    replicas.append(h.Daemon(work, env))
                for replica in replicas:
                    await replica.start(http, first_cycle=False, timeout_s=120)
                result["settle_timeline"] = timeline = []
                took, led = await wait_spread(replicas, http, names, 60 * poll, timeline)
                result["settle_s"] = None if took is None else round(took, 2)
                result["led_per_replica"] = [len(s) for s in led]
                result["each_pair_led_once"] = took is not None
                before = await p.seed(apis, args.replica_seed, "before")
                lost_before, _ = await p.wait_tickets(apis, before, 6 * poll + 60)
                at_kill = await p.seed(apis, args.replica_seed, "at-kill")
                victim, survivors = replicas[0], replicas[1:]
                assert victim.proc is not None
                result["victim_led"] = len(led[0])
                victim.proc.send_signal(signal.SIGKILL)
                victim.proc.wait()
                victim.proc = None
                result["takeover_timeline"] = timeline = []
                took, led = await wait_spread(survivors, http, names, 60 * poll, timeline)
                result["takeover_s"] = None if took is None else round(took, 2)
                result["led_per_survivor"] = [len(s) for s in led]
                result["each_pair_led_once_after_kill"] = took is not None
                after = await p.seed(apis, args.replica_seed, "after")
                every = [a + b + c for a, b, c in zip(before, at_kill, after, strict=True)]
                lost, duplicates = await p.wait_tickets(apis, every, 6 * poll + 60)
                result["seeded"] = sum(len(ids) for ids in every)
                result["lost"] = lost
                result["lost_before_kill"] = lost_before
                result["duplicates"] = duplicates
                result["failed_cycles"] = [int(await p.failed_cycles(r, http)) for r in survivors]
            finally:
                result["survivor_exit_codes"] = p.stop_all(replicas[1:])
                p.stop_all(replicas[:1])
                host.stop()
                result["schemas_dropped"] = await drop_schemas(args.postgres_url, prefix)
    return result


def report(rep: dict[str, Any]) -> None:
    print(
        f"{rep['replicas']} replicas on Postgres, {rep['pairs']} pairs "
        f"(poll {rep['poll_interval_s']:g} s)"
    )
    h.print_table(
        ("figure", "value"),
        [
            ("pairs led per replica (settled)", " / ".join(map(str, rep["led_per_replica"]))),
            ("every pair led exactly once", rep["each_pair_led_once"]),
            ("settled, s after the last replica serves", rep["settle_s"]),
            ("join: pairs led per replica at s", _timeline(rep.get("settle_timeline"))),
            ("takeover after SIGKILL (s)", rep["takeover_s"]),
            ("takeover: pairs led per survivor at s", _timeline(rep.get("takeover_timeline"))),
            ("pairs led per survivor", " / ".join(map(str, rep["led_per_survivor"]))),
            ("incidents seeded (before, at, after the kill)", rep["seeded"]),
            ("lost", rep["lost"]),
            ("duplicates", rep["duplicates"]),
        ],
    )


def _timeline(points: list[tuple[float, list[int]]] | None) -> str:
    return ", ".join(f"{'/'.join(map(str, led))} at {t:g}" for t, led in points or [])
