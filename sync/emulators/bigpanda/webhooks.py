"""AutoShare to a notifications webhook: what is sent, when, and the retries and DLQ;
the fault switches of :mod:`sync.emulators.delivery` (drop, duplicate, delay, reorder)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from sync.clock import Clock
from sync.emulators.bigpanda.model import Incident
from sync.emulators.bigpanda.state import State
from sync.emulators.delivery import DeliveryFaults

WEBHOOK_TRIGGERS = frozenset(
    {
        "incident#new",
        "incident#updated",
        "incident#reopen",
        "incident#closed",
        "incident#commented",
        "incident#snoozed",
        "incident-tag#upserted",
        "incident-tag#removed",
    }
)
#: comment updates are off by default (docs section 7.2)
DEFAULT_WEBHOOK_TRIGGERS = WEBHOOK_TRIGGERS - {"incident#commented"}
_WEBHOOK_LOG_SIZE = 1000


@dataclass
class WebhookConfig:
    """AutoShare to one notifications-webhook callback (off while ``url`` is None)."""

    url: str | None = None
    envelope: str = "incident"
    """``incident``: ``{"incident": {...}, "trigger", "environment", "sender"}``;
    ``bare``: the incident object itself, with ``event_type``; ``v2``: a Webhook v2
    trigger body from the template bpsync documents (``{"incident_id", "environment_id",
    "trigger"}``)."""
    headers: dict[str, str] = field(default_factory=dict)
    """Custom headers (auth, ``x-bp-*``) sent as they are."""
    triggers: frozenset[str] = DEFAULT_WEBHOOK_TRIGGERS
    environments: frozenset[str] | None = None
    """AutoShare rule: share incidents of these environments (None: all)."""
    share_target: str = "webhook.bpsync"
    retry_interval_s: float = 900.0
    attempts: int = 6
    dlq_after: int = 5
    timeout_s: float = 10.0
    faults: DeliveryFaults = field(default_factory=DeliveryFaults)
    """Test switches (not BigPanda behaviour): drop, duplicate, delay, reorder."""

    def update(self, data: Mapping[str, Any]) -> None:
        """Apply a partial JSON config; ValueError/TypeError for a bad one."""
        unknown = set(data) - {
            "url", "envelope", "headers", "triggers", "environments", "share_target",
            "retry_interval_s", "attempts", "dlq_after", "timeout_s", "faults",
        }  # fmt: skip
        if unknown:
            raise ValueError(f"unknown webhook keys: {sorted(unknown)}")
        if "url" in data:
            self.url = None if data["url"] is None else str(data["url"])
        if "faults" in data:
            self.faults.update(data["faults"])
        if "envelope" in data:
            if data["envelope"] not in {"incident", "bare", "v2"}:
                raise ValueError("envelope must be incident, bare or v2")
            self.envelope = str(data["envelope"])
        if "headers" in data:
            self.headers = {str(k): str(v) for k, v in dict(data["headers"]).items()}
        if "triggers" in data:
            triggers = frozenset(str(t) for t in data["triggers"])
            if triggers - WEBHOOK_TRIGGERS:
                raise ValueError(f"unknown triggers: {sorted(triggers - WEBHOOK_TRIGGERS)}")
            self.triggers = triggers
        if "environments" in data:
            envs = data["environments"]
            self.environments = None if envs is None else frozenset(str(e) for e in envs)
        if "share_target" in data:
            self.share_target = str(data["share_target"])
        for name in ("retry_interval_s", "timeout_s"):
            if name in data:
                setattr(self, name, float(data[name]))
        for name in ("attempts", "dlq_after"):
            if name in data:
                setattr(self, name, max(1, int(data[name])))

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "envelope": self.envelope,
            "headers": dict(self.headers),
            "triggers": sorted(self.triggers),
            "environments": None if self.environments is None else sorted(self.environments),
            "share_target": self.share_target,
            "retry_interval_s": self.retry_interval_s,
            "attempts": self.attempts,
            "dlq_after": self.dlq_after,
            "timeout_s": self.timeout_s,
            "faults": self.faults.to_json(),
        }


class Webhooks:
    """Sends the incident (alerts expanded) to the callback on each trigger.

    Only shared incidents get updates; an ``incident#new`` (or a reopen) of an incident
    in a matching environment shares it (``incident_shared`` activity, ``shared``
    folder). Deliveries retry on status >= 501 and on socket errors, every
    ``retry_interval_s`` on the injected clock, up to ``attempts``; after ``dlq_after``
    failed attempts (or at once for other non-2xx answers) the delivery is in the DLQ;
    when the last attempt fails it is marked ``notified`` (BigPanda support would be).
    """

    def __init__(self, state: State, clock: Clock, config: WebhookConfig) -> None:
        self.state = state
        self.clock = clock
        self.config = config
        self.log: deque[dict[str, Any]] = deque(maxlen=_WEBHOOK_LOG_SIZE)
        self.dlq: list[dict[str, Any]] = []
        self._backlog: list[tuple[dict[str, Any], float]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._running = False
        state.listeners.append(self.on_event)

    def on_event(self, trigger: str, inc: Incident) -> None:
        cfg = self.config
        if cfg.url is None:
            return
        if cfg.environments is not None and not cfg.environments.intersection(inc.environments):
            return
        if trigger in {"incident#new", "incident#reopen"} and not inc.shared:
            first = not any(a.type == "incident_shared" for a in inc.activities)
            inc.shared = True
            self.state.add_activity(
                inc,
                "incident_shared",
                {
                    "share_target": cfg.share_target,
                    "share_auto": True,
                    "escalation_id": self.state.new_id(),
                    "firstTime": first,
                },
            )
            self.state._touch(inc, changed=False)
        if not inc.shared or trigger not in cfg.triggers:
            return
        if trigger == "incident#updated" and inc.snooze is not None:
            return  # updates are suppressed while snoozed (docs section 7.2)
        body = self.state.incident_json(inc, expand_alerts=True)
        env_id = next(iter(inc.environments), None)
        payload: dict[str, Any]
        if cfg.envelope == "bare":
            payload = {**body, "event_type": trigger}
        elif cfg.envelope == "v2":
            payload = {"incident_id": inc.id, "environment_id": env_id, "trigger": trigger}
        else:
            payload = {
                "incident": body,
                "trigger": trigger,
                "environment": env_id,
                "sender": "autoshare@bigpanda.io",
            }
        delivery: dict[str, Any] = {
            "id": self.state.new_id(32),
            "trigger": trigger,
            "incident_id": inc.id,
            "url": cfg.url,
            "payload": payload,
            "attempts": 0,
            "status": None,
            "error": None,
            "result": "pending",
            "notified": False,
        }
        self.log.append(delivery)
        waits = cfg.faults.plan()
        if not waits:
            delivery["result"] = "dropped"
        self._backlog += [(delivery, wait) for wait in waits]
        self._flush()

    def _flush(self) -> None:
        if not self._running:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        backlog, self._backlog = self._backlog, []
        for delivery, wait in backlog:
            task = loop.create_task(self._deliver(delivery, wait))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def start(self, app: web.Application) -> None:
        self._running = True
        self._flush()

    async def stop(self, app: web.Application) -> None:
        self._running = False
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def idle(self) -> None:
        """Wait until every delivery in flight has finished (tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _deliver(self, delivery: dict[str, Any], wait: float = 0.0) -> None:
        cfg = self.config
        if wait:
            await self.clock.sleep(wait)
        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers = {**cfg.headers, "X-BP-Trigger": delivery["trigger"]}
        for attempt in range(1, cfg.attempts + 1):
            delivery["attempts"] = attempt
            retryable = True
            try:
                async with self._session.post(
                    delivery["url"],
                    json=delivery["payload"],
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=cfg.timeout_s),
                ) as resp:
                    delivery["status"] = resp.status
                    await resp.read()
                if 200 <= resp.status < 300:
                    delivery["result"] = "delivered"
                    return
                retryable = resp.status >= 501
                delivery["error"] = f"HTTP {resp.status}"
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                delivery["status"] = None
                delivery["error"] = f"{type(exc).__name__}: {exc}"
            if (attempt >= cfg.dlq_after or not retryable) and delivery not in self.dlq:
                self.dlq.append(delivery)
            if not retryable:
                delivery["result"] = "failed"
                return
            if attempt < cfg.attempts:
                await self.clock.sleep(cfg.retry_interval_s)
        delivery["result"] = "failed"
        delivery["notified"] = True
