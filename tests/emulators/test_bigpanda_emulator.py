"""The BigPanda emulator against docs/bigpanda-api.md section 12, over real loopback HTTP."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sync.clock import FakeClock, epoch_s
from sync.emulators.bigpanda import (
    ALL_INCIDENTS_ENVIRONMENT_ID,
    DEFAULT_ENVIRONMENT_ID,
    STATE_KEY,
    WEBHOOKS_KEY,
    ApiError,
    State,
    compile_bpql,
    create_app,
)
from sync.emulators.control import BANNER_KEY, serve_app

API_KEY = "BPUbpsync-emulator"
ORG_TOKEN = "bpsync-org-token"
V2 = "/resources/v2.0"
ENV = f"{V2}/environments/{DEFAULT_ENVIRONMENT_ID}"
HEX24 = re.compile(r"^[0-9a-f]{24}$")
HEX32 = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class Reply:
    status: int
    body: Any
    text: str
    headers: dict[str, str]


@dataclass
class Emu:
    url: str
    http: aiohttp.ClientSession
    state: State
    clock: FakeClock
    app: web.Application

    async def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = API_KEY,
        json: Any = None,
        data: str | None = None,
        params: dict[str, str] | None = None,
    ) -> Reply:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        if data is not None:
            headers["Content-Type"] = "application/json"
        async with self.http.request(
            method, self.url + path, json=json, data=data, params=params, headers=headers
        ) as r:
            text = await r.text()
            body = None
            if text and r.content_type == "application/json":
                body = await r.json()
            return Reply(r.status, body, text, dict(r.headers))

    async def get(self, path: str, **kw: Any) -> Reply:
        return await self.call("GET", path, **kw)

    async def post(self, path: str, **kw: Any) -> Reply:
        return await self.call("POST", path, **kw)

    async def alert(self, **fields: Any) -> Reply:
        body = {"app_key": "nagios", "status": "critical", **fields}
        return await self.post("/data/v2/alerts", token=ORG_TOKEN, json=body)

    async def incidents(self, **params: str) -> list[dict[str, Any]]:
        r = await self.get(f"{ENV}/incidents", params=params)
        assert r.status == 200, r.text
        items: list[dict[str, Any]] = r.body["items"]
        return items


@pytest.fixture
async def emu_factory(clock: FakeClock) -> AsyncIterator[Any]:
    stack: list[Any] = []

    async def make(**kwargs: Any) -> Emu:
        kwargs.setdefault("rate_limit_per_s", None)
        app = create_app(clock=clock, seed=7, **kwargs)
        cm = serve_app(app)
        url = await cm.__aenter__()
        stack.append(cm)
        http = aiohttp.ClientSession()
        stack.append(http)
        return Emu(url, http, app[STATE_KEY], clock, app)

    yield make
    for item in reversed(stack):
        if isinstance(item, aiohttp.ClientSession):
            await item.close()
        else:
            await item.__aexit__(None, None, None)


@pytest.fixture
async def emu(emu_factory: Any) -> Emu:
    result: Emu = await emu_factory()
    return result


def _only(items: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(items) == 1, items
    return items[0]


# ----------------------------------------------------------------- acceptance


async def test_acceptance_scenario(emu: Emu) -> None:
    # an alert posted with the org token creates an incident the API key can search
    r = await emu.alert(host="db-1", check="cpu")
    assert r.status == 201
    inc = _only(await emu.incidents())
    assert HEX24.match(inc["id"])
    assert inc["status"] == "Critical" and inc["active"] is True and inc["end"] is None

    # a second alert with the same correlation key (host) joins it
    emu.clock.advance(10)
    assert (await emu.alert(host="db-1", check="disk", status="warning")).status == 201
    inc = _only(await emu.incidents())
    assert len(inc["alerts"]) == 2

    # an ok for every alert resolves it
    emu.clock.advance(10)
    await emu.alert(host="db-1", check="cpu", status="ok")
    inc = _only(await emu.incidents())
    assert inc["active"] is True and inc["status"] == "Warning"
    assert inc["severity"] == "Critical"
    emu.clock.advance(10)
    await emu.alert(host="db-1", check="disk", status="ok")
    inc = _only(await emu.incidents())
    assert inc["active"] is False and inc["status"] == "Ok"
    assert inc["end"] == epoch_s(emu.clock.now())
    assert inc["folders"] == ["resolved"]
    acts = await emu.get(f"{V2}/incidents/{inc['id']}/activities")
    assert acts.body["items"][0]["type"] == "incident_resolved_by_alerts"

    # resolving by API twice: 202 then 409
    emu.clock.advance(5)
    await emu.alert(host="web-1")
    other = next(i for i in await emu.incidents() if i["active"])
    path = f"{ENV}/incidents/{other['id']}/resolve"
    assert (await emu.post(path, json={"comments": "done"})).status == 202
    second = await emu.post(path, json={"comments": "done"})
    assert second.status == 409
    assert second.body["status"] == 409 and second.body["errors"]

    # a comment posted with the key "comments" answers 400
    r = await emu.post(f"{ENV}/incidents/{other['id']}/comments", json={"comments": "x"})
    assert r.status == 400
    assert r.body == {"status": 400, "errors": [r.body["errors"][0]]}

    # a missing or wrong token answers 401
    assert (await emu.get(f"{ENV}/incidents", token=None)).status == 401
    assert (await emu.get(f"{ENV}/incidents", token="BPUwrong")).status == 401
    assert (await emu.alert(host="x")).status == 201
    r = await emu.post("/data/v2/alerts", token="wrong", json={"app_key": "a", "status": "ok"})
    assert r.status == 401


# ----------------------------------------------------------------- auth


async def test_auth_token_kinds(emu: Emu) -> None:
    r = await emu.get(f"{V2}/environments", token=None)
    assert r.status == 401 and r.body["status"] == 401 and r.body["errors"]
    assert (await emu.get(f"{V2}/environments", token=ORG_TOKEN)).status == 401
    assert (await emu.get(f"{V2}/environments", token="")).status == 401
    async with emu.http.get(
        f"{emu.url}{V2}/environments", headers={"Authorization": f"Basic {API_KEY}"}
    ) as resp:
        assert resp.status == 401
    assert (await emu.get(f"{V2}/environments", token=API_KEY)).status == 200
    # the API key is not accepted for ingest, nor is access_token on v2
    body = {"app_key": "a", "status": "critical", "host": "h"}
    assert (await emu.post("/data/v2/alerts", token=API_KEY, json=body)).status == 401
    r = await emu.get(f"{V2}/environments", token=None, params={"access_token": API_KEY})
    assert r.status == 401
    # ?access_token= works on the Alerts API
    r = await emu.post("/data/v2/alerts", token=None, json=body, params={"access_token": ORG_TOKEN})
    assert r.status == 201
    r = await emu.post("/data/v2/alerts", token=None, json=body, params={"access_token": "no"})
    assert r.status == 401


async def test_unknown_route_is_json_404(emu: Emu) -> None:
    r = await emu.get(f"{V2}/no/such/thing")
    assert r.status == 404
    assert r.body == {"status": 404, "errors": ["Requested endpoint or resource is not found."]}
    assert (await emu.get("/resources/v9/x")).status == 404


# ----------------------------------------------------------------- environments


async def test_environments_bare_array_and_banner(emu_factory: Any) -> None:
    emu = await emu_factory(environments=[{"name": "DB", "filter": 'host = "db-*"'}])
    r = await emu.get(f"{V2}/environments")
    assert r.status == 200 and isinstance(r.body, list)
    names = {e["name"]: e for e in r.body}
    assert names["Production"]["id"] == DEFAULT_ENVIRONMENT_ID
    assert names["All Incidents"]["id"] == ALL_INCIDENTS_ENVIRONMENT_ID
    db_env = names["DB"]["id"]
    assert all(HEX24.match(e["id"]) for e in r.body)
    assert names["DB"]["filter"] == 'host = "db-*"'

    await emu.alert(host="db-7")
    await emu.alert(host="web-1")
    r = await emu.get(f"{V2}/environments/{db_env}/incidents")
    inc = _only(r.body["items"])
    assert db_env in inc["environments"] and ALL_INCIDENTS_ENVIRONMENT_ID in inc["environments"]
    r = await emu.get(f"{V2}/environments/{ALL_INCIDENTS_ENVIRONMENT_ID}/incidents")
    assert r.body["total"] == 2
    web = next(i for i in r.body["items"] if i["id"] != inc["id"])
    assert (await emu.get(f"{V2}/environments/{db_env}/incidents/{web['id']}")).status == 404
    assert (await emu.get(f"{V2}/environments/{'0' * 24}/incidents")).status == 404


def test_banner_and_constants() -> None:
    assert HEX24.match(DEFAULT_ENVIRONMENT_ID)
    app = create_app(api_key="BPUk", org_token="org")
    lines: list[str] = app[BANNER_KEY]
    banner = "\n".join(lines)
    assert "BPUk" in banner and "org" in banner and DEFAULT_ENVIRONMENT_ID in banner
    with pytest.raises(TypeError, match="bogus"):
        create_app(bogus=1)


# ----------------------------------------------------------------- search


async def test_search_window_is_active_during(emu: Emu) -> None:
    t0 = epoch_s(emu.clock.now())
    await emu.alert(host="a")  # resolved at t0+100
    emu.clock.advance(100)
    await emu.alert(host="a", status="ok")
    emu.clock.advance(100)
    await emu.alert(host="b")  # starts t0+200, still open

    def ids(items: list[dict[str, Any]]) -> set[str]:
        return {i["correlation_matchers_log"][0][0]["tags"][0]["value"] for i in items}

    assert ids(await emu.incidents(**{"from": str(t0 + 150)})) == {"b"}
    assert ids(await emu.incidents(**{"from": str(t0 + 50), "to": str(t0 + 60)})) == {"a"}
    assert ids(await emu.incidents(**{"from": str(t0 + 50)})) == {"a", "b"}
    assert ids(await emu.incidents(to=str(t0 + 199))) == {"a"}
    # milliseconds and junk are refused
    r = await emu.get(f"{ENV}/incidents", params={"from": str(t0 * 1000)})
    assert r.status == 400 and r.body["status"] == 400
    assert (await emu.get(f"{ENV}/incidents", params={"to": "yesterday"})).status == 400


async def test_last_change_orders_by_changed_at_and_tags_bump_only_updated_at(emu: Emu) -> None:
    await emu.alert(host="first")
    emu.clock.advance(10)
    await emu.alert(host="second")
    first, second = (
        emu.state.incidents[i].id
        for i in sorted(emu.state.incidents, key=lambda i: emu.state.incidents[i].start)
    )
    items = await emu.incidents()
    assert [i["id"] for i in items] == [second, first]  # default sort_by=last_change
    emu.clock.advance(10)
    before = emu.state.incidents[first].changed_at
    r = await emu.post(f"{ENV}/incidents/{first}/tags/priority", json={"tag_value": "P1"})
    assert r.status == 204
    inc = (await emu.get(f"{ENV}/incidents/{first}")).body
    assert inc["changed_at"] == before
    assert inc["updated_at"] == epoch_s(emu.clock.now())
    assert [i["id"] for i in await emu.incidents(sort_by="last_change")] == [second, first]
    # a status change bumps changed_at and reorders
    emu.clock.advance(10)
    await emu.alert(host="first", status="warning")
    assert [i["id"] for i in await emu.incidents()] == [first, second]
    assert [i["id"] for i in await emu.incidents(sort_by="start")] == [second, first]
    assert [i["id"] for i in await emu.incidents(sort_by="status")] == [second, first]
    assert (await emu.get(f"{ENV}/incidents", params={"sort_by": "age"})).status == 400


async def test_pages_are_one_based_with_default_size_10(emu: Emu) -> None:
    for i in range(25):
        emu.state.ingest_alert({"app_key": "a", "status": "critical", "host": f"h{i}"})
        emu.clock.advance(1)
    r = await emu.get(f"{ENV}/incidents")
    assert r.body["total"] == 25 and len(r.body["items"]) == 10
    seen: list[str] = []
    for page in (1, 2, 3):
        items = await emu.incidents(page=str(page))
        seen.extend(i["id"] for i in items)
    assert len(seen) == len(set(seen)) == 25
    assert await emu.incidents(page="4") == []
    assert (await emu.get(f"{ENV}/incidents", params={"page": "0"})).status == 400
    assert len(await emu.incidents(page_size="100")) == 25
    assert (await emu.get(f"{ENV}/incidents", params={"page_size": "101"})).status == 400
    # expand=alerts allows at most 10 per page
    r = await emu.get(f"{ENV}/incidents", params={"expand": "alerts", "page_size": "11"})
    assert r.status == 400 and r.body["errors"]
    items = await emu.incidents(expand="alerts", page_size="10")
    assert items[0]["alerts"][0]["tags"]


async def test_ten_thousand_result_cap_and_paging_cost(emu: Emu) -> None:
    st = emu.state
    for i in range(10_050):
        st.load_incident({"status": "critical", "alerts": [{"tags": {"host": f"h{i}"}}]})
    start = time.perf_counter()
    r = await emu.get(f"{ENV}/incidents", params={"page": "100", "page_size": "100"})
    assert r.body["total"] == 10_050 and len(r.body["items"]) == 100
    for page in range(1, 30):
        await emu.get(f"{ENV}/incidents", params={"page": str(page), "page_size": "100"})
    elapsed = time.perf_counter() - start
    r = await emu.get(f"{ENV}/incidents", params={"page": "101", "page_size": "100"})
    assert r.status == 200 and r.body["items"] == [] and r.body["total"] == 10_050
    assert elapsed < 20  # generous: one sort per result set, not one per page


async def test_folders_lower_case_and_query(emu: Emu) -> None:
    await emu.alert(host="a")
    await emu.alert(host="b", status="warning")
    await emu.alert(host="c")
    await emu.alert(host="c", status="ok")
    assert len(await emu.incidents(folder="active")) == 2
    assert len(await emu.incidents(folder="resolved")) == 1
    assert (await emu.get(f"{ENV}/incidents", params={"folder": "Active"})).status == 400
    assert (await emu.get(f"{ENV}/incidents", params={"folder": "bogus"})).status == 400
    assert len(await emu.incidents(query='status != "ok"')) == 2
    assert len(await emu.incidents(query='status = "Warning"')) == 1
    assert len(await emu.incidents(query='host = "a" OR host = "b"')) == 2
    assert len(await emu.incidents(query='host IN ("a", "c") AND status = "critical"')) == 1
    assert len(await emu.incidents(query="*")) == 3
    assert (await emu.get(f"{ENV}/incidents", params={"query": 'host = "a'})).status == 400
    r = await emu.get(f"{ENV}/incidents", params={"query": "x" * 2001})
    assert r.status == 400


def test_bpql_subset() -> None:
    with pytest.raises(ValueError, match="BPQL"):
        compile_bpql("host =")
    with pytest.raises(ValueError, match="BPQL"):
        compile_bpql("(host = a")
    compile_bpql('NOT host = "a*" AND (status = critical OR incident_tags.priority != P1)')


# ----------------------------------------------------------------- incident object


async def test_get_incident_bare_object_and_expand(emu: Emu) -> None:
    await emu.alert(host="db-1", check="cpu", description="CPU high", tier=["a", "b"])
    inc_id = next(iter(emu.state.incidents))
    r = await emu.get(f"{ENV}/incidents/{inc_id}")
    assert r.status == 200
    inc = r.body
    assert inc["id"] == inc_id and "items" not in inc
    assert set(inc) >= {
        "id",
        "status",
        "severity",
        "active",
        "flapping",
        "shared",
        "snooze",
        "maintenance",
        "start",
        "changed_at",
        "updated_at",
        "end",
        "alerts",
        "environments",
        "folders",
        "incident_tags",
        "correlation_matchers_log",
    }
    assert inc["snooze"] == {"snoozed": False}
    assert all(isinstance(inc[k], int) for k in ("start", "changed_at", "updated_at"))
    assert list(inc["alerts"][0]) == ["alert_id"] and HEX24.match(inc["alerts"][0]["alert_id"])
    assert "assignee" not in inc
    alert = (await emu.get(f"{ENV}/incidents/{inc_id}", params={"expand": "alerts"})).body[
        "alerts"
    ][0]
    assert alert["status"] == "critical" and alert["active"] is True
    assert alert["primary_property"] == "host" and alert["secondary_property"] == "check"
    assert alert["source_system"] == "api.nagios"
    assert alert["description"] == "CPU high"
    assert {"name": "tier", "value": "a|b"} in alert["tags"]
    assert {"name": "host", "value": "db-1"} in alert["tags"]
    assert (await emu.get(f"{ENV}/incidents/{'f' * 24}")).status == 404


async def test_lowercase_status_switch(emu_factory: Any) -> None:
    emu = await emu_factory(lowercase_status=True)
    await emu.alert(host="a")
    inc = _only(await emu.incidents())
    assert inc["status"] == "critical" and inc["severity"] == "critical"


# ----------------------------------------------------------------- resolve, comments


async def test_resolve_semantics(emu: Emu) -> None:
    await emu.alert(host="a", check="1")
    await emu.alert(host="a", check="2", status="warning")
    inc_id = next(iter(emu.state.incidents))
    base = f"{ENV}/incidents/{inc_id}"
    assert (await emu.post(f"{base}/tags/priority", json={"tag_value": "P2"})).status == 204
    assert (await emu.post(f"{base}/resolve", json={"comment": "x"})).status == 400
    assert (await emu.post(f"{base}/resolve", json={})).status == 400
    assert (await emu.post(f"{base}/resolve", data="{not json")).status == 400
    emu.clock.advance(30)
    r = await emu.post(f"{base}/resolve", json={"comments": "fixed"})
    assert r.status == 202
    inc = (await emu.get(base, params={"expand": "alerts"})).body
    assert inc["active"] is False and inc["status"] == "Ok"
    assert inc["end"] == epoch_s(emu.clock.now())
    assert inc["folders"] == ["resolved"]
    assert all(a["status"] == "ok" and not a["active"] for a in inc["alerts"])
    assert inc["incident_tags"] == [{"tag_id": "priority", "tag_value": "P2"}]
    assert inc["changed_at"] == inc["updated_at"] == epoch_s(emu.clock.now())
    acts = (await emu.get(f"{V2}/incidents/{inc_id}/activities")).body["items"]
    assert acts[0]["type"] == "incident_resolved_api"
    assert acts[0]["params"]["annotation"] == "fixed"
    assert (await emu.post(f"{base}/resolve", json={"comments": "again"})).status == 409


async def test_comments_and_activities(emu: Emu) -> None:
    await emu.alert(host="a")
    inc_id = next(iter(emu.state.incidents))
    base = f"{ENV}/incidents/{inc_id}"
    before = emu.state.incidents[inc_id].changed_at
    for n in range(3):
        emu.clock.advance(1)
        r = await emu.post(f"{base}/comments", json={"comment": f"note {n}"})
        assert r.status == 204 and r.text == ""
    assert (await emu.post(f"{base}/comments", json={"comments": "x"})).status == 400
    r = await emu.post(f"{base}/comments", json={"comment": "x", "comments": "y"})
    assert r.status == 400
    assert (await emu.post(f"{base}/comments", json={})).status == 400
    assert emu.state.incidents[inc_id].changed_at == before
    assert emu.state.incidents[inc_id].updated_at == epoch_s(emu.clock.now())
    r = await emu.get(f"{V2}/incidents/{inc_id}/activities", params={"types": "incident_commented"})
    assert r.status == 200 and list(r.body) == ["items"]
    items = r.body["items"]
    assert [a["params"]["comment"] for a in items] == ["note 2", "note 1", "note 0"]
    assert all(HEX32.match(a["id"]) and isinstance(a["timestamp"], int) for a in items)
    assert items[0]["created_by"] is not None
    everything = (await emu.get(f"{V2}/incidents/{inc_id}/activities")).body["items"]
    assert everything[-1]["type"] == "incident_created"
    page = await emu.get(f"{V2}/incidents/{inc_id}/activities", params={"per_page": "2"})
    assert len(page.body["items"]) == 2
    assert (await emu.get(f"{V2}/incidents/{'a' * 24}/activities")).status == 404


# ----------------------------------------------------------------- tags


async def test_six_tag_routes(emu: Emu) -> None:
    emu.state.define_tag("servicenow_link")
    await emu.alert(host="a")
    inc_id = next(iter(emu.state.incidents))
    tags = f"{ENV}/incidents/{inc_id}/tags"
    r = await emu.post(f"{tags}/servicenow_link", json={"tag_value": "https://sn/INC1"})
    assert r.status == 204 and r.text == ""
    r = await emu.get(f"{tags}/servicenow_link")
    assert r.status == 200
    assert r.body == {
        "tag_id": "servicenow_link",
        "incident_id": inc_id,
        "tag_value": "https://sn/INC1",
        "name": "bpsync",
        "email": r.body["email"],
        "timestamp": epoch_s(emu.clock.now()),
    }
    many = [
        {"tag_id": "priority", "tag_value": "P3"},
        {"tag_id": "servicenow_link", "tag_value": "error"},
    ]
    assert (await emu.post(tags, json=many)).status == 204
    r = await emu.get(tags)
    assert r.status == 200
    assert {t["tag_id"]: t["tag_value"] for t in r.body} == {
        "priority": "P3",
        "servicenow_link": "error",
    }
    assert (await emu.call("DELETE", f"{tags}/priority")).status == 204
    assert (await emu.get(f"{tags}/priority")).status == 404
    assert (await emu.call("DELETE", tags)).status == 204
    assert (await emu.get(tags)).body == []
    types = [
        a["type"] for a in (await emu.get(f"{V2}/incidents/{inc_id}/activities")).body["items"]
    ]
    assert types.count("incident_tag_updated") == 3 and types.count("incident_tag_removed") == 2


async def test_tag_definition_errors(emu: Emu) -> None:
    await emu.alert(host="a")
    inc_id = next(iter(emu.state.incidents))
    tags = f"{ENV}/incidents/{inc_id}/tags"
    r = await emu.post(f"{tags}/owner", json={"tag_value": "x"})
    assert r.status == 404 and "NotExistTag" in r.body["errors"][0]
    r = await emu.post(
        tags, json=[{"tag_id": "priority", "tag_value": "P1"}, {"tag_id": "nope", "tag_value": "x"}]
    )
    assert r.status == 404
    assert emu.state.incidents[inc_id].tags == {}  # all or nothing
    assert (await emu.post(f"{tags}/priority", json={"tag_value": "P9"})).status == 400
    assert (await emu.post(f"{tags}/priority", json={"tag_value": 1})).status == 400
    assert (await emu.post(f"{tags}/priority", json={"value": "P1"})).status == 400

    defs = f"{V2}/incidents/tags/definitions"
    r = await emu.get(defs)
    seeded = {d["id"]: d for d in r.body}
    assert set(seeded) == {"priority"}  # a fresh org: the built-in priority only
    assert seeded["priority"]["type"] == "Priority"
    assert seeded["priority"]["config"]["ordered_list"] == ["P1", "P2", "P3", "P4", "P5"]
    r = await emu.post(
        defs,
        json={
            "name": "team",
            "type": "ClosedListValuesSingle",
            "config": {"incident_tag_values": ["db", "web"]},
        },
    )
    assert r.status == 201 and r.body["id"] == "team"
    assert (await emu.post(defs, json={"name": "team"})).status == 409
    assert (await emu.post(defs, json={"name": "x" * 21})).status == 400
    assert (await emu.post(f"{tags}/team", json={"tag_value": "[db]"})).status == 204
    assert (await emu.post(f"{tags}/team", json={"tag_value": "[ops]"})).status == 400
    assert (await emu.post(f"{tags}/team", json={"tag_value": "db"})).status == 400
    r = await emu.call("PUT", f"{defs}/team", json={"active": False})
    assert r.status == 200 and r.body["active"] is False
    r = await emu.post(f"{tags}/team", json={"tag_value": "[web]"})
    assert r.status == 400 and "InactiveTag" in r.body["errors"][0]
    assert len((await emu.get(defs, params={"active": "true"})).body) == 1  # priority
    assert (await emu.get(f"{defs}/team")).body["config"]["incident_tag_values"] == ["db", "web"]
    assert (await emu.get(f"{defs}/missing")).status == 404


# ----------------------------------------------------------------- alert ingest


async def test_ingest_batch_duplicates_and_validation(emu: Emu) -> None:
    batch = {
        "app_key": "k",
        "alerts": [
            {"status": "warning", "host": "a", "check": "1", "timestamp": 100},
            {"status": "critical", "service": "payments", "timestamp": 101},
        ],
    }
    r = await emu.post("/data/v2/alerts", token=ORG_TOKEN, json=batch)
    assert r.status == 201 and r.body == {"status": 201, "data": {}}
    assert len(emu.state.incidents) == 2
    # an exact duplicate answers 204 and changes nothing
    r = await emu.post("/data/v2/alerts", token=ORG_TOKEN, json=batch)
    assert r.status == 204 and r.text == ""
    assert len(emu.state.alerts) == 2
    bad = [
        {"app_key": "k", "status": "critical"},  # no primary property
        {"app_key": "k", "status": "broken", "host": "a"},
        {"status": "critical", "host": "a"},  # no app_key
        {"app_key": "k", "status": "critical", "host": {"nested": 1}},
        {"app_key": "k", "status": "critical", "host": "a", "timestamp": 1_700_000_000_000},
        {"app_key": "k", "alerts": [{"status": "critical", "host": "a"}, {"status": "ok"}]},
    ]
    for body in bad:
        r = await emu.post("/data/v2/alerts", token=ORG_TOKEN, json=body)
        assert r.status == 400, body
        assert r.body["status"] == 400
    assert len(emu.state.alerts) == 2
    # an explicit primary property and incident_identifier are honoured
    result = emu.state.ingest_alert(
        {
            "app_key": "k",
            "status": "critical",
            "node": "n1",
            "primary_property": "node",
            "incident_identifier": "custom-key",
        }
    )
    assert result.action == "created"
    assert emu.state.alerts[result.alert_id or ""].incident_key == "custom-key"
    with pytest.raises(ApiError):
        emu.state.ingest_alert({"app_key": "k", "status": "critical"})


async def test_severity_is_worst_active_status(emu: Emu) -> None:
    await emu.alert(host="a", check="1", status="warning")
    await emu.alert(host="a", check="2", status="unknown")
    inc_id = next(iter(emu.state.incidents))
    assert emu.state.incidents[inc_id].status == "warning"
    await emu.alert(host="a", check="2", status="critical")
    assert emu.state.incidents[inc_id].status == "critical"
    await emu.alert(host="a", check="2", status="ok")
    inc = (await emu.get(f"{ENV}/incidents/{inc_id}")).body
    assert inc["status"] == "Warning" and inc["severity"] == "Critical" and inc["active"]


async def test_correlation_window_and_reopen_window(emu_factory: Any) -> None:
    emu = await emu_factory(correlation_window_s=600, reopen_window_s=300)
    first = emu.state.ingest_alert({"app_key": "k", "status": "critical", "host": "a"})
    emu.clock.advance(601)
    late = emu.state.ingest_alert({"app_key": "k", "status": "critical", "host": "a", "check": "x"})
    assert late.action == "created" and late.incident_id != first.incident_id

    # resolve by alerts, then the same alert within the reopen window reopens it
    for key in ({"host": "a"}, {"host": "a", "check": "x"}):
        emu.state.ingest_alert({"app_key": "k", "status": "ok", **key})
    inc_id = first.incident_id or ""
    assert not emu.state.incidents[inc_id].active
    emu.clock.advance(200)
    again = emu.state.ingest_alert({"app_key": "k", "status": "critical", "host": "a"})
    assert again.action == "reopened" and again.incident_id == inc_id
    inc = (await emu.get(f"{ENV}/incidents/{inc_id}")).body
    assert inc["active"] is True and inc["end"] is None and inc["status"] == "Critical"
    acts = (await emu.get(f"{V2}/incidents/{inc_id}/activities")).body["items"]
    assert acts[0]["type"] == "incident_reopen"

    # resolved by API, then past the window: a new incident
    assert emu.state.resolve(inc_id, "done")
    emu.clock.advance(301)
    after = emu.state.ingest_alert({"app_key": "k", "status": "critical", "host": "a"})
    assert after.action == "created" and after.incident_id != inc_id
    assert not emu.state.incidents[inc_id].active
    # an ok for an alert nobody knows creates nothing
    assert (
        emu.state.ingest_alert({"app_key": "k", "status": "ok", "host": "zz"}).action == "ignored"
    )


# ----------------------------------------------------------------- rate limits


async def test_rate_limit_per_token_per_endpoint(emu_factory: Any) -> None:
    emu = await emu_factory(rate_limit_per_s=5.0, api_keys=["BPUother"])
    statuses = [(await emu.get(f"{V2}/environments")).status for _ in range(6)]
    assert statuses == [200] * 5 + [429]
    r = await emu.get(f"{V2}/environments")
    assert r.status == 429
    assert "Retry-After" not in r.headers
    assert not any(h.lower().startswith("x-ratelimit") for h in r.headers)
    # another endpoint and another token have their own budgets
    assert (await emu.get(f"{ENV}/incidents")).status == 200
    assert (await emu.get(f"{V2}/environments", token="BPUother")).status == 200
    # alert ingest is not limited
    for i in range(10):
        assert (await emu.alert(host=f"h{i}")).status == 201
    # tokens come back with time
    emu.clock.advance(0.2)
    assert (await emu.get(f"{V2}/environments")).status == 200
    assert (await emu.get(f"{V2}/environments")).status == 429
    # and the limits can be switched off at run time
    async with emu.http.post(f"{emu.url}/_emulator/config", json={"rate_limit_per_s": None}) as r2:
        assert r2.status == 200
    assert all([(await emu.get(f"{V2}/environments")).status == 200 for _ in range(20)])


async def test_rate_limit_off(emu_factory: Any) -> None:
    emu = await emu_factory(rate_limit_per_s=None)
    assert all([(await emu.get(f"{V2}/environments")).status == 200 for _ in range(20)])


# ----------------------------------------------------------------- assign, snooze, batch


async def test_assign_and_snooze(emu: Emu) -> None:
    await emu.alert(host="a")
    inc_id = next(iter(emu.state.incidents))
    base = f"{ENV}/incidents/{inc_id}"
    user = "6553d04d2463e49f8eb3c771"
    assert (await emu.call("PUT", f"{base}/assignment", json={})).status == 400
    assert (await emu.call("PUT", f"{base}/assignment", json={"assignee": user})).status == 204
    inc = (await emu.get(base)).body
    assert inc["assignee"]["user_id"] == user and "assigned" in inc["folders"]
    assert (await emu.call("DELETE", f"{base}/assignment")).status == 204
    assert "assignee" not in (await emu.get(base)).body

    end = epoch_s(emu.clock.now()) + 60
    assert (await emu.call("PUT", f"{base}/snooze", json={"comment": "x"})).status == 400
    r = await emu.call("PUT", f"{base}/snooze", json={"end_time": end, "comment": "later"})
    assert r.status == 204
    inc = (await emu.get(base)).body
    assert inc["snooze"]["snoozed"] is True and "snoozed" in inc["folders"]
    assert len(await emu.incidents(folder="snoozed")) == 1
    emu.clock.advance(61)
    inc = (await emu.get(base)).body
    assert inc["snooze"] == {"snoozed": False}
    types = [
        a["type"] for a in (await emu.get(f"{V2}/incidents/{inc_id}/activities")).body["items"]
    ]
    assert types[:2] == ["incident_unsnoozed", "incident_snoozed"]
    assert (await emu.call("PUT", f"{base}/snooze", json={"end_time": end + 999})).status == 204
    assert (await emu.call("DELETE", f"{base}/snooze")).status == 204
    assert (await emu.get(base)).body["snooze"] == {"snoozed": False}


async def test_batch_resolve_alerts(emu: Emu) -> None:
    await emu.alert(host="a", check="1")
    await emu.alert(host="a", check="2")
    inc_id = next(iter(emu.state.incidents))
    alert_ids = list(emu.state.incidents[inc_id].alert_ids)
    path = f"{ENV}/batch-resolve/alerts"
    assert (await emu.post(path, json={"ids": ["0" * 24]})).status == 404
    assert (await emu.post(path, json={"ids": ["x"] * 501})).status == 400
    r = await emu.post(path, json={"ids": alert_ids[:1], "comments": "one"})
    assert r.status == 202
    assert emu.state.incidents[inc_id].active
    r = await emu.post(path, json={"ids": alert_ids[1:], "comments": "two"})
    assert r.status == 202
    assert not emu.state.incidents[inc_id].active
    acts = (await emu.get(f"{V2}/incidents/{inc_id}/activities")).body["items"]
    assert acts[0]["type"] == "incident_resolved_by_alerts"


# ----------------------------------------------------------------- emulator hooks


async def test_fixture_loader_dump_reset_and_stats(emu: Emu) -> None:
    fixtures = [
        {
            "id": "65397b2eede0a80012631b0c",
            "status": "critical",
            "incident_tags": {"priority": "P1", "custom": "v"},
            "alerts": [{"status": "critical", "tags": {"host": "db-1", "check": "cpu"}}],
        },
        {"status": "ok", "active": False, "alerts": [{"status": "ok", "tags": {"host": "x"}}]},
        {"app_key": "k", "alerts": [{"status": "warning", "host": "web-1"}]},
    ]
    async with emu.http.post(f"{emu.url}/_emulator/incidents", json=fixtures) as r:
        assert r.status == 201
        loaded = (await r.json())["incidents"]
    assert len(loaded) == 3 and loaded[0] == "65397b2eede0a80012631b0c"
    inc = (await emu.get(f"{ENV}/incidents/{loaded[0]}")).body
    assert {t["tag_id"]: t["tag_value"] for t in inc["incident_tags"]} == {
        "priority": "P1",
        "custom": "v",
    }
    assert (await emu.get(f"{ENV}/incidents/{loaded[1]}")).body["active"] is False
    async with emu.http.post(f"{emu.url}/_emulator/incidents", json=[{"status": "bad"}]) as r:
        assert r.status == 400
    async with emu.http.get(f"{emu.url}/_emulator/incidents") as r:
        dump = await r.json()
    assert dump["total"] == 3 and dump["incidents"][0]["activities"]
    async with emu.http.get(f"{emu.url}/_emulator/stats") as r:
        stats = await r.json()
    assert stats["requests"][f"GET {V2}/environments/{{env_id}}/incidents/{{incident_id}}"] == 2
    # faults answer with BigPanda's error body
    rule = {"status": 500, "count": 1, "path": f"{V2}/environments"}
    async with emu.http.post(f"{emu.url}/_emulator/faults", json=rule) as r:
        assert r.status == 201
    r2 = await emu.get(f"{V2}/environments")
    assert r2.status == 500 and r2.body["status"] == 500
    async with emu.http.post(f"{emu.url}/_emulator/reset") as r:
        assert r.status == 200
    assert emu.state.incidents == {}
    assert "priority" in emu.state.tag_definitions


async def _load(emu: Emu, fixtures: Any) -> tuple[int, Any]:
    async with emu.http.post(f"{emu.url}/_emulator/incidents", json=fixtures) as r:
        return r.status, await r.json()


async def test_fixture_loader_stays_strict(emu: Emu) -> None:
    # without raw_* the loader normalises or refuses malformed incidents
    status, body = await _load(emu, {"status": "critical"})
    assert status == 201
    inc = (await emu.get(f"{ENV}/incidents/{body['incidents'][0]}")).body
    assert inc["alerts"] == [] and inc["status"] == "Critical"
    for bad in (
        {"status": "exploded"},
        {"incident_tags": [{"tag_value": "x"}]},
        {"raw_overrides": ["status", "exploded"]},
        {"raw_remove": "alerts"},
        {"raw_remove": [1]},
    ):
        status, body = await _load(emu, bad)
        assert status == 400, bad
    assert len(emu.state.incidents) == 1


async def test_poison_fixtures_are_served_as_stored(emu: Emu) -> None:
    no_alerts = "65397b2eede0a80012631b01"
    exploded = "65397b2eede0a80012631b02"
    bad_tags = "65397b2eede0a80012631b03"
    object_tag = "65397b2eede0a80012631b04"
    fixtures = [
        {"id": no_alerts, "status": "critical", "raw_remove": ["alerts"]},
        {"id": exploded, "status": "critical", "raw_overrides": {"status": "exploded"}},
        {"id": bad_tags, "raw_overrides": {"incident_tags": [{"tag_value": "x"}]}},
        {
            "id": object_tag,
            "alerts": [{"status": "warning", "tags": {"host": "db-9"}}],
            "raw_overrides": {"incident_tags": [{"tag_id": "t", "tag_value": {"a": [1]}}]},
        },
    ]
    status, body = await _load(emu, fixtures)
    assert status == 201 and body["incidents"] == [no_alerts, exploded, bad_tags, object_tag]

    def check(items: dict[str, dict[str, Any]]) -> None:
        assert "alerts" not in items[no_alerts]
        assert items[exploded]["status"] == "exploded"
        assert items[bad_tags]["incident_tags"] == [{"tag_value": "x"}]
        assert items[object_tag]["incident_tags"] == [{"tag_id": "t", "tag_value": {"a": [1]}}]
        # everything else is the normal, strict object
        assert len(items[object_tag]["alerts"]) == 1
        assert items[exploded]["severity"] == "Critical" and items[exploded]["active"] is True

    for expand in ({}, {"expand": "alerts"}):
        check({i["id"]: i for i in await emu.incidents(**expand)})
        got = {}
        for inc_id in (no_alerts, exploded, bad_tags, object_tag):
            r = await emu.get(f"{ENV}/incidents/{inc_id}", params=expand)
            assert r.status == 200
            got[inc_id] = r.body
        check(got)
    # the emulator's own logic uses the normalised incident
    assert {i["id"] for i in await emu.incidents(query='status = "critical"')} >= {exploded}
    # the poison stays through later changes
    r = await emu.post(f"{ENV}/incidents/{exploded}/comments", json={"comment": "hi"})
    assert r.status == 204
    assert (await emu.get(f"{ENV}/incidents/{exploded}")).body["status"] == "exploded"


async def test_state_helpers_simulate_users(emu: Emu) -> None:
    result = emu.state.ingest_alert({"app_key": "k", "status": "critical", "host": "a"})
    inc_id = result.incident_id or ""
    emu.clock.advance(5)
    emu.state.set_tag(inc_id, "priority", "P2", name="Jane", email="jane@example.com")
    emu.state.comment(inc_id, "looking")
    tag = (await emu.get(f"{ENV}/incidents/{inc_id}/tags/priority")).body
    assert tag["name"] == "Jane" and tag["email"] == "jane@example.com"
    inc = emu.state.get(inc_id)
    assert inc.updated_at == epoch_s(emu.clock.now()) and inc.changed_at < inc.updated_at
    with pytest.raises(ApiError):
        emu.state.set_tag(inc_id, "undefined", "x")
    emu.state.define_tag("owner")
    emu.state.set_tag(inc_id, "owner", "team-a")
    emu.state.delete_tag(inc_id, "owner")
    assert "owner" not in emu.state.get(inc_id).tags


# ----------------------------------------------------------------- permissions, v1


async def test_environment_permissions_403(emu_factory: Any) -> None:
    emu = await emu_factory(api_keys={"BPUlimited": [ALL_INCIDENTS_ENVIRONMENT_ID]})
    await emu.alert(host="a")
    inc_id = next(iter(emu.state.incidents))
    r = await emu.get(f"{ENV}/incidents", token="BPUlimited")
    assert r.status == 403 and r.body["status"] == 403
    all_env = f"{V2}/environments/{ALL_INCIDENTS_ENVIRONMENT_ID}"
    assert (await emu.get(f"{all_env}/incidents/{inc_id}", token="BPUlimited")).status == 200
    envs = (await emu.get(f"{V2}/environments", token="BPUlimited")).body
    assert [e["id"] for e in envs] == [ALL_INCIDENTS_ENVIRONMENT_ID]
    assert (await emu.get(f"{ENV}/incidents", token=API_KEY)).status == 200


async def test_legacy_v1_resolve_with_org_token(emu: Emu) -> None:
    await emu.alert(host="a")
    inc_id = next(iter(emu.state.incidents))
    path = f"/resources/v1.0/incidents/{inc_id}"
    assert (await emu.get(path, token=API_KEY)).status == 401
    r = await emu.get(path, token=ORG_TOKEN)
    assert r.status == 200 and r.body["resolved"] is False and "startedOn" in r.body
    r = await emu.post(path, token=ORG_TOKEN, json={"resolved": True, "comments": "SN resolved"})
    assert r.status == 200 and r.body["resolved"] is True and r.body["endedOn"]
    r = await emu.post(path, token=ORG_TOKEN, json={"resolved": True, "comments": "again"})
    assert r.status == 409


# ----------------------------------------------------------------- merge, split


async def test_merge_and_split_are_delayed(emu_factory: Any) -> None:
    emu = await emu_factory(async_delay_s=5, repeat_window_s=10)
    a = emu.state.ingest_alert({"app_key": "k", "status": "critical", "host": "a"})
    b = emu.state.ingest_alert({"app_key": "k", "status": "warning", "host": "b"})
    dest, src = a.incident_id or "", b.incident_id or ""
    body = {"source_incidents": [src], "comment": "same outage"}
    r = await emu.post(f"{ENV}/incidents/{dest}/merge", json=body)
    assert r.status == 202
    assert (await emu.post(f"{ENV}/incidents/{dest}/merge", json=body)).status == 409
    inc = (await emu.get(f"{ENV}/incidents/{dest}")).body
    assert len(inc["alerts"]) == 1  # not yet
    emu.clock.advance(5)
    inc = (await emu.get(f"{ENV}/incidents/{dest}")).body
    assert len(inc["alerts"]) == 2
    source = (await emu.get(f"{ENV}/incidents/{src}")).body
    assert source["active"] is False and source["alerts"] == []
    acts = (await emu.get(f"{V2}/incidents/{dest}/activities")).body["items"]
    assert "incident_merged_destination" in [x["type"] for x in acts]
    r = await emu.post(f"{ENV}/incidents/{dest}/merge", json={"source_incidents": ["0" * 24]})
    assert r.status == 404

    # split moves the listed alerts into a new incident, later
    moving = [b.alert_id or ""]
    r = await emu.post(f"{ENV}/incidents/{dest}/split", json={"alerts": moving})
    assert r.status == 202
    emu.clock.advance(5)
    await emu.get(f"{V2}/environments")  # any request applies what is due
    new_ids = set(emu.state.incidents) - {dest, src}
    new = emu.state.get(new_ids.pop())
    assert new.alert_ids == moving and new.status == "warning"
    assert emu.state.get(dest).alert_ids == [a.alert_id]
    r = await emu.post(f"{ENV}/incidents/{dest}/split", json={"alerts": [a.alert_id]})
    assert r.status == 400  # cannot move every alert


async def test_merge_over_300_alerts_is_refused(emu_factory: Any) -> None:
    emu = await emu_factory(max_alerts_per_incident=3)
    ids = [
        emu.state.ingest_alert({"app_key": "k", "status": "critical", "host": h}).incident_id
        for h in ("a", "b")
    ]
    for check in ("1", "2"):
        emu.state.ingest_alert({"app_key": "k", "status": "critical", "host": "a", "check": check})
    r = await emu.post(f"{ENV}/incidents/{ids[0]}/merge", json={"source_incidents": [ids[1]]})
    assert r.status == 400


# ----------------------------------------------------------------- webhook (AutoShare)


async def test_webhook_autoshare_retry_and_dlq(emu_factory: Any) -> None:
    received: list[tuple[dict[str, str], Any]] = []
    failures = {"left": 0}

    async def hook(request: web.Request) -> web.Response:
        if failures["left"] > 0:
            failures["left"] -= 1
            return web.Response(status=503)
        received.append((dict(request.headers), await request.json()))
        return web.Response(status=200)

    receiver = web.Application()
    receiver.router.add_post("/hook", hook)
    async with serve_app(receiver) as hook_url:
        emu = await emu_factory(
            webhook={
                "url": f"{hook_url}/hook",
                "headers": {"x-bp-config-updateFields": "description"},
                "retry_interval_s": 60,
            }
        )
        async with emu.http.get(f"{emu.url}/_emulator/webhook") as r:
            assert (await r.json())["config"]["url"] == f"{hook_url}/hook"
        result = await emu.alert(host="a")
        assert result.status == 201
        inc_id = next(iter(emu.state.incidents))
        hooks = emu.app[WEBHOOKS_KEY]
        await hooks.idle()
        headers, payload = received[-1]
        assert payload["trigger"] == "incident#new"
        assert payload["incident"]["id"] == inc_id
        assert payload["incident"]["alerts"][0]["tags"]  # alerts expanded
        assert headers["x-bp-config-updateFields"] == "description"
        inc = (await emu.get(f"{ENV}/incidents/{inc_id}")).body
        assert inc["shared"] is True and "shared" in inc["folders"]
        acts = (await emu.get(f"{V2}/incidents/{inc_id}/activities")).body["items"]
        shared = next(x for x in acts if x["type"] == "incident_shared")
        assert shared["params"]["share_auto"] is True and shared["params"]["share_target"]

        # tag upsert and status change are sent; comments are off by default
        await emu.post(f"{ENV}/incidents/{inc_id}/tags/priority", json={"tag_value": "P1"})
        await emu.post(f"{ENV}/incidents/{inc_id}/comments", json={"comment": "hi"})
        await emu.alert(host="a", status="warning")
        await hooks.idle()
        assert [p["trigger"] for _, p in received] == [
            "incident#new",
            "incident-tag#upserted",
            "incident#updated",
        ]

        # 503 twice, then delivered: retried on the injected clock
        failures["left"] = 2
        t0 = emu.clock.monotonic()
        await emu.alert(host="a", status="ok")
        await hooks.idle()
        assert received[-1][1]["trigger"] == "incident#closed"
        assert emu.clock.monotonic() - t0 == pytest.approx(120)
        assert hooks.dlq == []

        # always failing: DLQ after 5 attempts, "notified" after the 6th
        failures["left"] = 100
        emu.clock.advance(10)
        await emu.alert(host="a")  # reopen within the window
        await hooks.idle()
        assert len(hooks.dlq) == 1
        assert hooks.dlq[0]["trigger"] == "incident#reopen"
        assert hooks.dlq[0]["attempts"] == 6 and hooks.dlq[0]["notified"] is True


async def test_ai_analysis_route_sets_the_summary_tag(emu: Emu) -> None:
    await emu.alert(host="aia-1")
    inc_id = next(iter(emu.state.incidents))
    r = await emu.post(f"{ENV}/incidents/{inc_id}/ai/analysis", json={})
    assert r.status == 200
    summary = r.body["data"]["summary"]
    assert emu.state.incidents[inc_id].tags["ai_summary"].value == summary
    assert emu.state.tag_definitions["ai_summary"].type == "Text"
    assert (await emu.post(f"{ENV}/incidents/{'0' * 24}/ai/analysis", json={})).status == 404
