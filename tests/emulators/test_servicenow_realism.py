"""The ServiceNow emulator's switches for what the docs leave open, one table per switch.

Integration semaphores (429 without headers, the queue bound), short pages (rows hidden
after the limit, ``X-Total-Count`` unfiltered), client-supplied sys_ids (any case, echoed
exactly), the integration user's time zone (docs 2.4: literals UTC, ``gs.dateGenerate``
and display values in the user's zone), OAuth client credentials in a Basic header, and
``GET/POST /_emulator/config`` plus the ``bpsync emulate servicenow`` flags.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote_plus
from zoneinfo import ZoneInfo

import pytest
from aiohttp import web
from click.testing import CliRunner

from sync.clock import FakeClock
from sync.emulators.control import BANNER_KEY
from sync.emulators.servicenow import (
    CONFIG_KEYS,
    SEMAPHORE_QUEUE_FULL,
    STATE_KEY,
    InstanceState,
    create_app,
    stable_id,
)
from tests.emulators.test_servicenow_emulator import INC, SN, Reply, _sn, error

RATE_HEADERS = ("Retry-After", "X-RateLimit-Limit", "X-RateLimit-Reset", "X-RateLimit-Rule")
BPSYNC = stable_id("sys_user:bpsync")


@pytest.fixture
async def sn(clock: FakeClock) -> AsyncIterator[SN]:
    async for s in _sn(clock):
        yield s


class GateClock(FakeClock):
    """A FakeClock whose ``sleep`` waits until the test opens the gate (held requests)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        await self.gate.wait()


async def config(sn: SN, body: Any = None) -> Reply:
    if body is None:
        return await sn.call("GET", "/_emulator/config", auth=None)
    return await sn.call("POST", "/_emulator/config", json=body, auth=None)


async def wait_for(sn: SN, predicate: Any, timeout_s: float = 5.0) -> dict[str, Any]:
    """Poll the semaphore state until ``predicate(state)`` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        state: dict[str, Any] = (await config(sn)).body["semaphore_state"]
        if predicate(state):
            return state
        assert loop.time() < deadline, state
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------- /_emulator/config


async def test_config_defaults_are_the_strict_behaviour(sn: SN) -> None:
    reply = await config(sn)
    assert reply.status == 200
    assert reply.body == {
        "semaphores": None,
        "semaphore_queue": 50,
        "processing_s": 0.0,
        "short_pages": 0.0,
        "user_time_zone": None,
        "oauth_client_auth": "both",
        "shuffle_unordered": False,
        "rate_limit_per_hour": None,
        "user_rate_limits": {},
        "overlong": "truncate",
        "dictionary_access": "read",
        "semaphore_state": {
            "in_flight": 0,
            "queued": 0,
            "rejected": 0,
            "peak_in_flight": 0,
            "peak_queued": 0,
        },
    }
    assert set(reply.body) == {*CONFIG_KEYS, "semaphore_state"}
    assert sn.state.tables["sys_user"][BPSYNC]["time_zone"] == "GMT"


async def test_config_post_changes_and_answers_like_get(sn: SN) -> None:
    change = {
        "semaphores": 4,
        "semaphore_queue": 2,
        "processing_s": 0.5,
        "short_pages": 0.25,
        "user_time_zone": "Asia/Kolkata",
        "oauth_client_auth": "basic",
        "shuffle_unordered": True,
        "rate_limit_per_hour": 1000,
        "user_rate_limits": {"bpsync": 500},
    }
    reply = await config(sn, change)
    assert reply.status == 200
    assert {k: reply.body[k] for k in change} == change
    assert (await config(sn)).body == reply.body
    assert sn.state.pool.size == 4
    assert sn.state.pool.queue_limit == 2
    assert sn.state.tables["sys_user"][BPSYNC]["time_zone"] == "Asia/Kolkata"
    # a reset re-seeds the data and keeps the switches
    await sn.call("POST", "/_emulator/reset", auth=None)
    assert sn.state.tables["sys_user"][BPSYNC]["time_zone"] == "Asia/Kolkata"
    assert (await config(sn)).body["short_pages"] == 0.25
    back = await config(sn, {"semaphores": None, "user_time_zone": None})
    assert (back.body["semaphores"], back.body["user_time_zone"]) == (None, None)
    assert sn.state.tables["sys_user"][BPSYNC]["time_zone"] == "GMT"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"semaphores": 0}, "semaphores must be an integer or null >= 1"),
        ({"semaphores": True}, "semaphores"),
        ({"semaphore_queue": -1}, "semaphore_queue must be an integer >= 0"),
        ({"semaphore_queue": None}, "semaphore_queue"),
        ({"processing_s": -0.1}, "processing_s must be a number >= 0"),
        ({"short_pages": 1.5}, "fraction between 0 and 1"),
        ({"short_pages": "0.3"}, "short_pages must be a number"),
        ({"user_time_zone": "Mars/Olympus_Mons"}, "unknown time zone"),
        ({"oauth_client_auth": "header"}, "oauth_client_auth must be one of"),
        ({"shuffle_unordered": 1}, "shuffle_unordered must be true or false"),
        ({"user_rate_limits": {"bpsync": -1}}, "user_rate_limits[bpsync]"),
        ({"user_rate_limits": [1]}, "user_rate_limits must map"),
        ({"bogus": 1}, "unknown config keys: ['bogus']"),
        ({"semaphore_state": {}}, "semaphore_state is read-only"),
        ([1], "JSON object"),
    ],
)
async def test_config_refuses_bad_values_all_or_nothing(sn: SN, body: Any, words: str) -> None:
    payload = {"short_pages": 0.5, **body} if isinstance(body, dict) else body
    reply = await config(sn, payload)
    assert reply.status == 400
    assert words in reply.body["error"]
    assert (await config(sn)).body["short_pages"] == 0.0  # nothing applied


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"semaphores": 0}, "semaphores"),
        ({"semaphore_queue": -1}, "semaphore_queue"),
        ({"short_pages": 2}, "short_pages"),
        ({"processing_s": -1}, "processing_s"),
        ({"user_time_zone": "Nowhere/Land"}, "unknown time zone"),
        ({"oauth_client_auth": "cookie"}, "oauth_client_auth"),
    ],
)
def test_create_app_validates_switches(options: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        create_app(**options)


def test_banner_names_the_switches_that_differ() -> None:
    assert not any(line.startswith("switches:") for line in create_app()[BANNER_KEY])
    banner = create_app(semaphores=2, short_pages=0.3)[BANNER_KEY]
    assert "switches: semaphores=2, short_pages=0.3" in banner


# ---------------------------------------------------------------- semaphores


def _assert_semaphore_429(reply: Reply) -> None:
    assert reply.status == 429
    assert reply.body == {
        "error": {"message": "Rate limit exceeded", "detail": SEMAPHORE_QUEUE_FULL},
        "status": "failure",
    }
    present = [h for h in RATE_HEADERS if h in reply.headers]
    assert present == [], f"a semaphore 429 carries no rate-limit headers, got {present}"


@pytest.mark.parametrize(
    ("semaphores", "queue", "sent", "rejected"),
    [
        (2, 3, 8, 3),  # 2 run, 3 wait, 3 refused at once
        (1, 0, 4, 3),  # no queue: only the running one
        (3, 50, 10, 0),  # the default queue absorbs them
    ],
)
async def test_semaphore_pool_bounds_running_and_waiting_requests(
    semaphores: int, queue: int, sent: int, rejected: int
) -> None:
    clock = GateClock()
    options = {
        "semaphores": semaphores,
        "semaphore_queue": queue,
        "processing_s": 1.0,
        "rate_limit_per_hour": 1000,  # a rate rule, to show its headers are not on these 429s
    }
    async for sn in _sn(clock, **options):
        calls = [asyncio.create_task(sn.call("GET", INC)) for _ in range(sent)]
        state = await wait_for(sn, lambda s: s["in_flight"] + s["queued"] + s["rejected"] == sent)
        assert state["in_flight"] == semaphores
        assert state["queued"] == min(queue, sent - semaphores)
        assert state["rejected"] == rejected
        done, _ = await asyncio.wait(calls, timeout=0.3)  # refused at once, the rest held
        refused = [c.result() for c in done]
        assert len(refused) == rejected
        for reply in refused:
            _assert_semaphore_429(reply)
        clock.gate.set()
        replies = await asyncio.gather(*calls)
        served = [r for r in replies if r.status == 200]
        assert len(served) == sent - rejected
        assert all(r.headers["X-RateLimit-Limit"] == "1000" for r in served)
        final = (await config(sn)).body["semaphore_state"]
        assert (final["in_flight"], final["queued"], final["peak_in_flight"]) == (
            0,
            0,
            semaphores,
        )


async def test_growing_the_pool_at_run_time_admits_waiting_requests() -> None:
    clock = GateClock()
    async for sn in _sn(clock, semaphores=1, semaphore_queue=5, processing_s=1.0):
        calls = [asyncio.create_task(sn.call("GET", INC)) for _ in range(4)]
        await wait_for(sn, lambda s: s["in_flight"] == 1 and s["queued"] == 3)
        await config(sn, {"semaphores": 4})
        await wait_for(sn, lambda s: s["in_flight"] == 4 and s["queued"] == 0)
        clock.gate.set()
        assert [r.status for r in await asyncio.gather(*calls)] == [200] * 4


async def test_semaphores_off_and_processing_time_on_the_clock(clock: FakeClock) -> None:
    async for sn in _sn(clock, processing_s=2.5):
        start = clock.now()
        assert (await sn.call("GET", INC)).status == 200
        assert (clock.now() - start).total_seconds() == 2.5  # held on the injected clock
        created = await sn.create(short_description="x")
        assert created["sys_created_on"] == "2026-01-01 00:00:05"  # processed after the hold
        # control routes and the token endpoint are no Table API requests
        await config(sn)
        assert (clock.now() - start).total_seconds() == 5.0


# ---------------------------------------------------------------- short pages


async def _incidents(sn: SN, count: int) -> list[str]:
    return [(await sn.create(short_description=f"n{i}"))["sys_id"] for i in range(count)]


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.6])
async def test_short_pages_hide_rows_after_the_limit(clock: FakeClock, fraction: float) -> None:
    async for sn in _sn(clock, short_pages=fraction):
        ids = await _incidents(sn, 200)
        hidden = {i for i in ids if sn.state.hidden_from_lists("incident", {"sys_id": i})}
        assert 0.5 * fraction * 200 < len(hidden) < 1.5 * fraction * 200
        seen: list[str] = []
        short = 0
        for offset in range(0, 200, 50):
            reply = await sn.call(
                "GET",
                INC,
                params={
                    "sysparm_query": "ORDERBYnumber",
                    "sysparm_fields": "sys_id",
                    "sysparm_limit": "50",
                    "sysparm_offset": str(offset),
                },
            )
            page = [r["sys_id"] for r in reply.body["result"]]
            window = ids[offset : offset + 50]
            assert page == [i for i in window if i not in hidden]  # filtered, order kept
            assert reply.headers["X-Total-Count"] == "200"  # the unfiltered count
            if offset + 50 < 200:
                assert 'rel="next"' in reply.headers["Link"]
            short += len(page) < 50
            seen += page
        assert short == 4
        assert set(seen) == set(ids) - hidden
        # a hidden row is only missing from lists: it is still read and written by sys_id
        some = sorted(hidden)[0]
        assert (await sn.call("GET", f"{INC}/{some}")).status == 200
        assert (await sn.patch(some, short_description="y")).status == 200
        # other tables are not filtered
        assert len(await sn.rows("sys_choice", sysparm_limit="1000")) > 40


async def test_short_pages_follow_the_seed_and_grow_monotonically(clock: FakeClock) -> None:
    rows = [{"sys_id": f"{i:032x}"} for i in range(500)]

    def hidden(state: InstanceState) -> set[str]:
        return {r["sys_id"] for r in rows if state.hidden_from_lists("incident", r)}

    first = create_app(clock=clock, seed=7, short_pages=0.3)[STATE_KEY]
    again = create_app(clock=clock, seed=7, short_pages=0.3)[STATE_KEY]
    other = create_app(clock=clock, seed=8, short_pages=0.3)[STATE_KEY]
    assert hidden(first) == hidden(again)
    assert hidden(first) != hidden(other)
    more = create_app(clock=clock, seed=7, short_pages=0.6)[STATE_KEY]
    assert hidden(first) < hidden(more)
    assert not hidden(create_app(clock=clock, seed=7)[STATE_KEY])


async def test_short_pages_can_empty_a_page_and_v1_keeps_it_200(clock: FakeClock) -> None:
    async for sn in _sn(clock, short_pages=1.0):
        await _incidents(sn, 3)
        for prefix in ("/api/now", "/api/now/v1"):
            reply = await sn.call("GET", f"{prefix}/table/incident")
            assert (reply.status, reply.body["result"]) == (200, [])
            assert reply.headers["X-Total-Count"] == "3"


# ---------------------------------------------------------------- client-supplied sys_id


@pytest.mark.parametrize(
    ("supplied", "kept"),
    [
        ("0123456789abcdef0123456789abcdef", True),
        ("0123456789ABCDEF0123456789ABCDEF", True),  # upper case: echoed, not lower-cased
        ("Zz0123456789abcdefghijklmnopqrst", True),  # any 32 letters or digits
        ("0123456789abcdef0123456789abcde", False),  # 31 characters
        ("0123456789abcdef-123456789abcdef", False),  # not alphanumeric
        ("", False),
    ],
)
async def test_client_supplied_sys_id(sn: SN, supplied: str, kept: bool) -> None:
    reply = await sn.call("POST", INC, json={"sys_id": supplied, "short_description": "s"})
    assert reply.status == 201
    sys_id = reply.body["result"]["sys_id"]
    assert (sys_id == supplied) is kept
    if not kept:
        assert len(sys_id) == 32 and sys_id == sys_id.lower()
    assert reply.headers["Location"].endswith(f"{INC}/{sys_id}")
    fetched = await sn.call("GET", f"{INC}/{sys_id}")
    assert fetched.body["result"]["sys_id"] == sys_id
    listed = await sn.rows(sysparm_query=f"sys_id={sys_id}", sysparm_fields="sys_id")
    assert listed == [{"sys_id": sys_id}]


async def test_supplied_sys_id_duplicates_ignore_case(sn: SN) -> None:
    upper = "ABCDEF0123456789ABCDEF0123456789"
    await sn.create(sys_id=upper, short_description="a")
    for again in (upper, upper.lower()):
        reply = await sn.call("POST", INC, json={"sys_id": again, "short_description": "b"})
        assert reply.status == 403
        assert error(reply)[0] == "Operation Failed"


# ---------------------------------------------------------------- the user's time zone


async def _matching(sn: SN, query: str) -> list[str]:
    rows = await sn.rows(sysparm_query=query + "^ORDERBYsys_created_on")
    return [r["short_description"] for r in rows]


@pytest.mark.parametrize(
    ("zone", "local_midnight_utc"),
    [
        (None, "2026-01-02 00:00:00"),  # GMT
        ("America/Los_Angeles", "2026-01-02 08:00:00"),
        ("Asia/Kolkata", "2026-01-01 18:30:00"),
        ("Pacific/Kiritimati", "2026-01-01 10:00:00"),
    ],
)
async def test_user_time_zone_applies_where_the_docs_say(
    clock: FakeClock, zone: str | None, local_midnight_utc: str
) -> None:
    """Docs 2.4: literals and raw values UTC; dateGenerate, display values and
    input display values in the user's zone."""
    async for sn in _sn(clock, user_time_zone=zone):
        assert sn.state.tables["sys_user"][BPSYNC]["time_zone"] == (zone or "GMT")
        stamps = [
            "2026-01-01 10:00:00",
            "2026-01-01 18:30:00",
            "2026-01-02 00:00:00",
            "2026-01-02 08:00:00",
        ]
        ids = {}
        for stamp in stamps:
            clock.set(datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC))
            ids[stamp] = (await sn.create(short_description=stamp))["sys_id"]

        # raw values are UTC whatever the zone
        raw = await sn.call("GET", f"{INC}/{ids[stamps[0]]}")
        assert raw.body["result"]["sys_created_on"] == stamps[0]
        # a plain literal is compared as UTC
        assert await _matching(sn, "sys_created_on>=2026-01-02 00:00:00") == stamps[2:]
        # gs.dateGenerate is read in the user's zone
        generated = "sys_created_on>=javascript:gs.dateGenerate('2026-01-02','00:00:00')"
        assert await _matching(sn, generated) == [s for s in stamps if s >= local_midnight_utc]
        # display values are in the user's zone
        shown = await sn.call(
            "GET", f"{INC}/{ids[stamps[2]]}", params={"sysparm_display_value": "true"}
        )
        local = datetime(2026, 1, 2, tzinfo=UTC).astimezone(ZoneInfo(zone or "GMT"))
        assert shown.body["result"]["sys_created_on"] == local.strftime("%Y-%m-%d %H:%M:%S")
        # input display values are read in the user's zone
        posted = await sn.call(
            "POST",
            INC,
            params={"sysparm_input_display_value": "true"},
            json={"due_date": "2026-01-02 00:00:00"},
        )
        assert posted.body["result"]["due_date"] == local_midnight_utc


async def test_user_time_zone_changes_at_run_time(sn: SN) -> None:
    await sn.create(short_description="at midnight UTC")
    query = {"sysparm_query": "sys_created_on<javascript:gs.dateGenerate('2026-01-01','00:00:01')"}
    assert len((await sn.call("GET", INC, params=query)).body["result"]) == 1
    await config(sn, {"user_time_zone": "Asia/Tokyo"})  # its midnight is 15:00 UTC the day before
    assert (await sn.call("GET", INC, params=query)).body["result"] == []
    plain = {"sysparm_query": "sys_created_on<2026-01-01 00:00:01"}
    assert len((await sn.call("GET", INC, params=plain)).body["result"]) == 1
    # "" = no zone on the user: the system default (glide.sys.default.tz) applies
    await config(sn, {"user_time_zone": ""})
    later = {"sysparm_query": "sys_created_on<javascript:gs.dateGenerate('2025-12-31','16:00:01')"}
    assert len((await sn.call("GET", INC, params=later)).body["result"]) == 1


# ---------------------------------------------------------------- OAuth client authentication


CLIENT_ID, CLIENT_SECRET = "bp sync:client", "s3cr+t/=é"


def _basic(client_id: str, secret: str) -> dict[str, str]:
    """RFC 6749 2.3.1: form-urlencode each part, then Basic."""
    pair = f"{quote_plus(client_id)}:{quote_plus(secret)}"
    return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}


PASSWORD_GRANT = {"grant_type": "password", "username": "bpsync", "password": "bpsync"}
IN_FORM = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}


@pytest.mark.parametrize(
    ("mode", "form", "headers", "ok"),
    [
        ("both", IN_FORM, {}, True),
        ("both", {}, _basic(CLIENT_ID, CLIENT_SECRET), True),
        ("both", {"client_id": CLIENT_ID}, _basic(CLIENT_ID, CLIENT_SECRET), True),
        ("both", IN_FORM, _basic(CLIENT_ID, CLIENT_SECRET), True),  # the same twice
        ("both", {"client_id": "other"}, _basic(CLIENT_ID, CLIENT_SECRET), False),
        ("both", {}, _basic(CLIENT_ID, "wrong"), False),
        ("both", {}, {"Authorization": "Basic !!!"}, False),
        ("form", IN_FORM, {}, True),
        ("form", {}, _basic(CLIENT_ID, CLIENT_SECRET), False),
        ("basic", {}, _basic(CLIENT_ID, CLIENT_SECRET), True),
        ("basic", IN_FORM, {}, False),
    ],
)
async def test_oauth_client_credentials_in_form_or_basic_header(
    clock: FakeClock, mode: str, form: dict[str, str], headers: dict[str, str], ok: bool
) -> None:
    clients = {CLIENT_ID: CLIENT_SECRET}
    async for sn in _sn(clock, oauth_client_auth=mode, oauth_clients=clients):
        reply = await sn.call(
            "POST",
            "/oauth_token.do",
            data={**PASSWORD_GRANT, **form},
            headers=headers,
            auth=None,
        )
        if not ok:
            assert (reply.status, reply.body) == (
                401,
                {"error_description": "access_denied", "error": "server_error"},
            )
            continue
        assert reply.status == 200, reply.text
        bearer = {"Authorization": f"Bearer {reply.body['access_token']}"}
        assert (await sn.call("GET", INC, headers=bearer, auth=None)).status == 200
        refresh = {"grant_type": "refresh_token", "refresh_token": reply.body["refresh_token"]}
        renewed = await sn.call(
            "POST", "/oauth_token.do", data={**refresh, **form}, headers=headers, auth=None
        )
        assert renewed.status == 200


# ---------------------------------------------------------------- bpsync emulate servicenow


def _run_cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str, list[Any]]:
    import sync.cli.emulate as emulate_cli

    served: list[Any] = []

    async def fake_serve(apps: list[tuple[str, web.Application, str, int]]) -> None:
        served.extend(apps)

    monkeypatch.setattr(emulate_cli, "_serve", fake_serve)
    result = CliRunner().invoke(emulate_cli.emulate, ["servicenow", *args])
    return result.exit_code, result.output, served


def test_cli_flags_set_the_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    code, output, served = _run_cli(
        monkeypatch,
        "--port",
        "0",
        "--semaphores",
        "3",
        "--semaphore-queue",
        "7",
        "--processing-s",
        "0.2",
        "--short-pages",
        "0.3",
        "--user-time-zone",
        "America/Los_Angeles",
        "--oauth-client-auth",
        "basic",
        "--shuffle-unordered",
        "--rate-limit-per-hour",
        "900",
        "--user-rate-limit",
        "bpsync=100",
    )
    assert code == 0, output
    app = served[0][1]
    opts = app[STATE_KEY].options
    assert (opts.semaphores, opts.semaphore_queue, opts.processing_s) == (3, 7, 0.2)
    assert (opts.short_pages, opts.user_time_zone) == (0.3, "America/Los_Angeles")
    assert (opts.oauth_client_auth, opts.shuffle_unordered) == ("basic", True)
    assert (opts.rate_limit_per_hour, dict(opts.user_rate_limits)) == (900, {"bpsync": 100})


def test_cli_defaults_are_strict(monkeypatch: pytest.MonkeyPatch) -> None:
    code, output, served = _run_cli(monkeypatch, "--port", "0")
    assert code == 0, output
    opts = served[0][1][STATE_KEY].options
    assert (opts.semaphores, opts.short_pages, opts.user_time_zone) == (None, 0.0, None)
    assert (opts.oauth_client_auth, opts.shuffle_unordered) == ("both", False)


@pytest.mark.parametrize(
    "args",
    [
        ["--user-time-zone", "Atlantis/Capital"],
        ["--short-pages", "1.2"],
        ["--semaphores", "0"],
        ["--user-rate-limit", "bpsync"],
        ["--oauth-client-auth", "cookie"],
    ],
)
def test_cli_refuses_bad_switches(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> None:
    code, _, served = _run_cli(monkeypatch, *args)
    assert code == 2
    assert served == []


# ---------------------------------------------------------------- switches already there


async def test_shuffle_unordered_only_without_orderby(clock: FakeClock) -> None:
    async for sn in _sn(clock):
        ids = await _incidents(sn, 30)
        plain = [r["sys_id"] for r in await sn.rows(sysparm_fields="sys_id")]
        assert plain == ids  # strict default: insertion order, every time
        await config(sn, {"shuffle_unordered": True})
        orders = [[r["sys_id"] for r in await sn.rows(sysparm_fields="sys_id")] for _ in range(3)]
        assert all(sorted(o) == sorted(ids) for o in orders)
        assert len({tuple(o) for o in orders}) > 1, "no stable order without ORDERBY"
        ordered = await sn.rows(sysparm_fields="sys_id", sysparm_query="ORDERBYnumber")
        assert [r["sys_id"] for r in ordered] == ids


async def test_rate_limit_rules_set_at_run_time(sn: SN) -> None:
    assert "X-RateLimit-Limit" not in (await sn.call("GET", INC)).headers
    await config(sn, {"rate_limit_per_hour": 1000, "user_rate_limits": {"bpsync": 1}})
    first = await sn.call("GET", INC)
    assert first.headers["X-RateLimit-Limit"] == "1"  # the user's rule wins over all users'
    denied = await sn.call("GET", INC)
    assert denied.status == 429
    assert error(denied)[0] == "Rate limit exceeded"
    assert "Retry-After" in denied.headers and "X-RateLimit-Rule" in denied.headers
    admin = await sn.call("GET", INC, auth=("admin", "admin"))
    assert (admin.status, admin.headers["X-RateLimit-Limit"]) == (200, "1000")
    await config(sn, {"rate_limit_per_hour": None, "user_rate_limits": {}})
    assert (await sn.call("GET", INC)).status == 200
