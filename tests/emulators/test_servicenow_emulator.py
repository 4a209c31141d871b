"""The ServiceNow emulator over loopback HTTP, item by item of docs/servicenow-api.md section 7."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from sync.clock import FakeClock
from sync.emulators.control import BANNER_KEY, serve_app
from sync.emulators.servicenow import (
    STATE_KEY,
    InstanceState,
    create_app,
    parse_query,
    split_terms,
    stable_id,
)

AUTH = ("bpsync", "bpsync")
INC = "/api/now/table/incident"
DATA_POLICY = "Data Policy Exception: \n\tThe following fields are mandatory: "


@dataclass
class Reply:
    status: int
    headers: Any
    body: Any
    text: str


@dataclass
class SN:
    url: str
    http: aiohttp.ClientSession
    clock: FakeClock
    state: InstanceState

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        json: Any = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = AUTH,
    ) -> Reply:
        headers = dict(headers or {})
        if auth is not None:
            pair = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            headers["Authorization"] = f"Basic {pair}"
        async with self.http.request(
            method, self.url + path, params=params, json=json, data=data, headers=headers
        ) as r:
            text = await r.text()
            body = None
            if text and r.content_type == "application/json":
                body = await r.json()
            return Reply(r.status, r.headers, body, text)

    async def create(self, **fields: Any) -> dict[str, Any]:
        reply = await self.call("POST", INC, json=fields)
        assert reply.status == 201, reply.text
        result: dict[str, Any] = reply.body["result"]
        return result

    async def patch(self, sys_id: str, **fields: Any) -> Reply:
        return await self.call("PATCH", f"{INC}/{sys_id}", json=fields)

    async def rows(self, table: str = "incident", **params: str) -> list[dict[str, Any]]:
        reply = await self.call("GET", f"/api/now/table/{table}", params=params)
        assert reply.status == 200, reply.text
        rows: list[dict[str, Any]] = reply.body["result"]
        return rows


async def _sn(clock: FakeClock, **options: Any) -> AsyncIterator[SN]:
    app = create_app(clock=clock, seed=1, **options)
    async with serve_app(app) as url, aiohttp.ClientSession() as http:
        yield SN(url, http, clock, app[STATE_KEY])


@pytest.fixture
async def sn(clock: FakeClock) -> AsyncIterator[SN]:
    async for s in _sn(clock):
        yield s


def error(reply: Reply) -> tuple[str, str | None]:
    assert reply.body["status"] == "failure", reply.text
    return reply.body["error"]["message"], reply.body["error"]["detail"]


# ---------------------------------------------------------------- routing & protocol


async def test_routes_and_versions(sn: SN) -> None:
    created = await sn.create(short_description="a")
    for prefix in ("/api/now", "/api/now/v1", "/api/now/v2"):
        reply = await sn.call("GET", f"{prefix}/table/incident/{created['sys_id']}")
        assert reply.status == 200
        assert reply.body["result"]["number"] == "INC0010001"
    empty = {"sysparm_query": "number=INC9999999"}
    v2 = await sn.call("GET", "/api/now/v2/table/incident", params=empty)
    assert (v2.status, v2.body) == (200, {"result": []})
    default = await sn.call("GET", INC, params=empty)
    assert (default.status, default.body) == (200, {"result": []})
    v1 = await sn.call("GET", "/api/now/v1/table/incident", params=empty)
    assert v1.status == 404
    assert error(v1) == (
        "No Record found",
        "Records matching query not found. Check query parameter or offset parameter",
    )
    other = await sn.call("GET", "/api/now/v3/table/incident")
    assert other.status == 400


async def test_head_is_get_without_body(sn: SN) -> None:
    await sn.create(short_description="a")
    reply = await sn.call("HEAD", INC)
    assert reply.status == 200
    assert reply.text == ""
    assert reply.headers["X-Total-Count"] == "1"


async def test_405_for_other_methods(sn: SN) -> None:
    created = await sn.create(short_description="a")
    for method, path in [("PATCH", INC), ("DELETE", INC), ("POST", f"{INC}/{created['sys_id']}")]:
        reply = await sn.call(method, path, json={})
        assert reply.status == 405, (method, path)
        assert reply.body["status"] == "failure"


async def test_unknown_table(sn: SN) -> None:
    reply = await sn.call("GET", "/api/now/table/incidents")
    assert reply.status == 400
    assert reply.body == {
        "error": {"message": "Invalid table incidents", "detail": None},
        "status": "failure",
    }


async def test_post_201_location_and_result_wrapper(sn: SN) -> None:
    reply = await sn.call("POST", INC, json={"short_description": "a"})
    assert reply.status == 201
    sys_id = reply.body["result"]["sys_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", sys_id)
    assert reply.headers["Location"] == f"{sn.url}/api/now/table/incident/{sys_id}"
    assert set(reply.body) == {"result"}


async def test_delete_204_then_404(sn: SN) -> None:
    created = await sn.create(short_description="a")
    path = f"{INC}/{created['sys_id']}"
    reply = await sn.call("DELETE", path)
    assert (reply.status, reply.text) == (204, "")
    for method in ("GET", "DELETE", "PATCH", "PUT"):
        gone = await sn.call(method, path, json={"short_description": "x"})
        assert gone.status == 404, method
        assert error(gone) == (
            "No Record found",
            "Record doesn't exist or ACL restricts the record retrieval",
        )


async def test_no_response_body_header(sn: SN) -> None:
    reply = await sn.call(
        "POST", INC, json={"short_description": "a"}, headers={"X-no-response-body": "true"}
    )
    assert (reply.status, reply.text) == (201, "")
    sys_id = reply.headers["Location"].rsplit("/", 1)[1]
    patched = await sn.call(
        "PATCH",
        f"{INC}/{sys_id}",
        json={"short_description": "b"},
        headers={"X-no-response-body": "true"},
    )
    assert (patched.status, patched.text) == (200, "")
    assert sn.state.tables["incident"][sys_id]["short_description"] == "b"


async def test_only_first_object_of_an_array(sn: SN) -> None:
    reply = await sn.call("POST", INC, json=[{"short_description": "one"}, {"x": "two"}])
    assert reply.status == 201
    assert reply.body["result"]["short_description"] == "one"
    assert len(sn.state.tables["incident"]) == 1


async def test_malformed_json_content_type_and_accept(sn: SN) -> None:
    bad = await sn.call("POST", INC, data=b"{nope", headers={"Content-Type": "application/json"})
    assert bad.status == 400
    assert error(bad) == ("Exception while reading request", "The payload is not valid JSON.")
    form = await sn.call("POST", INC, data={"short_description": "x"})
    assert form.status == 415
    assert form.body["status"] == "failure"
    xml = await sn.call("GET", INC, headers={"Accept": "application/xml"})
    assert xml.status == 406
    ok = await sn.call("GET", INC, headers={"Accept": "application/json, text/plain"})
    assert ok.status == 200
    assert sn.state.tables["incident"] == {}


async def test_values_are_strings_and_utc_datetimes(sn: SN) -> None:
    created = await sn.create(short_description="a", impact=2, urgency=2, knowledge=True)
    assert all(isinstance(v, (str, dict)) for v in created.values())
    assert created["impact"] == "2"
    assert created["knowledge"] == "true"
    assert created["priority"] == "3"
    assert created["assigned_to"] == ""
    assert created["sys_created_on"] == "2026-01-01 00:00:00"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", created["opened_at"])


# ---------------------------------------------------------------- query parser


def test_split_terms_honours_doubled_caret() -> None:
    assert split_terms("a=x^^NQb=1^ORc=2^NQd=3^ORDERBYe") == [
        ("", "a=x^NQb=1"),
        ("^OR", "c=2"),
        ("^NQ", "d=3"),
        ("^", "ORDERBYe"),
    ]
    assert split_terms("a=x^^^b=1") == [("", "a=x^"), ("^", "b=1")]


def test_parse_query_operators() -> None:
    parsed = parse_query(
        "a!=1^b>=2^c<3^dNOT LIKEx^eNOT IN1,2^fISNOTEMPTY^g*y^h!*z^i%w^ORDERBYDESCk^ORDERBYl"
    )
    ops = [(c.field, c.op, c.value) for clause in parsed.groups[0] for c in clause]
    assert ops == [
        ("a", "!=", "1"),
        ("b", ">=", "2"),
        ("c", "<", "3"),
        ("d", "NOT LIKE", "x"),
        ("e", "NOT IN", "1,2"),
        ("f", "ISNOTEMPTY", ""),
        ("g", "LIKE", "y"),
        ("h", "NOT LIKE", "z"),
        ("i", "ENDSWITH", "w"),
    ]
    assert parsed.order == [("k", True), ("l", False)]


async def _three(sn: SN) -> list[dict[str, Any]]:
    rows = []
    for i, (desc, impact) in enumerate([("alpha one", "1"), ("beta two", "2"), ("gamma", "3")]):
        rows.append(
            await sn.create(
                short_description=desc, impact=impact, correlation_id=f"c{i}" if i else ""
            )
        )
        sn.clock.advance(1)
    return rows


async def _numbers(sn: SN, query: str, **params: str) -> list[str]:
    rows = await sn.rows(sysparm_query=query, sysparm_fields="number", **params)
    return [r["number"] for r in rows]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("impact=1", ["INC0010001"]),
        ("impact!=1", ["INC0010002", "INC0010003"]),
        ("impact>1", ["INC0010002", "INC0010003"]),
        ("impact>=2^impact<=2", ["INC0010002"]),
        ("impact<2", ["INC0010001"]),
        ("short_descriptionLIKEa t", ["INC0010002"]),
        ("short_descriptionNOT LIKEa", []),
        ("short_descriptionSTARTSWITHgam", ["INC0010003"]),
        ("short_descriptionENDSWITHone", ["INC0010001"]),
        ("short_description%two", ["INC0010002"]),
        ("impactIN1,3", ["INC0010001", "INC0010003"]),
        ("impactNOT IN1,3", ["INC0010002"]),
        ("correlation_idISEMPTY", ["INC0010001"]),
        ("correlation_idISNOTEMPTY", ["INC0010002", "INC0010003"]),
        ("impactBETWEEN2@3", ["INC0010002", "INC0010003"]),
        ("impactANYTHING", ["INC0010001", "INC0010002", "INC0010003"]),
        ("impact=1^ORimpact=3", ["INC0010001", "INC0010003"]),
        ("impact=1^NQimpact=2^short_descriptionLIKEbeta", ["INC0010001", "INC0010002"]),
        ("impact=2^NQimpact=3^short_descriptionLIKEbeta", ["INC0010002"]),
        ("impactSAMEASurgency", ["INC0010003"]),
        ("impactNSAMEASurgency", ["INC0010001", "INC0010002"]),
        ("short_description=ALPHA ONE", []),  # case-sensitive (docs 2.1)
        ("opened_by.user_name=bpsync^impact=2", ["INC0010002"]),
        ("ORDERBYDESCimpact", ["INC0010003", "INC0010002", "INC0010001"]),
        ("impact>=1^ORDERBYDESCnumber", ["INC0010003", "INC0010002", "INC0010001"]),
        ("no_such_field=1^impact=2", ["INC0010002"]),  # unknown field silently dropped
        ("impact=2^ORno_such=1", ["INC0010002"]),
    ],
)
async def test_query_semantics(sn: SN, query: str, expected: list[str]) -> None:
    await _three(sn)
    assert await _numbers(sn, query) == expected


async def test_doubled_caret_is_a_literal(sn: SN) -> None:
    await _three(sn)
    await sn.create(short_description="x^NQimpact=1")
    assert await _numbers(sn, "short_description=x^^NQimpact=1") == ["INC0010004"]
    assert await _numbers(sn, "short_description=nomatch^^NQimpact=1") == []
    assert await _numbers(sn, "short_description=nomatch^NQimpact=1") == ["INC0010001"]


async def test_invalid_query_switches(clock: FakeClock) -> None:
    async for sn in _sn(clock, invalid_query="no_rows"):
        await _three(sn)
        assert await _numbers(sn, "bogus=1^impact=2") == []
        assert await _numbers(sn, "impact=2") == ["INC0010002"]
    async for sn in _sn(clock, invalid_query="forbidden"):
        reply = await sn.call("GET", INC, params={"sysparm_query": "bogus=1"})
        assert reply.status == 403
        assert error(reply) == (
            "Insufficient rights to query records",
            "Field(s) present in the query do not have permission to be read",
        )


async def test_javascript_values(sn: SN) -> None:
    await _three(sn)  # created at 00:00:00, 00:00:01, 00:00:02 UTC on 2026-01-01
    bpsync = stable_id("sys_user:bpsync")
    assert len(await _numbers(sn, "opened_by=javascript:gs.getUserID()")) == 3
    users = await sn.rows(
        "sys_user", sysparm_query="user_name=javascript:gs.getUserName()", sysparm_fields="sys_id"
    )
    assert users == [{"sys_id": bpsync}]
    query = "sys_created_on>=javascript:gs.dateGenerate('2026-01-01','00:00:01')"
    assert await _numbers(sn, query) == ["INC0010002", "INC0010003"]
    assert len(await _numbers(sn, "sys_created_on>=javascript:gs.beginningOfToday()")) == 3
    assert len(await _numbers(sn, "sys_created_on>=javascript:gs.daysAgoStart(1)")) == 3
    assert await _numbers(sn, "sys_created_on>javascript:gs.endOfToday()") == []
    # a plain literal is UTC
    assert await _numbers(sn, "sys_created_on>=2026-01-01 00:00:02") == ["INC0010003"]
    # dateGenerate is in the user's zone: a Los Angeles user's midnight is 08:00 UTC
    sn.state.tables["sys_user"][bpsync]["time_zone"] = "America/Los_Angeles"
    query = "sys_created_on<javascript:gs.dateGenerate('2025-12-31','16:00:01')"
    assert await _numbers(sn, query) == ["INC0010001"]


# ---------------------------------------------------------------- fields and display values


async def test_fields_and_reference_shapes(sn: SN) -> None:
    group = stable_id("sys_user_group:Network")
    created = await sn.create(short_description="a", assignment_group=group, state="2")
    path = f"{INC}/{created['sys_id']}"
    fields = "number,assignment_group,assignment_group.name,state,bogus"

    raw = (await sn.call("GET", path, params={"sysparm_fields": fields})).body["result"]
    assert raw == {
        "number": "INC0010001",
        "assignment_group": {
            "link": f"{sn.url}/api/now/table/sys_user_group/{group}",
            "value": group,
        },
        "assignment_group.name": "Network",
        "state": "2",
    }
    bare = await sn.call(
        "GET", path, params={"sysparm_fields": fields, "sysparm_exclude_reference_link": "true"}
    )
    assert bare.body["result"]["assignment_group"] == group

    shown = await sn.call(
        "GET", path, params={"sysparm_fields": fields, "sysparm_display_value": "true"}
    )
    assert shown.body["result"] == {
        "number": "INC0010001",
        "assignment_group": {
            "display_value": "Network",
            "link": f"{sn.url}/api/now/table/sys_user_group/{group}",
        },
        "assignment_group.name": "Network",
        "state": "In Progress",
    }
    both = await sn.call(
        "GET",
        path,
        params={
            "sysparm_fields": "number,assignment_group,state,assigned_to",
            "sysparm_display_value": "all",
            "sysparm_exclude_reference_link": "true",
        },
    )
    assert both.body["result"] == {
        "number": {"display_value": "INC0010001", "value": "INC0010001"},
        "assignment_group": {"display_value": "Network", "value": group},
        "state": {"display_value": "In Progress", "value": "2"},
        "assigned_to": {"display_value": "", "value": ""},
    }


# ---------------------------------------------------------------- paging


async def test_limit_offset_total_and_link(sn: SN) -> None:
    for i in range(7):
        await sn.create(short_description=f"n{i}")
    params = {"sysparm_query": "ORDERBYnumber", "sysparm_limit": "3", "sysparm_offset": "3"}
    reply = await sn.call("GET", INC, params={**params, "sysparm_fields": "number"})
    assert [r["number"] for r in reply.body["result"]] == ["INC0010004", "INC0010005", "INC0010006"]
    assert reply.headers["X-Total-Count"] == "7"
    found = re.findall(r'<([^>]+)>;rel="(\w+)"', reply.headers["Link"])
    links = {rel: url for url, rel in found}
    assert set(links) == {"first", "prev", "next", "last"}
    assert all(u.startswith(sn.url + INC + "?") for u in links.values())
    assert "sysparm_offset=0" in links["first"]
    assert "sysparm_offset=6" in links["next"]
    assert "sysparm_offset=6" in links["last"]
    assert "sysparm_query=ORDERBYnumber" in links["next"]
    assert "sysparm_limit=3" in links["next"]

    first = await sn.call("GET", INC, params={"sysparm_limit": "3"})
    assert "prev" not in first.headers["Link"]
    single = await sn.call("GET", INC, params={"sysparm_limit": "10"})
    assert "Link" not in single.headers
    quiet = await sn.call(
        "GET",
        INC,
        params={
            "sysparm_limit": "3",
            "sysparm_no_count": "true",
            "sysparm_suppress_pagination_header": "true",
        },
    )
    assert "X-Total-Count" not in quiet.headers
    assert "Link" not in quiet.headers
    assert len(quiet.body["result"]) == 3


async def test_default_limit_is_configurable(clock: FakeClock) -> None:
    async for sn in _sn(clock, default_limit=2):
        for i in range(3):
            await sn.create(short_description=f"n{i}")
        reply = await sn.call("GET", INC)
        assert len(reply.body["result"]) == 2
        assert reply.headers["X-Total-Count"] == "3"
    assert create_app().__class__.__name__ == "Application"


async def test_list_10k_ordered_page_is_fast(sn: SN) -> None:
    state = sn.state
    user = state.user("bpsync")
    for i in range(10_000):
        state.insert(
            "incident", {"short_description": f"bulk {i}", "correlation_id": f"b{i}"}, user
        )
        if i % 500 == 0:
            sn.clock.advance(1)
    params = {
        "sysparm_query": "sys_updated_on>=2026-01-01 00:00:05^correlation_idISNOTEMPTY"
        "^ORDERBYsys_updated_on^ORDERBYsys_id",
        "sysparm_limit": "500",
        "sysparm_fields": "sys_id,sys_updated_on,sys_mod_count,correlation_id",
        "sysparm_exclude_reference_link": "true",
    }
    await sn.call("GET", INC, params=params)  # warm-up
    # CPU time of this process (the emulator runs in it), not wall time: a busy machine
    # delays the call but does not make it cost more
    started = time.process_time()
    reply = await sn.call("GET", INC, params={**params, "sysparm_offset": "5000"})
    elapsed = time.process_time() - started
    assert reply.status == 200
    keys = [(r["sys_updated_on"], r["sys_id"]) for r in reply.body["result"]]
    assert keys == sorted(keys)
    assert len(keys) == 500
    assert elapsed < 0.15, f"{elapsed * 1000:.0f} ms of CPU"


# ---------------------------------------------------------------- auth and limits


async def test_401_shapes(sn: SN) -> None:
    for auth in (None, ("bpsync", "wrong")):
        reply = await sn.call("GET", INC, auth=auth)
        assert reply.status == 401
        assert reply.body == {
            "error": {
                "message": "User Not Authenticated",
                "detail": "Required to provide Auth information",
            },
            "status": "failure",
        }
    bearer = await sn.call("GET", INC, auth=None, headers={"Authorization": "Bearer nope"})
    assert bearer.status == 401


async def test_oauth_grants_and_expiry(sn: SN) -> None:
    form = {
        "grant_type": "password",
        "client_id": "bpsync",
        "client_secret": "bpsync",
        "username": "bpsync",
        "password": "bpsync",
    }
    reply = await sn.call("POST", "/oauth_token.do", data=form, auth=None)
    assert reply.status == 200
    token = reply.body
    assert token["expires_in"] == 1799
    assert token["token_type"] == "Bearer"
    again = await sn.call("POST", "/oauth_token.do", data=form, auth=None)
    assert again.body["access_token"] == token["access_token"]  # the current token
    bearer = {"Authorization": f"Bearer {token['access_token']}"}
    assert (await sn.call("GET", INC, headers=bearer, auth=None)).status == 200

    sn.clock.advance(1800)
    expired = await sn.call("GET", INC, headers=bearer, auth=None)
    assert expired.status == 401
    refresh = {
        "grant_type": "refresh_token",
        "client_id": "bpsync",
        "client_secret": "bpsync",
        "refresh_token": token["refresh_token"],
    }
    renewed = await sn.call("POST", "/oauth_token.do", data=refresh, auth=None)
    assert renewed.status == 200
    assert "refresh_token" not in renewed.body
    new_bearer = {"Authorization": f"Bearer {renewed.body['access_token']}"}
    assert (await sn.call("GET", INC, headers=new_bearer, auth=None)).status == 200

    failure = {"error_description": "access_denied", "error": "server_error"}
    for bad in (
        {**form, "client_secret": "x"},
        {**form, "password": "x"},
        {**refresh, "refresh_token": "x"},
        {**form, "grant_type": "client_credentials"},  # not enabled
    ):
        refused = await sn.call("POST", "/oauth_token.do", data=bad, auth=None)
        assert (refused.status, refused.body) == (401, failure)
    as_json = await sn.call("POST", "/oauth_token.do", json=form, auth=None)
    assert (as_json.status, as_json.body) == (401, failure)


async def test_api_key(clock: FakeClock) -> None:
    async for sn in _sn(clock, api_keys={"k1": "bpsync"}):
        ok = await sn.call("GET", INC, auth=None, headers={"x-sn-apikey": "k1"})
        assert ok.status == 200
        bad = await sn.call("GET", INC, auth=None, headers={"x-sn-apikey": "k2"})
        assert bad.status == 401


async def test_rate_limit_rule(clock: FakeClock) -> None:
    async for sn in _sn(clock, rate_limit_per_hour=3):
        sn.clock.set(sn.clock.now().replace(minute=59, second=0))
        for _ in range(3):
            reply = await sn.call("GET", INC)
            assert reply.status == 200
            assert reply.headers["X-RateLimit-Limit"] == "3"
            assert "X-RateLimit-Rule" in reply.headers
        reset = int(reply.headers["X-RateLimit-Reset"])
        assert reset == int(sn.clock.now().timestamp()) + 60
        denied = await sn.call("GET", INC)
        assert denied.status == 429
        assert denied.headers["Retry-After"] == "60"
        assert error(denied)[0] == "Rate limit exceeded"
        sn.clock.advance(60)
        assert (await sn.call("GET", INC)).status == 200
    async for sn in _sn(clock):
        assert "X-RateLimit-Limit" not in (await sn.call("GET", INC)).headers


# ---------------------------------------------------------------- incident rules


async def test_insert_defaults(sn: SN) -> None:
    created = await sn.create(short_description="a", sys_created_by="evil", priority="1")
    bpsync = stable_id("sys_user:bpsync")
    expected = {
        "number": "INC0010001",
        "state": "1",
        "incident_state": "1",
        "severity": "3",
        "impact": "3",
        "urgency": "3",
        "priority": "5",  # derived, the direct write is overwritten on insert
        "category": "inquiry",
        "active": "true",
        "reopen_count": "0",
        "sys_mod_count": "0",
        "approval": "not requested",
        "sys_created_by": "bpsync",
        "sys_updated_by": "bpsync",
        "sys_class_name": "incident",
    }
    assert {k: created[k] for k in expected} == expected
    assert created["opened_by"]["value"] == bpsync
    assert (await sn.create(short_description="b"))["number"] == "INC0010002"


async def test_update_counting_and_noop(sn: SN) -> None:
    created = await sn.create(short_description="a")
    path = f"{INC}/{created['sys_id']}"
    sn.clock.advance(5)
    same = await sn.patch(created["sys_id"], short_description="a", sys_mod_count="9")
    assert same.body["result"]["sys_mod_count"] == "0"
    assert same.body["result"]["sys_updated_on"] == "2026-01-01 00:00:00"
    put = await sn.call("PUT", path, json={"description": "d"})
    assert put.body["result"]["sys_mod_count"] == "1"
    assert put.body["result"]["sys_updated_on"] == "2026-01-01 00:00:05"
    assert put.body["result"]["short_description"] == "a"  # PUT is partial too
    admin = ("admin", "admin")
    by_admin = await sn.call("PATCH", path, json={"urgency": "1"}, auth=admin)
    assert by_admin.body["result"]["sys_updated_by"] == "admin"
    assert by_admin.body["result"]["priority"] == "3"
    assert by_admin.body["result"]["sys_mod_count"] == "2"


async def test_priority_matrix(sn: SN) -> None:
    matrix = {("1", "1"): "1", ("1", "3"): "3", ("2", "2"): "3", ("3", "2"): "4", ("2", "3"): "4"}
    for (impact, urgency), priority in matrix.items():
        assert (await sn.create(impact=impact, urgency=urgency))["priority"] == priority


async def test_resolve_needs_valid_code_and_notes(sn: SN) -> None:
    sys_id = (await sn.create(short_description="a"))["sys_id"]
    cases = [
        ({"state": "6"}, "Resolution code, Close notes"),
        (
            {"state": "6", "close_code": "Solved (Permanently)", "close_notes": "n"},
            "Resolution code",
        ),
        ({"state": "6", "close_code": "Solution provided"}, "Close notes"),
        ({"state": "3"}, "On hold reason"),
    ]
    for body, missing in cases:
        reply = await sn.patch(sys_id, **body)
        assert reply.status == 403
        assert error(reply) == ("Operation Failed", DATA_POLICY + missing)
    assert sn.state.tables["incident"][sys_id]["sys_mod_count"] == "0"

    sn.clock.advance(10)
    admin = ("admin", "admin")
    resolved = await sn.call(
        "PATCH",
        f"{INC}/{sys_id}",
        json={"state": "6", "close_code": "Solution provided", "close_notes": "fixed"},
        auth=admin,
    )
    record = resolved.body["result"]
    assert record["state"] == record["incident_state"] == "6"
    assert record["active"] == "true"
    assert record["resolved_at"] == "2026-01-01 00:00:10"
    assert record["resolved_by"]["value"] == stable_id("sys_user:admin")

    sn.clock.advance(10)
    reopened = (await sn.patch(sys_id, state="2")).body["result"]
    assert reopened["reopen_count"] == "1"
    assert reopened["reopened_time"] == "2026-01-01 00:00:20"
    assert reopened["reopened_by"]["value"] == stable_id("sys_user:bpsync")
    assert reopened["incident_state"] == "2"

    closed = (await sn.patch(sys_id, state="7")).body["result"]
    assert closed["active"] == "false"
    assert closed["closed_at"] == "2026-01-01 00:00:20"
    refused = await sn.patch(sys_id, state="2")
    assert refused.status == 403
    assert error(refused)[0] == "Operation Failed"
    assert sn.state.tables["incident"][sys_id]["state"] == "7"


async def test_legacy_close_codes_and_cancel(clock: FakeClock) -> None:
    async for sn in _sn(clock, close_codes="legacy"):
        sys_id = (await sn.create(short_description="a"))["sys_id"]
        modern = await sn.patch(sys_id, state="6", close_code="Solution provided", close_notes="n")
        assert modern.status == 403
        legacy = await sn.patch(
            sys_id, state="6", close_code="Solved (Permanently)", close_notes="n"
        )
        assert legacy.status == 200
        codes = await sn.rows(
            "sys_choice",
            sysparm_query="name=incident^element=close_code^inactive=false",
            sysparm_fields="value",
        )
        assert "Solved (Permanently)" in {c["value"] for c in codes}
        assert "Solution provided" not in {c["value"] for c in codes}
        canceled = (await sn.create(short_description="b", state="8"))["active"]
        assert canceled == "false"


async def test_journals(sn: SN) -> None:
    sys_id = (await sn.create(short_description="a", work_notes="first"))["sys_id"]
    sn.clock.advance(61)
    reply = await sn.patch(sys_id, work_notes="second", comments="hello")
    assert reply.body["result"]["work_notes"] == ""
    assert reply.body["result"]["sys_mod_count"] == "1"  # a journal-only update counts
    again = await sn.patch(sys_id, work_notes="second")
    assert again.body["result"]["sys_mod_count"] == "2"  # no dedup of identical text

    entries = await sn.rows(
        "sys_journal_field",
        sysparm_query=f"element_id={sys_id}^element=work_notes^ORDERBYsys_created_on",
        sysparm_fields="value,sys_created_by,name",
    )
    assert [e["value"] for e in entries] == ["first", "second", "second"]
    assert entries[0] == {"value": "first", "sys_created_by": "bpsync", "name": "incident"}

    shown = await sn.call(
        "GET",
        f"{INC}/{sys_id}",
        params={"sysparm_display_value": "true", "sysparm_fields": "work_notes,comments"},
    )
    assert shown.body["result"]["work_notes"] == (
        "2026-01-01 00:01:01 - Bpsync (Work notes)\nsecond\n\n"
        "2026-01-01 00:01:01 - Bpsync (Work notes)\nsecond\n\n"
        "2026-01-01 00:00:00 - Bpsync (Work notes)\nfirst\n\n"
    )
    assert shown.body["result"]["comments"] == (
        "2026-01-01 00:01:01 - Bpsync (Additional comments)\nhello\n\n"
    )


async def test_field_length_truncate_or_reject(clock: FakeClock) -> None:
    async for sn in _sn(clock):
        created = await sn.create(short_description="x" * 200, correlation_id="c" * 150)
        assert len(created["short_description"]) == 160
        assert len(created["correlation_id"]) == 100
    async for sn in _sn(clock, overlong="reject"):
        reply = await sn.call("POST", INC, json={"description": "x" * 4001})
        assert reply.status == 403
        assert "description" in (error(reply)[1] or "")


async def test_seeded_reference_tables(sn: SN) -> None:
    same_mail = await sn.rows(
        "sys_user", sysparm_query="email=beth.anglin@example.com", sysparm_limit="2"
    )
    assert len(same_mail) == 2
    assert len(await sn.rows("cmdb_ci", sysparm_query="name=web01")) == 2
    groups = await sn.rows("sys_user_group", sysparm_fields="name")
    assert {"name": "Network"} in groups
    tz = await sn.rows("sys_properties", sysparm_query="name=glide.sys.default.tz")
    assert tz[0]["value"]


async def test_name_value_filters_and_input_display(sn: SN) -> None:
    await _three(sn)
    assert [r["number"] for r in await sn.rows(impact="2", sysparm_fields="number")] == [
        "INC0010002"
    ]
    assert len(await sn.rows(state="New")) == 3  # a choice label is accepted here


async def test_control_reset_reseeds(sn: SN) -> None:
    await sn.create(short_description="a")
    reply = await sn.call("POST", "/_emulator/reset", auth=None)
    assert reply.status == 200
    assert sn.state.tables["incident"] == {}
    assert (await sn.create(short_description="b"))["number"] == "INC0010001"
    stats = await sn.call("GET", "/_emulator/stats", auth=None)
    assert stats.body["requests"] == {"POST /api/now/table/{table}": 1}


def test_banner_and_options() -> None:
    app = create_app(users={"u": "p"})
    assert "user u / password p" in app[BANNER_KEY]
    with pytest.raises(TypeError, match="unknown"):
        create_app(bogus=1)


async def test_input_display_value(sn: SN) -> None:
    bpsync = stable_id("sys_user:bpsync")
    sn.state.tables["sys_user"][bpsync]["time_zone"] = "Europe/Paris"
    reply = await sn.call(
        "POST",
        INC,
        params={"sysparm_input_display_value": "true"},
        json={
            "assignment_group": "Network",
            "caller_id": "Beth Anglin",  # two users share this name: not resolved
            "due_date": "2026-01-02 10:00:00",
            "state": "In Progress",
        },
    )
    record = reply.body["result"]
    assert record["assignment_group"]["value"] == stable_id("sys_user_group:Network")
    assert record["caller_id"] == ""
    assert record["due_date"] == "2026-01-02 09:00:00"
    assert record["state"] == "2"


async def test_client_credentials_when_enabled(clock: FakeClock) -> None:
    async for sn in _sn(clock, client_credentials_user="bpsync"):
        form = {
            "grant_type": "client_credentials",
            "client_id": "bpsync",
            "client_secret": "bpsync",
        }
        reply = await sn.call("POST", "/oauth_token.do", data=form, auth=None)
        assert reply.status == 200
        assert "refresh_token" not in reply.body
        bearer = {"Authorization": f"Bearer {reply.body['access_token']}"}
        assert (await sn.call("GET", INC, headers=bearer, auth=None)).status == 200


async def test_method_override_and_405_allow(sn: SN) -> None:
    sys_id = (await sn.create(short_description="a"))["sys_id"]
    reply = await sn.call(
        "POST",
        f"{INC}/{sys_id}",
        json={"short_description": "b"},
        headers={"X-HTTP-Method-Override": "PATCH"},
    )
    assert reply.status == 200
    assert reply.body["result"]["short_description"] == "b"
    denied = await sn.call("PUT", INC, json={})
    assert denied.status == 405
    assert denied.headers["Allow"] == "GET, HEAD, POST"
