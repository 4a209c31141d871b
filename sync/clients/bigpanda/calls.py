"""What the calls mixed into :class:`~sync.clients.bigpanda.client.BigPandaClient`
(:mod:`~sync.clients.bigpanda.people`, :mod:`~sync.clients.bigpanda.tags`) use of it:
its paced, classified transport."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from sync.clients.bigpanda.paths import Family
from sync.clients.http import Parsed


class Transport(Protocol):
    """What these calls use of the client."""

    async def _request(
        self,
        family: Family,
        method: str,
        template: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        org_token: bool = False,
        conflict_ok: bool = False,
    ) -> Parsed: ...

    @staticmethod
    def _incident_path(template: str, environment_id: str, incident_id: str) -> str: ...


__all__ = ["Transport"]
