"""The BigPanda emulator's users: the SCIM Users API (docs/bigpanda-api.md 4.7).

- ``GET /resources/v2.0/scim/Users`` with ``filter=userName eq "<e-mail>"`` (the only
  filter BigPanda's docs show; ``userName`` compared case-insensitively, as SCIM's
  ``caseExact: false`` says), ``startIndex`` (1-based) and ``count``; no filter lists
  every user. The answer is SCIM **1.1** although the URL says v2.0: ``{"schemas":
  ["urn:scim:schemas:core:1.0"], "totalResults", "itemsPerPage", "startIndex",
  "Resources": [...]}``. Another filter is a 400.
- ``GET /resources/v2.0/scim/Users/{id}``: one user, 404 when unknown.
- Each route is limited to ``scim_rate_limit_per_s`` (2) requests per second, counted as
  the other v2 routes are (:mod:`sync.emulators.bplimits`, shape and scope included).
- Errors are SCIM 1.1's ``{"Errors": [{"description", "code"}]}``.

The seeded organisation (:data:`SEED_USERS`) has the API key's own user, two people
ServiceNow's emulator also knows by e-mail (Abel Tuter; Beth Anglin, whose e-mail two
ServiceNow users share), one person only BigPanda knows (Chen Wu), and one deactivated
user (Dana Reyes, still listed, ``active: false``). ServiceNow's login users (``admin``,
...) have no BigPanda account.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from sync.emulators.bigpanda.model import DEFAULT_USER_ID

#: the schema of every SCIM 1.1 answer
SCIM_SCHEMA = "urn:scim:schemas:core:1.0"
SCIM_USERS = "/resources/v2.0/scim/Users"
#: SCIM routes' own limit (requests per second per route, docs 4.7)
DEFAULT_SCIM_RATE_LIMIT_PER_S = 2.0

_FILTER = re.compile(r'^\s*userName\s+eq\s+"([^"\\]*)"\s*$', re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class User:
    """One user of the emulated organisation."""

    id: str
    email: str
    """Also the ``userName`` (BigPanda logs in by e-mail)."""
    name: str
    active: bool = True

    def assignee(self) -> dict[str, str]:
        """The incident's ``assignee`` / ``assigner`` object (docs 5.1)."""
        return {"user_id": self.id, "name": self.name, "email": self.email}

    def scim(self) -> dict[str, Any]:
        """The SCIM 1.1 user resource."""
        given, _, family = self.name.partition(" ")
        return {
            "schemas": [SCIM_SCHEMA],
            "id": self.id,
            "userName": self.email,
            "displayName": self.name,
            "name": {"formatted": self.name, "givenName": given, "familyName": family},
            "emails": [{"value": self.email, "type": "work", "primary": True}],
            "active": self.active,
            "meta": {"location": f"{SCIM_USERS}/{self.id}"},
        }


SEED_USERS: tuple[User, ...] = (
    User(DEFAULT_USER_ID, "bpsync@emulator.invalid", "bpsync"),
    User("5e1f0b1a2c3d4e5f607182ab", "abel.tuter@example.com", "Abel Tuter"),
    User("5e1f0b1a2c3d4e5f607182ac", "beth.anglin@example.com", "Beth Anglin"),
    User("5e1f0b1a2c3d4e5f607182ad", "chen.wu@example.com", "Chen Wu"),
    User("5e1f0b1a2c3d4e5f607182ae", "dana.reyes@example.com", "Dana Reyes", active=False),
)


def scim_error(status: int, description: str) -> web.Response:
    return web.json_response(
        {"schemas": [SCIM_SCHEMA], "Errors": [{"description": description, "code": str(status)}]},
        status=status,
    )


def _positive(request: web.Request, name: str, default: int) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if value >= 0 else None


def _people(request: web.Request) -> dict[str, User]:
    people: dict[str, User] = request.app[PEOPLE_KEY]
    return people


async def list_users(request: web.Request) -> web.Response:
    people = list(_people(request).values())
    raw_filter = request.query.get("filter")
    if raw_filter is not None:
        match = _FILTER.match(raw_filter)
        if match is None:
            return scim_error(400, f"Unsupported filter: {raw_filter}")
        wanted = match.group(1).lower()
        people = [u for u in people if u.email.lower() == wanted]
    start, count = _positive(request, "startIndex", 1), _positive(request, "count", 100)
    if start is None or count is None:
        return scim_error(400, "startIndex and count must be non-negative integers")
    page = people[max(start, 1) - 1 : max(start, 1) - 1 + count]
    return web.json_response(
        {
            "schemas": [SCIM_SCHEMA],
            "totalResults": len(people),
            "itemsPerPage": len(page),
            "startIndex": max(start, 1),
            "Resources": [u.scim() for u in page],
        }
    )


async def get_user(request: web.Request) -> web.Response:
    user = _people(request).get(request.match_info["user_id"])
    if user is None:
        return scim_error(404, "User not found")
    return web.json_response(user.scim())


PEOPLE_KEY: web.AppKey[dict[str, User]] = web.AppKey("bigpanda_people", dict)


def add_user_routes(router: web.UrlDispatcher) -> None:
    router.add_get(SCIM_USERS, list_users)
    router.add_get(f"{SCIM_USERS}/{{user_id}}", get_user)


__all__ = [
    "DEFAULT_SCIM_RATE_LIMIT_PER_S",
    "PEOPLE_KEY",
    "SCIM_SCHEMA",
    "SCIM_USERS",
    "SEED_USERS",
    "User",
    "add_user_routes",
    "scim_error",
]
