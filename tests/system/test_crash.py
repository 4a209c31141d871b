"""The crash test (SPEC B2, B15; issue 6): ``bpsync run`` as a subprocess, SIGKILLed at
random points 20 times while incidents are created and changed on both sides, restarted
each time. At the end every change is present and no ServiceNow incident is duplicated
(counted through ``correlation_id`` in the ServiceNow emulator).

The emulators run in this test process on the real clock (``live_world``); the daemon
is ``python -m sync run`` configured by environment variables, its log in a file. The
figures (SIGKILLs survived, duplicates, lost changes) are printed; run with ``-s`` to
see them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from sync.emulators import bigpanda as bp_emulator

from .conftest import BP_API_KEY, BP_ORG_TOKEN, SN_PASSWORD, SN_USER, World
from .helpers import Emu

pytestmark = pytest.mark.slow

KILLS = 20
#: a kill lands this long after the (re)start: from before the first cycle to mid-work
KILL_AFTER_S = (0.6, 2.6)
SETTLE_TIMEOUT_S = 30.0
#: fields ServiceNow gives no default at create: a default counts as a ServiceNow change,
#: which the "newest" policy may prefer to an earlier BigPanda edit (a conflict, not a loss)
CRASH_MAPPING = [
    {"bigpanda_tag": "bp_note", "servicenow_field": "subcategory", "direction": "both"},
    {"bigpanda_tag": "sn_channel", "servicenow_field": "contact_type", "direction": "sn_to_bp"},
]
CRASH_TAGS = ("bp_note", "sn_channel")


def daemon_env(world: World, state_dir: Path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BPSYNC_")}
    environ.update(
        {
            "BPSYNC_SERVICENOW__URL": world.sn_url,
            "BPSYNC_SERVICENOW__USERNAME": SN_USER,
            "BPSYNC_SERVICENOW__PASSWORD": SN_PASSWORD,
            "BPSYNC_BIGPANDA__URL": world.bp_url,
            "BPSYNC_BIGPANDA__API_KEY": BP_API_KEY,
            "BPSYNC_BIGPANDA__BEARER_TOKEN": BP_ORG_TOKEN,
            "BPSYNC_BIGPANDA__ENVIRONMENTS": bp_emulator.DEFAULT_ENVIRONMENT_ID,
            "BPSYNC_BIGPANDA__RATE_LIMIT_PER_S": "1000",
            "BPSYNC_STATE_DIR": str(state_dir),
            "BPSYNC_POLL_INTERVAL": "0.2",
            "BPSYNC_HTTP_PORT": "0",
            "BPSYNC_RETRY__INTERVAL": "0.5",
            "BPSYNC_RETRY__IN_CYCLE_BACKOFF": "0.05",
            "BPSYNC_RETRY__IN_CYCLE_BACKOFF_MAX": "0.2",
            "BPSYNC_TAG_MAPPING": json.dumps(CRASH_MAPPING),
            "BPSYNC_LOG_FORMAT": "json",
        }
    )
    return environ


class Workload:
    """People at work on both sides: new incidents, BigPanda tag edits, ServiceNow edits.

    ``want_sn[bp_id]`` is the last ``bp_note`` set in BigPanda (expected in the
    ServiceNow ``subcategory``); ``want_bp[bp_id]`` the last ``contact_type`` set in
    ServiceNow (expected in the BigPanda tag ``sn_channel``).
    """

    def __init__(self, emu: Emu, rng: random.Random) -> None:
        self.emu = emu
        self.rng = rng
        self.bp_ids: list[str] = []
        self.sys_ids: dict[str, str] = {}
        self.want_sn: dict[str, str] = {}
        self.want_bp: dict[str, str] = {}
        self.counts: Counter[str] = Counter()
        self._n = 0

    async def step(self) -> None:
        self._n += 1
        roll = self.rng.random()
        if (roll < 0.15 and len(self.bp_ids) < 40) or len(self.bp_ids) < 3:
            host = f"crash-{len(self.bp_ids):03d}"
            bp_id = await self.emu.new_incident(host, check="cpu")
            self.bp_ids.append(bp_id)
            self.counts["incidents"] += 1
        elif roll < 0.65:
            bp_id = self.rng.choice(self.bp_ids)
            value = f"area-{self._n}"
            await self.emu.set_tags(bp_id, bp_note=value)
            self.want_sn[bp_id] = value
            self.counts["bigpanda changes"] += 1
        else:
            known = list(self.sys_ids)
            bp_id = self.rng.choice(known if known and self.rng.random() < 0.7 else self.bp_ids)
            sys_id = self.sys_ids.get(bp_id)
            if sys_id is None:
                found = await self.emu.sn_for(bp_id)
                if not found:
                    return  # not in ServiceNow yet
                sys_id = self.sys_ids[bp_id] = found[0]["sys_id"]
            value = f"sub-{self._n}"
            await self.emu.sn_patch(sys_id, {"contact_type": value})
            self.want_bp[bp_id] = value
            self.counts["servicenow changes"] += 1

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.step()
            await asyncio.sleep(self.rng.uniform(0.03, 0.15))

    async def lost(self) -> list[str]:
        """Every expectation not met (a change or an incident lost)."""
        missing: list[str] = []
        correlations = await self.correlations()
        for bp_id in self.bp_ids:
            if correlations[bp_id] == 0:
                missing.append(f"{bp_id}: no ServiceNow incident")
        for bp_id, value in self.want_sn.items():
            found = await self.emu.sn_for(bp_id)
            if not found or found[0].get("subcategory") != value:
                got = found[0].get("subcategory") if found else None
                missing.append(f"{bp_id}: subcategory {got!r}, want {value!r}")
        for bp_id, value in self.want_bp.items():
            got = (await self.emu.tags(bp_id)).get("sn_channel")
            if got != value:
                missing.append(f"{bp_id}: sn_channel {got!r}, want {value!r}")
        return missing

    async def correlations(self) -> Counter[str]:
        rows = await self.emu.sn_query("correlation_idISNOTEMPTY")
        return Counter(row["correlation_id"] for row in rows)


class Daemon:
    """``python -m sync run`` started, killed and restarted; one log file per start."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0

    async def start(self) -> None:
        self.starts += 1
        log = (self.log_dir / f"daemon-{self.starts:02d}.log").open("wb")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "sync",
                "run",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self.env,
            )
        finally:
            log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def wait_running(self, within: float = 30.0) -> None:
        """Until the daemon logs that it serves (its signal handlers are installed long
        before; a SIGTERM sent while the interpreter itself still starts cannot be
        handled by any program)."""
        path = self.log_dir / f"daemon-{self.starts:02d}.log"
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for line in path.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    if entry.get("logger") == "sync.runtime.daemon" and "http_port" in entry:
                        return
            assert self.alive(), f"the daemon died while starting:\n{self.tail()}"
            await asyncio.sleep(0.05)
        raise AssertionError(f"the daemon did not start:\n{self.tail()}")

    async def kill(self) -> int | None:
        """SIGKILL; the exit code it had if it died on its own before (None: killed)."""
        assert self.proc is not None
        if self.proc.returncode is not None:
            return self.proc.returncode
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        return None

    async def stop(self) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(self.proc.wait(), 10)
            self.proc.kill()
        return await self.proc.wait()

    def tail(self) -> str:
        path = self.log_dir / f"daemon-{self.starts:02d}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


async def test_sigkill_20_times_loses_no_change_and_duplicates_nothing(
    live_world: World, tmp_path: Path
) -> None:
    world = live_world
    emu = Emu(world)
    await emu.define_tags(*CRASH_TAGS)
    seed = int(os.environ.get("BPSYNC_TEST_CRASH_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    work = Workload(emu, rng)
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    daemon = Daemon(daemon_env(world, state_dir), tmp_path)
    started = time.monotonic()

    stop = asyncio.Event()
    workload = asyncio.create_task(work.run(stop))
    survived = 0
    died_alone: list[str] = []
    try:
        for _ in range(KILLS):
            await daemon.start()
            await asyncio.sleep(rng.uniform(*KILL_AFTER_S))
            code = await daemon.kill()
            if code is not None:
                died_alone.append(f"exit {code}:\n{daemon.tail()}")
                continue
            survived += 1
        stop.set()
        await workload
        # the last start: let it settle
        await daemon.start()
        await daemon.wait_running()
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        lost = await work.lost()
        while lost and time.monotonic() < deadline:
            assert daemon.alive(), f"the daemon died:\n{daemon.tail()}"
            await asyncio.sleep(0.5)
            lost = await work.lost()
        assert await daemon.stop() == 0, daemon.tail()
    finally:
        stop.set()
        if not workload.done():
            workload.cancel()
        if daemon.alive():
            await daemon.kill()

    correlations = await work.correlations()
    duplicates = sum(n - 1 for n in correlations.values() if n > 1)
    print(
        f"\ncrash test (seed {seed}): {survived} SIGKILLs survived of {KILLS}, "
        f"{work.counts['incidents']} incidents, {work.counts['bigpanda changes']} BigPanda "
        f"and {work.counts['servicenow changes']} ServiceNow changes; "
        f"duplicates: {duplicates}, lost changes: {len(lost)}, "
        f"{time.monotonic() - started:.1f}s"
    )
    assert not died_alone, "the daemon exited by itself:\n" + "\n".join(died_alone)
    assert survived == KILLS
    assert duplicates == 0, {cid: n for cid, n in correlations.items() if n > 1}
    assert not lost, lost[:20]
    assert set(correlations) >= set(work.bp_ids)
