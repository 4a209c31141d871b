"""What only the SQL store does: connection set-up, error mapping, indexes, file placement."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text

from sync.errors import StoreError
from sync.store import open_store, upgrade_database
from sync.store.engines import is_postgres, make_engine, normalise_url
from sync.store.sql import SqlStore


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
