"""The shared /_emulator/ control API: counting, faults, reset."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

from sync.emulators.control import EmulatorControl, FaultRule, serve_app


def _app(resets: list[int]) -> web.Application:
    app = web.Application()

    async def item(request: web.Request) -> web.Response:
        return web.json_response({"id": request.match_info["id"]})

    app.router.add_route("*", "/things/{id}", item)
    control = EmulatorControl(
        error_response=lambda status, msg: web.json_response({"error": msg}, status=status),
        on_reset=lambda: resets.append(1),
        seed=1,
    )
    control.install(app)
    return app


async def test_counts_by_template_and_status() -> None:
    async with serve_app(_app([])) as url, aiohttp.ClientSession() as http:
        for i in range(3):
            async with http.get(f"{url}/things/{i}") as r:
                assert r.status == 200
        async with http.post(f"{url}/things/9") as r:
            assert r.status == 200
        async with http.get(f"{url}/nowhere") as r:
            assert r.status == 404
        async with http.get(f"{url}/_emulator/stats?log=1") as r:
            stats = await r.json()
    assert stats["requests"] == {"GET /things/{id}": 3, "POST /things/{id}": 1, "GET unmatched": 1}
    assert stats["statuses"] == {"200": 4, "404": 1}
    assert stats["writes"] == 1
    assert stats["total"] == 5
    assert [e["path"] for e in stats["log"]][:2] == ["/things/0", "/things/1"]


async def test_fault_with_count_methods_and_retry_after() -> None:
    rule = {"status": 429, "methods": ["POST"], "count": 2, "retry_after_s": 2}
    async with serve_app(_app([])) as url, aiohttp.ClientSession() as http:
        async with http.post(f"{url}/_emulator/faults", json=rule) as r:
            assert r.status == 201
        statuses = []
        for _ in range(3):
            async with http.post(f"{url}/things/1") as r:
                statuses.append((r.status, r.headers.get("Retry-After")))
        async with http.get(f"{url}/things/1") as r:
            assert r.status == 200
    assert statuses == [(429, "2"), (429, "2"), (200, None)]


async def test_reset_connection_and_clear_and_reset() -> None:
    resets: list[int] = []
    async with serve_app(_app(resets)) as url, aiohttp.ClientSession() as http:
        async with http.post(f"{url}/_emulator/faults", json={"reset_connection": True}) as r:
            assert r.status == 201
        with pytest.raises(aiohttp.ClientError):
            async with http.get(f"{url}/things/1") as r:
                await r.read()
        async with http.delete(f"{url}/_emulator/faults") as r:
            assert r.status == 200
        async with http.get(f"{url}/things/1") as r:
            assert r.status == 200
        async with http.post(f"{url}/_emulator/reset") as r:
            assert r.status == 200
        async with http.get(f"{url}/_emulator/stats") as r:
            assert (await r.json())["total"] == 0
    assert resets == [1]


async def test_bad_fault_rule_is_400() -> None:
    async with serve_app(_app([])) as url, aiohttp.ClientSession() as http:
        async with http.post(f"{url}/_emulator/faults", json={"rate": 3}) as r:
            assert r.status == 400
            assert "rate" in (await r.json())["error"]
        async with http.post(f"{url}/_emulator/faults", json={"bogus": 1}) as r:
            assert r.status == 400


def test_rule_from_json_defaults() -> None:
    rule = FaultRule.from_json({})
    assert rule.rate == 1.0
    assert rule.status == 503
    assert rule.methods is None
