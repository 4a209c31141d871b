"""The status page over HTTP (``GET /``, ``GET /status.json``): what it shows of a store,
the search, the token, escaping. The page fed by a real sync and read in a real browser
is ``tests/system/test_status_page.py``."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from pydantic import SecretStr

from sync.clock import FakeClock
from sync.constants import Side
from sync.metrics import Metrics
from sync.model import LinkState
from sync.runtime.health import HealthState
from sync.runtime.server import HttpServer, presented_token, start_http_server
from sync.runtime.status import PairStatusReader, pairs_source
from sync.store.base import NewAuditEntry
from sync.store.memory import MemoryStore

TOKEN = "status-T0ken-0123456789abcdef"
BP1, BP2 = "a" * 24, "b" * 24
SYS1 = "1" * 32
#: a conflict value that would be markup if it were not escaped
EVIL = '<script>alert("x")</script>&'


class _Text(HTMLParser):
    """The page's text and whether it holds any element this module never writes."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> _Text:
    parser = _Text()
    parser.feed(page)
    return parser


@dataclass
class Page:
    server: HttpServer
    session: aiohttp.ClientSession
    store: MemoryStore
    health: HealthState
    clock: FakeClock

    async def get(self, path: str, **headers: str) -> tuple[int, Any, str]:
        async with self.session.get(self.server.url + path, headers=headers) as resp:
            return resp.status, resp.headers, await resp.text()

    async def json(self, path: str, **headers: str) -> dict[str, Any]:
        status, _, text = await self.get(path, **headers)
        assert status == 200, text
        body: dict[str, Any] = json.loads(text)
        return body


async def _seed(store: MemoryStore, clock: FakeClock) -> None:
    """Two incidents: one linked, resolved, reopened with a conflict and a dead write;
    one pending."""
    now = clock.now()
    first = await store.create_pending_link(BP1, now)
    await store.confirm_link_and_record(first.id, SYS1, "INC0010001", now, audit_outcome="created")
    await store.set_link_state(first.id, LinkState.RESOLVED, now)
    await store.set_link_state(first.id, LinkState.SUPERSEDED, now)
    second = await store.create_pending_link(BP1, now, previous_link_id=first.id)
    await store.confirm_link(second.id, SYS1, "INC0010001", now)
    reopen = await store.enqueue(
        "sn.reopen", f"servicenow:{SYS1}", {"state": "2"}, "k-reopen", now, link_id=second.id
    )
    await store.complete(reopen.id, now)
    await store.record_audit(
        NewAuditEntry(
            "conflict",
            "bigpanda wins",
            link_id=second.id,
            bp_incident_id=BP1,
            field="category",
            bp_value=EVIL,
            sn_value="network",
        ),
        now,
    )
    dead = await store.enqueue(
        "sn.update",
        f"servicenow:{SYS1}",
        {"fields": {"short_description": "payload-value-never-shown"}},
        "k-update",
        now,
        link_id=second.id,
        bp_incident_id=BP1,
        sn_sys_id=SYS1,
    )
    await store.dead_letter(
        dead.id,
        f"permanent: servicenow: PATCH http://sn/api/now/table/incident/{SYS1}: "
        "HTTP 403 ACL denies write",
        now,
    )
    await store.create_pending_link(BP2, now)
    await store.record_field_states(second.id, Side.SERVICENOW, {"category": "network"}, now)


@pytest.fixture(params=[None, TOKEN], ids=["open", "token"])
async def page(request: pytest.FixtureRequest) -> AsyncIterator[Page]:
    clock = FakeClock()
    store = MemoryStore()
    await _seed(store, clock)
    health = HealthState(clock, 15, throttled=lambda: {"bigpanda": ["incidents"], "servicenow": []})
    health.leader = True
    clock.advance(30)
    health.cycle_succeeded()
    reader = PairStatusReader(
        "default", store, health, clock, attempts=5, this_replica="host:1", leads=lambda: True
    )

    async def ping() -> None:
        return None

    server = await start_http_server(
        "127.0.0.1",
        0,
        health=health,
        metrics=Metrics(),
        db_ping=ping,
        status=pairs_source(lambda: [reader]),
        status_token=SecretStr(request.param) if request.param else None,
    )
    headers = {"Authorization": f"Bearer {TOKEN}"} if request.param else {}
    async with aiohttp.ClientSession(headers=headers) as session:
        yield Page(server, session, store, health, clock)
    await server.close()


async def test_page_shows_each_part_of_the_pair(page: Page) -> None:
    status, headers, html = await page.get("/")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert headers["Cache-Control"] == "no-store"
    assert "script-src" not in headers["Content-Security-Policy"]  # default-src 'none'
    parsed = parse(html)
    assert "script" not in parsed.tags
    text = " ".join(parsed.text)
    assert "Pair default" in text
    assert "host:1: this replica leads" in text
    assert "2026-01-01 00:00:30Z" in text  # the last good cycle
    assert "bigpanda: incidents" in text  # throttled
    assert "ACL denies write" in text  # the dead letter's reason, without the URL
    assert "http://sn/api" not in html
    assert "payload-value-never-shown" not in html  # no outbox payload
    assert "sn.reopen" in text  # the last actions


async def test_json_is_the_same_data(page: Page) -> None:
    body = await page.json("/status.json")
    assert body["query"] is None
    [pair] = body["pairs"]
    assert pair["name"] == "default"
    assert pair["links_by_state"] == {"pending": 1, "linked": 1, "resolved": 0, "superseded": 1}
    assert pair["outbox_depth"] == 0
    assert pair["dead_letters_total"] == 1
    [dead] = pair["dead_letters"]
    assert dead["reason"] == "permanent: servicenow: HTTP 403 ACL denies write"
    assert dead["needs_a_person"] is True
    assert pair["leader"]["leads"] is True
    assert pair["leader"]["holder"] == "host:1"  # no epochs: the replica that leads
    assert pair["last_good_cycle"] == "2026-01-01T00:00:30+00:00"
    assert pair["throttled"] == {"bigpanda": ["incidents"]}
    assert [c["side"] for c in pair["cursors"]] == ["bigpanda", "servicenow"]
    assert [a["kind"] for a in pair["last_actions"]] == ["sn.update", "sn.reopen"]
    assert pair["trail"] is None
    assert "payload-value-never-shown" not in json.dumps(body)


@pytest.mark.parametrize("query", [BP1, "INC0010001", "inc0010001", SYS1])
async def test_search_shows_the_trail_by_id_number_or_sys_id(page: Page, query: str) -> None:
    body = await page.json(f"/status.json?q={query}")
    trail = body["pairs"][0]["trail"]
    assert trail["bp_incident_id"] == BP1
    assert [x["id"] for x in trail["links"]] == [2, 1]
    whats = [e["what"] for e in trail["events"]]
    for expected in ("create", "reopen", "conflict", "failure", "resolve"):
        assert expected in whats, whats
    [conflict] = [e for e in trail["events"] if e["what"] == "conflict"]
    assert (conflict["field"], conflict["bp_value"], conflict["sn_value"]) == (
        "category",
        EVIL,
        "network",
    )
    status, _, html = await page.get(f"/?q={query}")
    assert status == 200
    text = " ".join(parse(html).text)
    assert f"Trail of {query}" in text
    assert EVIL in text  # shown as text...
    assert EVIL not in html  # ...because it was escaped
    assert "&lt;script&gt;" in html


async def test_a_search_without_a_link_says_so(page: Page) -> None:
    status, _, html = await page.get("/?q=INC9999999")
    assert status == 200
    assert "no link found for INC9999999" in " ".join(parse(html).text)
    body = await page.json("/status.json?q=nothing-here")
    assert body["pairs"][0]["trail"] == {
        "query": "nothing-here",
        "bp_incident_id": None,
        "links": [],
        "events": [],
    }


async def test_the_search_box_keeps_a_hostile_query_inert(page: Page) -> None:
    hostile = '"><script>alert(1)</script>'
    status, _, html = await page.get("/?q=" + quote(hostile, safe=""))
    assert status == 200
    assert "script" not in parse(html).tags
    assert hostile not in html
    status, _, _ = await page.get("/?q=" + "x" * 101)
    assert status == 400


# --------------------------------------------------------------------------- the token


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"Bearer {TOKEN}", TOKEN.encode()),
        (f"bearer   {TOKEN}  ", TOKEN.encode()),
        ("Basic " + base64.b64encode(f"ops:{TOKEN}".encode()).decode(), TOKEN.encode()),
        ("Basic " + base64.b64encode(f":{TOKEN}".encode()).decode(), TOKEN.encode()),
        ("Basic " + base64.b64encode(TOKEN.encode()).decode(), None),  # no colon
        ("Basic not-base64!", None),
        ("Bearer", None),
        ("Digest abc", None),
        ("", None),
    ],
)
def test_presented_token(header: str, expected: bytes | None) -> None:
    assert presented_token(header) == expected


async def _served_with_token() -> tuple[HttpServer, Any]:
    clock = FakeClock()
    store = MemoryStore()
    health = HealthState(clock, 15)
    reader = PairStatusReader(
        "default", store, health, clock, attempts=5, this_replica="h:1", leads=lambda: False
    )

    async def ping() -> None:
        return None

    server = await start_http_server(
        "127.0.0.1",
        0,
        health=health,
        metrics=Metrics(),
        db_ping=ping,
        status=pairs_source(lambda: [reader]),
        status_token=SecretStr(TOKEN),
    )
    return server, store


@pytest.mark.parametrize("path", ["/", "/status.json", "/?q=x"])
async def test_the_token_is_asked_for_and_checked(path: str) -> None:
    server, _ = await _served_with_token()
    basic_ok = base64.b64encode(f"anyone:{TOKEN}".encode()).decode()
    basic_bad = base64.b64encode(b"anyone:wrong-token-0123456789").decode()
    try:
        async with aiohttp.ClientSession() as session:

            async def status_of(url: str, **headers: str) -> tuple[int, str]:
                async with session.get(url, headers=headers) as resp:
                    return resp.status, resp.headers.get("WWW-Authenticate", "")

            base = server.url + path
            status, challenge = await status_of(base)
            assert status == 401
            assert challenge.startswith('Basic realm="bpsync"')
            assert (await status_of(base, Authorization="Bearer wrong"))[0] == 401
            assert (await status_of(base, Authorization=f"Basic {basic_bad}"))[0] == 401
            joiner = "&" if "?" in path else "?"
            assert (await status_of(f"{base}{joiner}token={TOKEN}"))[0] == 401  # not in URLs
            assert (await status_of(base, Authorization=f"Bearer {TOKEN}"))[0] == 200
            assert (await status_of(base, Authorization=f"Basic {basic_ok}"))[0] == 200
            # the probes stay open: a load balancer has no token
            async with session.get(server.url + "/healthz") as resp:
                assert resp.status == 200
    finally:
        await server.close()


async def test_standby_and_never_a_cycle() -> None:
    server, _ = await _served_with_token()
    try:
        async with (
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session,
            session.get(server.url + "/") as resp,
        ):
            html = await resp.text()
    finally:
        await server.close()
    text = " ".join(parse(html).text)
    assert "h:1: standby (another replica leads)" in text
    assert "leader replica n/a" in text
    assert "last good cycle never" in text
    assert "n/a" in text  # no cursor yet


async def test_the_leader_replica_is_the_epoch_holder() -> None:
    """With epochs (Postgres HA), the leader shown is the replica that took the newest."""
    clock = FakeClock()
    store = MemoryStore()
    await store.take_epoch("host-a:1", clock.now())
    clock.advance(60)
    await store.replica().take_epoch("host-b:2", clock.now())
    reader = PairStatusReader(
        "default",
        store,
        HealthState(clock, 15),
        clock,
        attempts=5,
        this_replica="host-a:1",
        leads=lambda: False,
    )
    leader = (await reader.read()).leader
    assert (leader.holder, leader.epoch, leader.leads) == ("host-b:2", 2, False)
    assert leader.since == clock.now()
