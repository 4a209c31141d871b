"""Operator alerts: the notification of a write failed for good, and B14's comment.

(Named so it does not clash with :mod:`sync.runtime.notify`, systemd's readiness.)

Notification
------------
Once per item (when :mod:`sync.executor.delivery` says so): an ERROR log line with both
ids and the reason, the ``notifications`` metric, and a JSON POST to ``retry.notify_url``
when set (its own short-lived HTTP session, bounded by :data:`NOTIFY_TIMEOUT_S`; a
failing notify is logged, never raised).

Error communication (B14) is a step of the write's plan (``on_refused``,
:mod:`sync.followups`): the delivery sends it once the write is refused for good.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import aiohttp

from sync.settings import Settings
from sync.store.base import OutboxItem

# every line the executor logs is on "sync.executor" (log consumers filter on it)
log = logging.getLogger("sync.executor")

#: bound of the notify POST
NOTIFY_TIMEOUT_S = 10.0


class NotificationMetrics(Protocol):
    """The part of :class:`~sync.executor.core.ExecutorMetrics` the alerts report to."""

    def notification(self, kind: str) -> None: ...


def item_extra(item: OutboxItem) -> dict[str, Any]:
    """An outbox item's log fields."""
    return {
        "outbox_id": item.id,
        "kind": item.kind,
        "bp_incident_id": item.bp_incident_id,
        "sn_sys_id": item.sn_sys_id,
        "link_id": item.link_id,
        "attempts": item.attempts,
        "reason": item.last_error,
    }


class Alerts:
    """Tells the operator (log, metric, webhook) and BigPanda (B14) of failed writes."""

    def __init__(
        self,
        settings: Settings,
        environment_of: Callable[[str], Awaitable[str | None]],
        metrics: NotificationMetrics | None,
    ) -> None:
        self._settings = settings
        self._retry = settings.retry
        self._environment_of = environment_of
        self._metrics = metrics
        self.notifications = 0

    async def notify(self, item: OutboxItem, reason: str) -> None:
        """The operator notification: ERROR log, metric, optional POST."""
        self.notifications += 1
        log.error(
            "write failed for good after %d attempt(s): %s",
            item.attempts,
            reason,
            extra={**item_extra(item), "notify": True},
        )
        if self._metrics is not None:
            self._metrics.notification(item.kind)
        url = self._retry.notify_url
        if not url:
            return
        body = {
            "event": "bpsync.write_failed",
            "outbox_id": item.id,
            "kind": item.kind,
            "target": item.target,
            "bp_incident_id": item.bp_incident_id,
            "sn_sys_id": item.sn_sys_id,
            "link_id": item.link_id,
            "attempts": item.attempts,
            "state": item.state.value,
            "reason": reason,
        }
        await _post(url, body)


async def _post(url: str, body: dict[str, Any]) -> None:
    """POST ``body`` to the notify webhook (its own session); failures are logged."""
    try:
        timeout = aiohttp.ClientTimeout(total=NOTIFY_TIMEOUT_S)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(url, json=body) as response,
        ):
            if response.status >= 300:
                log.error("notify_url answered HTTP %d", response.status)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        log.error("notify_url could not be reached: %s", exc)  # noqa: TRY400 - one line
