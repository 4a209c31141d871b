"""The BigPanda emulator's SCIM Users API (docs/bigpanda-api.md 4.7) over loopback HTTP,
and the assignee it puts on an incident."""

from __future__ import annotations

from typing import Any

from sync.emulators.bigpanda.users import SEED_USERS

from .test_bigpanda_emulator import ENV, V2, Emu, emu, emu_factory

__all__ = ["emu", "emu_factory"]  # the fixtures, shared with the emulator's main tests

USERS = f"{V2}/scim/Users"
ABEL = next(u for u in SEED_USERS if u.email == "abel.tuter@example.com")
DANA = next(u for u in SEED_USERS if u.email == "dana.reyes@example.com")


async def test_filter_by_user_name_answers_a_scim_1_1_list(emu: Emu) -> None:
    r = await emu.get(USERS, params={"filter": 'userName eq "Abel.Tuter@EXAMPLE.com"'})
    assert r.status == 200
    assert r.body["schemas"] == ["urn:scim:schemas:core:1.0"]
    assert (r.body["totalResults"], r.body["itemsPerPage"], r.body["startIndex"]) == (1, 1, 1)
    [user] = r.body["Resources"]
    assert user["id"] == ABEL.id and user["userName"] == "abel.tuter@example.com"
    assert user["displayName"] == "Abel Tuter" and user["active"] is True
    assert user["emails"] == [{"value": "abel.tuter@example.com", "type": "work", "primary": True}]
    none = await emu.get(USERS, params={"filter": 'userName eq "nobody@example.com"'})
    assert (none.status, none.body["totalResults"], none.body["Resources"]) == (200, 0, [])


async def test_the_seeded_organisation_lists_a_deactivated_user(emu: Emu) -> None:
    r = await emu.get(USERS)
    assert r.body["totalResults"] == len(SEED_USERS)
    by_name = {u["userName"]: u for u in r.body["Resources"]}
    assert by_name[DANA.email]["active"] is False
    page = await emu.get(USERS, params={"startIndex": "2", "count": "2"})
    assert [u["id"] for u in page.body["Resources"]] == [u.id for u in SEED_USERS[1:3]]
    assert (page.body["startIndex"], page.body["itemsPerPage"]) == (2, 2)


async def test_one_user_and_scim_errors(emu: Emu) -> None:
    r = await emu.get(f"{USERS}/{ABEL.id}")
    assert (r.status, r.body["id"]) == (200, ABEL.id)
    missing = await emu.get(f"{USERS}/000000000000000000000000")
    assert missing.status == 404
    assert missing.body["Errors"] == [{"description": "User not found", "code": "404"}]
    bad = await emu.get(USERS, params={"filter": 'emails co "example"'})
    assert bad.status == 400 and "Unsupported filter" in bad.body["Errors"][0]["description"]
    assert (await emu.get(USERS, token="BPUwrong")).status == 401


async def test_two_requests_per_route_per_second(emu_factory: Any) -> None:
    emu: Emu = await emu_factory(rate_limit_per_s=5.0)
    statuses = [(await emu.get(USERS)).status for _ in range(3)]
    assert statuses == [200, 200, 429]
    # the other SCIM route and the incident routes have their own budgets
    assert (await emu.get(f"{USERS}/{ABEL.id}")).status == 200
    assert (await emu.get(f"{ENV}/incidents")).status == 200
    emu.clock.advance(0.5)
    assert (await emu.get(USERS)).status == 200
    assert (await emu.get(USERS)).status == 429
    async with emu.http.post(
        f"{emu.url}/_emulator/config", json={"scim_rate_limit_per_s": 10}
    ) as r:
        assert r.status == 200
        assert (await r.json())["scim_rate_limit_per_s"] == 10.0


async def test_an_assigned_incident_names_the_seeded_user(emu: Emu) -> None:
    await emu.alert(host="db-1", check="cpu")
    [incident] = await emu.incidents()
    path = f"{ENV}/incidents/{incident['id']}/assignment"
    assert (await emu.call("PUT", path, json={"assignee": ABEL.id})).status == 204
    [incident] = await emu.incidents()
    assert incident["assignee"] == {
        "user_id": ABEL.id,
        "name": "Abel Tuter",
        "email": "abel.tuter@example.com",
    }
    assert "assigned" in incident["folders"]
