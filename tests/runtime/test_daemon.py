"""The daemon in this process, over the in-memory API fakes: start, serve, stop.

The real-process tests (``python -m sync run`` against the emulators) are in
``test_daemon_process.py``.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from sync.clock import SystemClock
from sync.coordinator import Coordinator
from sync.engine import Engine
from sync.errors import StoreError
from sync.executor import Executor
from sync.metrics import Metrics
from sync.runtime.daemon import Daemon, DaemonOptions
from sync.runtime.leader import SqliteSingleInstanceLock
from sync.settings import Settings, load_settings
from sync.store.memory import MemoryStore
from tests.fakes import FakeBigPanda, FakeServiceNow


def make_settings(state_dir: Path) -> Settings:
    return load_settings(
        None,
        {
            "servicenow.url": "http://sn.test",
            "state_dir": str(state_dir),
            "poll_interval": 0.1,
            "http_port": 0,
        },
        env_file=None,
    )


def make_engine(settings: Settings, metrics: Metrics | None = None) -> tuple[Engine, FakeBigPanda]:
    clock = SystemClock()
    store = MemoryStore()
    sn = FakeServiceNow(clock)
    bp = FakeBigPanda(clock)
    executor = Executor(store, sn, bp, settings, clock, metrics=metrics)
    coordinator = Coordinator(store, sn, bp, executor, settings, clock=clock, metrics=metrics)
    return Engine(settings, store, sn, bp, executor, coordinator, [store.close]), bp


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    settings = make_settings(tmp_path / "state")
    engine, bp = make_engine(settings)
    bp.add_incident()
    d = Daemon(settings, DaemonOptions(), engine=engine)
    yield d
    await d.close()


async def wait_ready(url: str, within: float = 10.0) -> dict[str, object]:
    deadline = asyncio.get_running_loop().time() + within
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(url + "/readyz") as resp:
                body: dict[str, object] = await resp.json()
                if resp.status == 200:
                    return body
            assert asyncio.get_running_loop().time() < deadline, body
            await asyncio.sleep(0.05)


async def test_serves_health_then_stops_on_request(daemon: Daemon, tmp_path: Path) -> None:
    await daemon.start()
    assert daemon.leader  # SQLite: the lock makes this process the only writer
    assert (tmp_path / "state" / "bpsync.db.lock").exists()
    serving = asyncio.create_task(daemon.serve())
    port = daemon._server.port
    body = await wait_ready(f"http://127.0.0.1:{port}")
    assert body["leader"] == 1
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        text = await resp.text()
    assert "# TYPE bpsync_cycles_total counter" in text  # an injected engine is not bridged
    assert 'bpsync_leader{pair="default"} 1.0' in text
    daemon.request_stop()
    await asyncio.wait_for(serving, 10)
    await daemon.close()
    lock = SqliteSingleInstanceLock(tmp_path / "state" / "bpsync.db")
    lock.acquire()  # released by close()
    lock.release()


async def test_start_up_objects_are_frozen_when_asked(tmp_path: Path) -> None:
    """``bpsync run`` asks: what start-up made is out of the collector's sight."""
    settings = make_settings(tmp_path / "state")
    engine, _ = make_engine(settings)
    d = Daemon(settings, DaemonOptions(freeze_start_up=True), engine=engine)
    gc.unfreeze()
    try:
        await d.start()
        assert gc.get_freeze_count() == 0
        serving = asyncio.create_task(d.serve())
        await wait_ready(f"http://127.0.0.1:{d._server.port}")
        assert gc.get_freeze_count() > 0
        d.request_stop()
        await asyncio.wait_for(serving, 10)
    finally:
        gc.unfreeze()
        await d.close()


async def test_start_up_objects_are_not_frozen_by_default(daemon: Daemon) -> None:
    gc.unfreeze()
    await daemon.start()
    serving = asyncio.create_task(daemon.serve())
    await wait_ready(f"http://127.0.0.1:{daemon._server.port}")
    assert gc.get_freeze_count() == 0
    daemon.request_stop()
    await asyncio.wait_for(serving, 10)


async def test_sigterm_stops_serving(daemon: Daemon) -> None:
    await daemon.start()
    serving = asyncio.create_task(daemon.serve())
    await wait_ready(f"http://127.0.0.1:{daemon._server.port}")
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(serving, 10)
    asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)
    asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)


async def test_a_second_daemon_on_the_same_sqlite_file_stops_with_one_line(
    daemon: Daemon, tmp_path: Path
) -> None:
    await daemon.start()
    settings = make_settings(tmp_path / "state")
    engine, _ = make_engine(settings)
    second = Daemon(settings, DaemonOptions(), engine=engine)
    try:
        with pytest.raises(StoreError, match=r"another bpsync daemon \(pid \d+\)"):
            await second.start()
    finally:
        await second.close()


async def test_ready_and_watchdog_reach_systemd(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tempfile.mkdtemp(prefix="bpn-", dir="/tmp")
    path = os.path.join(directory, "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        monkeypatch.setenv("WATCHDOG_USEC", "1000000")
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
        await daemon.start()
        serving = asyncio.create_task(daemon.serve())
        loop = asyncio.get_running_loop()
        messages: list[bytes] = []
        while not any(m == b"WATCHDOG=1" for m in messages):
            messages.append(await asyncio.wait_for(loop.sock_recv(sock, 4096), 5))
        daemon.request_stop()
        await asyncio.wait_for(serving, 10)
        messages.append(await asyncio.wait_for(loop.sock_recv(sock, 4096), 5))
        while not messages[-1].startswith(b"STOPPING=1"):
            messages.append(await asyncio.wait_for(loop.sock_recv(sock, 4096), 5))
    os.unlink(path)
    os.rmdir(directory)
    assert messages[0].startswith(b"READY=1")
