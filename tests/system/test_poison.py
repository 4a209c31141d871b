"""One bad record never stops a poll (the storm issue, item 7), over loopback.

Each malformed record is served by the real emulators (BigPanda fixtures with raw
overrides; ServiceNow rows as an import or another tool might leave them) among good
ones: the good ones sync, each bad one is skipped with one WARNING naming it (not one
per cycle) and one ``bpsync_skipped_records_total`` count, and no cycle fails.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest

from sync.clock import FakeClock
from sync.constants import Side
from sync.emulators import servicenow as sn_emulator
from sync.engine import build_engine
from sync.metrics import Metrics
from sync.store import open_store

from .conftest import World
from .helpers import SYSTEM_MAPPING, Emu

GOOD = ("65397b2eede0a80012631c01", "65397b2eede0a80012631c02")
NO_ALERTS = "65397b2eede0a80012631b01"
EXPLODED = "65397b2eede0a80012631b02"
TAG_WITHOUT_ID = "65397b2eede0a80012631b03"
OBJECT_TAG = "65397b2eede0a80012631b04"


def _alerting(incident_id: str, host: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": incident_id,
        "status": "critical",
        "alerts": [{"status": "critical", "tags": {"host": host}, "primary_property": "host"}],
        **extra,
    }


async def _engine_with_metrics(world: World) -> Metrics:
    await world.build(tag_mapping=SYSTEM_MAPPING)
    assert world.engine is not None
    await world.engine.close()
    metrics = Metrics()
    store = await open_store(world.settings.effective_database_url)
    world.engine = await build_engine(
        world.settings, clock=world.clock, store=store, metrics=metrics
    )
    return metrics


def _skipped(metrics: Metrics, side: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in metrics.skipped_records.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels["side"] == side:
                out[sample.labels["reason"]] = sample.value
    return out


async def test_poisoned_bigpanda_incidents_are_skipped_once_each_the_others_sync(
    world: World, emu: Emu, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = await _engine_with_metrics(world)
    fixtures = [
        _alerting(GOOD[0], "good-1"),
        {**_alerting(NO_ALERTS, "poison-1"), "raw_remove": ["alerts"]},
        {**_alerting(EXPLODED, "poison-2"), "raw_overrides": {"status": "exploded"}},
        {
            **_alerting(TAG_WITHOUT_ID, "poison-3"),
            "raw_overrides": {"incident_tags": [{"tag_value": "x"}]},
        },
        {
            **_alerting(OBJECT_TAG, "poison-4"),
            "raw_overrides": {"incident_tags": [{"tag_id": "t", "tag_value": {"a": [1]}}]},
        },
        _alerting(GOOD[1], "good-2"),
    ]
    await world.control("bigpanda", "POST", "incidents", fixtures)
    caplog.set_level(logging.WARNING, logger="sync")
    clock = world.clock
    assert isinstance(clock, FakeClock)
    for _ in range(3):
        report = await world.cycle()
        assert report.ok, report.error
        clock.advance(1)
    for good in GOOD:
        assert len(await emu.sn_for(good)) == 1, f"{good} got no ticket"
    for poison in (NO_ALERTS, EXPLODED, TAG_WITHOUT_ID, OBJECT_TAG):
        assert await emu.sn_for(poison) == []
        lines = [r for r in caplog.records if poison in r.getMessage()]
        assert len(lines) == 1, [r.getMessage() for r in lines]  # once, not per cycle
        assert lines[0].levelno == logging.WARNING
    assert _skipped(metrics, "bigpanda") == {
        "no_alerts": 1.0,
        "unknown_status": 1.0,
        "malformed_tag": 2.0,
    }


async def test_poisoned_servicenow_rows_are_skipped_and_a_future_stamp_does_not_poison_the_cursor(
    world: World, emu: Emu, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = await _engine_with_metrics(world)
    await world.control("bigpanda", "POST", "incidents", [_alerting(GOOD[0], "good-1")])
    clock = world.clock
    assert isinstance(clock, FakeClock)
    assert (await world.cycle()).ok
    linked = await emu.sn_one_for(GOOD[0])
    # rows any incident with a correlation_id can be: other tools and people set it too
    table = world.sn_app[sn_emulator.STATE_KEY].tables["incident"]
    stamp = clock.now().strftime("%Y-%m-%d %H:%M:%S")
    future = (clock.now() + timedelta(days=2)).strftime("%Y-%m-%d %H:%M:%S")
    table["odd-id"] = {
        **linked,
        "sys_id": "odd-id",
        "number": "INC0099001",
        "correlation_id": "65397b2eede0a80012631d01",
        "sys_updated_on": stamp,
    }
    table["f" * 32] = {  # a state no ServiceNow choice list has (a broken import)
        **linked,
        "sys_id": "f" * 32,
        "number": "INC0099002",
        "correlation_id": "65397b2eede0a80012631d02",
        "sys_updated_on": stamp,
        "state": "resolved-ish",
    }
    table["e" * 32] = {
        **linked,
        "sys_id": "e" * 32,
        "number": "INC0099003",
        "correlation_id": "65397b2eede0a80012631d03",
        "sys_updated_on": future,
    }
    caplog.set_level(logging.WARNING, logger="sync")
    for _ in range(3):
        clock.advance(1)
        report = await world.cycle()
        assert report.ok, report.error
    assert world.engine is not None
    cursor = await world.engine.store.get_cursor(Side.SERVICENOW)
    assert cursor.watermark is not None
    assert cursor.watermark <= clock.now()  # the future row did not carry it away
    # a change after the future row is still seen and synced
    await emu.sn_patch(linked["sys_id"], {"subcategory": "after-the-future-row"})
    clock.advance(1)
    assert (await world.cycle()).ok
    assert (await emu.tags(GOOD[0]))["sn_subcategory"] == "after-the-future-row"
    for name in ("odd-id", "f" * 32, "INC0099003"):
        lines = [r for r in caplog.records if name in r.getMessage()]
        assert len(lines) == 1, [r.getMessage() for r in caplog.records]
    skipped = _skipped(metrics, "servicenow")
    assert skipped.get("bad_sys_id") == 1.0
    assert skipped.get("future_timestamp") == 1.0
    assert skipped.get("malformed") == 1.0
