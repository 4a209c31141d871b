"""Pieces shared by the two phases of ``bench/scale.py --pairs`` (``scale_pairs.py``,
``scale_replicas.py``): the emulator host (``bench/_emu_host.py``: N emulator pairs in
one process), a ``[[pairs]]`` configuration, per-pair figures from ``/metrics``, and the
ticket count that finds duplicates."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench import _harness as h

HOST_SCRIPT = Path(__file__).resolve().parent / "_emu_host.py"


def pair_name(n: int) -> str:
    return f"p{n:02d}"


@dataclass
class EmuHost:
    """``bench/_emu_host.py --count N`` in a subprocess; ``sets[i]`` is pair i's
    emulators as a :class:`bench._harness.Emulators` (ports known, no process of its
    own), so :class:`bench._harness.Api` works on each."""

    workdir: Path
    count: int
    sets: list[h.Emulators] = field(default_factory=list)
    proc: Any = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "emulators.log"

    async def start(self, http: aiohttp.ClientSession) -> list[h.Api]:
        cmd = [h.PYTHON, str(HOST_SCRIPT), "--count", str(self.count)]
        self.proc = h.spawn(cmd, self.workdir, h.clean_env(), self.log_path)
        deadline = time.monotonic() + 30 + self.count
        ports: dict[str, list[int]] | None = None
        while ports is None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"emulator host exited:\n{h.tail(self.log_path)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"emulator host not up:\n{h.tail(self.log_path)}")
            for line in self.log_path.read_text(errors="replace").splitlines():
                if line.startswith("{"):
                    ports = json.loads(line)
            await asyncio.sleep(0.1)
        apis = []
        for sn_port, bp_port in zip(ports["servicenow"], ports["bigpanda"], strict=True):
            emus = h.Emulators(self.workdir, sn_port=sn_port, bp_port=bp_port)
            api = h.Api(http, emus)
            emus.env_id = await api.seeded_environment()
            self.sets.append(emus)
            apis.append(api)
        return apis

    def stop(self) -> None:
        if self.proc is not None:
            h.stop_process(self.proc, 10)
            self.proc = None


def config_text(
    top: Mapping[str, Any],
    sections: Mapping[str, Mapping[str, Any]],
    sets: Sequence[h.Emulators],
    *,
    pairs: bool,
) -> str:
    """A TOML configuration: ``top`` scalars, ``sections``, the benchmarks' tag mapping,
    and with ``pairs`` one ``[[pairs]]`` table per emulator set (named ``p00``...);
    without it the one set's URLs go in the top-level sections (a single-pair daemon)."""
    lines = [f"{k} = {h.toml_value(v)}" for k, v in top.items()]
    merged = {name: dict(values) for name, values in sections.items()}
    merged.setdefault("servicenow", {}).update(username=h.SN_USER, password=h.SN_PASSWORD)
    merged.setdefault("bigpanda", {}).update(api_key=h.BP_API_KEY, bearer_token=h.BP_ORG_TOKEN)
    if not pairs:
        (only,) = sets
        merged["servicenow"]["url"] = only.sn_url
        merged["bigpanda"].update(url=only.bp_url, environments=[only.env_id])
    for name, values in merged.items():
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {h.toml_value(v)}" for k, v in values.items())
    for rule in h.MAPPING:
        lines.append("[[tag_mapping]]")
        lines.extend(f"{k} = {h.toml_value(v)}" for k, v in rule.items())
    if pairs:
        for n, emus in enumerate(sets):
            lines += [
                "[[pairs]]",
                f"name = {h.toml_value(pair_name(n))}",
                "[pairs.servicenow]",
                f"url = {h.toml_value(emus.sn_url)}",
                "[pairs.bigpanda]",
                f"url = {h.toml_value(emus.bp_url)}",
                f"environments = {h.toml_value([emus.env_id])}",
            ]
    return "\n".join(lines) + "\n"


#: the daemon's BigPanda pacing and its guards off: the benchmarks measure work, not
#: waits (the emulators' limits are off too) or a guard's refusal of a small store
UNPACED_SECTIONS: Mapping[str, Mapping[str, Any]] = {
    "bigpanda": {"rate_limit_per_s": 1_000_000},
    "guard": {"empty_side_check": False, "min_links": 10_000_000},
}


def write_config(
    work: Path, top: Mapping[str, Any], sets: Sequence[h.Emulators], *, pairs: bool
) -> Path:
    """``work/bpsync.toml``: :func:`config_text` with :data:`UNPACED_SECTIONS`."""
    config = work / "bpsync.toml"
    config.write_text(config_text(top, UNPACED_SECTIONS, sets, pairs=pairs))
    return config


def process_env(config: Path, state_dir: Path, http_port: int) -> dict[str, str]:
    """A daemon's environment: everything else is in ``config``."""
    return h.clean_env(
        {
            "BPSYNC_CONFIG": str(config),
            "BPSYNC_STATE_DIR": str(state_dir),
            "BPSYNC_HTTP_PORT": str(http_port),
            "BPSYNC_LOG_FORMAT": "json",
        }
    )


async def pair_cycles(daemon: h.Daemon, http: aiohttp.ClientSession) -> dict[str, float]:
    """Cycles finished so far per pair (every outcome)."""
    out: dict[str, float] = {}
    for labels, value in (await daemon.metrics(http)).get(
        "bpsync_cycle_duration_seconds_count", []
    ):
        pair = labels.get("pair", "default")
        out[pair] = out.get(pair, 0.0) + value
    return out


async def failed_cycles(daemon: h.Daemon, http: aiohttp.ClientSession) -> float:
    return (await daemon.cycles(http)).errors


async def led_pairs(daemon: h.Daemon, http: aiohttp.ClientSession) -> set[str]:
    """The pairs this replica leads (``bpsync_leader{pair} 1``); empty if unreachable."""
    try:
        metrics = await daemon.metrics(http)
    except (aiohttp.ClientError, OSError):
        return set()
    return {labels["pair"] for labels, v in metrics.get("bpsync_leader", []) if v == 1}


async def wait_every_pair(
    daemon: h.Daemon, http: aiohttp.ClientSession, pairs: Sequence[str], n: int, timeout_s: float
) -> dict[str, float]:
    """Wait until every pair of ``pairs`` has finished ``n`` more cycles."""
    start = await pair_cycles(daemon, http)
    deadline = time.monotonic() + timeout_s
    while True:
        now = await pair_cycles(daemon, http)
        if all(now.get(p, 0) >= start.get(p, 0) + n for p in pairs):
            return now
        if daemon.proc is not None and daemon.proc.poll() is not None:
            raise RuntimeError(f"daemon exited:\n{h.tail(daemon.log_path)}")
        if time.monotonic() > deadline:
            slow = [p for p in pairs if now.get(p, 0) < start.get(p, 0) + n]
            raise TimeoutError(f"{len(slow)} pairs did not run {n} cycles: {slow[:5]}")
        await asyncio.sleep(0.1)


async def snapshots(apis: Sequence[h.Api]) -> list[dict[str, h.Stats]]:
    """Every pair's request counters, both sides (taken concurrently)."""
    return list(await asyncio.gather(*(api.snapshot() for api in apis)))


async def total_writes(apis: Sequence[h.Api]) -> int:
    return sum(s.writes for snap in await snapshots(apis) for s in snap.values())


async def settle_pairs(
    apis: Sequence[h.Api],
    daemon: h.Daemon,
    pairs: Sequence[str],
    *,
    quiet_rounds: int = 2,
    timeout_s: float = 300,
) -> float:
    """Wait until ``quiet_rounds`` rounds in which every pair ran a cycle made no write on
    any emulator; the seconds it took."""
    started = time.monotonic()
    quiet = 0
    before = await total_writes(apis)
    while quiet < quiet_rounds:
        left = timeout_s - (time.monotonic() - started)
        if left <= 0:
            raise TimeoutError(f"the pairs did not settle within {timeout_s}s")
        await wait_every_pair(daemon, apis[0].http, pairs, 1, left)
        now = await total_writes(apis)
        quiet = quiet + 1 if now == before else 0
        before = now
    return time.monotonic() - started


async def tickets(api: h.Api) -> Counter[str]:
    """correlation_id -> how many ServiceNow incidents of this pair carry it."""
    rows = await api.sn_query("correlation_idISNOTEMPTY", "sys_id,correlation_id")
    return Counter(row["correlation_id"] for row in rows)


async def wait_tickets(
    apis: Sequence[h.Api], ids: Sequence[Sequence[str]], timeout_s: float
) -> tuple[int, int]:
    """Wait until every BigPanda incident ``ids[i]`` of pair i has a ticket; (lost,
    duplicates) then: incidents without a ticket at the deadline, and tickets beyond
    the first for one incident over every pair's incidents (all of them, not only
    ``ids``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = await asyncio.gather(*(tickets(api) for api in apis))
        lost = sum(1 for per, want in zip(found, ids, strict=True) for i in want if not per[i])
        if lost == 0 or time.monotonic() > deadline:
            duplicates = sum(n - 1 for per in found for n in per.values() if n > 1)
            return lost, duplicates
        await asyncio.sleep(0.5)


async def seed(apis: Sequence[h.Api], count: int, tag: str) -> list[list[str]]:
    """``count`` new active BigPanda incidents in every pair; their ids per pair."""
    start = int(time.time()) - 30
    out = []
    for n, api in enumerate(apis):
        fixtures = [h.bp_fixture(i, start=start, prefix=f"{tag}-{n}") for i in range(count)]
        out.append(await api.bp_fixtures(fixtures))
    return out


def stop_all(daemons: Sequence[h.Daemon]) -> list[int | None]:
    codes = []
    for daemon in daemons:
        with contextlib.suppress(Exception):
            codes.append(daemon.stop())
    return codes
