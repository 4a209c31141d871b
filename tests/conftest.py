"""Shared fixtures.

Postgres: tests marked ``postgres`` use ``BPSYNC_TEST_POSTGRES_URL``. Without it they are
skipped with a reason; with ``BPSYNC_TEST_POSTGRES_REQUIRED=1`` (CI) a missing or
unreachable server fails them instead.
"""

from __future__ import annotations

import os

import pytest

from sync.clock import FakeClock

POSTGRES_URL = os.environ.get("BPSYNC_TEST_POSTGRES_URL")
POSTGRES_REQUIRED = os.environ.get("BPSYNC_TEST_POSTGRES_REQUIRED") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if POSTGRES_URL:
        return
    if POSTGRES_REQUIRED:
        return  # the postgres_url fixture fails these tests loudly
    skip = pytest.mark.skip(
        reason="Postgres tests skipped: set BPSYNC_TEST_POSTGRES_URL "
        "(e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/test) to run them"
    )
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def postgres_url() -> str:
    if not POSTGRES_URL:
        pytest.fail("BPSYNC_TEST_POSTGRES_REQUIRED=1 but BPSYNC_TEST_POSTGRES_URL is not set")
    return POSTGRES_URL


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(autouse=True)
def _isolated_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """No test reads the developer's BPSYNC_* variables or a stray .env."""
    for key in list(os.environ):
        if key.startswith("BPSYNC_") and not key.startswith("BPSYNC_TEST_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
