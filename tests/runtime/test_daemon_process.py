"""``bpsync run`` as a real process against the emulators (SPEC B17, B18, B2).

The emulators run in this test process (``serve_app``); each daemon is
``python -m sync run`` in a subprocess, configured by environment variables, its JSON
log in a file (the ``bpsync running`` line gives the HTTP port, ``http_port=0``).

- B17: SIGTERM while writes are in flight exits 0 within 10 s; a restart then finishes
  the work: every BigPanda incident has exactly one ServiceNow incident.
- B18: two replicas on one Postgres schema: one leads (``/readyz`` leader 1) and only it
  writes; SIGKILL it and the other leads within 2 poll intervals; no duplicates.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sync.emulators.control import serve_app
from tests.system.helpers import critical_incidents

pytestmark = pytest.mark.slow

SN_AUTH = {"Authorization": "Basic " + base64.b64encode(b"bpsync:bpsync").decode()}


@dataclass
class Apis:
    sn: str
    bp: str
    session: aiohttp.ClientSession

    async def seed_bp(self, count: int, prefix: str) -> list[str]:
        """``count`` active critical BigPanda incidents; returns their ids."""
        fixtures = critical_incidents(count, prefix)
        async with self.session.post(self.bp + "/_emulator/incidents", json=fixtures) as resp:
            assert resp.status == 201, await resp.text()
            ids: list[str] = (await resp.json())["incidents"]
        assert len(ids) == count
        return ids

    async def sn_correlations(self) -> Counter[str]:
        """correlation_id -> how many ServiceNow incidents carry it."""
        params = {
            "sysparm_fields": "sys_id,correlation_id",
            "sysparm_query": "correlation_idISNOTEMPTY",
            "sysparm_limit": "10000",
        }
        async with self.session.get(
            self.sn + "/api/now/table/incident", params=params, headers=SN_AUTH
        ) as resp:
            assert resp.status == 200, await resp.text()
            rows = (await resp.json())["result"]
        return Counter(row["correlation_id"] for row in rows)

    async def sn_stats(self) -> dict[str, Any]:
        async with self.session.get(self.sn + "/_emulator/stats") as resp:
            data: dict[str, Any] = await resp.json()
            return data

    async def sn_fault(self, rule: dict[str, Any]) -> None:
        async with self.session.post(self.sn + "/_emulator/faults", json=rule) as resp:
            assert resp.status < 300, await resp.text()

    async def sn_clear_faults(self) -> None:
        async with self.session.delete(self.sn + "/_emulator/faults") as resp:
            assert resp.status < 300


@pytest.fixture
async def apis() -> AsyncIterator[Apis]:
    from sync.emulators import bigpanda, servicenow

    async with (
        serve_app(servicenow.create_app()) as sn,
        serve_app(bigpanda.create_app(rate_limit_per_s=None)) as bp,
        aiohttp.ClientSession() as session,
    ):
        yield Apis(sn, bp, session)


@dataclass
class DaemonProc:
    name: str
    proc: asyncio.subprocess.Process
    log_path: Path
    session: aiohttp.ClientSession
    port: int | None = None
    _log: Any = field(default=None, repr=False)

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    async def wait_running(self, within: float = 30.0) -> int:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for entry in self.log_lines():
                # not matched on the message: the emulator's password "bpsync" is a
                # secret, so the log filter writes "bpsync running" as "**** running"
                if entry.get("logger") == "sync.runtime.daemon" and entry.get("http_port"):
                    self.port = int(entry["http_port"])
                    return self.port
            if self.proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
        raise AssertionError(f"{self.name} did not start:\n{self.log_text()}")

    async def readyz(self) -> tuple[int, dict[str, Any]]:
        assert self.port is not None
        async with self.session.get(f"http://127.0.0.1:{self.port}/readyz") as resp:
            return resp.status, await resp.json()

    async def metrics(self) -> str:
        assert self.port is not None
        async with self.session.get(f"http://127.0.0.1:{self.port}/metrics") as resp:
            return await resp.text()

    async def wait_leader(self, leader: int, within: float = 20.0, step: float = 0.02) -> float:
        """Seconds until ``/readyz`` reports ``leader``."""
        started = time.monotonic()
        while time.monotonic() - started < within:
            with contextlib.suppress(aiohttp.ClientError):
                _, body = await self.readyz()
                if body.get("leader") == leader:
                    return time.monotonic() - started
            await asyncio.sleep(step)
        raise AssertionError(f"{self.name} never reported leader={leader}:\n{self.log_text()}")

    async def stop(self, sig: int = signal.SIGTERM, within: float = 10.0) -> tuple[int, float]:
        started = time.monotonic()
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        code = await asyncio.wait_for(self.proc.wait(), within)
        return code, time.monotonic() - started

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


@pytest.fixture
async def daemons(tmp_path: Path) -> AsyncIterator[Any]:
    started: list[DaemonProc] = []
    session = aiohttp.ClientSession()

    async def start(name: str, env: dict[str, str], *args: str) -> DaemonProc:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("BPSYNC_")}
        environ.update(env)
        log_path = tmp_path / f"{name}.log"
        log = log_path.open("wb")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sync",
            "run",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=environ,
        )
        daemon = DaemonProc(name, proc, log_path, session, _log=log)
        started.append(daemon)
        return daemon

    try:
        yield start
    finally:
        for daemon in started:
            await daemon.kill()
        await session.close()


def daemon_env(apis: Apis, state_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        "BPSYNC_SERVICENOW__URL": apis.sn,
        "BPSYNC_SERVICENOW__USERNAME": "bpsync",
        "BPSYNC_SERVICENOW__PASSWORD": "bpsync",
        "BPSYNC_BIGPANDA__URL": apis.bp,
        "BPSYNC_BIGPANDA__API_KEY": "BPUbpsync-emulator",
        "BPSYNC_BIGPANDA__BEARER_TOKEN": "bpsync-org-token",
        "BPSYNC_POLL_INTERVAL": "0.2",
        "BPSYNC_HTTP_PORT": "0",
        "BPSYNC_STATE_DIR": str(state_dir),
        "BPSYNC_LOG_FORMAT": "json",
    }
    env.update(extra)
    return env


async def wait_synced(apis: Apis, bp_ids: list[str], within: float = 30.0) -> Counter[str]:
    deadline = time.monotonic() + within
    while True:
        found = await apis.sn_correlations()
        if all(found[i] >= 1 for i in bp_ids):
            return found
        if time.monotonic() > deadline:
            missing = [i for i in bp_ids if not found[i]]
            raise AssertionError(f"{len(missing)} of {len(bp_ids)} incidents never synced")
        await asyncio.sleep(0.1)


def assert_no_duplicates(found: Counter[str]) -> None:
    duplicated = {cid: n for cid, n in found.items() if n > 1}
    assert not duplicated, f"duplicate ServiceNow incidents: {duplicated}"


# --------------------------------------------------------------------------- B17


@pytest.mark.parametrize(
    "latency_ms",
    [
        # 20 creates of 150 ms: the cycle in flight finishes within the drain time
        pytest.param(150, id="drained"),
        # 20 creates of 500 ms: longer than DRAIN_TIMEOUT_S (8 s), so the rest of the
        # cycle is cancelled; the outbox (and the correlation_id look-up) make the
        # restart finish it without a duplicate, even for a create ServiceNow received
        pytest.param(500, id="cancelled"),
    ],
)
async def test_sigterm_mid_cycle_exits_0_within_10s_and_loses_no_write(
    apis: Apis, daemons: Any, tmp_path: Path, latency_ms: int
) -> None:
    env = daemon_env(apis, tmp_path / "state")
    first = await daemons("first", env)
    await first.wait_running()
    # slow creates: the cycle is still writing when SIGTERM arrives
    await apis.sn_fault({"latency_ms": latency_ms, "status": None, "methods": ["POST"]})
    bp_ids = await apis.seed_bp(20, "b17")
    deadline = time.monotonic() + 20
    while (await apis.sn_stats()).get("writes", 0) < 1:
        assert time.monotonic() < deadline, first.log_text()
        await asyncio.sleep(0.02)
    code, took = await first.stop(signal.SIGTERM, within=12)
    assert code == 0, first.log_text()
    assert took < 10.0
    messages = [e.get("msg") for e in first.log_lines()]
    assert "stopping: finishing the cycle in flight" in messages
    assert not [e for e in first.log_lines() if e.get("level") == "error"], first.log_text()
    synced_before = await apis.sn_correlations()
    assert_no_duplicates(synced_before)

    # a restart finishes the work: nothing was lost, nothing is created twice
    await apis.sn_clear_faults()
    second = await daemons("second", env)
    await second.wait_running()
    found = await wait_synced(apis, bp_ids)
    assert_no_duplicates(found)
    code, took = await second.stop(signal.SIGTERM)
    assert code == 0
    assert took < 10.0
    # a restart never repeats a create that had been done (B2, B15)
    assert_no_duplicates(await apis.sn_correlations())


async def test_a_second_daemon_on_the_same_sqlite_state_exits_1_with_one_line(
    apis: Apis, daemons: Any, tmp_path: Path
) -> None:
    env = daemon_env(apis, tmp_path / "state")
    first = await daemons("first", env)
    await first.wait_running()
    second = await daemons("second", env)
    code = await asyncio.wait_for(second.proc.wait(), 30)
    assert code == 1
    text = second.log_path.read_text()
    lines = [line for line in text.splitlines() if line.startswith("bpsync: error:")]
    assert len(lines) == 1, text
    assert f"pid {first.proc.pid}" in lines[0]
    assert "bpsync.db.lock" in lines[0]
    assert "Traceback" not in text
    assert (await first.stop())[0] == 0


async def test_sigterm_during_start_up_exits_0_within_10s(
    apis: Apis, daemons: Any, tmp_path: Path
) -> None:
    """B17 from the first instant: ServiceNow accepts the credential check's connection and
    never answers (start-up would wait a whole timeout); SIGTERM then stops it cleanly."""
    connected = asyncio.Event()
    held: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        connected.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    env = daemon_env(
        apis,
        tmp_path / "state",
        BPSYNC_SERVICENOW__URL=f"http://127.0.0.1:{port}",
        BPSYNC_SERVICENOW__TIMEOUT="60",
    )
    try:
        daemon = await daemons("starting", env)
        await asyncio.wait_for(connected.wait(), 30)  # start-up is in the credential check
        code, took = await daemon.stop(signal.SIGTERM, within=10)
        assert code == 0, daemon.log_text()
        assert took < 10
        assert "Traceback" not in daemon.log_text()
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


# --------------------------------------------------------------------------- B18


@pytest.fixture
async def pg_url(postgres_url: str) -> AsyncIterator[str]:
    from sync.store import upgrade_database
    from tests.store.conftest import postgres_schema

    async with postgres_schema(postgres_url) as url:
        await upgrade_database(url)
        yield url


def actions_total(metrics_text: str) -> float:
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("bpsync_actions_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def write_requests(metrics_text: str) -> float:
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("bpsync_http_requests_total{") and any(
            f'method="{m}"' in line for m in ("POST", "PUT", "PATCH", "DELETE")
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.postgres
async def test_ha_only_the_leader_writes_and_a_standby_takes_over(
    apis: Apis, daemons: Any, tmp_path: Path, pg_url: str
) -> None:
    poll = 0.5  # 2 intervals = 1 s: long enough to measure a takeover, short for a test
    env_a = daemon_env(
        apis, tmp_path / "a", BPSYNC_DATABASE_URL=pg_url, BPSYNC_POLL_INTERVAL=str(poll)
    )
    env_b = {**env_a, "BPSYNC_STATE_DIR": str(tmp_path / "b")}
    a = await daemons("a", env_a)
    await a.wait_running()
    await a.wait_leader(1)
    b = await daemons("b", env_b)
    await b.wait_running()
    status, body = await b.readyz()
    assert (status, body["leader"]) == (200, 0)  # a standby is ready with leader 0

    first_ids = await apis.seed_bp(10, "ha1")
    found = await wait_synced(apis, first_ids)
    assert_no_duplicates(found)
    await asyncio.sleep(2 * poll)  # a few more cycles on both
    assert (await b.readyz())[1]["leader"] == 0
    b_metrics = await b.metrics()
    assert actions_total(b_metrics) == 0
    assert write_requests(b_metrics) == 0, "the standby wrote"
    deadline = time.monotonic() + 10  # link-tag writes are paced behind the creates
    while actions_total(await a.metrics()) < 10:
        assert time.monotonic() < deadline, a.log_text()
        await asyncio.sleep(0.1)
    assert (await a.readyz())[0] == 200

    a.proc.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    await b.wait_leader(1, within=10, step=0.01)
    takeover_s = time.monotonic() - killed_at
    assert takeover_s <= 2 * poll, f"takeover took {takeover_s:.2f}s"
    await a.proc.wait()

    second_ids = await apis.seed_bp(10, "ha2")
    found = await wait_synced(apis, first_ids + second_ids)
    assert_no_duplicates(found)
    assert sum(found[i] for i in first_ids + second_ids) == 20
    deadline = time.monotonic() + 10
    while (await b.readyz())[0] != 200:
        assert time.monotonic() < deadline, b.log_text()
        await asyncio.sleep(0.05)
    code, took = await b.stop(signal.SIGTERM)
    assert (code, took < 10) == (0, True)
