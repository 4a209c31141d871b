"""The real ServiceNowClient against the emulator under each of its realism switches.

Every test counts what the incremental poll (``list_changed``) returns against what the
emulator holds: 0 rows missed, none listed twice, the newest version of each. Short pages
(rows hidden after the limit), odd sys_ids and date-times in poll rows, a non-GMT
integration user, the integration semaphore pool and OAuth client authentication.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from aiohttp import web
from pydantic import SecretStr

from sync.clock import FakeClock
from sync.emulators.servicenow import STATE_KEY, InstanceState, create_app
from sync.errors import FatalError, TransientError
from tests.fakes import as_records
from tests.integration.test_sn_client import Env, Handler, _create_many, _env

T = TypeVar("T")
SN_FORMAT = "%Y-%m-%d %H:%M:%S"


def app_with(clock: FakeClock, **switches: Any) -> web.Application:
    return create_app(clock=clock, seed=3, **switches)


def recording_app(
    clock: FakeClock, **switches: Any
) -> tuple[web.Application, list[tuple[str, int]]]:
    """The emulator, recording (sysparm_query, sysparm_offset) of every incident list GET."""
    seen: list[tuple[str, int]] = []

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "GET" and request.path == "/api/now/table/incident":
            query = request.query
            seen.append((query.get("sysparm_query", ""), int(query.get("sysparm_offset", "0"))))
        return await handler(request)

    app = app_with(clock, **switches)
    app.middlewares.append(record)
    return app, seen


def state_of(env: Env) -> InstanceState:
    return env.app[STATE_KEY]


async def until_served(call: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    """Send again after a semaphore 429 (what the executor does; the client may pace)."""
    for _ in range(200):
        try:
            return await call(*args, **kwargs)
        except TransientError as exc:
            if exc.status != 429 or exc.retry_after_s is not None:
                raise  # only the header-less semaphore refusal is expected here
            await asyncio.sleep(0.01)
    raise AssertionError("still refused after 200 attempts")


def correlated(state: InstanceState, *, listable: bool = True) -> dict[str, dict[str, str]]:
    """The incidents a full poll must return (visible in lists when ``listable``)."""
    return {
        sys_id: row
        for sys_id, row in state.tables["incident"].items()
        if row["correlation_id"] and not (listable and state.hidden_from_lists("incident", row))
    }


def assert_poll_is_exact(rows: list[dict[str, Any]], expected: dict[str, dict[str, str]]) -> None:
    listed = [r["sys_id"] for r in rows]
    assert len(listed) == len(set(listed)), "an incident was listed twice"
    missed = set(expected) - set(listed)
    assert not missed, f"{len(missed)} of {len(expected)} incidents missed"
    assert set(listed) == set(expected), "an incident that should not be listed was"
    for row in rows:
        assert row["sys_mod_count"] == expected[row["sys_id"]]["sys_mod_count"], "not the newest"


# ---------------------------------------------------------------- every switch


SWITCHES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("strict defaults", {}, {}),
    ("short pages 0.3", {"short_pages": 0.3}, {}),
    ("short pages 0.9", {"short_pages": 0.9}, {}),
    ("Los Angeles user", {"user_time_zone": "America/Los_Angeles"}, {}),
    ("Kolkata user", {"user_time_zone": "Asia/Kolkata"}, {}),
    ("user without zone", {"user_time_zone": ""}, {}),
    ("shuffled unordered", {"shuffle_unordered": True}, {}),
    ("one semaphore, no queue", {"semaphores": 1, "semaphore_queue": 0}, {}),
    ("rate limit rule", {"rate_limit_per_hour": 100_000}, {}),
    (
        "OAuth, form only",
        {"oauth_client_auth": "form"},
        {"client_id": "bpsync", "client_secret": SecretStr("bpsync")},
    ),
    (
        "everything at once",
        {
            "short_pages": 0.3,
            "user_time_zone": "Pacific/Chatham",
            "shuffle_unordered": True,
            "semaphores": 2,
            "semaphore_queue": 1,
        },
        {"client_id": "bpsync", "client_secret": SecretStr("bpsync")},
    ),
]


@pytest.mark.parametrize(
    ("switches", "settings"), [s[1:] for s in SWITCHES], ids=[s[0] for s in SWITCHES]
)
async def test_crud_and_poll_miss_nothing_under_each_switch(
    clock: FakeClock, switches: dict[str, Any], settings: dict[str, Any]
) -> None:
    async for env in _env(app_with(clock, **switches), clock, page_size=20, **settings):
        client = env.client
        ids: list[str] = []
        for start in range(0, 240, 12):  # 12 incidents a second, 20 seconds
            batch = await asyncio.gather(
                *(
                    until_served(
                        client.create_incident,
                        {"short_description": f"n{i}", "correlation_id": f"bp{i:05d}"},
                    )
                    for i in range(start, start + 12)
                )
            )
            ids += [r.sys_id for r in batch]
            clock.advance(1)
        for i in range(5):
            await client.create_incident({"short_description": f"manual {i}"})  # uncorrelated
        cursor = clock.now()
        clock.advance(1)
        touched = ids[::7]
        for sys_id in touched:
            got = await until_served(client.get_incident, sys_id)
            assert got.sys_id == sys_id
            updated = await until_served(client.update_incident, sys_id, {"description": "edited"})
            assert updated.fields["sys_mod_count"] == "1"
        state = state_of(env)

        everything = as_records(await until_served(client.list_changed, None, overlap_s=0))
        assert_poll_is_exact(everything, correlated(state))

        since = as_records(await until_served(client.list_changed, cursor, overlap_s=0))
        edited = {s: state.tables["incident"][s] for s in touched}
        assert_poll_is_exact(since, {k: v for k, v in correlated(state).items() if k in edited})


# ---------------------------------------------------------------- short pages


async def test_short_pages_lose_no_row_over_hundreds_of_incidents(clock: FakeClock) -> None:
    """short_pages=0.3 over 400 incidents: every page is short, none is taken as the end."""
    async for env in _env(app_with(clock, short_pages=0.3), clock, page_size=25):
        ids = await _create_many(env.client, clock, 400, 16, "bp")
        state = state_of(env)
        visible = correlated(state)
        hidden = set(ids) - set(visible)
        assert 80 < len(hidden) < 160
        env.observed.clear()
        rows = as_records(await env.client.list_changed(None, overlap_s=0))
        assert_poll_is_exact(rows, visible)
        pages = [o for o in env.observed if o[0] == "GET"]
        assert len(pages) > 400 // 25  # more requests than full pages would need
        keys = [(r["sys_updated_on"], r["sys_id"]) for r in rows]
        assert keys == sorted(keys)


async def test_short_pages_with_whole_windows_hidden(clock: FakeClock) -> None:
    """Windows that come back empty are stepped over with an offset on the same keyset."""
    app, lists = recording_app(clock, short_pages=0.8)
    async for env in _env(app, clock, page_size=5):
        await _create_many(env.client, clock, 150, 10, "bp")
        lists.clear()
        rows = as_records(await env.client.list_changed(None, overlap_s=0))
        assert_poll_is_exact(rows, correlated(state_of(env)))
        assert any(offset > 0 for _, offset in lists), "no window was stepped over"


# ---------------------------------------------------------------- odd poll rows


UPPER = "0123456789ABCDEF0123456789ABCDEF"


async def test_odd_sys_ids_and_dates_are_kept_and_never_queried(clock: FakeClock) -> None:
    """Upper-case / non-hex sys_ids, a missing and a garbage sys_updated_on: no raise, every
    row listed once, and no odd value ever reaches ``sysparm_query``."""
    app, lists = recording_app(clock)
    async for env in _env(app, clock, page_size=4):
        client = env.client
        odd_ids: list[str] = []
        normal: list[str] = []
        for second in range(6):
            # per second: 2 well-formed rows and a run of odd ones (7 > page_size in one
            # second, so some pages hold only odd rows), created in an interleaved order
            for i in range(2):
                created = await client.create_incident(
                    {"short_description": "ok", "correlation_id": f"ok{second}-{i}"}
                )
                normal.append(created.sys_id)
            run = 7 if second == 2 else 2
            for i in range(run):
                odd = (
                    f"{second:02d}{i:02d}".ljust(32, "Z")
                    if i % 2
                    else f"{UPPER[:28]}{second}{i:03d}"
                )
                created = await client.create_incident(
                    {
                        "sys_id": odd,
                        "short_description": "odd",
                        "correlation_id": f"odd{second}-{i}",
                    }
                )
                assert created.sys_id == odd  # echoed exactly as sent
                odd_ids.append(odd)
            clock.advance(1)
        state = state_of(env)
        # a row without sys_updated_on and one with garbage in it (a broken proxy or import)
        no_date, bad_date = normal[0], normal[1]
        state.tables["incident"][no_date]["sys_updated_on"] = ""
        state.tables["incident"][bad_date]["sys_updated_on"] = "garbage"

        lists.clear()
        rows = as_records(await client.list_changed(None, overlap_s=0))
        assert_poll_is_exact(rows, correlated(state))
        assert set(odd_ids) <= {r["sys_id"] for r in rows}
        for odd in [*odd_ids, "garbage"]:
            assert not any(odd in q for q, _ in lists), f"{odd} reached a query"
        assert any(offset > 0 for _, offset in lists), "a page of only odd rows was stepped over"

        # with a floor: the dateless row cannot match, the garbage one sorts last
        rows = as_records(
            await client.list_changed(clock.now() - timedelta(seconds=3), overlap_s=0)
        )
        expected = {
            s: r
            for s, r in correlated(state).items()
            if r["sys_updated_on"] >= (clock.now() - timedelta(seconds=3)).strftime(SN_FORMAT)
        }
        assert bad_date in expected and no_date not in expected
        assert_poll_is_exact(rows, expected)


# ---------------------------------------------------------------- the user's time zone


@pytest.mark.parametrize(
    "zone", ["America/Los_Angeles", "Asia/Kolkata", "Pacific/Kiritimati", "Pacific/Chatham"]
)
async def test_successive_polls_under_a_non_gmt_user(zone: str) -> None:
    """Polls from a moving cursor, across the US DST change: every change seen, and a row
    listed by two polls only when it sits at the cursor's second with the same version."""
    clock = FakeClock(datetime(2026, 3, 8, 9, 58, tzinfo=UTC))  # Los Angeles jumps at 10:00
    async for env in _env(app_with(clock, user_time_zone=zone), clock, page_size=10):
        client = env.client
        state = state_of(env)
        assert state.tables["sys_user"][state.user("bpsync").sys_id]["time_zone"] == zone
        cursor: datetime | None = None
        seen: dict[str, str] = {}  # sys_id -> sys_mod_count last reported
        ids: list[str] = []
        for round_no in range(8):
            ids += await _create_many(client, clock, 15, 5, f"r{round_no}-")
            for sys_id in ids[: round_no * 4]:
                await client.update_incident(sys_id, {"description": f"round {round_no}"})
            clock.advance(37)  # polls at odd moments, minutes apart
            rows = as_records(await client.list_changed(cursor, overlap_s=0))
            for row in rows:
                again = seen.get(row["sys_id"])
                if again is not None and again == row["sys_mod_count"]:
                    # a repeat is only the cursor's own second (>=), never a new change
                    assert cursor is not None
                    assert row["sys_updated_on"] == cursor.strftime(SN_FORMAT)
                seen[row["sys_id"]] = row["sys_mod_count"]
            if rows:
                newest = max(r["sys_updated_on"] for r in rows)
                cursor = datetime.strptime(newest, SN_FORMAT).replace(tzinfo=UTC)
            for sys_id, row in correlated(state).items():
                assert seen.get(sys_id) == row["sys_mod_count"], f"change of {sys_id} missed"
        assert len(seen) == len(ids) == 120


# ---------------------------------------------------------------- semaphores


class SlowClock(FakeClock):
    """Fake time, but ``sleep`` really waits (so requests overlap in the emulator)."""

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self.advance(seconds)


async def test_semaphore_saturation_refuses_without_headers_and_loses_nothing(
    clock: FakeClock,
) -> None:
    emulator_clock = SlowClock(clock.now())
    # the client starts at two requests at once (a slow start): a pool of one with no
    # queue is full at once
    app = app_with(emulator_clock, semaphores=1, semaphore_queue=0, processing_s=0.02)
    async for env in _env(app, clock, max_concurrency=8, page_size=10):
        client = env.client
        created = await asyncio.gather(
            *(
                until_served(
                    client.create_incident,
                    {"short_description": f"n{i}", "correlation_id": f"bp{i:05d}"},
                )
                for i in range(40)
            )
        )
        pool = (await env.control("GET", "config"))["semaphore_state"]
        assert pool["peak_in_flight"] <= 1
        assert pool["peak_queued"] == 0
        assert pool["rejected"] > 0, "the pool never filled: the test proves nothing"
        state = state_of(env)
        per_correlation = [r["correlation_id"] for r in state.tables["incident"].values()]
        assert len(per_correlation) == len(set(per_correlation)) == 40  # each created once
        rows = as_records(await until_served(client.list_changed, None, overlap_s=0))
        assert_poll_is_exact(rows, correlated(state))
        assert {r["sys_id"] for r in rows} == {c.sys_id for c in created}


# ---------------------------------------------------------------- OAuth client authentication


OAUTH = {"client_id": "bpsync", "client_secret": SecretStr("bpsync")}


@pytest.mark.parametrize(("mode", "works"), [("both", True), ("form", True), ("basic", False)])
async def test_client_oauth_grant_against_each_client_auth_mode(
    clock: FakeClock, mode: str, works: bool
) -> None:
    """The client sends its credentials in the form (docs 1.7): fine wherever the form is
    read; an instance reading only a Basic header refuses it, clearly."""
    async for env in _env(app_with(clock, oauth_client_auth=mode), clock, **OAUTH):
        if not works:
            with pytest.raises(FatalError, match="OAuth password grant refused") as info:
                await env.client.check_auth()
            assert "bpsync" not in str(info.value).replace("/oauth_token.do", "")
            continue
        created = await env.client.create_incident({"short_description": "x"})
        assert (await env.client.get_incident(created.sys_id)).number == "INC0010001"


async def test_oauth_basic_header_round_trip_over_loopback(clock: FakeClock) -> None:
    """The emulator's token endpoint with the client credentials in a Basic header."""
    async for env in _env(app_with(clock, oauth_client_auth="basic"), clock):
        form = {"grant_type": "password", "username": "bpsync", "password": "bpsync"}
        async with env.http.post(
            f"{env.url}/oauth_token.do",
            data=form,
            headers={"Authorization": "Basic YnBzeW5jOmJwc3luYw=="},  # bpsync:bpsync
        ) as reply:
            assert reply.status == 200
            token = json.loads(await reply.text())
        async with env.http.get(
            f"{env.url}/api/now/table/incident",
            headers={"Authorization": f"Bearer {token['access_token']}"},
        ) as listed:
            assert listed.status == 200
