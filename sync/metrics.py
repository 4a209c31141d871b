"""Prometheus metrics of one daemon, on its own registry.

Each :class:`Metrics` owns a :class:`prometheus_client.CollectorRegistry` (never the
process-global one), so several daemons in one test process do not clash. It is the
executor's and the coordinator's metrics as it is (``action_done``, ``notification``,
``cycle_done``, ``state``, ``backlog``, ``skipped``); the HTTP clients feed it through
``observe_request`` (the ``RequestObserver`` signature of ``sync.clients.base``) and
``observe_throttle``, the daemon through ``set_leader``; ``GET /metrics`` serves
:meth:`Metrics.render`.

Every series carries ``pair``, the sync pair it belongs to (``default`` without
``[[pairs]]``): one :class:`Metrics` per pair, made by :meth:`Metrics.for_pair`, all
feeding one registry. Series (all prefixed ``bpsync_``):

- ``cycles_total{outcome}`` and ``cycle_duration_seconds{outcome}``
- ``actions_total{kind,outcome}`` and ``action_duration_seconds{kind}``
- ``http_requests_total{side,method,endpoint,status}`` and
  ``http_request_duration_seconds{side,method,endpoint}`` (``endpoint`` is the path
  template, ``status`` is ``error`` for a transport failure)
- ``notifications_total{kind}`` (operators notified: B13)
- ``throttled_total{side,family}`` (429s, each sent again after a pause),
  ``skipped_records_total{side,reason}`` (malformed polled records, each once)
- ``changes_total{side,via}`` (changes synced, ``via`` push or poll: a rising poll
  count with push on is a webhook that stopped arriving), ``push_requests_total{side,status}``
- gauges: ``outbox_depth``, ``dead_letters``, ``live_links``,
  ``cursor_lag_seconds{side}``, ``backlog{side}`` (changes polled, not yet synced),
  ``leader`` (1 = this replica writes), ``last_cycle_timestamp_seconds{outcome}``
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

#: the ``Content-Type`` of :meth:`Metrics.render`'s output: the classic text format that
#: ``generate_latest`` writes by default (newer clients label CONTENT_TYPE_LATEST 1.0.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_CYCLE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_ACTION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """Every metric of one daemon; thread-safe (prometheus_client locks per child)."""

    def __init__(self, namespace: str = "bpsync", *, pair: str = "default") -> None:
        self.pair = pair
        """the sync pair this view feeds (every series carries it as label ``pair``)"""
        #: the labelled series of the per-request and per-action feeders, looked up once
        #: (``labels()`` checks and locks on every call; a request is fed twice)
        self._series: dict[tuple[str, ...], tuple[Counter, Histogram]] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ns = namespace
        self.cycles = Counter(
            "cycles", "Sync cycles run, by outcome.", ["pair", "outcome"], namespace=ns, registry=r
        )
        self.cycle_duration = Histogram(
            "cycle_duration_seconds",
            "Duration of one sync cycle, by outcome.",
            ["pair", "outcome"],
            namespace=ns,
            registry=r,
            buckets=_CYCLE_BUCKETS,
        )
        self.last_cycle = Gauge(
            "last_cycle_timestamp_seconds",
            "Unix time the last cycle of each outcome ended.",
            ["pair", "outcome"],
            namespace=ns,
            registry=r,
        )
        self.actions = Counter(
            "actions",
            "Actions executed (writes to either side), by kind and outcome.",
            ["pair", "kind", "outcome"],
            namespace=ns,
            registry=r,
        )
        self.action_duration = Histogram(
            "action_duration_seconds",
            "Duration of one action, by kind.",
            ["pair", "kind"],
            namespace=ns,
            registry=r,
            buckets=_ACTION_BUCKETS,
        )
        self.http_requests = Counter(
            "http_requests",
            "HTTP requests made to the APIs, by side, method, endpoint template and status.",
            ["pair", "side", "method", "endpoint", "status"],
            namespace=ns,
            registry=r,
        )
        self.http_duration = Histogram(
            "http_request_duration_seconds",
            "Duration of HTTP requests to the APIs, by side, method and endpoint template.",
            ["pair", "side", "method", "endpoint"],
            namespace=ns,
            registry=r,
            buckets=_HTTP_BUCKETS,
        )
        self.notifications = Counter(
            "notifications",
            "Operator notifications sent (a write that exhausted its retries), by kind.",
            ["pair", "kind"],
            namespace=ns,
            registry=r,
        )
        self.outbox_depth = Gauge(
            "outbox_depth", "Writes waiting in the outbox.", ["pair"], namespace=ns, registry=r
        )
        self.dead_letters = Gauge(
            "dead_letters", "Writes in the dead-letter queue.", ["pair"], namespace=ns, registry=r
        )
        self.live_links = Gauge(
            "live_links", "Live BigPanda <-> ServiceNow links.", ["pair"], namespace=ns, registry=r
        )
        self.cursor_lag = Gauge(
            "cursor_lag_seconds",
            "How far each side's poll cursor is behind now.",
            ["pair", "side"],
            namespace=ns,
            registry=r,
        )
        self.leader = Gauge(
            "leader",
            "1 when this replica leads this pair (writes), 0 on standby.",
            ["pair"],
            namespace=ns,
            registry=r,
        )
        self.throttled = Counter(
            "throttled",
            "Answers that asked bpsync to slow down (HTTP 429), by side and endpoint family; "
            "each was sent again after a pause, none was lost.",
            ["pair", "side", "family"],
            namespace=ns,
            registry=r,
        )
        self.skipped_records = Counter(
            "skipped_records",
            "Polled records skipped as malformed (each record once per process), by reason.",
            ["pair", "side", "reason"],
            namespace=ns,
            registry=r,
        )
        self.lookup_misses = Counter(
            "lookup_misses",
            "Reference look-ups that found no single record (a name or e-mail without a "
            "match, or a sys_id that cannot be read), by table; the field was left as is.",
            ["pair", "table"],
            namespace=ns,
            registry=r,
        )
        self.changes_total = Counter(
            "changes",
            "Changes of paired incidents synced, by side and how bpsync learnt of them: "
            "push (a webhook) or poll (the poll found what no webhook announced).",
            ["pair", "side", "via"],
            namespace=ns,
            registry=r,
        )
        self._zero_changes()
        self.push_requests = Counter(
            "push_requests",
            "Webhook deliveries received, by side and the HTTP status answered.",
            ["pair", "side", "status"],
            namespace=ns,
            registry=r,
        )
        self.backlog_left = Gauge(
            "backlog",
            "Changes polled but not yet synced (a storm worked through across cycles).",
            ["pair", "side"],
            namespace=ns,
            registry=r,
        )

    def for_pair(self, pair: str) -> Metrics:
        """A view of the same registry whose series carry ``pair`` (one per sync pair)."""
        view = copy.copy(self)
        view.pair = pair
        view._series = {}
        view._zero_changes()
        return view

    def _zero_changes(self) -> None:
        for side in ("bigpanda", "servicenow"):  # 0 from the start: a rate can be taken
            for via in ("push", "poll"):
                self.changes_total.labels(self.pair, side, via)

    # ------------------------------------------------------------------ feeders

    def observe_request(
        self, side: str, method: str, endpoint: str, status: int | None, duration_s: float
    ) -> None:
        """One HTTP request of a client (``status`` None: a transport error)."""
        code = "error" if status is None else str(status)
        key = ("request", side, method, endpoint, code)
        series = self._series.get(key)
        if series is None:
            upper = method.upper()
            series = (
                self.http_requests.labels(self.pair, side, upper, endpoint, code),
                self.http_duration.labels(self.pair, side, upper, endpoint),
            )
            self._series[key] = series
        series[0].inc()
        series[1].observe(max(0.0, duration_s))

    def action_done(self, kind: str, outcome: str, duration_s: float) -> None:
        key = ("action", kind, outcome)
        series = self._series.get(key)
        if series is None:
            series = (
                self.actions.labels(self.pair, kind, outcome),
                self.action_duration.labels(self.pair, kind),
            )
            self._series[key] = series
        series[0].inc()
        series[1].observe(max(0.0, duration_s))

    def cycle_done(self, outcome: str, duration_s: float) -> None:
        self.cycles.labels(self.pair, outcome).inc()
        self.cycle_duration.labels(self.pair, outcome).observe(max(0.0, duration_s))
        self.last_cycle.labels(self.pair, outcome).set(time.time())

    def notification(self, kind: str) -> None:
        self.notifications.labels(self.pair, kind).inc()

    def state(
        self,
        *,
        outbox_depth: int,
        dead_letters: int,
        live_links: int,
        cursor_lag_s: Mapping[str, float],
    ) -> None:
        self.outbox_depth.labels(self.pair).set(outbox_depth)
        self.dead_letters.labels(self.pair).set(dead_letters)
        self.live_links.labels(self.pair).set(live_links)
        for side, lag in cursor_lag_s.items():
            self.cursor_lag.labels(self.pair, str(side)).set(lag)

    def observe_throttle(self, side: str, family: str) -> None:
        self.throttled.labels(self.pair, side, family).inc()

    def skipped(self, side: str, reason: str) -> None:
        self.skipped_records.labels(self.pair, side, reason).inc()

    def lookup_miss(self, table: str) -> None:
        self.lookup_misses.labels(self.pair, table).inc()

    def changes(self, side: str, via: str, count: int) -> None:
        if count:
            self.changes_total.labels(self.pair, side, via).inc(count)

    def push_request(self, side: str, status: int) -> None:
        self.push_requests.labels(self.pair, side, str(status)).inc()

    def backlog(self, side: str, count: int) -> None:
        self.backlog_left.labels(self.pair, side).set(count)

    def set_leader(self, leader: bool) -> None:
        self.leader.labels(self.pair).set(1 if leader else 0)

    # ------------------------------------------------------------------ output

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)


__all__ = ["CONTENT_TYPE", "Metrics"]
