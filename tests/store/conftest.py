"""Fixtures of the store tests: one ``backend`` per implementation, each test isolated.

- ``memory``: a fresh :class:`MemoryStore`; more instances are replicas of it.
- ``sqlite``: a fresh database file in the test's tmp dir, migrated to head.
- ``postgres``: a fresh schema (``search_path`` in the URL) in the test database,
  migrated to head, dropped afterwards; marked ``postgres``.

``await backend.open()`` opens one more store over the same data (a second daemon).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from sync.store import open_store, upgrade_database
from sync.store.base import LinkStore
from sync.store.memory import MemoryStore


@contextlib.asynccontextmanager
async def postgres_schema(base_url: str) -> AsyncIterator[str]:
    """A fresh, empty schema; yields a URL whose connections use it; drops it after."""
    schema = f"bpsync_test_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(base_url)
    try:
        async with admin.begin() as conn:
            await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = make_url(base_url).update_query_dict({"search_path": schema})
        yield url.render_as_string(hide_password=False)
    finally:
        async with admin.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        await admin.dispose()


@dataclass
class Backend:
    name: str
    url: str | None = None
    _memory: MemoryStore | None = None
    _opened: list[LinkStore] = field(default_factory=list)

    async def open(self) -> LinkStore:
        store: LinkStore
        if self.name == "memory":
            if self._memory is None:
                self._memory = MemoryStore()
                store = self._memory
            else:
                store = self._memory.replica()
        else:
            assert self.url is not None
            store = await open_store(self.url)
        self._opened.append(store)
        return store

    async def close_all(self) -> None:
        for store in self._opened:
            await store.close()


BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    name: str = request.param
    if name == "memory":
        bk = Backend(name)
        yield bk
        await bk.close_all()
        return
    if name == "sqlite":
        url = f"sqlite+aiosqlite:///{(tmp_path / 'state' / 'bpsync.db').as_posix()}"
        await upgrade_database(url)
        bk = Backend(name, url)
        yield bk
        await bk.close_all()
        return
    base_url: str = request.getfixturevalue("postgres_url")
    async with postgres_schema(base_url) as url:
        await upgrade_database(url)
        bk = Backend(name, url)
        yield bk
        await bk.close_all()


@pytest.fixture
async def store(backend: Backend) -> LinkStore:
    return await backend.open()
