"""ServiceNowClient over loopback against the ServiceNow emulator (sync.emulators.servicenow).

CRUD; the incremental listing of 2,500 incidents while 500 of them are updated between
pages (none missed, none repeated); values with ``^NQ``/``^OR`` cannot widen a query;
429 with ``Retry-After``; an HTML 200 page; OAuth token expiry.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from sync.clients.servicenow import ServiceNowClient, make_session
from sync.clock import FakeClock
from sync.emulators.control import serve_app
from sync.emulators.servicenow import create_app
from sync.errors import FatalError, NotFoundError, PermanentError, TransientError
from sync.settings import ServiceNowSettings
from tests.fakes import as_records

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def sn_settings(url: str, **kw: Any) -> ServiceNowSettings:
    values: dict[str, Any] = {
        "url": url,
        "username": "bpsync",
        "password": SecretStr("bpsync"),
        "max_concurrency": 8,
        "page_size": 100,
    }
    values.update(kw)
    return ServiceNowSettings(**values)


@dataclass
class Env:
    url: str
    clock: FakeClock
    client: ServiceNowClient
    http: aiohttp.ClientSession
    app: web.Application
    observed: list[tuple[str, str, int | None]] = field(default_factory=list)

    async def control(self, method: str, path: str, body: Any = None) -> Any:
        async with self.http.request(method, f"{self.url}/_emulator/{path}", json=body) as r:
            assert r.status < 300, await r.text()
            return await r.json()


async def _env(app: web.Application, clock: FakeClock, **kw: Any) -> AsyncIterator[Env]:
    async with serve_app(app) as url:
        settings = sn_settings(url, **kw)
        async with make_session(settings) as http:
            observed: list[tuple[str, str, int | None]] = []
            client = ServiceNowClient(
                http, settings, clock, observer=lambda _, m, t, s, d: observed.append((m, t, s))
            )
            yield Env(url, clock, client, http, app, observed)


def emulator_app(clock: FakeClock) -> web.Application:
    """The ServiceNow emulator (sync.emulators.servicenow)."""
    return create_app(clock=clock)


@pytest.fixture
async def env(clock: FakeClock) -> AsyncIterator[Env]:
    async for e in _env(emulator_app(clock), clock):
        yield e


# ---------------------------------------------------------------- CRUD


async def test_crud_round_trip(env: Env) -> None:
    client = env.client
    created = await client.create_incident(
        {"short_description": "Disk full", "correlation_id": "bp-1", "impact": "1"}
    )
    sys_id = created.sys_id
    assert created.number == "INC0010001"
    assert created.fields["sys_mod_count"] == "0"
    assert created.fields["correlation_id"] == "bp-1"

    fetched = await client.get_incident(sys_id)
    assert fetched.fields["short_description"] == "Disk full"
    assert isinstance(fetched.fields["opened_by"], str)  # exclude_reference_link: a bare sys_id

    env.clock.advance(5)
    updated = await client.update_incident(sys_id, {"urgency": "1"})
    assert updated.fields["priority"] == "1"  # derived by the business rule from impact x urgency
    assert updated.fields["sys_mod_count"] == "1"

    found = await client.find_by_correlation_id("bp-1", active_only=True)
    assert [r.sys_id for r in found] == [sys_id]
    assert await client.find_by_correlation_id("bp-2") == []

    await client.delete_incident(sys_id)
    with pytest.raises(NotFoundError, match="No Record found"):
        await client.get_incident(sys_id)
    with pytest.raises(NotFoundError):
        await client.delete_incident(sys_id)
    await client.check_auth()

    templates = {(m, t) for m, t, _ in env.observed}
    assert ("PATCH", "/api/now/table/{table}/{sys_id}") in templates
    assert ("GET", "/api/now/table/{table}") in templates


async def test_data_policy_is_permanent_with_servicenow_words(env: Env) -> None:
    created = await env.client.create_incident({"short_description": "x"})
    with pytest.raises(PermanentError) as info:
        await env.client.update_incident(created.sys_id, {"state": "6"})
    assert info.value.status == 403
    assert info.value.message == "Operation Failed"
    assert "Data Policy Exception" in (info.value.detail or "")
    assert "\n" not in str(info.value)


async def test_wrong_password_is_fatal(env: Env) -> None:
    settings = sn_settings(env.url, password=SecretStr("nope"))
    client = ServiceNowClient(env.http, settings, env.clock)
    with pytest.raises(FatalError, match="authentication refused") as info:
        await client.check_auth()
    assert "nope" not in str(info.value)


async def test_lookup_query_on_reference_table(env: Env) -> None:
    users = await env.client.query(
        "sys_user", {"user_name": "bpsync"}, fields=["sys_id", "user_name"], limit=2
    )
    assert [u["user_name"] for u in users] == ["bpsync"]


# ---------------------------------------------------------------- injection


async def test_caret_values_cannot_widen_a_query(env: Env) -> None:
    client = env.client
    tricky = "x^NQactive=true"
    target = await client.create_incident({"short_description": tricky, "correlation_id": "c1"})
    for i in range(3):
        await client.create_incident({"short_description": f"plain {i}", "correlation_id": "c2"})

    # the literal value matches exactly the one record carrying it, nothing more
    hits = await client.query(
        "incident", {"short_description": tricky}, fields=["sys_id"], limit=50
    )
    assert [h["sys_id"] for h in hits] == [target.sys_id]
    for attempt in ["nomatch^NQactive=true", "nomatch^ORactive=true", "nomatch^ORDERBYnumber"]:
        assert (
            await client.query(
                "incident", {"short_description": attempt}, fields=["sys_id"], limit=50
            )
            == []
        )
    # an unescaped value WOULD have matched everything: the emulator honours ^NQ
    page = await client.list_page("incident", None, fields=["sys_id"], limit=50)
    assert len(page.records) == 4


# ---------------------------------------------------------------- faults


async def test_429_retry_after_is_waited_out_and_sent_again(env: Env) -> None:
    created = await env.client.create_incident({"short_description": "x"})
    await env.control(
        "POST", "faults", {"status": 429, "retry_after_s": 7, "count": 1, "methods": ["GET"]}
    )
    before = env.clock.monotonic()
    assert (await env.client.get_incident(created.sys_id)).sys_id == created.sys_id
    assert env.clock.monotonic() - before >= 7.0  # nothing sent before Retry-After
    assert env.client.health.throttled_families() == ["rate_rule"]


async def test_a_retry_after_beyond_the_outage_window_is_carried_to_the_caller(
    env: Env,
) -> None:
    await env.control(
        "POST", "faults", {"status": 429, "retry_after_s": 3600, "count": 1, "methods": ["GET"]}
    )
    with pytest.raises(TransientError) as info:
        await env.client.check_auth()
    assert info.value.status == 429
    assert info.value.retry_after_s == 3600.0


async def test_503_and_dropped_connection_on_reads_are_sent_again(env: Env) -> None:
    await env.control("POST", "faults", {"status": 503, "count": 1})
    await env.client.check_auth()
    # aiohttp replays an idempotent request once when a reused keep-alive connection drops,
    # so two dropped connections are needed for the client to see one
    await env.control("POST", "faults", {"reset_connection": True, "count": 2})
    await env.client.check_auth()
    assert [s for _, _, s in env.observed].count(503) == 1


async def test_a_503_on_a_write_reaches_the_caller(env: Env) -> None:
    await env.control("POST", "faults", {"status": 503, "count": 1, "methods": ["POST"]})
    with pytest.raises(TransientError, match="HTTP 503"):
        await env.client.create_incident({"short_description": "x"})  # the executor decides


async def test_html_200_page_is_transient_naming_the_content_type(clock: FakeClock) -> None:
    async def hibernating(request: web.Request) -> web.Response:
        return web.Response(
            text="<html><body class='instance-hibernating-page'>Hibernating</body></html>",
            content_type="text/html",
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hibernating)
    async for env in _env(app, clock):
        with pytest.raises(TransientError) as info:
            await env.client.check_auth()
        assert "expected JSON, got text/html" in str(info.value)
        assert info.value.status == 200


async def test_timeout_is_transient(clock: FakeClock) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.5)
        return web.json_response({"result": []})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", slow)
    async for env in _env(app, clock, timeout=0.05):
        with pytest.raises(TransientError, match="timed out"):
            await env.client.check_auth()


# ---------------------------------------------------------------- incremental listing


async def _create_many(
    client: ServiceNowClient, clock: FakeClock, count: int, per_second: int, prefix: str
) -> list[str]:
    ids: list[str] = []
    for start in range(0, count, per_second):
        batch = await asyncio.gather(
            *(
                client.create_incident(
                    {
                        "short_description": f"{prefix} {i}",
                        "correlation_id": f"{prefix}{i:05d}",
                        "correlation_display": "BigPanda",
                    }
                )
                for i in range(start, min(count, start + per_second))
            )
        )
        ids.extend(r.sys_id for r in batch)
        clock.advance(1)
    return ids


async def test_incremental_listing_with_updates_between_pages(clock: FakeClock) -> None:
    """2,500 correlated incidents, 500 updated while the listing pages: none missed or repeated."""
    state: dict[str, Any] = {"ids": [], "updates_left": 500, "pages": 0, "updated": {}}
    rng = random.Random(7)
    holder: dict[str, ServiceNowClient] = {}

    @web.middleware
    async def update_between_pages(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        query = request.query.get("sysparm_query", "")
        if (
            request.method == "GET"
            and request.path == "/api/now/table/incident"
            and "ORDERBYsys_updated_on^ORDERBYsys_id" in query
        ):
            state["pages"] += 1
            if state["updates_left"] > 0:
                clock.advance(1)  # later than every row listed so far
                batch = rng.sample(state["ids"], 50)  # seen and not yet seen rows alike
                client = holder["client"]
                records = await asyncio.gather(
                    *(
                        client.update_incident(s, {"description": f"edit {state['pages']}"})
                        for s in batch
                    )
                )
                for record in records:
                    state["updated"][record.sys_id] = record.fields["sys_mod_count"]
                state["updates_left"] -= 50
        return response

    app = emulator_app(clock)
    app.middlewares.append(update_between_pages)
    async for env in _env(app, clock, page_size=100):
        holder["client"] = env.client
        state["ids"] = await _create_many(env.client, clock, 2500, 40, "bp")
        uncorrelated = [
            (await env.client.create_incident({"short_description": f"manual {i}"})).sys_id
            for i in range(20)
        ]
        rows = as_records(await env.client.list_changed(None, overlap_s=0))

    listed = [r["sys_id"] for r in rows]
    assert len(listed) == len(set(listed)), "an incident was listed twice"
    assert set(state["ids"]) <= set(listed), "an incident was missed"
    assert state["updates_left"] == 0
    assert state["pages"] > 25
    assert len(state["updated"]) > 400  # 500 updates, a few hit the same incident twice
    assert not set(uncorrelated) & set(listed), "an incident without correlation_id was listed"
    by_id = {r["sys_id"]: r for r in rows}
    for sys_id, mod_count in state["updated"].items():
        assert by_id[sys_id]["sys_mod_count"] == mod_count, "not the newest version"
    keys = [(r["sys_updated_on"], r["sys_id"]) for r in rows]
    assert keys == sorted(keys)


async def test_incremental_listing_since_with_overlap(env: Env) -> None:
    client, clock = env.client, env.clock
    early = await _create_many(client, clock, 30, 10, "e")  # 3 seconds
    cursor = clock.now()
    late = await _create_many(client, clock, 30, 10, "l")
    clock.advance(10)
    touched = await client.update_incident(early[0], {"description": "changed"})

    rows = as_records(await client.list_changed(cursor, overlap_s=0, fields=["correlation_id"]))
    assert {r["sys_id"] for r in rows} == {*late, touched.sys_id}
    assert set(rows[0]) == {"correlation_id", "sys_id", "sys_mod_count", "sys_updated_on"}
    # the overlap reaches back into the previous second(s)
    overlapped = as_records(await client.list_changed(cursor, overlap_s=1))
    assert {r["sys_id"] for r in overlapped} == {*early[20:], *late, early[0]}
    assert await client.list_changed(clock.now() + timedelta(seconds=1), overlap_s=0) == []


# ---------------------------------------------------------------- OAuth over loopback


def oauth_app(lifetime_s: int) -> tuple[web.Application, dict[str, Any]]:
    """A token endpoint and one table route, enough to watch the client's token handling."""
    state: dict[str, Any] = {"grants": [], "valid": set(), "n": 0}

    async def token(request: web.Request) -> web.Response:
        form = await request.post()
        state["grants"].append(dict(form))
        if form.get("client_secret") != "cs" or request.content_type != (
            "application/x-www-form-urlencoded"
        ):
            return web.json_response(
                {"error_description": "access_denied", "error": "server_error"}, status=401
            )
        state["n"] += 1
        access = f"a{state['n']}"
        state["valid"].add(access)
        body = {"access_token": access, "token_type": "Bearer", "expires_in": lifetime_s}
        if form.get("grant_type") == "password":
            body["refresh_token"] = "r"
        return web.json_response(body)

    async def table(request: web.Request) -> web.Response:
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if bearer not in state["valid"]:
            return web.json_response(
                {"error": {"message": "User Not Authenticated", "detail": None}}, status=401
            )
        return web.json_response({"result": []}, headers={"X-Total-Count": "0"})

    app = web.Application()
    app.router.add_post("/oauth_token.do", token)
    app.router.add_get("/api/now/table/{table}", table)
    return app, state


async def test_oauth_expiry_refreshes_once_over_http(clock: FakeClock) -> None:
    app, state = oauth_app(lifetime_s=1799)
    oauth = {"client_id": "cid", "client_secret": SecretStr("cs")}
    async for env in _env(app, clock, **oauth):
        await env.client.check_auth()
        await env.client.check_auth()
        assert [g["grant_type"] for g in state["grants"]] == ["password"]
        assert state["grants"][0]["username"] == "bpsync"

        # proactive: near expiry (by the client's clock) one refresh grant, then the new token
        clock.advance(1799 - 30)
        await env.client.check_auth()
        assert [g["grant_type"] for g in state["grants"]] == ["password", "refresh_token"]
        assert state["grants"][1]["refresh_token"] == "r"

        # reactive: the server expires the token early -> one refresh, one replay
        state["valid"].clear()
        await env.client.check_auth()
        assert [g["grant_type"] for g in state["grants"]][2:] == ["refresh_token"]

        # refused for good: exactly one more refresh, then fatal
        state["valid"] = _NeverValid()
        with pytest.raises(FatalError, match="authentication refused"):
            await env.client.check_auth()
        assert len(state["grants"]) == 4


class _NeverValid(set[str]):
    """A token set that accepts additions but never contains anything."""

    def __contains__(self, item: object) -> bool:
        return False
