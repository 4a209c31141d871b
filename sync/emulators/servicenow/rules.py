"""The "business rule" of push mode: an after insert/update rule on ``incident`` that POSTs
``{"table", "sys_id", "sys_mod_count", "sys_updated_on"}`` to a URL, as the rule bpsync
ships in ``config/servicenow/`` does (an outbound REST message sent asynchronously).

Off until a URL is configured: ``GET /_emulator/business_rule`` shows the config and
the recent ``deliveries``; ``POST /_emulator/business_rule`` changes it (a partial JSON
object, 400 naming a bad key):

- ``url`` (None: off), ``headers`` (sent as given, e.g. ``Authorization: Bearer ...``);
- ``when``: ``["insert", "update"]`` (default both);
- ``only_correlated`` (default true): only incidents whose ``correlation_id`` is set,
  the shipped rule's condition;
- ``timeout_s`` (default 10): one attempt, no retry (``executeAsync`` of an outbound
  REST message; a lost call is the poll's to find);
- ``faults``: drop, duplicate, delay, reorder (:mod:`sync.emulators.delivery`).

It runs like a business rule: after the write is committed, whatever wrote it (the
Table API, here), and not for an update that changed nothing (no new ``sys_mod_count``).
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from sync.clock import Clock
from sync.emulators.control import Handler
from sync.emulators.delivery import DeliveryFaults
from sync.emulators.servicenow.state import InstanceState

_LOG_SIZE = 1000
_WHEN = frozenset({"insert", "update"})


@dataclass
class RuleConfig:
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    when: frozenset[str] = _WHEN
    only_correlated: bool = True
    timeout_s: float = 10.0
    faults: DeliveryFaults = field(default_factory=DeliveryFaults)

    def update(self, data: Mapping[str, Any]) -> None:
        """Apply a partial JSON config; ValueError/TypeError for a bad one."""
        if not isinstance(data, Mapping):
            raise TypeError("the business rule config must be a JSON object")
        unknown = set(data) - {"url", "headers", "when", "only_correlated", "timeout_s", "faults"}
        if unknown:
            raise ValueError(f"unknown business rule keys: {sorted(unknown)}")
        if "url" in data:
            self.url = None if data["url"] is None else str(data["url"])
        if "headers" in data:
            self.headers = {str(k): str(v) for k, v in dict(data["headers"]).items()}
        if "when" in data:
            when = frozenset(str(w) for w in data["when"])
            if when - _WHEN:
                raise ValueError(f"when: {sorted(when - _WHEN)} (insert and/or update)")
            self.when = when
        if "only_correlated" in data:
            self.only_correlated = bool(data["only_correlated"])
        if "timeout_s" in data:
            self.timeout_s = float(data["timeout_s"])
        if "faults" in data:
            self.faults.update(data["faults"])

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "headers": dict(self.headers),
            "when": sorted(self.when),
            "only_correlated": self.only_correlated,
            "timeout_s": self.timeout_s,
            "faults": self.faults.to_json(),
        }


class BusinessRule:
    """The rule of one emulator: a middleware sees each incident write commit."""

    def __init__(self, state: InstanceState, clock: Clock) -> None:
        self.state = state
        self.clock = clock
        self.config = RuleConfig()
        self.log: deque[dict[str, Any]] = deque(maxlen=_LOG_SIZE)
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        table = request.match_info.get("table")
        if self.config.url is None or table != "incident" or request.method in ("GET", "HEAD"):
            return await handler(request)
        rows = self.state.tables.get("incident", {})
        sys_id = request.match_info.get("sys_id")
        before = rows.get(sys_id, {}).get("sys_mod_count") if sys_id else None
        response = await handler(request)
        if response.status not in (200, 201):
            return response
        if sys_id is None:  # an insert: its Location names the new record
            sys_id = response.headers.get("Location", "").rstrip("/").rsplit("/", 1)[-1]
        row = rows.get(sys_id)
        if row is None or (before is not None and row.get("sys_mod_count") == before):
            return response  # deleted, or an update that changed nothing
        self.fire("update" if before is not None else "insert", row)
        return response

    def fire(self, operation: str, row: Mapping[str, str]) -> None:
        cfg = self.config
        if cfg.url is None or operation not in cfg.when:
            return
        if cfg.only_correlated and not row.get("correlation_id"):
            return
        delivery: dict[str, Any] = {
            "operation": operation,
            "url": cfg.url,
            "payload": {
                "table": "incident",
                "sys_id": row["sys_id"],
                "sys_mod_count": row.get("sys_mod_count", "0"),
                "sys_updated_on": row.get("sys_updated_on", ""),
            },
            "status": None,
            "error": None,
            "result": "pending",
        }
        self.log.append(delivery)
        waits = cfg.faults.plan()
        if not waits:
            delivery["result"] = "dropped"
        loop = asyncio.get_running_loop()
        for wait in waits:
            task = loop.create_task(self._send(delivery, wait))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, delivery: dict[str, Any], wait: float) -> None:
        cfg = self.config
        if wait:
            await self.clock.sleep(wait)
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.post(
                delivery["url"],
                json=delivery["payload"],
                headers=cfg.headers,
                timeout=aiohttp.ClientTimeout(total=cfg.timeout_s),
            ) as resp:
                delivery["status"] = resp.status
                await resp.read()
            delivery["result"] = "delivered" if 200 <= resp.status < 300 else "failed"
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            delivery["error"] = f"{type(exc).__name__}: {exc}"
            delivery["result"] = "failed"

    async def idle(self) -> None:
        """Wait until every delivery in flight has finished (tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def stop(self, app: web.Application) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def handlers(self) -> tuple[Handler, Handler]:
        async def get_rule(request: web.Request) -> web.Response:
            return web.json_response(
                {"config": self.config.to_json(), "deliveries": list(self.log)[-100:]}
            )

        async def set_rule(request: web.Request) -> web.Response:
            try:
                self.config.update(await request.json())
            except (json.JSONDecodeError, ValueError, TypeError) as exc:
                return web.json_response({"error": str(exc)}, status=400)
            return web.json_response({"config": self.config.to_json()})

        return get_rule, set_rule


__all__ = ["BusinessRule", "RuleConfig"]
