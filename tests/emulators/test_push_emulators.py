"""The emulators' pushes (push mode's test doubles): ServiceNow's business rule and the
BigPanda webhook's fault switches, against a small recording receiver."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sync.clock import FakeClock
from sync.emulators.control import serve_app
from sync.emulators.servicenow import RULE_KEY, create_app

INC = "/api/now/table/incident"
SN_AUTH = {"Authorization": "Basic " + base64.b64encode(b"bpsync:bpsync").decode()}


@dataclass
class Receiver:
    url: str
    calls: list[tuple[dict[str, str], Any]] = field(default_factory=list)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    calls: list[tuple[dict[str, str], Any]] = []

    async def record(request: web.Request) -> web.Response:
        calls.append((dict(request.headers), await request.json()))
        return web.json_response({"status": "accepted"}, status=202)

    app = web.Application()
    app.router.add_post("/hook", record)
    async with serve_app(app) as url:
        yield Receiver(f"{url}/hook", calls)


@pytest.fixture
async def sn() -> AsyncIterator[tuple[str, web.Application, aiohttp.ClientSession]]:
    app = create_app(clock=FakeClock())
    async with serve_app(app) as url, aiohttp.ClientSession() as http:
        yield url, app, http


async def _call(http: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> Any:
    headers = {**SN_AUTH, "Accept": "application/json"}
    async with http.request(method, url, json=body, headers=headers) as resp:
        assert resp.status < 300, await resp.text()
        return await resp.json()


async def test_the_business_rule_posts_on_insert_and_update(
    sn: tuple[str, web.Application, aiohttp.ClientSession], receiver: Receiver
) -> None:
    url, app, http = sn
    config = {"url": receiver.url, "headers": {"Authorization": "Bearer t0ken"}}
    async with http.post(f"{url}/_emulator/business_rule", json=config) as resp:
        assert resp.status == 200
    created = (await _call(http, "POST", url + INC, {"correlation_id": "a" * 24}))["result"]
    sys_id = created["sys_id"]
    await _call(http, "PATCH", f"{url}{INC}/{sys_id}", {"impact": "1"})
    await _call(http, "PATCH", f"{url}{INC}/{sys_id}", {"impact": "1"})  # no change: no rule
    await _call(http, "POST", url + INC, {"short_description": "no correlation"})
    await _call(http, "GET", f"{url}{INC}/{sys_id}")
    await app[RULE_KEY].idle()
    bodies = [body for _, body in receiver.calls]
    assert [b["sys_mod_count"] for b in bodies] == ["0", "1"]
    assert all(b["table"] == "incident" and b["sys_id"] == sys_id for b in bodies)
    assert bodies[1]["sys_updated_on"]
    assert all(h["Authorization"] == "Bearer t0ken" for h, _ in receiver.calls)
    state = await _call(http, "GET", f"{url}/_emulator/business_rule")
    assert [d["operation"] for d in state["deliveries"]] == ["insert", "update"]
    assert {d["result"] for d in state["deliveries"]} == {"delivered"}


async def test_the_business_rule_fault_switches(
    sn: tuple[str, web.Application, aiohttp.ClientSession], receiver: Receiver
) -> None:
    url, app, http = sn
    config = {"url": receiver.url, "when": ["update"], "faults": {"duplicate": 1.0}}
    async with http.post(f"{url}/_emulator/business_rule", json=config) as resp:
        assert resp.status == 200
    sys_id = (await _call(http, "POST", url + INC, {"correlation_id": "b" * 24}))["result"][
        "sys_id"
    ]
    await _call(http, "PATCH", f"{url}{INC}/{sys_id}", {"urgency": "1"})
    await app[RULE_KEY].idle()
    assert [body["sys_mod_count"] for _, body in receiver.calls] == ["1", "1"]  # twice
    async with http.post(
        f"{url}/_emulator/business_rule", json={"faults": {"drop": 1.0, "duplicate": 0}}
    ) as resp:
        assert resp.status == 200
    await _call(http, "PATCH", f"{url}{INC}/{sys_id}", {"urgency": "2"})
    await app[RULE_KEY].idle()
    assert len(receiver.calls) == 2
    for bad in ({"faults": {"drop": 3}}, {"when": ["delete"]}, {"loud": True}):
        async with http.post(f"{url}/_emulator/business_rule", json=bad) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]


async def test_bpsync_emulate_push_flags_wire_both_pushes(receiver: Receiver) -> None:
    """``bpsync emulate ... --webhook-url/--webhook-token`` and ``--business-rule-url/
    --business-rule-token``: the apps the commands serve push to the URL with the token."""
    from sync.cli.emulate import _bigpanda_app, _servicenow_app
    from sync.emulators.bigpanda import WEBHOOKS_KEY

    sn_app = _servicenow_app(("bpsync", "bpsync"), rule_url=receiver.url, rule_token="sn-t0ken")
    bp_app = _bigpanda_app(
        "BPUkey",
        "org-token",
        None,
        webhook_url=receiver.url,
        webhook_token="bp-t0ken",
        webhook_envelope="bare",
    )
    async with (
        serve_app(sn_app) as sn_url,
        serve_app(bp_app) as bp_url,
        aiohttp.ClientSession() as http,
    ):
        await _call(http, "POST", sn_url + INC, {"correlation_id": "b" * 24})
        await sn_app[RULE_KEY].idle()
        alert = {"app_key": "app", "status": "critical", "host": "web01", "check": "cpu"}
        async with http.post(
            bp_url + "/data/v2/alerts", json=alert, headers={"Authorization": "Bearer org-token"}
        ) as resp:
            assert resp.status < 300, await resp.text()
        await bp_app[WEBHOOKS_KEY].idle()
    tokens = {h["Authorization"] for h, _ in receiver.calls}
    assert tokens == {"Bearer sn-t0ken", "Bearer bp-t0ken"}
    bare = [body for h, body in receiver.calls if h["Authorization"] == "Bearer bp-t0ken"]
    assert bare and all("id" in body and "incident" not in body for body in bare)
