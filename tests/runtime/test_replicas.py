"""Replicas that add capacity (Postgres): three ``bpsync run`` processes share twelve
sync pairs, each pair with its own emulators and its own schema.

- a replica alone leads every pair; two more join and each of the three leads four,
  within two poll intervals of the joiners running;
- SIGKILL one: the two left lead six each within two poll intervals;
- throughout, every BigPanda incident of every pair gets exactly one ServiceNow ticket
  in its own pair's instance (0 duplicates, 0 lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sync.emulators import bigpanda, servicenow
from sync.emulators.control import serve_app
from sync.pairconfig import expand_pairs
from sync.settings import load_settings
from sync.store import upgrade_database

from .test_daemon_process import (  # noqa: F401 - daemons: the fixture
    Apis,
    DaemonProc,
    assert_no_duplicates,
    daemons,
    wait_synced,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

PAIRS = 12
POLL_S = 1.0


@contextlib.asynccontextmanager
async def emulator_sets(count: int) -> AsyncIterator[list[Apis]]:
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession())
        sets = []
        for _ in range(count):
            sn = await stack.enter_async_context(serve_app(servicenow.create_app()))
            bp = await stack.enter_async_context(
                serve_app(bigpanda.create_app(rate_limit_per_s=None))
            )
            sets.append(Apis(sn, bp, session))
        yield sets


def config_text(sets: list[Apis], database_url: str) -> str:
    lines = [
        f'database_url = "{database_url}"',
        f"poll_interval = {POLL_S}",
        "http_port = 0",
        'log_format = "json"',
        "[servicenow]",
        'username = "bpsync"',
        'password = "bpsync"',
        "[bigpanda]",
        'api_key = "BPUbpsync-emulator"',
        'bearer_token = "bpsync-org-token"',
    ]
    for n, apis in enumerate(sets):
        lines += [
            "[[pairs]]",
            f'name = "p{n:02d}"',
            "[pairs.servicenow]",
            f'url = "{apis.sn}"',
            "[pairs.bigpanda]",
            f'url = "{apis.bp}"',
        ]
    return "\n".join(lines) + "\n"


def leaders(metrics_text: str) -> set[str]:
    """The pairs this replica leads (``bpsync_leader{pair=...} 1.0``)."""
    return set(re.findall(r'^bpsync_leader\{pair="([^"]+)"\} 1\.0$', metrics_text, re.MULTILINE))


async def led_by(replicas: list[DaemonProc]) -> list[set[str]]:
    out = []
    for replica in replicas:
        try:
            out.append(leaders(await replica.metrics()))
        except aiohttp.ClientError:
            out.append(set())
    return out


async def wait_spread(
    replicas: list[DaemonProc], each: int, within: float
) -> tuple[float, list[set[str]]]:
    """Seconds until every replica leads ``each`` pairs and all pairs are led."""
    started = time.monotonic()
    while True:
        led = await led_by(replicas)
        if all(len(s) == each for s in led) and len(set().union(*led)) == PAIRS:
            return time.monotonic() - started, led
        if time.monotonic() - started > within:
            raise AssertionError(
                f"not spread {each} each within {within}s: {led}; locks: {await lock_holders()}"
            )
        await asyncio.sleep(0.05)


async def longest_cycle(replica: DaemonProc) -> float:
    """The longest mean cycle of any pair this replica ran (``cycle_duration_seconds``)."""
    text = await replica.metrics()
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    pattern = r'^bpsync_cycle_duration_seconds_(sum|count)\{outcome="ok",pair="([^"]+)"\} (\S+)$'
    for kind, pair, value in re.findall(pattern, text, re.MULTILINE):
        (sums if kind == "sum" else counts)[pair] = float(value)
    means = [sums[p] / counts[p] for p in sums if counts.get(p)]
    return max(means, default=0.0)


async def lock_holders() -> list[tuple[str, int]]:
    """Who holds bpsync advisory locks (application name, lock objid): for a failure."""
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/test")
    try:
        rows = await conn.fetch(
            "SELECT a.application_name, l.objid FROM pg_locks l JOIN pg_stat_activity a"
            " ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted"
            " AND a.application_name LIKE 'bpsync leader%'"
        )
        busy = await conn.fetch(
            "SELECT pid, application_name, state, wait_event_type, wait_event,"
            " left(query, 120) AS q, now() - xact_start AS age FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND state <> 'idle'"
        )
    finally:
        await conn.close()
    return sorted((str(r[0]), int(r[1])) for r in rows) + [tuple(b) for b in busy]


async def seed_all(sets: list[Apis], tag: str) -> list[list[str]]:
    return [await apis.seed_bp(2, f"{tag}-{n}") for n, apis in enumerate(sets)]


def joined(*rounds: list[list[str]]) -> list[list[str]]:
    """Per pair, the ids of every round."""
    return [[i for ids in per_pair for i in ids] for per_pair in zip(*rounds, strict=True)]


async def all_synced(sets: list[Apis], ids: list[list[str]]) -> None:
    for apis, bp_ids in zip(sets, ids, strict=True):
        found: Counter[str] = await wait_synced(apis, bp_ids, within=60)
        assert_no_duplicates(found)
        assert sum(found[i] for i in bp_ids) == len(bp_ids)


async def test_three_replicas_share_twelve_pairs_through_a_join_and_a_kill(
    daemons: Any,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    postgres_url: str,
) -> None:
    prefix = f"bpsync_rep_{uuid.uuid4().hex[:8]}"
    database_url = f"{postgres_url}?search_path={prefix}"
    async with emulator_sets(PAIRS) as sets:
        config = tmp_path / "bpsync.toml"
        config.write_text(config_text(sets, database_url))
        settings = load_settings(config, env_file=None)
        for pair in expand_pairs(settings):
            await upgrade_database(pair.settings.effective_database_url)
        env = {"BPSYNC_CONFIG": str(config)}

        first = await daemons("r1", {**env, "BPSYNC_STATE_DIR": str(tmp_path / "r1")})
        await first.wait_running(within=60)
        await wait_spread([first], PAIRS, within=10 * POLL_S)
        before = await seed_all(sets, "alone")
        await all_synced(sets, before)

        joiners = [
            await daemons(name, {**env, "BPSYNC_STATE_DIR": str(tmp_path / name)})
            for name in ("r2", "r3")
        ]
        for joiner in joiners:
            await joiner.wait_running(within=60)
        # a pair is handed over between its cycles: idle pairs' cycles are short, so
        # the join settles within two intervals (the hand-over, then the take-over)
        took, led = await wait_spread([first, *joiners], PAIRS // 3, within=30 * POLL_S)
        # a pair moves between its cycles: two intervals, plus the cycle in flight on a
        # loaded machine (each pair's longest cycle so far, from /metrics)
        allowed = 2 * POLL_S + await longest_cycle(first) + 0.5
        assert took <= allowed, f"the join settled in {took:.2f}s (allowed {allowed:.2f}s)"
        assert sum(len(s) for s in led) == PAIRS  # each pair led exactly once
        during = await seed_all(sets, "join")
        await all_synced(sets, joined(before, during))

        victim = joiners[0]
        victim.proc.send_signal(signal.SIGKILL)
        await victim.proc.wait()
        survivors = [first, joiners[1]]
        took, led = await wait_spread(survivors, PAIRS // 2, within=30 * POLL_S)
        allowed = 2 * POLL_S + await longest_cycle(first) + 0.5
        assert took <= allowed, f"the take-over settled in {took:.2f}s (allowed {allowed:.2f}s)"
        after = await seed_all(sets, "after")
        await all_synced(sets, joined(before, during, after))
        for survivor in survivors:
            code, stop_s = await survivor.stop(signal.SIGTERM)
            assert (code, stop_s < 10) == (0, True), survivor.log_text()
