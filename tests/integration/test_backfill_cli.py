"""``bpsync backfill`` and ``bpsync demo`` end to end against the emulators.

The CLI runs in a subprocess (``python -m sync``) while this test's loop serves both
emulators, so it can be killed part way: a backfill of 1,000 BigPanda incidents, killed
(SIGKILL), interrupted (SIGINT) and resumed, creates exactly 1,000 ServiceNow incidents;
a dry run sends no write request at all.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sync.clock import SystemClock, epoch_s
from sync.demo import DemoOptions, run_demo
from sync.emulators import bigpanda as bp_emulator
from sync.emulators import servicenow as sn_emulator
from sync.emulators.control import serve_app

ENV_ID = bp_emulator.DEFAULT_ENVIRONMENT_ID


@dataclass
class Emulators:
    sn_url: str
    bp_url: str
    sn_state: Any
    bp_state: Any
    state_dir: Path

    def environ(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BPSYNC_")}
        env.update(
            BPSYNC_SERVICENOW__URL=self.sn_url,
            BPSYNC_SERVICENOW__USERNAME="bpsync",
            BPSYNC_SERVICENOW__PASSWORD="bpsync",
            BPSYNC_BIGPANDA__URL=self.bp_url,
            BPSYNC_BIGPANDA__API_KEY=bp_emulator.DEFAULT_API_KEY,
            BPSYNC_BIGPANDA__BEARER_TOKEN=bp_emulator.DEFAULT_ORG_TOKEN,
            BPSYNC_BIGPANDA__ENVIRONMENTS=ENV_ID,
            BPSYNC_BIGPANDA__RATE_LIMIT_PER_S="10000",  # the emulator's limit is off too
            BPSYNC_STATE_DIR=str(self.state_dir),
        )
        return env

    def sn_correlated(self) -> Counter[str]:
        rows = self.sn_state.tables["incident"].values()
        return Counter(r["correlation_id"] for r in rows if r.get("correlation_id"))

    async def writes(self) -> tuple[int, int]:
        async with aiohttp.ClientSession() as session:
            counts = []
            for url in (self.sn_url, self.bp_url):
                async with session.get(f"{url}/_emulator/stats") as response:
                    counts.append(int((await response.json())["writes"]))
        return counts[0], counts[1]


@pytest.fixture
async def emulators(tmp_path: Path) -> AsyncIterator[Emulators]:
    sn_app = sn_emulator.create_app()
    bp_app = bp_emulator.create_app(rate_limit_per_s=None)
    async with serve_app(sn_app) as sn_url, serve_app(bp_app) as bp_url:
        yield Emulators(
            sn_url,
            bp_url,
            sn_app[sn_emulator.STATE_KEY],
            bp_app[bp_emulator.STATE_KEY],
            tmp_path / "state",
        )


def load_incidents(emulators: Emulators, count: int) -> list[str]:
    """``count`` active incidents started over the last 2 hours (one alert each)."""
    now = epoch_s(SystemClock().now())
    ids = []
    for n in range(count):
        start = now - 7200 + (n * 7000) // count
        incident = emulators.bp_state.load_incident(
            {
                "status": "critical",
                "start": start,
                "incident_tags": {"priority": "P2"},
                "alerts": [
                    {"status": "critical", "start": start, "tags": {"host": f"host-{n:04d}"}}
                ],
            }
        )
        ids.append(incident.id)
    return ids


async def start(emulators: Emulators, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sync",
        "backfill",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=emulators.environ(),
    )


async def wait_until(predicate: Callable[[], bool], within_s: float) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def finish(proc: asyncio.subprocess.Process, within_s: float = 300) -> tuple[int, str, str]:
    out, err = await asyncio.wait_for(proc.communicate(), timeout=within_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_backfill_of_1000_killed_interrupted_and_resumed_creates_each_once(
    emulators: Emulators,
) -> None:
    ids = load_incidents(emulators, 1000)
    args = ("--since", "3h")
    # 1. killed outright part way (SIGKILL: no chance to save anything more)
    proc = await start(emulators, *args)
    await wait_until(lambda: len(emulators.sn_correlated()) >= 250, within_s=240)
    proc.kill()
    code, _, _ = await finish(proc)
    assert code == -signal.SIGKILL
    after_kill = len(emulators.sn_correlated())
    assert 250 <= after_kill < 1000
    # 2. resumed, then interrupted with Ctrl-C: stops after the page, progress saved
    proc = await start(emulators, *args)
    await wait_until(lambda: len(emulators.sn_correlated()) >= after_kill + 250, within_s=240)
    proc.send_signal(signal.SIGINT)
    code, out, err = await finish(proc)
    assert code == 130, (out, err)
    assert "resumed from saved progress" in out
    assert "run the same command again to resume" in err
    assert "Traceback" not in err
    assert len(emulators.sn_correlated()) < 1000
    # 3. resumed to the end
    proc = await start(emulators, *args)
    code, out, err = await finish(proc)
    assert code == 0, (out, err)
    assert "resumed from saved progress" in out
    assert "created in ServiceNow" in out
    per_incident = emulators.sn_correlated()
    assert len(per_incident) == 1000
    assert set(per_incident) == set(ids)
    assert max(per_incident.values()) == 1  # exactly one ServiceNow incident each
    untagged = [i for i in ids if "servicenow_link" not in emulators.bp_state.incidents[i].tags]
    # every link tag arrived, even for the create that completed at the SIGKILL (B15)
    assert untagged == []


async def test_dry_run_sends_no_write_and_prints_each_action(emulators: Emulators) -> None:
    load_incidents(emulators, 40)
    proc = await start(emulators, "--since", "1d", "--dry-run")
    code, out, err = await finish(proc, within_s=120)
    assert code == 0, (out, err)
    creates = [line for line in out.splitlines() if line.startswith("create ServiceNow incident")]
    assert len(creates) == 40
    assert "would be created in ServiceNow" in out
    assert await emulators.writes() == (0, 0)
    assert not emulators.sn_correlated()
    assert not (emulators.state_dir / "bpsync.db").exists()  # no store write either


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--since", "last week"), "--since 'last week' is not a time"),
        (("--since", "1d", "--until", "2d"), "must be before --until"),
    ],
)
async def test_bad_times_are_one_line_errors(
    emulators: Emulators, args: tuple[str, ...], message: str
) -> None:
    code, _, err = await finish(await start(emulators, *args), within_s=60)
    assert code != 0
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


async def test_demo_links_pairs_and_stops_by_itself(tmp_path: Path) -> None:
    result = await run_demo(
        DemoOptions(
            duration=10,
            live=False,
            poll_interval=1.0,
            change_interval=1.0,
            incidents=4,
            state_dir=tmp_path / "demo",
            servicenow_port=0,
            bigpanda_port=0,
        )
    )
    assert result.linked >= 4
    assert result.cycles >= 3 and result.failed_cycles == 0
    assert result.changes >= 1
    assert all(pair["ServiceNow"].startswith("INC") for pair in result.pairs)
    # what the closing table lists as linked agrees on both sides (priority <-> urgency
    # both ways, category), after edits on both sides
    assert result.disagreeing == [], result.pairs


async def test_demo_command_no_live(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BPSYNC_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sync",
        "demo",
        "--duration",
        "6",
        "--no-live",
        "--servicenow-port",
        "0",
        "--bigpanda-port",
        "0",
        "--state-dir",
        str(tmp_path / "demo"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    code, out, err = await finish(proc, within_s=60)
    assert code == 0, (out, err)
    assert "linked pairs" in out and "INC00" in out
    assert "curl -u bpsync:bpsync" in out
    assert "demo stopped:" in out
