"""The BigPanda emulator's switchable rate limiter (shapes and scopes), on a FakeClock.

Times in the tables are seconds after the start of the test's FakeClock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from click.testing import CliRunner

from sync.clock import FakeClock
from sync.emulators.bigpanda import (
    DEFAULT_ENVIRONMENT_ID,
    LIMITER_KEY,
    create_app,
)
from sync.emulators.bplimits import RateLimiter
from sync.emulators.control import serve_app

API_KEY = "BPUbpsync-emulator"
OTHER_KEY = "BPUother"
ORG_TOKEN = "bpsync-org-token"
V2 = "/resources/v2.0"
ENVS = f"{V2}/environments"
DEFS = f"{V2}/incidents/tags/definitions"
BATCH = f"{V2}/environments/{DEFAULT_ENVIRONMENT_ID}/batch-resolve/alerts"
V1 = "/resources/v1.0/incidents/65397b2eede0a80012631b0c"


@dataclass
class Bp:
    url: str
    http: aiohttp.ClientSession
    clock: FakeClock
    app: web.Application

    def at(self, t: float) -> None:
        """Move the clock to ``t`` seconds after the start."""
        self.clock.advance(t - self.clock.monotonic())

    async def status(
        self, method: str, path: str, *, token: str = API_KEY, json: Any = None
    ) -> int:
        headers = {"Authorization": f"Bearer {token}"}
        async with self.http.request(method, self.url + path, headers=headers, json=json) as r:
            body = await r.read()
            if r.status == 429:
                # BigPanda's 429 is bare: no body, no Retry-After, no X-RateLimit-*
                assert body == b""
                assert "Retry-After" not in r.headers
                assert not any(h.lower().startswith("x-ratelimit") for h in r.headers)
            return r.status

    async def get(self, path: str = ENVS, **kw: Any) -> int:
        return await self.status("GET", path, **kw)

    async def config(self, body: Any = None) -> tuple[int, Any]:
        method = "GET" if body is None else "POST"
        async with self.http.request(method, f"{self.url}/_emulator/config", json=body) as r:
            return r.status, await r.json()


BpFactory = Callable[..., Awaitable[Bp]]


@pytest.fixture
async def bp_factory() -> AsyncIterator[BpFactory]:
    """Each emulator gets its own FakeClock (pass ``clock=`` for another start)."""
    exits: list[Callable[[], Awaitable[Any]]] = []

    async def make(**kwargs: Any) -> Bp:
        clock = kwargs.pop("clock", None) or FakeClock()
        kwargs.setdefault("rate_limit_per_s", 5.0)
        kwargs.setdefault("api_keys", [OTHER_KEY])
        app = create_app(clock=clock, seed=7, **kwargs)
        cm = serve_app(app)
        url = await cm.__aenter__()
        exits.append(lambda: cm.__aexit__(None, None, None))
        http = aiohttp.ClientSession()
        exits.append(http.close)
        return Bp(url, http, clock, app)

    yield make
    for close in reversed(exits):
        await close()


async def _table(bp: Bp, rows: list[tuple[float, int]], path: str = ENVS) -> list[int]:
    """One GET at each time; the statuses, to compare with the expected column."""
    out = []
    for t, _expected in rows:
        bp.at(t)
        out.append(await bp.get(path))
    return out


# ----------------------------------------------------------------- shapes, over HTTP


async def test_sliding_window_table(bp_factory: BpFactory) -> None:
    bp = await bp_factory(rate_limit_shape="sliding_window")
    rows = [
        (0.0, 200),
        (0.1, 200),
        (0.2, 200),
        (0.3, 200),
        (0.4, 200),
        (0.9, 429),  # 5 in (-0.1, 0.9]
        (1.05, 200),  # the one at 0.0 left the window; the refused one was not counted
        (1.06, 429),  # 0.1 .. 0.4 and 1.05
        (1.11, 200),  # 0.1 left
        (1.21, 200),  # 0.2 left
        (1.25, 429),  # 0.3, 0.4, 1.05, 1.11, 1.21
    ]
    assert await _table(bp, rows) == [s for _, s in rows]


async def test_token_bucket_is_unchanged_and_default(bp_factory: BpFactory) -> None:
    bp = await bp_factory()
    assert bp.app[LIMITER_KEY].shape == "token_bucket"
    rows = [
        *[(0.0, 200)] * 5,
        (0.0, 429),  # burst = rate = 5
        (0.2, 200),  # one token back after 1/rate
        (0.2, 429),
        (0.9, 200),  # 0.7 s refill 3.5 tokens
        (0.9, 200),
        (0.9, 200),
        (0.9, 429),
    ]
    assert await _table(bp, rows) == [s for _, s in rows]
    # rate_limit_burst sets the bucket size
    bp = await bp_factory(rate_limit_burst=2)
    rows = [(0.0, 200), (0.0, 200), (0.0, 429), (0.25, 200), (0.25, 429)]
    assert await _table(bp, rows) == [s for _, s in rows]


async def test_token_bucket_allows_what_the_sliding_window_refuses(
    bp_factory: BpFactory,
) -> None:
    rows = [(0.0, 0), (0.1, 0), (0.2, 0), (0.3, 0), (0.4, 0), (0.9, 0)]
    bucket = await _table(await bp_factory(), rows, path=ENVS)
    assert bucket == [200] * 6
    window = await _table(await bp_factory(rate_limit_shape="sliding_window"), rows, path=ENVS)
    assert window == [200] * 5 + [429]


async def test_fixed_window_table(bp_factory: BpFactory) -> None:
    bp = await bp_factory(rate_limit_shape="fixed_window")
    rows = [
        *[(0.95, 200)] * 5,
        (0.99, 429),  # 6th in calendar second 0
        *[(1.01, 200)] * 5,  # a new calendar second: 10 accepted within 60 ms
        (1.01, 429),
        (1.999, 429),
        (2.0, 200),  # windows start at whole seconds
    ]
    assert await _table(bp, rows) == [s for _, s in rows]
    # the same burst is refused by a token bucket
    bucket = await bp_factory()
    rows = [*[(0.95, 200)] * 5, (0.99, 429), (1.01, 429)]
    assert await _table(bucket, rows) == [s for _, s in rows]


async def test_fixed_window_follows_the_wall_clock(bp_factory: BpFactory) -> None:
    # the wall clock at .5 s while the monotonic clock is at 0: the boundary is at
    # monotonic 0.5 (wall 1.0), not at monotonic 1.0
    clock = FakeClock(datetime(2026, 1, 1, 0, 0, 0, 500_000, tzinfo=UTC))
    bp = await bp_factory(rate_limit_shape="fixed_window", clock=clock)
    rows = [*[(0.0, 200)] * 5, (0.49, 429), (0.51, 200)]
    assert await _table(bp, rows) == [s for _, s in rows]


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        # batch resolve: 1 call/s; an accepted call answers 404 (unknown alert id)
        ("token_bucket", [404, 429, 404, 429]),
        ("sliding_window", [404, 429, 404, 429]),
        ("fixed_window", [404, 429, 404, 404]),
    ],
)
async def test_batch_resolve_limit_uses_the_shape(
    bp_factory: BpFactory, shape: str, expected: list[int]
) -> None:
    clock = FakeClock(datetime(2026, 1, 1, 0, 0, 0, 100_000, tzinfo=UTC))
    bp = await bp_factory(rate_limit_shape=shape, clock=clock)
    body = {"ids": ["65397b2eede0a80012631b0d"], "comments": "x"}
    out = []
    for t in (0.0, 0.5, 1.0, 1.95):  # wall .1, .6, 1.1, 2.05
        bp.at(t)
        out.append(await bp.status("POST", BATCH, json=body))
    assert out == expected


@pytest.mark.parametrize("shape", ["sliding_window", "fixed_window"])
async def test_v1_limit_is_150_per_minute_in_window_shapes(
    bp_factory: BpFactory, shape: str
) -> None:
    bp = await bp_factory(rate_limit_shape=shape)
    statuses = [await bp.get(V1, token=ORG_TOKEN) for _ in range(151)]
    assert statuses == [404] * 150 + [429]  # unknown incident, but counted
    bp.at(59.9)
    assert await bp.get(V1, token=ORG_TOKEN) == 429
    bp.at(60.0)
    assert await bp.get(V1, token=ORG_TOKEN) == 404


# ----------------------------------------------------------------- scopes, over HTTP


async def test_scope_token_method_route(bp_factory: BpFactory) -> None:
    bp = await bp_factory()
    assert bp.app[LIMITER_KEY].scope == "token_method_route"
    assert [await bp.get(DEFS) for _ in range(6)] == [200] * 5 + [429]
    # POST of the same path, another token and another route each have their own counter
    assert await bp.status("POST", DEFS, json={}) == 400
    assert await bp.get(DEFS, token=OTHER_KEY) == 200
    assert await bp.get(ENVS) == 200


async def test_scope_token_route_shares_get_and_post(bp_factory: BpFactory) -> None:
    bp = await bp_factory(rate_limit_scope="token_route")
    statuses = [await bp.get(DEFS) for _ in range(3)]
    statuses += [await bp.status("POST", DEFS, json={}) for _ in range(2)]
    assert statuses == [200, 200, 200, 400, 400]
    assert await bp.get(DEFS) == 429
    assert await bp.status("POST", DEFS, json={}) == 429
    assert await bp.get(DEFS, token=OTHER_KEY) == 200  # per token
    assert await bp.get(ENVS) == 200  # per route


async def test_scope_org_route_shares_tokens(bp_factory: BpFactory) -> None:
    bp = await bp_factory(rate_limit_scope="org_route")
    statuses = [await bp.get(DEFS) for _ in range(3)]
    statuses += [await bp.get(DEFS, token=OTHER_KEY) for _ in range(2)]
    assert statuses == [200] * 5
    assert await bp.get(DEFS) == 429
    assert await bp.get(DEFS, token=OTHER_KEY) == 429
    assert await bp.status("POST", DEFS, json={}) == 429  # methods share it too
    assert await bp.get(ENVS, token=OTHER_KEY) == 200  # per route


async def test_scope_org_route_v1_budget_is_shared(bp_factory: BpFactory) -> None:
    bp = await bp_factory(rate_limit_scope="org_route", org_tokens=["org-2"])
    assert [await bp.get(V1, token=ORG_TOKEN) for _ in range(150)] == [404] * 150
    assert await bp.get(V1, token="org-2") == 429
    bp2 = await bp_factory(org_tokens=["org-2"])  # per token by default
    assert [await bp2.get(V1, token=ORG_TOKEN) for _ in range(151)][-1] == 429
    assert await bp2.get(V1, token="org-2") == 404


async def test_scope_and_shape_combine(bp_factory: BpFactory) -> None:
    bp = await bp_factory(rate_limit_shape="sliding_window", rate_limit_scope="org_route")
    for i, t in enumerate((0.0, 0.1, 0.2, 0.3, 0.4)):
        bp.at(t)
        assert await bp.get(DEFS, token=(API_KEY, OTHER_KEY)[i % 2]) == 200
    bp.at(0.9)
    assert await bp.status("POST", DEFS, token=OTHER_KEY, json={}) == 429
    bp.at(1.05)
    assert await bp.status("POST", DEFS, token=OTHER_KEY, json={}) == 400


# ----------------------------------------------------------------- config, options, CLI


async def test_config_round_trip_and_validation(bp_factory: BpFactory) -> None:
    bp = await bp_factory()
    status, cfg = await bp.config()
    assert status == 200
    assert cfg["rate_limit_shape"] == "token_bucket"
    assert cfg["rate_limit_scope"] == "token_method_route"

    assert [await bp.get() for _ in range(6)][-1] == 429
    status, cfg = await bp.config({"rate_limit_shape": "fixed_window"})
    assert status == 200 and cfg["rate_limit_shape"] == "fixed_window"
    assert await bp.get() == 200  # a new shape starts with empty counters
    assert [await bp.get() for _ in range(5)][-1] == 429
    status, cfg = await bp.config({"rate_limit_scope": "org_route"})
    assert status == 200
    assert (cfg["rate_limit_shape"], cfg["rate_limit_scope"]) == ("fixed_window", "org_route")
    assert await bp.get() == 200  # a new scope, too

    for bad in (
        {"rate_limit_shape": "leaky_bucket"},
        {"rate_limit_scope": "per_user"},
        {"rate_limit_shape": None},
        {"rate_limit_scope": 5},
        # a valid key with a bad one: nothing is applied
        {"rate_limit_shape": "sliding_window", "rate_limit_scope": "nope"},
        {"rate_limit_shape": "sliding_window", "rate_limit_per_s": "fast"},
    ):
        status, err = await bp.config(bad)
        assert status == 400, bad
        assert "\n" not in err["error"] and err["error"]
    _, err = await bp.config({"rate_limit_shape": "leaky_bucket"})
    assert err["error"].startswith("rate_limit_shape must be one of token_bucket, ")
    _, cfg = await bp.config()
    assert (cfg["rate_limit_shape"], cfg["rate_limit_scope"]) == ("fixed_window", "org_route")
    assert cfg["rate_limit_per_s"] == 5.0


async def test_create_app_rejects_unknown_shape_and_scope() -> None:
    with pytest.raises(ValueError, match="rate_limit_shape must be one of"):
        create_app(rate_limit_shape="leaky_bucket")
    with pytest.raises(ValueError, match="rate_limit_scope must be one of"):
        create_app(rate_limit_scope="per_user")
    app = create_app(rate_limit_shape="sliding_window", rate_limit_scope="token_route")
    assert (app[LIMITER_KEY].shape, app[LIMITER_KEY].scope) == ("sliding_window", "token_route")


@pytest.mark.parametrize("command", ["bigpanda", "both"])
def test_cli_flags(monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    from sync.cli import emulate as emulate_cli

    served: list[web.Application] = []

    async def fake_serve(apps: list[tuple[str, web.Application, str, int]]) -> None:
        served.extend(app for name, app, _, _ in apps if name == "BigPanda")

    monkeypatch.setattr(emulate_cli, "_serve", fake_serve)
    monkeypatch.setattr(emulate_cli, "setup_logging", lambda *a, **k: None)
    runner = CliRunner()
    args = [command, "--rate-limit-shape", "fixed_window", "--bp-rate-limit-scope", "org_route"]
    result = runner.invoke(emulate_cli.emulate, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    result = runner.invoke(emulate_cli.emulate, [command], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    limiters = [app[LIMITER_KEY] for app in served]
    assert [(lim.shape, lim.scope) for lim in limiters] == [
        ("fixed_window", "org_route"),
        ("token_bucket", "token_method_route"),
    ]
    result = runner.invoke(emulate_cli.emulate, [command, "--rate-limit-shape", "leaky"])
    assert result.exit_code == 2 and "leaky" in result.output


# ----------------------------------------------------------------- the limiter itself


def test_limiter_keys_by_scope(clock: FakeClock) -> None:
    lim = RateLimiter(clock)
    assert lim.key("t", "GET", "/r") == ("t", "GET", "/r")
    assert lim.v1_key("o") == ("v1", "o")
    lim.scope = "token_route"
    assert lim.key("t", "GET", "/r") == lim.key("t", "POST", "/r") == ("t", "/r")
    lim.scope = "org_route"
    assert lim.key("t", "GET", "/r") == lim.key("u", "POST", "/r") == ("/r",)
    assert lim.v1_key("o") == lim.v1_key("p") == ("v1",)
    with pytest.raises(ValueError, match="rate_limit_scope"):
        lim.scope = "bogus"
    assert lim.scope == "org_route"


def test_limiter_change_clears_only_on_a_new_value(clock: FakeClock) -> None:
    lim = RateLimiter(clock, shape="sliding_window")
    assert lim.allow(("k",), 1.0)
    assert not lim.allow(("k",), 1.0)
    lim.shape = "sliding_window"  # unchanged: counters kept
    assert not lim.allow(("k",), 1.0)
    lim.shape = "fixed_window"
    assert lim.allow(("k",), 1.0)
    lim.scope = "token_route"
    assert lim.allow(("k",), 1.0)


@pytest.mark.parametrize("shape", ["sliding_window", "fixed_window"])
def test_window_shapes_with_a_rate_below_one(clock: FakeClock, shape: str) -> None:
    lim = RateLimiter(clock, shape=shape)
    assert lim.allow(("k",), 0.5)  # one request per 2 s
    clock.advance(1.0)
    assert not lim.allow(("k",), 0.5)
    clock.advance(1.0)
    assert lim.allow(("k",), 0.5)
    assert not lim.allow(("z",), 0.0)  # no budget at all
