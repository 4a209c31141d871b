"""BigPandaClient without a server: the classification table, parsing of vendor JSON,
requests sent (aioresponses), and the pacer on a FakeClock."""

from __future__ import annotations

import asyncio
import errno
import json
import re
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aioresponses import CallbackResult, aioresponses
from multidict import CIMultiDict
from pydantic import SecretStr
from yarl import URL

from sync.clients import http
from sync.clients.base import BigPandaAPI
from sync.clients.bigpanda import (
    BigPandaClient,
    Family,
    classify,
    make_session,
    parse_activity,
    parse_incident,
    rate_limit_delay_s,
)
from sync.clients.bigpanda.parsing import stamped_before
from sync.clients.http import HttpAnswer, Parsed
from sync.clients.pacing import PacingPolicy, RatePacer
from sync.clock import FakeClock, SystemClock
from sync.errors import (
    ApiError,
    ConfigError,
    FatalError,
    MissingTagError,
    NotFoundError,
    PermanentError,
    TransientError,
)
from sync.settings import BigPandaSettings
from tests.mocked_http import Recorder, json_answer

BASE = "http://bp.test"
API_KEY = "BPUsecret-key"
ORG_TOKEN = "org-token-xyz"
ENV = "63bd568809cb331300ffa555"
INC = "653989e52d00001901351684"
URL_ = f"{BASE}/resources/v2.0/environments/{ENV}/incidents"


def settings(**kw: Any) -> BigPandaSettings:
    values: dict[str, Any] = {
        "url": BASE,
        "api_key": SecretStr(API_KEY),
        "bearer_token": SecretStr(ORG_TOKEN),
        "rate_limit_per_s": 5.0,
    }
    values.update(kw)
    return BigPandaSettings(**values)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with make_session(settings()) as s:
        yield s


def empty(status: int) -> CallbackResult:
    return CallbackResult(status=status, body=b"", content_type="")


def incident(n: int, *, updated_at: Any, changed_at: int = 1000, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"{n:024x}",
        "status": "Critical",
        "severity": "Critical",
        "active": True,
        "start": 900,
        "changed_at": changed_at,
        "updated_at": updated_at,
        "end": None,
        "alerts": [{"alert_id": f"{n:023x}a"}],
        "environments": [ENV],
        "folders": ["active"],
        "incident_tags": [],
        **extra,
    }


def re_path(path: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(BASE + path) + r"(\?.*)?$")


# ---------------------------------------------------------------- classification table


def answer(
    status: int, body: Any = None, *, ctype: str = "application/json", raw: bytes | None = None
) -> HttpAnswer:
    data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
    return HttpAnswer(status=status, content_type=ctype, headers=CIMultiDict(), body=data)


def run(outcome: HttpAnswer | BaseException, method: str = "GET", **kw: Any) -> Parsed | ApiError:
    return classify(outcome, method=method, url=URL_, **kw)


def bp_error(status: int, *errors: Any) -> dict[str, Any]:
    return {"status": status, "errors": list(errors)}


KEY = SimpleNamespace(host="bp.test", port=443, ssl=True)

TABLE: list[tuple[str, HttpAnswer | BaseException, str, dict[str, Any], type | None, str]] = [
    # id, outcome, method, classify kwargs, expected error type (None = success), in message
    ("200-json", answer(200, {"total": 0, "items": []}), "GET", {}, None, ""),
    ("201-json", answer(201, {"id": "x"}), "POST", {}, None, ""),
    ("202-empty", answer(202), "POST", {}, None, ""),
    ("202-ack-body", answer(202, {"status": 202, "data": {}}), "POST", {}, None, ""),
    ("204-empty", answer(204, ctype=""), "POST", {}, None, ""),
    ("200-empty-write", answer(200, ctype=""), "DELETE", {}, None, ""),
    ("200-empty-get", answer(200, ctype=""), "GET", {}, TransientError, "empty body"),
    (
        "200-html",
        answer(200, ctype="text/html", raw=b"<html>login</html>"),
        "GET",
        {},
        TransientError,
        "expected JSON, got text/html",
    ),
    (
        "200-bad-json",
        answer(200, raw=b'{"items": ['),
        "GET",
        {},
        TransientError,
        "malformed JSON",
    ),
    (
        "400-vendor",
        answer(400, bp_error(400, "Call is missing parameters or malformed.")),
        "POST",
        {},
        PermanentError,
        "Call is missing parameters or malformed.",
    ),
    (
        "400-named",
        answer(400, bp_error(400, {"name": "InactiveTag", "message": "tag is inactive"})),
        "POST",
        {},
        PermanentError,
        "InactiveTag: tag is inactive",
    ),
    ("401", answer(401, bp_error(401, "Unauthorized")), "GET", {}, FatalError, "bigpanda.api_key"),
    (
        "401-org",
        answer(401, bp_error(401, "bad token")),
        "POST",
        {"credential": "bigpanda.bearer_token"},
        FatalError,
        "bigpanda.bearer_token",
    ),
    ("403", answer(403, bp_error(403, "Forbidden")), "POST", {}, FatalError, "permission"),
    (
        "404",
        answer(404, bp_error(404, "Requested endpoint or resource is not found.")),
        "GET",
        {},
        NotFoundError,
        "not found",
    ),
    ("404-empty", answer(404, ctype=""), "GET", {}, NotFoundError, "HTTP 404"),
    ("410", answer(410, bp_error(410, "gone")), "GET", {}, NotFoundError, "gone"),
    (
        "409-conflict-ok",
        answer(409, bp_error(409, "resolved")),
        "POST",
        {"conflict_ok": True},
        None,
        "",
    ),
    ("409", answer(409, bp_error(409, "conflict")), "POST", {}, PermanentError, "conflict"),
    ("418", answer(418, {}), "GET", {}, PermanentError, "HTTP 418"),
    ("302", answer(302, ctype=""), "GET", {}, PermanentError, "HTTP 302"),
    ("429", answer(429, ctype=""), "GET", {}, TransientError, "rate limited"),
    ("500-json", answer(500, bp_error(500, "boom")), "GET", {}, TransientError, "boom"),
    (
        "500-html",
        answer(500, ctype="text/html", raw=b"<h1>Internal   error</h1>"),
        "GET",
        {},
        TransientError,
        "non-JSON body",
    ),
    ("501", answer(501, ctype=""), "POST", {}, TransientError, "HTTP 501"),
    ("502", answer(502, ctype="text/plain", raw=b"Bad gateway"), "GET", {}, TransientError, "502"),
    ("503", answer(503, ctype=""), "GET", {}, TransientError, "HTTP 503"),
    (
        "refused",
        aiohttp.ClientConnectorError(KEY, OSError(errno.ECONNREFUSED, "refused")),  # type: ignore[arg-type]
        "GET",
        {},
        TransientError,
        "Connection refused",
    ),
    ("timeout", TimeoutError(), "GET", {}, TransientError, "bigpanda.timeout"),
    ("disconnected", aiohttp.ServerDisconnectedError(), "POST", {}, TransientError, "disconnected"),
    ("reset", ConnectionResetError(errno.ECONNRESET, "reset"), "POST", {}, TransientError, "reset"),
]


@pytest.mark.parametrize(
    ("outcome", "method", "kw", "expected", "fragment"),
    [pytest.param(*row[1:], id=row[0]) for row in TABLE],
)
def test_classification_table(
    outcome: HttpAnswer | BaseException,
    method: str,
    kw: dict[str, Any],
    expected: type | None,
    fragment: str,
) -> None:
    result = run(outcome, method, **kw)
    if expected is None:
        assert isinstance(result, Parsed), result
        return
    assert type(result) is expected, result
    assert isinstance(result, ApiError)
    assert result.side == "bigpanda"
    assert fragment.lower() in str(result).lower()


def test_success_keeps_status_and_body() -> None:
    result = run(answer(409, bp_error(409, "x")), "POST", conflict_ok=True)
    assert isinstance(result, Parsed) and result.status == 409
    result = run(answer(200, {"items": [1]}))
    assert isinstance(result, Parsed) and result.body == {"items": [1]} and result.status == 200


def test_not_exist_tag_is_permanent_not_not_found() -> None:
    result = run(answer(404, bp_error(404, "NotExistTag")), "POST")
    assert type(result) is MissingTagError  # a PermanentError, not a NotFoundError
    assert isinstance(result, PermanentError) and not isinstance(result, NotFoundError)
    assert "tag definition does not exist" in str(result)


def test_429_delay_doubles_and_is_capped() -> None:
    delays = []
    for n in range(1, 9):
        result = run(answer(429, ctype=""), consecutive_429s=n)
        assert isinstance(result, TransientError)
        delays.append(result.retry_after_s)
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert rate_limit_delay_s(10_000) == 60.0


def test_error_message_carries_url_not_secret() -> None:
    result = run(answer(401, bp_error(401, "Unauthorized")))
    assert isinstance(result, FatalError)
    assert result.url == URL_ and result.status == 401
    assert API_KEY not in str(result)


# ---------------------------------------------------------------- parsing


def test_parse_title_case_statuses_and_alert_references() -> None:
    parsed = parse_incident(
        incident(
            1, updated_at=1700061365, incident_tags=[{"tag_id": "priority", "tag_value": "P1"}]
        )
    )
    assert parsed.id == f"{1:024x}"
    assert parsed.status == "critical" and parsed.severity == "critical"
    assert parsed.active is True and parsed.end is None
    assert parsed.updated_at == 1700061365 and parsed.changed_at == 1000
    assert parsed.alerts == ()
    assert parsed.alert_ids == (f"{1:023x}a",)
    assert parsed.tags == {"priority": "P1"}
    assert parsed.environments == (ENV,) and parsed.folders == ("active",)


def test_parse_lower_case_status_resolved() -> None:
    parsed = parse_incident(
        incident(2, updated_at=10, status="ok", severity="warning", active=False, end=1234)
    )
    assert (parsed.status, parsed.severity, parsed.active, parsed.end) == (
        "ok",
        "warning",
        False,
        1234,
    )


def test_parse_expanded_alerts_with_id_or_alert_id() -> None:
    data = incident(
        3,
        updated_at=50,
        alerts=[
            {
                "id": "a1",
                "status": "Warning",
                "active": True,
                "start": 100,
                "updated_at": 120.0,
                "primary_property": "host",
                "secondary_property": "check",
                "source_system": "api.backend",
                "incident_key": "k1",
                "description": "disk",
                "tags": [
                    {"name": "host", "value": "db-1"},
                    {"name": "service", "value": ["a", "b"]},
                    {"name": "host", "value": "db-2"},
                ],
            },
            {"alert_id": "a2", "status": "ok", "active": False},
        ],
    )
    parsed = parse_incident(data)
    assert parsed.alert_ids == ("a1", "a2")
    first, second = parsed.alerts
    assert first.status == "warning" and first.start == 100 and first.updated_at == 120
    assert first.tags == {"host": "db-1, db-2", "service": "a, b"}
    assert first.primary_property == "host" and first.incident_key == "k1"
    assert second.id == "a2" and second.status == "ok" and second.active is False


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (1700000000, 1700000000),
        (1700000000.7, 1700000000),
        ("1700000000", 1700000000),
        (1700000000123, 1700000000),
        (None, None),
    ],
)
def test_parse_epoch_seconds(raw: Any, expected: int | None) -> None:
    assert parse_incident(incident(4, updated_at=raw)).updated_at == expected


@pytest.mark.parametrize(
    "data",
    [
        [],
        {"status": "ok"},
        incident(5, updated_at=True),
        incident(5, updated_at="yesterday"),
        incident(5, updated_at=1, alerts="a1"),
        incident(5, updated_at=1, status=3),
    ],
)
def test_parse_malformed_incident_is_permanent(data: Any) -> None:
    with pytest.raises(PermanentError, match="unexpected incident shape"):
        parse_incident(data)


def test_parse_activity() -> None:
    act = parse_activity(
        {
            "id": "f" * 32,
            "type": "incident_commented",
            "timestamp": 1700000000,
            "created_by": "u1",
            "params": {"comment": "hello"},
        }
    )
    assert (act.type, act.timestamp, act.created_by, act.params["comment"]) == (
        "incident_commented",
        1700000000,
        "u1",
        "hello",
    )
    with pytest.raises(PermanentError):
        parse_activity({"type": "x"})


# ---------------------------------------------------------------- config and session


async def test_missing_api_key_is_config_error(session: aiohttp.ClientSession) -> None:
    with pytest.raises(ConfigError, match=r"bigpanda\.api_key") as info:
        BigPandaClient(session, settings(api_key=None), FakeClock())
    assert info.value.setting == "bigpanda.api_key"
    client = BigPandaClient(session, settings(), FakeClock())
    assert API_KEY not in repr(client)
    api: BigPandaAPI = client  # structural conformance
    assert api is client


async def test_make_session_no_cookies_and_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "TLS_WARNED", set())
    async with make_session(settings(timeout=7, verify_tls=False)) as s:
        assert isinstance(s.cookie_jar, aiohttp.DummyCookieJar)
        assert s.timeout.total == 7
    assert "bigpanda" in http.TLS_WARNED


# ---------------------------------------------------------------- requests


async def test_v2_calls_use_the_api_key_and_observer_sees_templates(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    rec = Recorder(json_answer([{"id": ENV, "name": "All Incidents", "filter": ""}]))
    mocked.get(re_path("/resources/v2.0/environments"), callback=rec, repeat=True)
    seen: list[tuple[str, str, str, int | None]] = []
    client = BigPandaClient(
        session,
        settings(),
        FakeClock(),
        observer=lambda side, m, t, s, d: seen.append((side, m, t, s)),
    )
    envs = await client.list_environments()
    assert [(e.id, e.name) for e in envs] == [(ENV, "All Incidents")]
    await client.check_auth()
    headers = rec.calls[0][1]["headers"]
    assert headers["Authorization"] == f"Bearer {API_KEY}"
    assert headers["Accept"] == "application/json"
    assert seen == [("bigpanda", "GET", "/resources/v2.0/environments", 200)] * 2


async def test_check_auth_refused_is_fatal(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    mocked.get(
        re_path("/resources/v2.0/environments"), status=401, payload=bp_error(401, "Unauthorized")
    )
    client = BigPandaClient(session, settings(), FakeClock())
    with pytest.raises(FatalError, match="authentication refused"):
        await client.check_auth()


async def test_search_sends_every_parameter(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    rec = Recorder(CallbackResult(payload={"total": 1, "items": [incident(1, updated_at=5)]}))
    mocked.get(re_path(f"/resources/v2.0/environments/{ENV}/incidents"), callback=rec)
    client = BigPandaClient(session, settings(), FakeClock())
    page = await client.search_incidents(
        ENV,
        query='status != "ok"',
        from_s=100,
        to_s=200,
        sort_by="last_change",
        folder="active",
        page=2,
        page_size=10,
        expand_alerts=True,
    )
    assert page.total == 1 and page.items[0].id == f"{1:024x}"
    assert dict(rec.calls[0][0].query) == {
        "query": 'status != "ok"',
        "from": "100",
        "to": "200",
        "sort_by": "last_change",
        "folder": "active",
        "page": "2",
        "page_size": "10",
        "expand": "alerts",
    }


@pytest.mark.parametrize(
    "kw",
    [
        {"page_size": 11, "expand_alerts": True},
        {"page_size": 101},
        {"page_size": 0},
        {"page": 0},
        {"folder": "Active"},
        {"sort_by": "updated"},
    ],
)
async def test_search_refuses_bad_parameters_without_a_request(
    session: aiohttp.ClientSession, mocked: aioresponses, kw: dict[str, Any]
) -> None:
    client = BigPandaClient(session, settings(), FakeClock())
    with pytest.raises(PermanentError):
        await client.search_incidents(ENV, **kw)
    assert not mocked.requests


async def test_search_answer_without_items_is_permanent(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    mocked.get(re_path(f"/resources/v2.0/environments/{ENV}/incidents"), payload={"total": 0})
    client = BigPandaClient(session, settings(), FakeClock())
    with pytest.raises(PermanentError, match="no 'items' list"):
        await client.search_incidents(ENV)


async def test_get_incident_expands_alerts_and_404(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    body = incident(7, updated_at=5, alerts=[{"id": "a1", "status": "Critical"}])
    rec = Recorder(
        CallbackResult(payload=body),
        CallbackResult(status=404, payload=bp_error(404, "Incident not found")),
    )
    mocked.get(
        re_path(f"/resources/v2.0/environments/{ENV}/incidents/{7:024x}"), callback=rec, repeat=True
    )
    client = BigPandaClient(session, settings(), FakeClock())
    got = await client.get_incident(ENV, f"{7:024x}")
    assert got.alerts[0].status == "critical"
    assert rec.calls[0][0].query["expand"] == "alerts"
    with pytest.raises(NotFoundError, match="Incident not found"):
        await client.get_incident(ENV, f"{7:024x}", expand_alerts=False)
    assert "expand" not in rec.calls[1][0].query


async def test_resolve_202_true_409_false_and_body_key(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    rec = Recorder(
        empty(202), CallbackResult(status=409, payload=bp_error(409, "already resolved"))
    )
    mocked.post(
        re_path(f"/resources/v2.0/environments/{ENV}/incidents/{INC}/resolve"),
        callback=rec,
        repeat=True,
    )
    client = BigPandaClient(session, settings(), FakeClock())
    assert await client.resolve_incident(ENV, INC, "closed in ServiceNow") is True
    assert await client.resolve_incident(ENV, INC, "again") is False
    assert rec.body(0) == {"comments": "closed in ServiceNow"}
    assert rec.calls[0][1]["headers"]["Content-Type"].startswith("application/json")


async def test_add_comment_body_key(session: aiohttp.ClientSession, mocked: aioresponses) -> None:
    rec = Recorder(empty(204))
    mocked.post(
        re_path(f"/resources/v2.0/environments/{ENV}/incidents/{INC}/comments"), callback=rec
    )
    client = BigPandaClient(session, settings(), FakeClock())
    await client.add_comment(ENV, INC, "hello [bpsync]")
    assert rec.body() == {"comment": "hello [bpsync]"}


async def test_activities_types_filter_and_paging(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    def act(n: int) -> dict[str, Any]:
        return {
            "id": f"{n:032x}",
            "type": "incident_commented",
            "timestamp": 1000 - n,
            "params": {"comment": f"c{n}"},
        }

    full = CallbackResult(payload={"items": [act(n) for n in range(100)]})
    short = CallbackResult(payload={"items": [act(n) for n in range(100, 103)]})
    rec = Recorder(full, short)
    mocked.get(re_path(f"/resources/v2.0/incidents/{INC}/activities"), callback=rec, repeat=True)
    client = BigPandaClient(session, settings(), FakeClock())
    items = await client.list_activities(INC, types=["incident_commented", "incident_resolved_api"])
    assert len(items) == 103 and items[0].params["comment"] == "c0"
    first, second = (call[0].query for call in rec.calls)
    assert first["types"] == "incident_commented,incident_resolved_api"
    assert (first["page"], first["per_page"], second["page"]) == ("1", "100", "2")


async def test_activities_accept_a_bare_array(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    mocked.get(
        re_path(f"/resources/v2.0/incidents/{INC}/activities"),
        payload=[{"id": "a" * 32, "type": "incident_created", "timestamp": 5}],
    )
    client = BigPandaClient(session, settings(), FakeClock())
    assert [a.type for a in await client.list_activities(INC)] == ["incident_created"]


async def test_tag_routes(session: aiohttp.ClientSession, mocked: aioresponses) -> None:
    tags_path = f"/resources/v2.0/environments/{ENV}/incidents/{INC}/tags"
    listed = Recorder(
        json_answer(
            [
                {"tag_id": "priority", "tag_value": "P1", "incident_id": INC, "timestamp": 5},
                {"tag_id": "teams", "tag_value": ["a", "b"]},
            ]
        )
    )
    many = Recorder(empty(204))
    one = Recorder(empty(204))
    deleted = Recorder(empty(204))
    mocked.get(re_path(tags_path), callback=listed)
    mocked.post(re_path(tags_path), callback=many)
    mocked.post(re_path(tags_path + "/servicenow%20link"), callback=one)
    mocked.delete(re_path(tags_path + "/priority"), callback=deleted)
    seen: list[str] = []
    client = BigPandaClient(
        session, settings(), FakeClock(), observer=lambda _s, m, t, _st, _d: seen.append(f"{m} {t}")
    )
    assert await client.get_tags(ENV, INC) == {"priority": "P1", "teams": "a, b"}
    await client.set_tags(ENV, INC, {"priority": "P2", "servicenow_link": "https://x"})
    await client.set_tags(ENV, INC, {})  # no request
    await client.set_tag(ENV, INC, "servicenow link", "INC001")
    await client.delete_tag(ENV, INC, "priority")
    assert many.body() == [
        {"tag_id": "priority", "tag_value": "P2"},
        {"tag_id": "servicenow_link", "tag_value": "https://x"},
    ]
    assert one.body() == {"tag_value": "INC001"}
    assert len(deleted.calls) == 1
    template = "/resources/v2.0/environments/{environment_id}/incidents/{incident_id}/tags"
    assert seen == [
        f"GET {template}",
        f"POST {template}",
        f"POST {template}/{{tag_id}}",
        f"DELETE {template}/{{tag_id}}",
    ]


@pytest.mark.parametrize("bad", ["", "  "])
async def test_empty_ids_are_refused(session: aiohttp.ClientSession, bad: str) -> None:
    client = BigPandaClient(session, settings(), FakeClock())
    with pytest.raises(PermanentError, match="invalid"):
        await client.set_tag(ENV, INC, bad, "v")
    with pytest.raises(PermanentError, match="invalid"):
        await client.get_incident(bad, INC)


async def test_ids_with_slashes_stay_in_their_segment(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    rec = Recorder(empty(204))
    mocked.post(re.compile(r".*"), callback=rec)
    client = BigPandaClient(session, settings(), FakeClock())
    await client.set_tag(ENV, INC, "../../environments", "v")
    assert rec.calls[0][0].raw_path.endswith("/tags/..%2F..%2Fenvironments")


async def test_tag_definitions(session: aiohttp.ClientSession, mocked: aioresponses) -> None:
    rec = Recorder(
        json_answer(
            [
                {"id": "priority", "name": "priority", "type": "Priority", "active": True},
                {"id": "servicenow_link", "name": "servicenow_link", "type": "Text"},
            ]
        ),
        CallbackResult(status=201, payload={"id": "team", "name": "team", "type": "Text"}),
    )
    mocked.get(re_path("/resources/v2.0/incidents/tags/definitions"), callback=rec)
    mocked.post(re_path("/resources/v2.0/incidents/tags/definitions"), callback=rec)
    client = BigPandaClient(session, settings(), FakeClock())
    defs = await client.list_tag_definitions(active=True)
    assert [(d.id, d.type) for d in defs] == [("priority", "Priority"), ("servicenow_link", "Text")]
    assert rec.calls[0][0].query["active"] == "true"
    created = await client.create_tag_definition("team")
    assert created.id == "team"
    assert rec.body(1) == {"name": "team", "type": "Text", "description": "", "active": True}


async def test_post_alerts_uses_the_org_token(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    rec = Recorder(CallbackResult(status=201, payload={"status": "created"}), empty(204))
    mocked.post(re_path("/data/v2/alerts"), callback=rec, repeat=True)
    client = BigPandaClient(session, settings(), FakeClock())
    assert await client.post_alerts([{"host": "db-1", "status": "critical"}], app_key="app") == {
        "status": "created"
    }
    assert (
        await client.post_alerts(
            [{"host": "a", "status": "ok"}, {"host": "b", "status": "ok"}], app_key="app"
        )
        is None
    )
    assert rec.calls[0][1]["headers"]["Authorization"] == f"Bearer {ORG_TOKEN}"
    assert rec.body(0) == {"app_key": "app", "host": "db-1", "status": "critical"}
    assert rec.body(1)["alerts"][1] == {"host": "b", "status": "ok"}


async def test_post_alerts_without_org_token_is_config_error(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    client = BigPandaClient(session, settings(bearer_token=None), FakeClock())
    with pytest.raises(ConfigError, match=r"bigpanda\.bearer_token"):
        await client.post_alerts([{"host": "x", "status": "ok"}], app_key="a")
    assert not mocked.requests


async def test_transport_error_is_transient_and_observed(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    mocked.get(
        re_path("/resources/v2.0/environments"),
        exception=aiohttp.ServerDisconnectedError(),
        repeat=True,
    )
    seen: list[int | None] = []
    client = BigPandaClient(
        session,
        settings(),
        FakeClock(),
        observer=lambda _s, _m, _t, st, _d: seen.append(st),
        pacing=PacingPolicy(outage_after_s=5.0),
    )
    with pytest.raises(TransientError, match="disconnected"):
        await client.list_environments()  # a GET: sent again until the outage lasts 5 s
    assert len(seen) >= 3
    assert set(seen) == {None}


# ---------------------------------------------------------------- list_changed


async def test_list_changed_pages_through_and_filters_on_updated_at(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    since, overlap = 10_000, 30.0
    floor = 9_970
    # sorted by start; page 1 has an incident whose only change is a tag edit
    # (changed_at old, updated_at new) and one not updated since the floor
    page1 = [
        incident(1, updated_at=floor - 100, changed_at=floor - 100),
        incident(2, updated_at=floor + 5, changed_at=100),  # tag edit only
    ]
    page2 = [
        incident(3, updated_at=floor, changed_at=floor),  # exactly at the floor: kept
        incident(2, updated_at=floor + 9, changed_at=100),  # repeated (page shift): newest kept
    ]
    page3 = [incident(4, updated_at=floor + 1, changed_at=5)]
    rec = Recorder(
        CallbackResult(payload={"total": 5, "items": page1}),
        CallbackResult(payload={"total": 5, "items": page2}),
        CallbackResult(payload={"total": 5, "items": page3}),
    )
    mocked.get(re_path(f"/resources/v2.0/environments/{ENV}/incidents"), callback=rec, repeat=True)
    client = BigPandaClient(session, settings(), FakeClock())
    changed = await client.list_changed(ENV, since, overlap_s=overlap, page_size=2)
    assert [(i.id[-1], i.updated_at) for i in changed] == [
        ("3", floor),
        ("4", floor + 1),
        ("2", floor + 9),
    ]
    queries = [call[0].query for call in rec.calls]
    assert [q["page"] for q in queries] == ["1", "2", "3"]
    assert all(q["from"] == str(floor) and q["page_size"] == "2" for q in queries)
    assert all(q["sort_by"] == "start" and "expand" not in q for q in queries)


async def test_list_changed_from_the_beginning_and_page_size_capped(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    rec = Recorder(CallbackResult(payload={"total": 1, "items": [incident(1, updated_at=1)]}))
    mocked.get(re_path(f"/resources/v2.0/environments/{ENV}/incidents"), callback=rec)
    client = BigPandaClient(session, settings(), FakeClock())
    changed = await client.list_changed(ENV, None, overlap_s=30, page_size=500)
    assert len(changed) == 1
    query = rec.calls[0][0].query
    assert "from" not in query and query["page_size"] == "100"


async def test_list_changed_stops_on_an_empty_page(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    rec = Recorder(
        CallbackResult(payload={"total": 50, "items": [incident(1, updated_at=100)]}),
        CallbackResult(payload={"total": 50, "items": []}),
    )
    mocked.get(re_path(f"/resources/v2.0/environments/{ENV}/incidents"), callback=rec, repeat=True)
    client = BigPandaClient(session, settings(), FakeClock())
    assert len(await client.list_changed(ENV, 100, overlap_s=0, page_size=1)) == 1
    assert len(rec.calls) == 2


async def test_list_changed_skips_items_older_than_the_window_unparsed(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    """An idle poll reads every active incident; those not updated in the window are not
    parsed: an old malformed one is not reported (it was when it was new), a new one is.
    A page of old items only is not the end of the poll."""
    floor = 1_000
    old_poison = {"id": "b" * 24, "status": "active", "updated_at": floor - 1}  # no alerts
    new_poison = {"id": "c" * 24, "status": "active", "updated_at": floor + 1}
    unreadable = incident(5, updated_at=floor - 1) | {"updated_at": "yesterday"}
    rec = Recorder(
        CallbackResult(
            payload={"total": 5, "items": [incident(1, updated_at=floor - 5), old_poison]}
        ),
        CallbackResult(payload={"total": 5, "items": [new_poison, incident(2, updated_at=floor)]}),
        CallbackResult(payload={"total": 5, "items": [unreadable]}),
    )
    mocked.get(re_path(f"/resources/v2.0/environments/{ENV}/incidents"), callback=rec, repeat=True)
    skipped: list[tuple[str, str]] = []
    client = BigPandaClient(
        session, settings(), FakeClock(), skip_observer=lambda s, r: skipped.append((s, r))
    )
    changed = await client.list_changed(ENV, floor, overlap_s=0, page_size=2)
    assert [i.id[-1] for i in changed] == ["2"]
    assert len(rec.calls) == 3
    # the old malformed item is not looked at; the new one and the unreadable stamp are
    assert skipped == [("bigpanda", "no_alerts"), ("bigpanda", "malformed")]


@pytest.mark.parametrize(
    ("raw", "floor", "expected"),
    [
        ({"updated_at": 99}, 100, True),
        ({"updated_at": 100}, 100, False),
        ({"updated_at": "99"}, 100, True),
        ({"updated_at": 99_000}, 100, False),  # not milliseconds: below the threshold
        ({"updated_at": 1_700_000_000_000}, 1_700_000_001, True),  # milliseconds
        ({"updated_at": None}, 100, False),
        ({"updated_at": True}, 100, False),
        ({"updated_at": "soon"}, 100, False),
        ({}, 100, False),
        ([], 100, False),
    ],
)
def test_stamped_before_reads_the_stamp_as_the_parser_does(
    raw: Any, floor: int, expected: bool
) -> None:
    assert stamped_before(raw, floor) is expected


# ---------------------------------------------------------------- pacer

#: pacing at the ceiling itself (no headroom), for exact slot arithmetic
FULL_PACE = PacingPolicy(headroom=1.0)


async def test_pacer_spaces_one_family_and_not_the_others() -> None:
    clock = FakeClock()
    pacer = RatePacer(clock, 5.0, FULL_PACE)
    times = []
    for _ in range(6):
        await pacer.acquire(Family.TAGS)
        times.append(round(clock.monotonic(), 6))
    assert times == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    await pacer.acquire(Family.SEARCH)  # its own bucket: no wait
    assert clock.monotonic() == pytest.approx(1.0)


async def test_pacer_lets_an_idle_family_go_at_once() -> None:
    clock = FakeClock()
    pacer = RatePacer(clock, 5.0, FULL_PACE)
    await pacer.acquire(Family.TAGS)
    clock.advance(3.0)
    await pacer.acquire(Family.TAGS)
    assert clock.monotonic() == pytest.approx(3.0)  # no burst credit saved, no wait either
    await pacer.acquire(Family.TAGS)
    assert clock.monotonic() == pytest.approx(3.2)


async def test_pacer_concurrent_callers_get_distinct_slots() -> None:
    class RecordingClock(FakeClock):
        def __init__(self) -> None:
            super().__init__()
            self.sleeps: list[float] = []

        async def sleep(self, seconds: float) -> None:
            self.sleeps.append(round(seconds, 6))
            await asyncio.sleep(0)

    clock = RecordingClock()
    pacer = RatePacer(clock, 10.0, FULL_PACE)
    await asyncio.gather(*(pacer.acquire(Family.TAGS) for _ in range(4)))
    assert sorted(clock.sleeps) == [0.1, 0.2, 0.3]


async def test_pacer_hold() -> None:
    clock = FakeClock()
    pacer = RatePacer(clock, 5.0, FULL_PACE)
    await pacer.acquire(Family.TAGS)
    pacer.hold(Family.TAGS, 4.0)
    await pacer.acquire(Family.TAGS)
    assert clock.monotonic() == pytest.approx(4.0)


def test_pacer_rejects_a_zero_rate() -> None:
    with pytest.raises(ConfigError):
        RatePacer(FakeClock(), 0, FULL_PACE)


async def test_client_never_exceeds_the_rate_per_family(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    clock = FakeClock()
    stamps: list[tuple[str, float]] = []

    def stamp(url: URL, **_: Any) -> CallbackResult:
        stamps.append((url.path.rsplit("/", 1)[-1], clock.monotonic()))
        return empty(204)

    mocked.post(re.compile(r".*/tags/.*"), callback=stamp, repeat=True)
    mocked.post(re.compile(r".*/comments$"), callback=stamp, repeat=True)
    client = BigPandaClient(session, settings(rate_limit_per_s=5.0), clock)
    for n in range(20):
        await client.set_tag(ENV, INC, "priority", f"P{n}")
        await client.add_comment(ENV, INC, f"c{n}")
    for family in ("priority", "comments"):
        times = [t for name, t in stamps if name == family]
        assert len(times) == 20
        for earlier, later in zip(times, times[5:], strict=False):
            assert later - earlier >= 1.0 - 1e-9  # never 6 in one second
        assert times[-1] - times[0] == pytest.approx(19 / 4.5)  # 0.9 of the ceiling


async def test_a_429_is_delayed_and_sent_again_never_raised(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    clock = FakeClock()
    tags = Recorder(empty(429), empty(429), empty(429), empty(204))
    mocked.post(re.compile(r".*/tags/priority$"), callback=tags, repeat=True)
    client = BigPandaClient(session, settings(), clock)
    before = clock.monotonic()
    await client.set_tag(ENV, INC, "priority", "P1")  # three 429s, then sent
    assert len(tags.calls) == 4
    assert clock.monotonic() - before >= 1.0 + 2.0 + 4.0  # holds double per 429
    # the family slowed down multiplicatively: 4.5 -> 2.25 -> 1.125 -> 0.5625
    assert client.pacer.rate_of(Family.TAGS) == pytest.approx(0.5625)
    assert client.pacer.rate_of(Family.SEARCH) == pytest.approx(4.5)  # others untouched
    assert client.health.throttled_families() == ["tags"]


async def test_a_throttled_family_recovers_gradually_never_above_the_target() -> None:
    clock = FakeClock()
    pacer = RatePacer(clock, 5.0, PacingPolicy(recover_after_s=5.0, recover_step=0.1))
    pacer.throttled(Family.TAGS)
    assert pacer.rate_of(Family.TAGS) == pytest.approx(2.25)
    clock.advance(4.9)
    assert pacer.rate_of(Family.TAGS) == pytest.approx(2.25)  # not quiet long enough
    clock.advance(0.2)
    assert pacer.rate_of(Family.TAGS) == pytest.approx(2.25 + 0.45)
    clock.advance(600)
    assert pacer.rate_of(Family.TAGS) == pytest.approx(4.5)  # the target, not the ceiling


async def test_only_an_outage_that_lasts_reaches_the_caller(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    clock = FakeClock()
    tags = Recorder(empty(429))
    mocked.post(re.compile(r".*/tags/priority$"), callback=tags, repeat=True)
    client = BigPandaClient(session, settings(), clock, pacing=PacingPolicy(outage_after_s=20.0))
    with pytest.raises(TransientError) as info:
        await client.set_tag(ENV, INC, "priority", "P1")
    assert info.value.status == 429
    assert clock.monotonic() > 20.0  # only after every request failed for 20 s
    assert 3 <= len(tags.calls) <= 8


async def test_a_write_cut_off_is_not_sent_again_by_the_client(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    mocked.post(
        re.compile(r".*/comments$"), exception=aiohttp.ServerDisconnectedError(), repeat=True
    )
    client = BigPandaClient(session, settings(), FakeClock())
    with pytest.raises(TransientError):
        await client.add_comment(ENV, INC, "x")  # it may have been applied: the executor decides
    assert len([k for k in mocked.requests if k[0] == "POST"]) == 1


def test_429s_of_requests_already_in_flight_make_one_back_off_step() -> None:
    clock = FakeClock()
    pacer = RatePacer(clock, 5.0, PacingPolicy())
    sent = [0.0, 0.0, 0.0, 0.0]  # four requests in flight when the first 429 comes back
    clock.advance(0.1)
    first = pacer.throttled(Family.TAGS, sent_at=sent[0])
    echoes = [pacer.throttled(Family.TAGS, sent_at=t) for t in sent[1:]]
    assert pacer.rate_of(Family.TAGS) == pytest.approx(2.25)  # halved once, not four times
    assert first == pytest.approx(1.0)
    assert all(e == pytest.approx(1.0) for e in echoes)  # they wait out the same hold
    clock.advance(1.0)
    assert pacer.throttled(Family.TAGS, sent_at=clock.monotonic()) == pytest.approx(2.0)


async def test_a_storm_against_a_stricter_sliding_window_keeps_moving(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    """bpsync believes 50 req/s; the server allows 40 in any trailing second. 100 writes
    queued at once: the 429s of requests already booked make one back-off step, the
    queued ones wait out the hold instead of firing into the full window, and the
    writes finish near the server's pace. (A storm test found one instant's 429s
    doubling the hold ten times: 1, 2, 4 ... 30 s of silence.)"""
    clock = SystemClock()
    accepted: list[float] = []
    refused = 0

    def answer(url: URL, **_: Any) -> CallbackResult:
        nonlocal refused
        now = clock.monotonic()
        if len([t for t in accepted if now - t < 1.0]) >= 40:
            refused += 1
            return empty(429)
        accepted.append(now)
        return empty(204)

    mocked.post(re.compile(r".*/tags/priority$"), callback=answer, repeat=True)
    policy = PacingPolicy(headroom=1.0)
    client = BigPandaClient(session, settings(rate_limit_per_s=50.0), clock, pacing=policy)
    started = clock.monotonic()
    await asyncio.gather(*(client.set_tag(ENV, INC, "priority", f"P{n}") for n in range(100)))
    elapsed = clock.monotonic() - started
    assert len(accepted) == 100
    assert refused >= 1  # the server did push back
    assert elapsed < 100 / 40 + 3.0, f"the storm stalled: {elapsed:.1f} s, {refused} refused"
