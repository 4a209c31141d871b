"""Black-box calls to the two emulators for the system tests: what a person or a monitoring
tool would do through the vendors' public APIs (docs/bigpanda-api.md, docs/servicenow-api.md).

- BigPanda: alert ingest ``POST /data/v2/alerts`` (Org Token), search / get, incident tags,
  resolve, activities, tag definitions (User API Key).
- ServiceNow: Table API with Basic auth (``bpsync``/``bpsync``).

Every call asserts its HTTP status, so a test fails at the call that went wrong.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

from sync.clock import FakeClock
from sync.emulators import bigpanda as bp_emulator

from .conftest import BP_API_KEY, BP_ORG_TOKEN, DEFAULT_MAPPING, SN_PASSWORD, SN_USER, World

ENV = bp_emulator.DEFAULT_ENVIRONMENT_ID
APP_KEY = "bpsync-system-tests"
V2 = "/resources/v2.0"
#: raw values, references as bare sys_ids (what the sync itself reads)
RAW = {"sysparm_display_value": "false", "sysparm_exclude_reference_link": "true"}

#: the mapping of the behaviour tests: only fields the incident table really has
SYSTEM_MAPPING: list[dict[str, Any]] = DEFAULT_MAPPING
SYSTEM_TAGS = ("impact_level", "service_area", "sn_subcategory")


class Emu:
    """The emulators of one :class:`World`, driven over HTTP."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.http = world.http
        self._bp_auth = {"Authorization": f"Bearer {BP_API_KEY}"}
        token = base64.b64encode(f"{SN_USER}:{SN_PASSWORD}".encode()).decode("ascii")
        self._sn_headers = {"Accept": "application/json", "Authorization": f"Basic {token}"}

    # ------------------------------------------------------------------ BigPanda

    async def _bp(
        self, method: str, path: str, *, expect: int | Sequence[int], **kwargs: Any
    ) -> Any:
        expected = (expect,) if isinstance(expect, int) else tuple(expect)
        async with self.http.request(
            method, self.world.bp_url + path, headers=self._bp_auth, **kwargs
        ) as resp:
            text = await resp.text()
            assert resp.status in expected, f"{method} {path}: HTTP {resp.status} {text}"
            return await resp.json() if text else None

    async def define_tags(self, *names: str) -> None:
        """Text tag definitions (a tag must be defined before it can be set)."""
        definitions = await self._bp("GET", f"{V2}/incidents/tags/definitions", expect=200)
        existing = {d["id"] for d in definitions}
        for name in names:
            if name in existing:
                continue
            await self._bp(
                "POST",
                f"{V2}/incidents/tags/definitions",
                json={"name": name, "type": "Text", "description": "system test"},
                expect=(200, 201),
            )

    async def ingest(self, **alert: Any) -> None:
        """One alert event through ``POST /data/v2/alerts`` with the Org Token."""
        body = {"app_key": APP_KEY, "status": "critical", **alert}
        async with self.http.post(
            self.world.bp_url + "/data/v2/alerts",
            json=body,
            headers={"Authorization": f"Bearer {BP_ORG_TOKEN}"},
        ) as resp:
            assert resp.status in (200, 201, 202, 204), await resp.text()

    async def search(self, query: str | None = None, **params: Any) -> list[dict[str, Any]]:
        """Every incident of the environment matching the BPQL query (all pages)."""
        items: list[dict[str, Any]] = []
        page = 1
        while True:
            args = {"page": page, "page_size": 100, **params}
            if query is not None:
                args["query"] = query
            body = await self._bp(
                "GET", f"{V2}/environments/{ENV}/incidents", params=args, expect=200
            )
            items += body["items"]
            if not body["items"] or page * 100 >= body["total"]:
                return items
            page += 1

    async def incident_for(self, host: str) -> dict[str, Any]:
        """The one incident that holds the alerts of ``host`` (found through search)."""
        found = await self.search(f'host = "{host}"')
        assert len(found) == 1, f"expected one incident for host {host}, found {len(found)}"
        return found[0]

    async def new_incident(self, host: str, **alert: Any) -> str:
        """Ingest a critical alert for ``host``; the id of the incident it opened."""
        await self.ingest(host=host, **alert)
        return str((await self.incident_for(host))["id"])

    async def incident(self, incident_id: str, *, expand: bool = False) -> dict[str, Any]:
        params = {"expand": "alerts"} if expand else None
        body: dict[str, Any] = await self._bp(
            "GET", f"{V2}/environments/{ENV}/incidents/{incident_id}", params=params, expect=200
        )
        return body

    async def tags(self, incident_id: str) -> dict[str, str]:
        incident = await self.incident(incident_id)
        return {t["tag_id"]: t["tag_value"] for t in incident["incident_tags"]}

    async def set_tags(self, incident_id: str, **tags: str) -> None:
        body = [{"tag_id": k, "tag_value": v} for k, v in tags.items()]
        await self._bp(
            "POST", f"{V2}/environments/{ENV}/incidents/{incident_id}/tags", json=body, expect=204
        )

    async def resolve(self, incident_id: str, comment: str = "fixed by hand") -> None:
        await self._bp(
            "POST",
            f"{V2}/environments/{ENV}/incidents/{incident_id}/resolve",
            json={"comments": comment},
            expect=202,
        )

    async def merge(self, destination: str, *sources: str) -> None:
        """Ask for a merge (202: BigPanda applies it after a delay)."""
        await self._bp(
            "POST",
            f"{V2}/environments/{ENV}/incidents/{destination}/merge",
            json={"source_incidents": list(sources), "comment": "same outage"},
            expect=202,
        )

    async def split(self, incident_id: str, *alert_ids: str) -> None:
        """Ask for a split of these alerts into a new incident (202, applied later)."""
        await self._bp(
            "POST",
            f"{V2}/environments/{ENV}/incidents/{incident_id}/split",
            json={"alerts": list(alert_ids), "comment": "two problems"},
            expect=202,
        )

    async def activities(
        self, incident_id: str, types: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        params: list[tuple[str, str]] = [("per_page", "100")]
        params += [("types", t) for t in types or ()]
        body = await self._bp(
            "GET", f"{V2}/incidents/{incident_id}/activities", params=params, expect=200
        )
        items: list[dict[str, Any]] = body["items"]
        return items

    # ------------------------------------------------------------------ ServiceNow

    async def _sn(self, method: str, path: str, *, expect: int, **kwargs: Any) -> Any:
        async with self.http.request(
            method,
            self.world.sn_url + path,
            headers=self._sn_headers,
            **kwargs,
        ) as resp:
            text = await resp.text()
            assert resp.status == expect, f"{method} {path}: HTTP {resp.status} {text}"
            return (await resp.json())["result"] if text else None

    async def sn_create(self, fields: Mapping[str, str], table: str = "incident") -> dict[str, str]:
        result: dict[str, str] = await self._sn(
            "POST", f"/api/now/table/{table}", json=dict(fields), expect=201
        )
        return result

    async def sn_get(self, sys_id: str, table: str = "incident") -> dict[str, str]:
        result: dict[str, str] = await self._sn(
            "GET", f"/api/now/table/{table}/{sys_id}", params=RAW, expect=200
        )
        return result

    async def sn_patch(
        self, sys_id: str, fields: Mapping[str, str], table: str = "incident"
    ) -> dict[str, str]:
        result: dict[str, str] = await self._sn(
            "PATCH", f"/api/now/table/{table}/{sys_id}", json=dict(fields), expect=200
        )
        return result

    async def sn_query(self, query: str, table: str = "incident") -> list[dict[str, str]]:
        result: list[dict[str, str]] = await self._sn(
            "GET",
            f"/api/now/table/{table}",
            params={"sysparm_query": query, **RAW},
            expect=200,
        )
        return result

    async def sn_for(self, bp_incident_id: str) -> list[dict[str, str]]:
        """Every ServiceNow incident correlated with the BigPanda incident, oldest first."""
        return await self.sn_query(f"correlation_id={bp_incident_id}^ORDERBYsys_created_on")

    async def sn_one_for(self, bp_incident_id: str) -> dict[str, str]:
        found = await self.sn_for(bp_incident_id)
        assert len(found) == 1, f"expected one ServiceNow incident, found {len(found)}"
        return found[0]

    async def sn_id(self, table: str, column: str, value: str) -> str:
        """The sys_id of the single row with ``column = value``."""
        rows = await self.sn_query(f"{column}={value}", table=table)
        assert len(rows) == 1, f"{table}.{column}={value}: {len(rows)} rows"
        return rows[0]["sys_id"]

    async def journal(self, sys_id: str, element: str = "work_notes") -> list[str]:
        rows = await self.sn_query(
            f"element_id={sys_id}^element={element}^ORDERBYsys_created_on",
            table="sys_journal_field",
        )
        return [row["value"] for row in rows]

    # ------------------------------------------------------------------ counters

    async def writes(self, side: str) -> int:
        return int((await self.world.stats(side))["writes"])

    async def requests(self, side: str) -> dict[str, int]:
        stats = await self.world.stats(side)
        return dict(stats["requests"])

    async def request_log(
        self, side: str, *, path: str | None = None, method: str | None = None
    ) -> list[dict[str, Any]]:
        """The emulator's request log (``t`` on the emulator's clock, ``status`` 0 for a
        dropped connection), optionally only one ``path`` and/or ``method``."""
        stats = await self.world.control(side, "GET", "stats?log=1")
        return [
            entry
            for entry in stats["log"]
            if (path is None or entry["path"] == path)
            and (method is None or entry["method"] == method)
        ]


def link_value(sn_url: str, number: str, sys_id: str) -> str:
    """The link tag's value (SPEC B1): the number and the URL of the incident."""
    return f"{number} {sn_url}/nav_to.do?uri=incident.do?sys_id={sys_id}"


def critical_incidents(count: int, prefix: str) -> list[dict[str, Any]]:
    """Fixtures for ``POST /_emulator/incidents``: ``count`` active critical BigPanda
    incidents, one alert each on its own host."""
    return [
        {
            "status": "critical",
            "alerts": [
                {
                    "status": "critical",
                    "primary_property": "host",
                    "tags": {"host": f"{prefix}-host-{i:03d}", "check": "cpu"},
                    "description": f"{prefix} incident {i}",
                }
            ],
        }
        for i in range(count)
    ]


async def settle(world: World) -> None:
    """Cycle until a quiet one (``World.settle``); every cycle must have succeeded."""
    await world.settle()
    assert all(r.ok for r in world.reports), [r.error for r in world.reports if not r.ok]


async def quiet(world: World, what: str) -> None:
    """Three more cycles (a second apart on the FakeClock) write nothing: no echo of
    ``what``."""
    assert isinstance(world.clock, FakeClock)
    before = await world.writes()
    for _ in range(3):
        world.clock.advance(1)
        assert (await world.cycle()).ok
    assert await world.writes() == before, what
