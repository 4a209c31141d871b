"""Fixtures of the engine tests: MemoryStore, the fakes, a FakeClock, an Executor."""

from __future__ import annotations

from typing import Any

import pytest

from sync.clock import FakeClock
from sync.executor import Executor
from sync.settings import Settings, load_settings
from sync.store.memory import MemoryStore
from tests.fakes import FakeBigPanda, FakeServiceNow

SN_URL = "http://sn.test"


def make_settings(**overrides: Any) -> Settings:
    """Settings for engine tests: dotted overrides over small, test-friendly values."""
    base: dict[str, Any] = {
        "servicenow.url": SN_URL,
        "retry.interval": 60.0,
        "retry.in_cycle_backoff": 0.5,
        "retry.in_cycle_backoff_max": 10.0,
        "guard.min_links": 10,
    }
    base.update(overrides)
    return load_settings(None, base, env_file=None)


@pytest.fixture
def settings() -> Settings:
    return make_settings()


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def sn(clock: FakeClock) -> FakeServiceNow:
    return FakeServiceNow(clock)


@pytest.fixture
def bp(clock: FakeClock) -> FakeBigPanda:
    return FakeBigPanda(clock)


@pytest.fixture
def executor(
    store: MemoryStore,
    sn: FakeServiceNow,
    bp: FakeBigPanda,
    settings: Settings,
    clock: FakeClock,
) -> Executor:
    return Executor(store, sn, bp, settings, clock)
