"""BigPanda's incident tag and tag definition calls, mixed into
:class:`~sync.clients.bigpanda.client.BigPandaClient` (its transport, pacing and
classification; contract in that module's docstring).

- ``tags``: ``GET .../incidents/{id}/tags`` (tag_id -> value), ``POST .../tags/{tag_id}
  {"tag_value"}`` (upsert one), ``POST .../tags [{"tag_id", "tag_value"}]`` (upsert
  many), ``DELETE .../tags/{tag_id}`` and ``DELETE .../tags`` (all): one family, one pace.
- ``tag_definitions``: ``GET``/``POST /resources/v2.0/incidents/tags/definitions``.
"""

from __future__ import annotations

from collections.abc import Mapping

from sync.clients.base import BPTagDefinition
from sync.clients.bigpanda.calls import Transport
from sync.clients.bigpanda.parsing import _items, _text, parse_tag_definition
from sync.clients.bigpanda.paths import (
    SIDE,
    TAG_DEFINITIONS_PATH,
    TAG_PATH,
    TAGS_PATH,
    Family,
    _segment,
)
from sync.errors import PermanentError


class TagCalls:
    """Incident tags and tag definitions (see the module docstring)."""

    async def get_tags(self: Transport, environment_id: str, incident_id: str) -> dict[str, str]:
        """``GET .../tags``: tag_id -> value."""
        path = self._incident_path(TAGS_PATH, environment_id, incident_id)
        parsed = await self._request(Family.TAGS, "GET", TAGS_PATH, path)
        tags: dict[str, str] = {}
        for item in _items(parsed.body, "incident tags"):
            if not isinstance(item, Mapping) or item.get("tag_id") is None:
                raise PermanentError(SIDE, "unexpected incident tag shape: missing tag_id")
            tags[str(item["tag_id"])] = _text(item.get("tag_value")) or ""
        return tags

    async def set_tag(
        self: Transport, environment_id: str, incident_id: str, tag_id: str, value: str
    ) -> None:
        """``POST .../tags/{tag_id} {"tag_value"}`` (upsert)."""
        path = self._incident_path(TAGS_PATH, environment_id, incident_id)
        path += "/" + _segment(tag_id, "tag id")
        await self._request(Family.TAGS, "POST", TAG_PATH, path, json_body={"tag_value": value})

    async def set_tags(
        self: Transport, environment_id: str, incident_id: str, values: Mapping[str, str]
    ) -> None:
        """``POST .../tags`` with ``[{"tag_id", "tag_value"}]`` (upsert many); no call for {}."""
        if not values:
            return
        path = self._incident_path(TAGS_PATH, environment_id, incident_id)
        body = [{"tag_id": tag_id, "tag_value": value} for tag_id, value in values.items()]
        await self._request(Family.TAGS, "POST", TAGS_PATH, path, json_body=body)

    async def delete_tag(
        self: Transport, environment_id: str, incident_id: str, tag_id: str
    ) -> None:
        path = self._incident_path(TAGS_PATH, environment_id, incident_id)
        path += "/" + _segment(tag_id, "tag id")
        await self._request(Family.TAGS, "DELETE", TAG_PATH, path)

    async def delete_tags(self: Transport, environment_id: str, incident_id: str) -> None:
        """``DELETE .../tags``: every tag of the incident."""
        path = self._incident_path(TAGS_PATH, environment_id, incident_id)
        await self._request(Family.TAGS, "DELETE", TAGS_PATH, path)

    # ------------------------------------------------------------------ tag definitions
    async def list_tag_definitions(
        self: Transport, *, active: bool | None = None, tag_type: str | None = None
    ) -> list[BPTagDefinition]:
        params: dict[str, str] = {}
        if active is not None:
            params["active"] = "true" if active else "false"
        if tag_type is not None:
            params["type"] = tag_type
        parsed = await self._request(
            Family.TAG_DEFINITIONS,
            "GET",
            TAG_DEFINITIONS_PATH,
            TAG_DEFINITIONS_PATH,
            params=params or None,
        )
        return [parse_tag_definition(item) for item in _items(parsed.body, "tag definitions")]

    async def create_tag_definition(
        self: Transport,
        name: str,
        *,
        tag_type: str = "Text",
        description: str = "",
        active: bool = True,
    ) -> BPTagDefinition:
        """``POST /incidents/tags/definitions`` (for set-up and tests: the link tag)."""
        body = {"name": name, "type": tag_type, "description": description, "active": active}
        parsed = await self._request(
            Family.TAG_DEFINITIONS,
            "POST",
            TAG_DEFINITIONS_PATH,
            TAG_DEFINITIONS_PATH,
            json_body=body,
        )
        if isinstance(parsed.body, Mapping) and parsed.body.get("id"):
            return parse_tag_definition(parsed.body)
        return BPTagDefinition(id=name, name=name, type=tag_type, active=active)


__all__ = ["TagCalls"]
