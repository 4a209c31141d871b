"""ServiceNowClient over a mocked transport (aioresponses): requests sent, auth, outcomes."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import pytest
from aioresponses import CallbackResult, aioresponses
from pydantic import SecretStr
from yarl import URL

from sync.clients import http
from sync.clients.base import MalformedRow
from sync.clients.pacing import PacingPolicy
from sync.clients.servicenow import ServiceNowClient, make_session
from sync.clients.servicenow.parsing import MalformedRecord
from sync.clients.snquery import QueryError
from sync.clock import FakeClock
from sync.errors import ConfigError, FatalError, NotFoundError, PermanentError, TransientError
from sync.model import SNIncident
from sync.settings import ServiceNowSettings
from tests.fakes import as_records
from tests.mocked_http import Recorder

#: outage_after 0: the first transient answer reaches the caller (these tests classify;
#: sending again is tested on its own below)
NO_RESEND = PacingPolicy(outage_after_s=0.0)

BASE = "http://sn.test"
LIST_RE = re.compile(r"^http://sn\.test/api/now/table/incident(\?.*)?$")
RECORD_RE = re.compile(r"^http://sn\.test/api/now/table/incident/[0-9a-f]{32}(\?.*)?$")
TOKEN_URL = f"{BASE}/oauth_token.do"
SYS_ID = "0123456789abcdef0123456789abcdef"
#: the fields an incident answer needs to be an SNIncident
STAMPED = {"sys_updated_on": "2026-01-02 03:04:05"}
PASSWORD = "s3cret-pw"
CLIENT_SECRET = "c-secret-xyz"


def settings(**kw: Any) -> ServiceNowSettings:
    values: dict[str, Any] = {
        "url": BASE,
        "username": "bpsync",
        "password": SecretStr(PASSWORD),
        "page_size": 3,
        "max_concurrency": 4,
    }
    values.update(kw)
    return ServiceNowSettings(**values)


def oauth_settings(**kw: Any) -> ServiceNowSettings:
    return settings(client_id="cid", client_secret=SecretStr(CLIENT_SECRET), **kw)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with make_session(settings()) as s:
        yield s


def rec(sys_id: str, updated: str, mod: int = 0, **extra: str) -> dict[str, str]:
    return {
        "sys_id": sys_id,
        "sys_updated_on": updated,
        "sys_mod_count": str(mod),
        "correlation_id": "bp1",
        **extra,
    }


def sid(n: int) -> str:
    return f"{n:032x}"


# ---------------------------------------------------------------- config and session


def test_missing_url_names_the_setting() -> None:
    async def build() -> None:
        async with aiohttp.ClientSession() as s:
            ServiceNowClient(s, settings(url=None), FakeClock())

    with pytest.raises(ConfigError, match=r"servicenow\.url") as info:
        asyncio.run(build())
    assert info.value.setting == "servicenow.url"


@pytest.mark.parametrize(
    ("override", "setting"),
    [
        ({"username": None}, "servicenow.username"),
        ({"password": None}, "servicenow.password"),
        ({"client_id": "cid"}, "servicenow.client_secret"),
    ],
)
async def test_missing_credentials_name_the_setting(
    session: aiohttp.ClientSession, override: dict[str, Any], setting: str
) -> None:
    with pytest.raises(ConfigError) as info:
        ServiceNowClient(session, settings(**override), FakeClock())
    assert info.value.setting == setting


async def test_instance_name_gives_service_now_url(session: aiohttp.ClientSession) -> None:
    client = ServiceNowClient(session, settings(url=None, instance="acme"), FakeClock())
    assert client.base_url == "https://acme.service-now.com"
    assert PASSWORD not in repr(client)


async def test_make_session_no_cookies_timeout_and_tls_warning_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http, "TLS_WARNED", set())
    with caplog.at_level(logging.WARNING, logger="sync.clients.http"):
        async with make_session(settings(verify_tls=False, timeout=7)) as s1:
            assert isinstance(s1.cookie_jar, aiohttp.DummyCookieJar)
            assert s1.timeout.total == 7
        async with make_session(settings(verify_tls=False)):
            pass
    warnings = [r for r in caplog.records if "verify_tls is false" in r.getMessage()]
    assert len(warnings) == 1
    caplog.clear()
    async with make_session(settings()):
        pass
    assert not caplog.records


# ---------------------------------------------------------------- CRUD requests


async def test_get_sends_basic_auth_and_sync_params(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    recorder = Recorder(
        CallbackResult(payload={"result": {**STAMPED, "sys_id": SYS_ID, "number": "INC1"}})
    )
    mocked.get(RECORD_RE, callback=recorder)
    seen: list[tuple[str, str, str, int | None]] = []

    def observer(side: str, method: str, endpoint: str, status: int | None, d: float) -> None:
        seen.append((side, method, endpoint, status))

    client = ServiceNowClient(session, settings(), FakeClock(), observer=observer)
    record = await client.get_incident(SYS_ID)
    assert record.number == "INC1"
    url, kwargs = recorder.calls[0]
    assert url.path == f"/api/now/table/incident/{SYS_ID}"
    assert url.query["sysparm_display_value"] == "false"
    assert url.query["sysparm_exclude_reference_link"] == "true"
    headers = kwargs["headers"]
    assert headers["Accept"] == "application/json"
    expected = base64.b64encode(f"bpsync:{PASSWORD}".encode()).decode()
    assert headers["Authorization"] == f"Basic {expected}"
    assert seen == [("servicenow", "GET", "/api/now/table/{table}/{sys_id}", 200)]


async def test_incident_answers_are_typed_and_a_malformed_one_is_named(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    full = {**STAMPED, "sys_id": SYS_ID, "number": "INC1", "state": "6", "sys_mod_count": "4"}
    mocked.get(RECORD_RE, payload={"result": full})
    mocked.get(RECORD_RE, payload={"result": {"sys_id": SYS_ID, "number": "INC1"}})
    mocked.get(RECORD_RE, payload={"result": {**full, "state": "resolved-ish"}})
    client = ServiceNowClient(session, settings(), FakeClock(), pacing=NO_RESEND)
    incident = await client.get_incident(SYS_ID)
    assert (incident.number, incident.state, incident.resolved) == ("INC1", 6, True)
    assert incident.sys_mod_count == 4
    assert incident.sys_updated_on == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    with pytest.raises(MalformedRecord, match="lacks field sys_updated_on") as missing:
        await client.get_incident(SYS_ID)
    assert isinstance(missing.value, PermanentError) and isinstance(missing.value, ValueError)
    with pytest.raises(MalformedRecord, match=f"{SYS_ID}: bad state 'resolved-ish'"):
        await client.get_incident(SYS_ID)


async def test_create_update_delete(session: aiohttp.ClientSession, mocked: aioresponses) -> None:
    created = Recorder(
        CallbackResult(status=201, payload={"result": {**STAMPED, "sys_id": SYS_ID}})
    )
    patched = Recorder(
        CallbackResult(payload={"result": {**STAMPED, "sys_id": SYS_ID, "priority": "2"}})
    )
    deleted = Recorder(CallbackResult(status=204, body=b"", content_type=""))
    mocked.post(LIST_RE, callback=created)
    mocked.patch(RECORD_RE, callback=patched)
    mocked.delete(RECORD_RE, callback=deleted)
    client = ServiceNowClient(session, settings(), FakeClock(), pacing=NO_RESEND)

    assert (await client.create_incident({"short_description": "x^y"})).sys_id == SYS_ID
    _, kwargs = created.calls[0]
    assert json.loads(kwargs["data"]) == {"short_description": "x^y"}
    assert kwargs["headers"]["Content-Type"] == "application/json"

    assert (await client.update_incident(SYS_ID, {"priority": "2"})).fields["priority"] == "2"
    url, kwargs = patched.calls[0]
    assert url.path.endswith(SYS_ID)
    assert json.loads(kwargs["data"]) == {"priority": "2"}

    assert await client.delete_incident(SYS_ID) is None
    assert len(deleted.calls) == 1


async def test_bad_ids_and_fields_refused_before_any_request(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    client = ServiceNowClient(session, settings(), FakeClock(), pacing=NO_RESEND)
    with pytest.raises(QueryError, match="sys_id"):
        await client.get_incident("../../sys_user")
    with pytest.raises(QueryError, match="field name"):
        await client.update_incident(SYS_ID, {"Bad Field": "1"})
    with pytest.raises(PermanentError, match="must be a string"):
        await client.update_incident(SYS_ID, {"priority": 2})  # type: ignore[dict-item]
    with pytest.raises(QueryError, match="correlation_id"):
        await client.find_by_correlation_id("x^NQactive=true")
    with pytest.raises(QueryError, match="javascript"):
        await client.query("sys_user", {"email": "javascript:gs.getUserID()"}, fields=[], limit=2)
    assert mocked.requests == {}


async def test_not_found_html_page_and_rate_limit(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    error = {"error": {"message": "No Record found", "detail": "gone"}, "status": "failure"}
    mocked.get(RECORD_RE, status=404, payload=error)
    mocked.get(RECORD_RE, status=200, body="<html>hibernating</html>", content_type="text/html")
    mocked.get(
        RECORD_RE,
        status=429,
        payload={"error": {"message": "Rate limit exceeded"}},
        headers={"Retry-After": "17"},
    )
    client = ServiceNowClient(session, settings(), FakeClock(), pacing=NO_RESEND)
    with pytest.raises(NotFoundError, match="No Record found") as nf:
        await client.get_incident(SYS_ID)
    assert nf.value.detail == "gone"
    with pytest.raises(TransientError, match="expected JSON, got text/html"):
        await client.get_incident(SYS_ID)
    with pytest.raises(TransientError) as limited:
        await client.get_incident(SYS_ID)
    assert limited.value.retry_after_s == 17.0
    assert limited.value.status == 429


async def test_connection_refused_is_transient_and_observed(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    key = type("K", (), {"host": "sn.test", "port": 80, "ssl": False})()
    mocked.get(
        RECORD_RE,
        exception=aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "refused")),  # type: ignore[arg-type]
    )
    statuses: list[int | None] = []
    client = ServiceNowClient(
        session,
        settings(),
        FakeClock(),
        observer=lambda *a: statuses.append(a[3]),
        pacing=NO_RESEND,
    )
    with pytest.raises(TransientError, match="instance unreachable"):
        await client.get_incident(SYS_ID)
    assert statuses == [None]


async def test_wrong_shape_is_permanent(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    mocked.get(RECORD_RE, payload={"result": ["not", "an", "object"]})
    mocked.get(LIST_RE, payload={"result": {"sys_id": "x"}})
    client = ServiceNowClient(session, settings(), FakeClock(), pacing=NO_RESEND)
    with pytest.raises(PermanentError, match="result is not an object"):
        await client.get_incident(SYS_ID)
    with pytest.raises(PermanentError, match="not a list of objects"):
        await client.find_by_correlation_id("bp1")


async def test_query_and_find_by_correlation_id_build_escaped_queries(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    users = Recorder(CallbackResult(payload={"result": [{"sys_id": "u1"}]}))
    incidents = Recorder(CallbackResult(payload={"result": []}))
    mocked.get(re.compile(r"^http://sn\.test/api/now/table/sys_user\?.*$"), callback=users)
    mocked.get(LIST_RE, callback=incidents)
    client = ServiceNowClient(session, settings(), FakeClock(), pacing=NO_RESEND)

    rows = await client.query(
        "sys_user", {"email": "a^NQb@x.io", "active": "true"}, fields=["sys_id", "email"], limit=2
    )
    assert rows == [{"sys_id": "u1"}]
    url, _ = users.calls[0]
    assert url.query["sysparm_query"] == "email=a^^NQb@x.io^active=true"
    assert url.query["sysparm_fields"] == "sys_id,email"
    assert url.query["sysparm_limit"] == "2"

    assert await client.find_by_correlation_id("5f1c0a9e8b7d6c5e4f3a2b1c", active_only=True) == []
    url, _ = incidents.calls[0]
    assert url.query["sysparm_query"] == (
        "correlation_id=5f1c0a9e8b7d6c5e4f3a2b1c^active=true^ORDERBYsys_created_on^ORDERBYsys_id"
    )


# ---------------------------------------------------------------- bounded concurrency


async def test_concurrency_is_bounded(session: aiohttp.ClientSession, mocked: aioresponses) -> None:
    in_flight = 0
    peak = 0

    async def slow(url: URL, **kwargs: Any) -> CallbackResult:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return CallbackResult(payload={"result": {**STAMPED, "sys_id": SYS_ID}})

    mocked.get(RECORD_RE, callback=slow, repeat=True)
    client = ServiceNowClient(session, settings(max_concurrency=2), FakeClock())
    await asyncio.gather(*(client.get_incident(SYS_ID) for _ in range(8)))
    assert peak == 2


# ---------------------------------------------------------------- OAuth


def token(access: str, refresh: str | None = "r1", expires_in: int = 1799) -> CallbackResult:
    body: dict[str, Any] = {
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": expires_in,
    }
    if refresh:
        body["refresh_token"] = refresh
    return CallbackResult(payload=body)


def form(kwargs: dict[str, Any]) -> dict[str, str]:
    data = kwargs["data"]
    if isinstance(data, dict):
        return {k: str(v) for k, v in data.items()}
    return {k: v[0] for k, v in parse_qs(data.decode()).items()}


def ok_record() -> CallbackResult:
    return CallbackResult(payload={"result": {**STAMPED, "sys_id": SYS_ID}})


async def test_oauth_password_grant_then_proactive_refresh(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    tokens = Recorder(token("a1", "r1"), token("a2", None))
    api = Recorder(ok_record())
    mocked.post(TOKEN_URL, callback=tokens, repeat=True)
    mocked.get(RECORD_RE, callback=api, repeat=True)
    clock = FakeClock()
    client = ServiceNowClient(session, oauth_settings(), clock)

    await client.get_incident(SYS_ID)
    await client.get_incident(SYS_ID)
    assert len(tokens.calls) == 1
    assert form(tokens.calls[0][1]) == {
        "grant_type": "password",
        "client_id": "cid",
        "client_secret": CLIENT_SECRET,
        "username": "bpsync",
        "password": PASSWORD,
    }
    assert [kw["headers"]["Authorization"] for _, kw in api.calls] == ["Bearer a1"] * 2

    clock.advance(1799 - 60 - 1)  # still inside the margin: no refresh
    await client.get_incident(SYS_ID)
    assert len(tokens.calls) == 1
    clock.advance(2)  # within 60 s of expiry: refresh before sending
    await client.get_incident(SYS_ID)
    assert len(tokens.calls) == 2
    assert form(tokens.calls[1][1]) == {
        "grant_type": "refresh_token",
        "client_id": "cid",
        "client_secret": CLIENT_SECRET,
        "refresh_token": "r1",
    }
    assert api.calls[-1][1]["headers"]["Authorization"] == "Bearer a2"
    # the refresh answer had no refresh_token: the old one is kept for the next refresh
    clock.advance(1800)
    await client.get_incident(SYS_ID)
    assert form(tokens.calls[2][1])["refresh_token"] == "r1"


async def test_oauth_401_refreshes_once_and_replays_once(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    unauthorized = CallbackResult(
        status=401, payload={"error": {"message": "User Not Authenticated"}, "status": "failure"}
    )
    tokens = Recorder(token("a1"), token("a2"), token("a3"))
    api = Recorder(unauthorized, ok_record(), unauthorized, unauthorized)
    mocked.post(TOKEN_URL, callback=tokens, repeat=True)
    mocked.get(RECORD_RE, callback=api, repeat=True)
    client = ServiceNowClient(session, oauth_settings(), FakeClock())

    assert (await client.get_incident(SYS_ID)).sys_id == SYS_ID
    assert len(tokens.calls) == 2
    assert form(tokens.calls[1][1])["grant_type"] == "refresh_token"
    assert [kw["headers"]["Authorization"] for _, kw in api.calls] == ["Bearer a1", "Bearer a2"]

    # refused again after the refresh: exactly one more refresh, then fatal
    with pytest.raises(FatalError, match="authentication refused"):
        await client.get_incident(SYS_ID)
    assert len(tokens.calls) == 3
    assert len(api.calls) == 4


async def test_oauth_refused_refresh_falls_back_to_password_grant(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    denied = CallbackResult(
        status=401, payload={"error_description": "access_denied", "error": "server_error"}
    )
    tokens = Recorder(token("a1", expires_in=100), denied, token("a2"))
    mocked.post(TOKEN_URL, callback=tokens, repeat=True)
    mocked.get(RECORD_RE, callback=Recorder(ok_record()), repeat=True)
    clock = FakeClock()
    client = ServiceNowClient(session, oauth_settings(), clock)
    await client.get_incident(SYS_ID)
    clock.advance(60)  # margin is half the life for short tokens: 50 s
    await client.get_incident(SYS_ID)
    grants = [form(kw)["grant_type"] for _, kw in tokens.calls]
    assert grants == ["password", "refresh_token", "password"]


async def test_oauth_login_refused_is_fatal_without_secrets(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    mocked.post(
        TOKEN_URL,
        status=401,
        payload={"error_description": "access_denied", "error": "server_error"},
    )
    client = ServiceNowClient(session, oauth_settings(), FakeClock())
    with pytest.raises(FatalError, match="OAuth password grant refused") as info:
        await client.check_auth()
    text = f"{info.value} {info.value!r} {info.value.detail}"
    assert PASSWORD not in text
    assert CLIENT_SECRET not in text
    assert "access_denied" in str(info.value)


async def test_oauth_token_answer_without_access_token(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    mocked.post(TOKEN_URL, payload={"token_type": "Bearer"})
    client = ServiceNowClient(session, oauth_settings(), FakeClock())
    with pytest.raises(FatalError, match="lacks access_token"):
        await client.get_incident(SYS_ID)


async def test_basic_401_is_fatal_without_replay(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    api = Recorder(
        CallbackResult(status=401, payload={"error": {"message": "User Not Authenticated"}})
    )
    mocked.get(LIST_RE, callback=api, repeat=True)
    client = ServiceNowClient(session, settings(), FakeClock(), pacing=NO_RESEND)
    with pytest.raises(FatalError) as info:
        await client.check_auth()
    assert len(api.calls) == 1
    assert PASSWORD not in str(info.value)


# ---------------------------------------------------------------- incremental listing


def page(rows: list[dict[str, str]], total: int | None) -> CallbackResult:
    headers = {} if total is None else {"X-Total-Count": str(total)}
    return CallbackResult(payload={"result": rows}, headers=headers)


async def test_list_changed_keyset_pages_and_dedup(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    t1, t2, t3 = "2026-01-01 10:00:00", "2026-01-01 10:00:05", "2026-01-01 10:00:09"
    listing = Recorder(
        page([rec(sid(1), t1), rec(sid(2), t1), rec(sid(3), t2)], 7),
        # sid(1) was updated meanwhile and moved behind the keyset
        page([rec(sid(4), t2), rec(sid(1), t3, mod=1), rec(sid(5), t3)], 4),
        page([rec(sid(6), t3)], 1),
    )
    mocked.get(LIST_RE, callback=listing, repeat=True)
    client = ServiceNowClient(session, settings(page_size=3), FakeClock())
    since = datetime(2026, 1, 1, 10, 0, 30, 500_000, tzinfo=UTC)
    rows = as_records(await client.list_changed(since, overlap_s=30.5, fields=["state"]))

    assert [(r["sys_id"], r["sys_mod_count"]) for r in rows] == [
        (sid(2), "0"),
        (sid(3), "0"),
        (sid(4), "0"),
        (sid(1), "1"),
        (sid(5), "0"),
        (sid(6), "0"),
    ]
    queries = [url.query["sysparm_query"] for url, _ in listing.calls]
    assert queries == [
        "sys_updated_on>=2026-01-01 10:00:00^correlation_idISNOTEMPTY"
        "^ORDERBYsys_updated_on^ORDERBYsys_id",
        f"sys_updated_on>{t2}^correlation_idISNOTEMPTY^NQsys_updated_on={t2}^sys_id>{sid(3)}"
        "^correlation_idISNOTEMPTY^ORDERBYsys_updated_on^ORDERBYsys_id",
        f"sys_updated_on>{t3}^correlation_idISNOTEMPTY^NQsys_updated_on={t3}^sys_id>{sid(5)}"
        "^correlation_idISNOTEMPTY^ORDERBYsys_updated_on^ORDERBYsys_id",
    ]
    first = listing.calls[0][0].query
    assert first["sysparm_limit"] == "3"
    assert first["sysparm_fields"] == "state,sys_id,sys_mod_count,sys_updated_on"
    assert first["sysparm_display_value"] == "false"
    assert "sysparm_offset" not in first


async def test_list_changed_without_total_reads_until_empty_page(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    listing = Recorder(page([rec(sid(1), "2026-01-01 00:00:00")], None), page([], None))
    mocked.get(LIST_RE, callback=listing, repeat=True)
    client = ServiceNowClient(session, settings(page_size=3), FakeClock())
    rows = as_records(await client.list_changed(None, overlap_s=0))
    assert [r["sys_id"] for r in rows] == [sid(1)]
    assert len(listing.calls) == 2
    assert listing.calls[0][0].query["sysparm_query"] == (
        "correlation_idISNOTEMPTY^ORDERBYsys_updated_on^ORDERBYsys_id"
    )


async def test_list_changed_steps_over_a_window_hidden_by_acls(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    # limit applied before ACL filtering: an empty page while X-Total-Count says more exist
    listing = Recorder(page([], 5), page([rec(sid(9), "2026-01-01 00:00:00")], 5))
    mocked.get(LIST_RE, callback=listing, repeat=True)
    client = ServiceNowClient(session, settings(page_size=3), FakeClock())
    rows = as_records(await client.list_changed(None, overlap_s=0))
    assert [r["sys_id"] for r in rows] == [sid(9)]
    assert [url.query.get("sysparm_offset") for url, _ in listing.calls] == [None, "3"]


async def test_list_changed_refuses_a_server_ignoring_the_order(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    t = "2026-01-01 00:00:00"
    listing = Recorder(page([rec(sid(2), t), rec(sid(1), t), rec(sid(3), t)], 10))
    mocked.get(LIST_RE, callback=listing, repeat=True)
    client = ServiceNowClient(session, settings(page_size=3), FakeClock())
    with pytest.raises(PermanentError, match="out of order"):
        as_records(await client.list_changed(None, overlap_s=0))


async def test_list_changed_keeps_a_row_with_a_malformed_key_out_of_every_query(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    """A poison row is returned (the engine skips it, named) and never quoted in a query."""
    odd = rec("not-a-sys-id^NQactive=true", "2026-01-01 00:00:00")
    mocked.get(LIST_RE, payload={"result": [odd]}, headers={"X-Total-Count": "1"})
    client = ServiceNowClient(session, settings(), FakeClock(), pacing=NO_RESEND)
    assert as_records(await client.list_changed(None, overlap_s=0)) == [odd]
    (url,) = [u for (m, u) in mocked.requests if m == "GET"]
    assert "not-a-sys-id" not in str(url)


async def test_list_changed_answers_incidents_and_names_a_row_that_is_not_one(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    """Each row in its place: an incident, or a MalformedRow naming it and its problem
    (the poll skips that one, named, and syncs the others)."""
    good = rec(sid(1), "2026-01-01 00:00:00", 3, number="INC1", state="2")
    broken = rec(sid(2), "2026-01-01 00:00:01", state="resolved-ish")
    mocked.get(LIST_RE, payload={"result": [good, broken]}, headers={"X-Total-Count": "2"})
    client = ServiceNowClient(session, settings(), FakeClock(), pacing=NO_RESEND)
    first, second = await client.list_changed(None, overlap_s=0)
    assert isinstance(first, SNIncident)
    assert (first.sys_id, first.number, first.state, first.sys_mod_count) == (sid(1), "INC1", 2, 3)
    assert first.sys_updated_on == datetime(2026, 1, 1, tzinfo=UTC)
    assert second == MalformedRow(
        sid(2), f"ServiceNow record {sid(2)}: bad state 'resolved-ish'", broken
    )


async def test_a_semaphore_429_halves_the_requests_at_once_and_is_sent_again(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    busy = {"error": {"message": "Rate limit exceeded"}, "status": "failure"}
    mocked.get(RECORD_RE, status=429, payload=busy)  # a full semaphore queue: no headers
    mocked.get(RECORD_RE, status=200, payload={"result": {**STAMPED, "sys_id": SYS_ID}})
    clock = FakeClock()
    client = ServiceNowClient(session, settings(), clock)
    assert (await client.get_incident(SYS_ID)).sys_id == SYS_ID
    assert clock.monotonic() >= 1.0  # held one second, then sent again
    assert client.health.throttled_families() == ["semaphore"]


async def test_a_retry_after_longer_than_the_outage_reaches_the_caller_at_once(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    limited = {"error": {"message": "Rate limit exceeded"}, "status": "failure"}
    mocked.patch(RECORD_RE, status=429, payload=limited, headers={"Retry-After": "3600"})
    clock = FakeClock()
    client = ServiceNowClient(session, settings(), clock)
    with pytest.raises(TransientError) as info:
        await client.update_incident(SYS_ID, {"impact": "1"})
    assert info.value.retry_after_s == 3600.0
    assert clock.monotonic() == 0.0  # not waited for: the executor defers the write
    # the instance stays held for it (what the executor asks), and until then a
    # request is refused unsent
    assert client.held_for() == 3600.0
    clock.advance(600)
    with pytest.raises(TransientError, match="held for 3000 s more") as held:
        await client.get_incident(SYS_ID)
    assert held.value.retry_after_s == 3000.0
    assert len(mocked.requests) == 1


async def test_batched_correlation_check_reads_past_a_window_acls_emptied(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    """A page emptied by ACLs (after the limit) is not the end while X-Total-Count says
    more rows match: a duplicate check that stopped there would let a create through."""
    found = {**STAMPED, "sys_id": SYS_ID, "correlation_id": "65397b2eede0a80012631c01"}
    mocked.get(LIST_RE, payload={"result": []}, headers={"X-Total-Count": "4"})
    mocked.get(LIST_RE, payload={"result": [found]}, headers={"X-Total-Count": "4"})
    client = ServiceNowClient(session, settings(), FakeClock(), pacing=NO_RESEND)
    records = await client.find_by_correlation_ids(["65397b2eede0a80012631c01"], active_only=True)
    assert [(r.sys_id, r.correlation_id) for r in records] == [(SYS_ID, found["correlation_id"])]
