"""BigPandaClient's SCIM Users and assignment calls without a server (aioresponses), the
SCIM families' own pace, and the cached user directory (``sync.people``)."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aioresponses import aioresponses

from sync.clients.base import BPUser
from sync.clients.bigpanda import BigPandaClient, Family, make_session
from sync.clients.bigpanda.paths import FAMILY_CEILINGS_PER_S
from sync.clients.pacing import PacingPolicy, RatePacer
from sync.clock import FakeClock
from sync.errors import FatalError, NotFoundError, PermanentError
from sync.people import BigPandaUsers
from tests.fakes import FakeBigPanda
from tests.mocked_http import Recorder, json_answer

from .test_bp_client_unit import ENV, INC, bp_error, empty, settings

SCIM = re.compile(r"^http://bp\.test/resources/v2\.0/scim/Users(\?.*)?$")
SCIM_ONE = re.compile(r"^http://bp\.test/resources/v2\.0/scim/Users/[^/?]+$")
ASSIGNMENT = re.compile(r".*/incidents/[0-9a-f]+/assignment$")
SCHEMA = "urn:scim:schemas:core:1.0"


def scim_user(user_id: str, email: str, name: str = "", active: bool = True) -> dict[str, object]:
    return {
        "schemas": [SCHEMA],
        "id": user_id,
        "userName": email,
        "displayName": name,
        "emails": [{"value": email, "primary": True}],
        "active": active,
    }


def scim_list(*users: dict[str, object]) -> dict[str, object]:
    return {
        "schemas": [SCHEMA],
        "totalResults": len(users),
        "itemsPerPage": len(users),
        "startIndex": 1,
        "Resources": list(users),
    }


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with make_session(settings()) as s:
        yield s


async def test_find_user_sends_a_scim_filter_and_parses_scim_1_1(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    rec = Recorder(json_answer(scim_list(scim_user("u1", "jane@example.com", "Jane Doe"))))
    mocked.get(SCIM, callback=rec)
    client = BigPandaClient(session, settings(), FakeClock())
    [user] = await client.find_user("jane@example.com")
    assert user == BPUser("u1", "jane@example.com", "Jane Doe", ("jane@example.com",), True)
    url = rec.calls[0][0]
    assert url.query["filter"] == 'userName eq "jane@example.com"'
    assert rec.calls[0][1]["headers"]["Authorization"] == "Bearer BPUsecret-key"


async def test_find_user_refuses_an_e_mail_that_would_break_the_filter(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    client = BigPandaClient(session, settings(), FakeClock())
    with pytest.raises(PermanentError, match="SCIM filter"):
        await client.find_user('x" or userName pr "')
    assert not mocked.requests


async def test_get_user_not_found_and_a_name_from_its_parts(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    mocked.get(
        SCIM_ONE,
        callback=Recorder(
            json_answer({"id": "u2", "userName": "bo@example.com", "name": {"formatted": "Bo Li"}}),
            json_answer({"Errors": [{"description": "User not found", "code": "404"}]}, 404),
        ),
        repeat=True,
    )
    client = BigPandaClient(session, settings(), FakeClock())
    user = await client.get_user("u2")
    assert (user.name, user.email) == ("Bo Li", "bo@example.com")  # no emails: the userName
    with pytest.raises(NotFoundError):
        await client.get_user("gone")


@pytest.mark.parametrize(
    "body",
    [
        {"Resources": []},  # no totalResults: not a SCIM list
        {"totalResults": 1, "Resources": {"id": "u1"}},
        {"totalResults": 1, "Resources": [{"id": "u1"}]},  # no userName
        [scim_user("u1", "a@example.com")],  # a bare array
    ],
    ids=["no-total", "resources-not-a-list", "user-without-username", "bare-array"],
)
async def test_a_malformed_scim_answer_is_a_permanent_error(
    session: aiohttp.ClientSession, mocked: aioresponses, body: object
) -> None:
    mocked.get(SCIM, callback=Recorder(json_answer(body)))
    client = BigPandaClient(session, settings(), FakeClock())
    with pytest.raises(PermanentError, match="SCIM"):
        await client.find_user("a@example.com")


async def test_a_scim_429_is_held_and_sent_again_at_the_scim_pace(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    clock = FakeClock()
    rec = Recorder(empty(429), json_answer(scim_list()))
    mocked.get(SCIM, callback=rec, repeat=True)
    client = BigPandaClient(session, settings(), clock)
    assert await client.find_user("nobody@example.com") == []
    assert len(rec.calls) == 2
    assert clock.monotonic() >= 1.0  # held after the bare 429
    # the SCIM family slowed from its own target (0.9 x 2 req/s), the others untouched
    assert client.pacer.rate_of(Family.USERS) == pytest.approx(0.9)
    assert client.pacer.rate_of(Family.USER) == pytest.approx(1.8)
    assert client.pacer.rate_of(Family.SEARCH) == pytest.approx(4.5)


async def test_scim_routes_are_paced_at_their_own_two_per_second() -> None:
    clock = FakeClock()
    pacer = RatePacer(clock, 5.0, PacingPolicy(), ceilings=FAMILY_CEILINGS_PER_S)
    times: list[float] = []
    for _ in range(10):
        await pacer.acquire(Family.USERS)
        times.append(clock.monotonic())
    assert times[-1] - times[0] == pytest.approx(9 / 1.8)  # never 2 in any second
    assert pacer.ceiling_of(Family.USERS) == 2.0
    assert pacer.ceiling_of(Family.TAGS) == 5.0
    pacer.throttled(Family.USERS)
    clock.advance(600)
    assert pacer.rate_of(Family.USERS) == pytest.approx(1.8)  # recovers to its own target


async def test_assign_and_unassign(session: aiohttp.ClientSession, mocked: aioresponses) -> None:
    put = Recorder(empty(204))
    mocked.put(ASSIGNMENT, callback=put)
    deleted = Recorder(empty(204), json_answer(bp_error(400, "Incident is not assigned."), 400))
    mocked.delete(ASSIGNMENT, callback=deleted, repeat=True)
    client = BigPandaClient(session, settings(), FakeClock())
    await client.assign_incident(ENV, INC, "u1")
    assert put.body() == {"assignee": "u1"}
    assert str(put.calls[0][0]).endswith(f"/environments/{ENV}/incidents/{INC}/assignment")
    assert await client.unassign_incident(ENV, INC) is True
    assert await client.unassign_incident(ENV, INC) is False  # not assigned: nothing to do


async def test_unassign_of_an_unknown_incident_is_not_swallowed(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    mocked.delete(ASSIGNMENT, status=404, payload=bp_error(404, "Requested ... not found."))
    client = BigPandaClient(session, settings(), FakeClock())
    with pytest.raises(NotFoundError):
        await client.unassign_incident(ENV, INC)


# ---------------------------------------------------------------- the cached directory


def directory() -> tuple[FakeBigPanda, BigPandaUsers, FakeClock]:
    clock = FakeClock()
    bp = FakeBigPanda(clock)
    bp.users = {
        "u1": BPUser("u1", "jane@example.com", "Jane Doe", ("jane@example.com",)),
        "u2": BPUser("u2", "old@example.com", "Old Timer", active=False),
    }
    return bp, BigPandaUsers(bp, clock, ttl_s=60.0), clock


async def test_users_are_cached_both_ways_until_the_ttl() -> None:
    bp, users, clock = directory()
    user = await users.by_email("Jane@Example.com")
    assert user is not None and user.id == "u1"
    assert await users.by_id("u1") == user  # found by e-mail: known by id too
    assert await users.display("u1") == "Jane Doe"
    assert bp.count("find_user") == 1
    assert bp.count("get_user") == 0
    clock.advance(61)
    await users.by_id("u1")
    assert bp.count("get_user") == 1


async def test_a_miss_warns_once_and_is_cached(caplog: pytest.LogCaptureFixture) -> None:
    bp, users, _ = directory()
    with caplog.at_level(logging.WARNING, logger="sync.people"):
        assert await users.by_email("nobody@example.com") is None
        assert await users.by_email("nobody@example.com") is None
        assert await users.by_email("old@example.com") is None  # deactivated
    assert bp.count("find_user") == 2
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and "no active BigPanda user" in messages[0]


async def test_an_author_not_found_keeps_the_id() -> None:
    bp, users, _ = directory()
    assert await users.display("gone") == "gone"
    assert bp.count("get_user") == 1


async def test_a_refused_scim_is_logged_once_and_not_asked_again_until_the_ttl(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bp, users, clock = directory()
    refused = PermanentError("bigpanda", "SCIM Users API refused (HTTP 403)", status=403)
    bp.fail_next("find_user", refused)
    with caplog.at_level(logging.WARNING, logger="sync.people"):
        assert await users.by_email("jane@example.com") is None
        assert await users.display("u1") == "u1"  # the author keeps the id meanwhile
        assert await users.by_email("other@example.com") is None
    assert (bp.count("find_user"), bp.count("get_user")) == (1, 0)
    assert len(caplog.records) == 1 and "not looked up for 60 s" in caplog.records[0].message
    clock.advance(61)
    user = await users.by_email("jane@example.com")  # the permission was granted since
    assert user is not None and user.id == "u1"


async def test_a_scim_403_is_permanent_not_fatal(
    session: aiohttp.ClientSession, mocked: aioresponses
) -> None:
    """Elsewhere a 403 stops the daemon (the key lacks a role permission); on SCIM it
    only means the users cannot be looked up."""
    mocked.get(SCIM, status=403, payload=bp_error(403, "Forbidden"), repeat=True)
    mocked.get(SCIM_ONE, status=403, payload=bp_error(403, "Forbidden"), repeat=True)
    client = BigPandaClient(session, settings(), FakeClock())
    with pytest.raises(PermanentError, match="User Management") as info:
        await client.find_user("jane@example.com")
    assert not isinstance(info.value, FatalError) and info.value.status == 403
    with pytest.raises(PermanentError, match="User Management"):
        await client.get_user("u1")
    mocked.put(ASSIGNMENT, status=403, payload=bp_error(403, "Forbidden"))
    with pytest.raises(FatalError):
        await client.assign_incident(ENV, INC, "u1")
