"""One writer: the SQLite lock file, and Postgres leader election (advisory lock)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from sync.clock import FakeClock
from sync.errors import StoreError
from sync.runtime.leader import (
    ADVISORY_LOCK_KEY,
    PostgresLeaderElector,
    SqliteSingleInstanceLock,
    advisory_key,
)

# --------------------------------------------------------------------------- SQLite


def test_sqlite_lock_refuses_a_second_holder(tmp_path: Path) -> None:
    db = tmp_path / "bpsync.db"
    first = SqliteSingleInstanceLock(db)
    first.acquire()
    assert (tmp_path / "bpsync.db.lock").read_text().strip() == str(os.getpid())
    second = SqliteSingleInstanceLock(db)
    with pytest.raises(StoreError) as info:
        second.acquire()
    message = str(info.value)
    assert "\n" not in message
    assert f"pid {os.getpid()}" in message
    assert str(tmp_path / "bpsync.db.lock") in message
    assert not second.held
    first.release()
    second.acquire()  # free again
    assert second.held
    second.release()
    second.release()  # twice is harmless


def test_sqlite_lock_held_by_another_process_and_freed_when_it_dies(tmp_path: Path) -> None:
    db = tmp_path / "state" / "bpsync.db"
    code = textwrap.dedent(
        f"""
        import sys, time
        from sync.runtime.leader import SqliteSingleInstanceLock
        SqliteSingleInstanceLock({str(db)!r}).acquire()
        print("locked", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(StoreError, match=rf"another bpsync daemon \(pid {proc.pid}\)"):
            SqliteSingleInstanceLock(db).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
    lock = SqliteSingleInstanceLock(db)
    lock.acquire()  # the OS dropped the dead process's lock
    lock.release()


def test_sqlite_memory_database_needs_no_lock() -> None:
    lock = SqliteSingleInstanceLock(":memory:")
    lock.acquire()
    lock.release()


# --------------------------------------------------------------------------- Postgres


def test_advisory_key_is_fixed_and_per_schema() -> None:
    assert advisory_key(None) == ADVISORY_LOCK_KEY == 0x627073796E63
    assert advisory_key("a") != advisory_key("b") != ADVISORY_LOCK_KEY
    assert 0 < advisory_key("some_schema") < 2**63


def _isolated(postgres_url: str) -> str:
    """A URL with its own schema name, hence its own lock key (tests run side by side)."""
    schema = f"bpsync_elect_{uuid.uuid4().hex[:10]}"
    return (
        make_url(postgres_url)
        .update_query_dict({"search_path": schema})
        .render_as_string(hide_password=False)
    )


def _dsn(postgres_url: str) -> str:
    url = make_url(postgres_url).set(drivername="postgresql")
    return url.difference_update_query(["search_path"]).render_as_string(hide_password=False)


@pytest.mark.postgres
async def test_only_one_elector_leads_and_release_hands_over(postgres_url: str) -> None:
    url = _isolated(postgres_url)
    a = PostgresLeaderElector(url, holder="a", clock=FakeClock())
    b = PostgresLeaderElector(url, holder="b", clock=FakeClock())
    try:
        assert await a.try_acquire() is True
        assert await b.try_acquire() is False
        assert await a.try_acquire() is True  # idempotent for the holder
        assert await a.still_leader() is True
        assert await b.still_leader() is False
        assert await b.try_acquire() is False
        await a.release()
        assert await a.still_leader() is False
        assert await b.try_acquire() is True
        assert await a.try_acquire() is False
    finally:
        await a.release()
        await b.release()


@pytest.mark.postgres
async def test_a_killed_leader_connection_lets_the_other_lead(postgres_url: str) -> None:
    url = _isolated(postgres_url)
    a = PostgresLeaderElector(url, holder="a")
    b = PostgresLeaderElector(url, holder="b")
    admin = await asyncpg.connect(_dsn(postgres_url))
    try:
        assert await a.try_acquire()
        assert not await b.try_acquire()
        pid = await a.backend_pid()
        assert pid is not None
        # the lock shows in pg_locks under the documented key
        rows = await admin.fetch(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND classid = $1::bigint::oid AND objid = $2::bigint::oid",
            a.key >> 32,
            a.key & 0xFFFFFFFF,
        )
        assert [r["pid"] for r in rows] == [pid]
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        for _ in range(50):  # the server ends the session at once; be patient anyway
            if await b.try_acquire():
                break
            await asyncio.sleep(0.05)
        assert await b.still_leader()
        assert await a.still_leader() is False  # the deposed leader notices
        assert await a.try_acquire() is False  # and reconnects as a standby
    finally:
        await admin.close()
        await a.release()
        await b.release()


@pytest.mark.postgres
async def test_a_dead_leader_process_frees_the_lock(postgres_url: str) -> None:
    url = _isolated(postgres_url)
    code = textwrap.dedent(
        f"""
        import asyncio
        from sync.runtime.leader import PostgresLeaderElector
        async def main():
            e = PostgresLeaderElector({url!r}, holder="child")
            assert await e.try_acquire()
            print("leading", flush=True)
            await asyncio.sleep(60)
        asyncio.run(main())
        """
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE
    )
    b = PostgresLeaderElector(url, holder="b")
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line.strip() == b"leading"
        assert not await b.try_acquire()
        proc.kill()
        await proc.wait()
        for _ in range(50):
            if await b.try_acquire():
                break
            await asyncio.sleep(0.05)
        assert await b.still_leader()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await b.release()


@pytest.mark.postgres
async def test_an_unreachable_server_is_one_line_store_error(postgres_url: str) -> None:
    url = make_url(postgres_url).set(host="127.0.0.1", port=1, password="s3cret-pw")
    elector = PostgresLeaderElector(url.render_as_string(hide_password=False), holder="x")
    with pytest.raises(StoreError, match="leader election") as info:
        await elector.try_acquire()
    assert "s3cret-pw" not in str(info.value)
    assert "\n" not in str(info.value)
    await elector.release()
