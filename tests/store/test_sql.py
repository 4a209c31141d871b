"""What only the SQL store does: connection set-up, error mapping, indexes, file placement."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from sync.errors import StoreError
from sync.store import open_store, upgrade_database
from sync.store.engines import PING_AFTER_IDLE_S, is_postgres, make_engine, normalise_url
from sync.store.sql import SqlStore
from tests.store.conftest import postgres_schema


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_sqlite_file_gets_its_directory_wal_and_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "state" / "bpsync.db"
    url = f"sqlite+aiosqlite:///{path.as_posix()}"
    await upgrade_database(url)
    assert path.is_file()
    store = await open_store(url)
    try:
        assert isinstance(store, SqlStore)
        async with store.engine.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar() == 10_000
            assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar() == 1
    finally:
        await store.close()


async def test_unreachable_postgres_is_one_line_without_the_password() -> None:
    url = f"postgresql+asyncpg://bpsync:s3cr3t-pw@127.0.0.1:{_free_port()}/bpsync"
    with pytest.raises(StoreError) as info:
        await open_store(url)
    message = str(info.value)
    assert "s3cr3t-pw" not in message
    assert "bpsync:****@127.0.0.1" in message
    assert "\n" not in message
    store = await open_store(url, check_schema=False)
    try:
        with pytest.raises(StoreError, match=r"\*\*\*\*"):
            await store.ping()
    finally:
        await store.close()


def test_urls_get_the_async_drivers_and_bad_ones_are_refused() -> None:
    assert normalise_url("sqlite:///x.db").drivername == "sqlite+aiosqlite"
    assert normalise_url("postgresql://u@h/db").drivername == "postgresql+asyncpg"
    with pytest.raises(StoreError, match="unsupported database URL"):
        normalise_url("mysql://u:pw@h/db")
    with pytest.raises(StoreError, match="invalid database URL"):
        normalise_url("not a url")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql+asyncpg://u@h/db", True),
        ("postgresql://u@h/db", True),
        ("postgres://u@h/db", True),  # the short spelling normalise_url accepts
        ("sqlite+aiosqlite:///x.db", False),
        ("sqlite:///:memory:", False),
        ("mysql://u@h/db", False),
        ("not a url", False),
    ],
)
def test_is_postgres_knows_every_spelling(url: str, expected: bool) -> None:
    assert is_postgres(url) is expected


async def test_unwritable_sqlite_directory_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot create the database directory"):
        make_engine(f"sqlite+aiosqlite:///{(blocker / 'sub' / 'db.sqlite').as_posix()}")


async def test_sqlite_call_waits_for_another_writer_in_its_thread_not_on_the_loop(
    tmp_path: Path,
) -> None:
    """A store call runs on the event loop while the lock is free; when another process
    holds it, the call waits in the store's thread (busy timeout) and the loop runs on."""
    path = tmp_path / "bpsync.db"
    url = f"sqlite+aiosqlite:///{path.as_posix()}"
    await upgrade_database(url)
    store = await open_store(url)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        at = datetime(2026, 1, 1, tzinfo=UTC)
        await store.set_checkpoint("free", "1", at)  # the lock is free: on the loop
        other.execute("BEGIN IMMEDIATE")  # another process's write transaction
        write = asyncio.create_task(store.set_checkpoint("held", "2", at))
        started = time.monotonic()
        for _ in range(20):
            await asyncio.sleep(0.01)
        assert not write.done()  # waiting for the lock in the store's thread...
        assert time.monotonic() - started < 5  # ...not on the loop (busy timeout 10 s)
        assert await store.get_checkpoint("free") == "1"  # a read does not wait
        other.execute("COMMIT")
        await asyncio.wait_for(write, 5)
        assert await store.get_checkpoint("held") == "2"
        await store.set_checkpoint("free", "3", at)  # on the loop again
        assert await store.get_checkpoint("free") == "3"
    finally:
        other.close()
        await store.close()


# --------------------------------------------------------------- Postgres pool pings


async def _backend_pid(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())


@pytest.fixture
async def pg_engine(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[AsyncEngine, list[float], list[object]]]:
    """A Postgres engine as the store makes it, its idle clock (``now[0]``, seconds) and
    the pings its pool sends (the dialect's own ping, counted)."""
    now = [100.0]
    engine = make_engine(postgres_url, monotonic=lambda: now[0])
    pings: list[object] = []
    ping = engine.dialect.do_ping

    def counted(dbapi_connection: object) -> bool:
        pings.append(dbapi_connection)
        return ping(dbapi_connection)

    monkeypatch.setattr(engine.dialect, "do_ping", counted)
    try:
        yield engine, now, pings
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_postgres_pool_pings_a_connection_idle_for_a_second_not_one_just_used(
    pg_engine: tuple[AsyncEngine, list[float], list[object]],
) -> None:
    engine, now, pings = pg_engine
    assert engine.sync_engine.pool._pre_ping is False  # every checkout would cost 3 trips
    pid = await _backend_pid(engine)  # a new connection: not pinged
    for _ in range(5):  # a burst of store calls, each a checkout
        now[0] += 0.5
        assert await _backend_pid(engine) == pid
    assert pings == []
    now[0] += PING_AFTER_IDLE_S  # idle for the window: pinged, and it answers
    assert await _backend_pid(engine) == pid
    assert len(pings) == 1


@pytest.mark.postgres
async def test_postgres_pool_replaces_a_connection_killed_while_idle(
    pg_engine: tuple[AsyncEngine, list[float], list[object]], postgres_url: str
) -> None:
    """A restart or failover while the pool is idle: the next call gets a new connection
    (the dead one's ping fails) instead of an error, as with ``pool_pre_ping``."""
    engine, now, pings = pg_engine
    pid = await _backend_pid(engine)
    await _terminate(postgres_url, pid)
    now[0] += 5.0
    assert await _backend_pid(engine) != pid
    assert len(pings) == 1


@pytest.mark.postgres
async def test_postgres_pool_connection_killed_within_the_window_fails_one_call(
    pg_engine: tuple[AsyncEngine, list[float], list[object]], postgres_url: str
) -> None:
    """The price of skipping the ping: a connection killed less than a second after it
    worked fails the one call that gets it (as a checked-out connection always could);
    the pool drops it, and the next call (the cycle's retry) connects afresh."""
    engine, now, pings = pg_engine
    pid = await _backend_pid(engine)
    await _terminate(postgres_url, pid)
    now[0] += 0.1
    with pytest.raises(DBAPIError):
        await _backend_pid(engine)
    assert await _backend_pid(engine) != pid
    assert pings == []


async def _terminate(postgres_url: str, pid: int) -> None:
    admin = create_async_engine(postgres_url)
    try:
        async with admin.begin() as conn:
            killed = await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            assert killed.scalar_one() is True
    finally:
        await admin.dispose()


@pytest.mark.postgres
async def test_postgres_reads_run_without_a_transaction_and_writes_in_one(
    postgres_url: str,
) -> None:
    """At READ COMMITTED a read's BEGIN and COMMIT buy nothing (each statement reads its
    own snapshot either way) and cost two round trips: a read runs its statements alone."""
    async with postgres_schema(postgres_url) as url:
        await upgrade_database(url)
        store = await open_store(url)
        try:
            assert isinstance(store, SqlStore)
            async with store._read() as conn:
                await conn.execute(text("SELECT 1"))
                raw = await conn.get_raw_connection()
                assert raw.driver_connection.is_in_transaction() is False
            async with store._write() as conn:
                await conn.execute(text("SELECT 1"))
                raw = await conn.get_raw_connection()
                assert raw.driver_connection.is_in_transaction() is True
            # the pooled connection a read had is back to transactions for a write
            for _ in range(3):
                async with store._read() as conn:
                    await conn.execute(text("SELECT 1"))
                async with store._write() as conn:
                    await conn.execute(text("SELECT 1"))
                    raw = await conn.get_raw_connection()
                    assert raw.driver_connection.is_in_transaction() is True
            assert await store.live_link_for_bp("bp-none") is None
        finally:
            await store.close()
