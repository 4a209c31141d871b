"""sync.clients.pacing on the fake clock: the outage clock, throttling episodes, and
ServiceNow's adaptive requests in flight (BigPanda's pace: test_bp_client_unit.py)."""

from __future__ import annotations

import asyncio
import errno
import logging

import aiohttp
import pytest

from sync.clients.http import HttpAnswer
from sync.clients.pacing import ConcurrencyPacer, PacingPolicy, RatePacer, SideHealth, resendable
from sync.clock import FakeClock


def _answer(status: int) -> HttpAnswer:
    return HttpAnswer(status=status, content_type="application/json", headers={}, body=b"{}")


@pytest.mark.parametrize(
    ("outcome", "method", "expected"),
    [
        (_answer(429), "POST", True),  # not processed: always safe
        (_answer(429), "GET", True),
        (_answer(503), "GET", True),
        (_answer(503), "PATCH", False),  # a write: the executor decides
        (_answer(500), "GET", True),
        (TimeoutError(), "GET", True),
        (TimeoutError(), "POST", False),  # may have been applied
        (aiohttp.ServerDisconnectedError(), "GET", True),
        (aiohttp.ClientOSError(errno.ECONNRESET, "reset"), "GET", True),
        (aiohttp.ClientOSError(errno.ECONNREFUSED, "refused"), "GET", False),  # down
    ],
)
def test_what_a_client_may_send_again(outcome: object, method: str, expected: bool) -> None:
    assert resendable(outcome, method) is expected


def test_one_info_line_when_throttling_starts_and_one_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    seen: list[tuple[str, str]] = []
    health = SideHealth(
        "bigpanda", clock, PacingPolicy(quiet_s=30.0), lambda s, f: seen.append((s, f))
    )
    caplog.set_level(logging.INFO, logger="sync.clients.pacing")
    for _ in range(5):
        health.failed()
        health.throttled("tags", "2.25 req/s")
        clock.advance(1)
        health.succeeded()
    assert seen == [("bigpanda", "tags")] * 5  # the metric counts every 429
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["bigpanda is throttling tags requests; pacing down to 2.25 req/s"]
    assert health.throttled_families() == ["tags"]
    clock.advance(30)
    health.succeeded()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[1].startswith("bigpanda stopped throttling tags requests (5 throttled answers")
    assert health.throttled_families() == []


def test_the_outage_clock_runs_only_while_every_request_fails() -> None:
    clock = FakeClock()
    health = SideHealth("servicenow", clock, PacingPolicy(outage_after_s=60.0))
    health.failed()
    clock.advance(59)
    health.failed()
    assert not health.in_outage()
    health.succeeded()  # one success: the clock starts again
    clock.advance(30)
    health.failed()
    clock.advance(59)
    assert not health.in_outage()
    clock.advance(1)
    assert health.in_outage()


async def test_servicenow_requests_in_flight_halve_and_recover() -> None:
    clock = FakeClock()
    pacer = ConcurrencyPacer(clock, 8, PacingPolicy(recover_after_s=5.0))
    assert pacer.limit == 2  # a slow start ...
    clock.advance(30)
    assert pacer.limit == 8  # ... one more per quiet period
    assert pacer.throttled() == pytest.approx(1.0)  # no Retry-After: the base hold
    assert pacer.limit == 4
    assert pacer.throttled(sent_at=-1.0) == pytest.approx(1.0)  # in flight before: no step
    assert pacer.limit == 4
    clock.advance(0.5)
    assert pacer.throttled(7.0) == pytest.approx(7.0)  # a Retry-After wins
    assert pacer.limit == 2
    clock.advance(5.0)
    assert pacer.limit == 3  # one more per quiet period, up to just below the last 429's
    clock.advance(5.0)
    assert pacer.limit == 3  # ... then probing slowly: a pool has a fixed size
    clock.advance(55.0)
    assert pacer.limit == 4
    clock.advance(3600)
    assert pacer.limit == 8  # never above max_concurrency


async def test_servicenow_slots_bound_requests_in_flight() -> None:
    clock = FakeClock()
    pacer = ConcurrencyPacer(clock, 2, PacingPolicy())
    inside = 0
    most = 0

    async def request() -> None:
        nonlocal inside, most
        async with pacer.slot():
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0)
            inside -= 1

    await asyncio.gather(*(request() for _ in range(6)))
    assert most == 2


def test_holds_are_per_family_and_the_instance_is_one() -> None:
    """What the executor asks before a write: a family's hold is its own."""
    clock = FakeClock()
    policy = PacingPolicy(outage_after_s=60.0)
    rate = RatePacer(clock, 5.0, policy)
    assert rate.held_for("tags") == 0.0
    assert rate.throttled("tags") == pytest.approx(1.0)
    rate.hold("resolve", 90.0)
    clock.advance(0.25)
    assert rate.held_for("tags") == pytest.approx(0.75)
    assert rate.held_for("comments") == 0.0
    assert not policy.refuses(rate.held_for("tags"))  # waited out by the request
    assert policy.refuses(rate.held_for("resolve"))  # past the outage window: refused
    pool = ConcurrencyPacer(clock, 4, policy)
    pool.hold(120.0)
    clock.advance(20)
    assert pool.held_for() == pytest.approx(100.0)
