"""Wiring: from :class:`~sync.settings.Settings` to a ready executor and coordinator.

:func:`build_engine` opens the HTTP sessions and the two clients, the link store
(unless one is given), the look-up cache, the executor and the coordinator. The
:class:`Engine` owns what it opened: ``close()`` closes the sessions, then the store.
``sync.runtime.daemon`` and the CLI commands that sync (backfill) use it; the engine
tests build the same objects from fakes instead.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sync.clients.base import BigPandaAPI, ServiceNowAPI
from sync.clock import Clock, SystemClock
from sync.coordinator import Coordinator, CoordinatorMetrics
from sync.errors import FatalError, PermanentError
from sync.executor import Executor, ExecutorMetrics
from sync.lookups import Lookups
from sync.mapping import compile_rules, validate_mapping
from sync.metrics import Metrics
from sync.settings import Settings
from sync.sizes import FieldSizes
from sync.store.base import LinkStore
from sync.tagdefs import ensure_tag_definitions

log = logging.getLogger(__name__)


@dataclass
class Engine:
    """The objects of one running sync, and how to close them."""

    settings: Settings
    store: LinkStore
    servicenow: ServiceNowAPI
    bigpanda: BigPandaAPI
    executor: Executor
    coordinator: Coordinator
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def check_credentials(self) -> None:
        """One authorised call per side; FatalError (refused) or TransientError propagate."""
        await self.servicenow.check_auth()
        await self.bigpanda.check_auth()

    async def prepare(self, *, dry_run: bool = False) -> None:
        """What the sync learns from and sets up in the two systems before its first
        cycle: one WARNING per mapping row it narrows; the BigPanda tags it writes
        defined (a row it cannot honour: ConfigError, start-up stops); the ServiceNow
        field sizes (``sys_dictionary``; where the integration user may not read it,
        the documented defaults, one WARNING). ``dry_run``: nothing is created."""
        for problem in validate_mapping(self.settings):
            log.warning("mapping: %s", problem)
        await ensure_tag_definitions(self.bigpanda, self.settings, dry_run=dry_run)
        try:
            dictionary = await self.servicenow.field_dictionary()
        except (FatalError, PermanentError) as exc:
            dictionary = {}
            log.warning(
                "ServiceNow dictionary (sys_dictionary) not readable, documented field "
                "sizes used (short_description 160, description 4000): %s",
                exc,
            )
        else:
            if not dictionary:
                log.warning(
                    "ServiceNow dictionary (sys_dictionary) shows no rows to this user, "
                    "documented field sizes used (short_description 160, description 4000)"
                )
        sizes = {name: info.max_length for name, info in dictionary.items() if info.max_length}
        self.coordinator.sizes = FieldSizes.from_dictionary(sizes)
        self.coordinator.labels = await self._choice_labels()
        # the mapped reference fields: the only ones bpsync reads or writes by name
        mapped = {rule.field for rule in compile_rules(self.settings)}
        self.coordinator.references = {
            name: info.reference
            for name, info in dictionary.items()
            if name in mapped and info.internal_type == "reference" and info.reference
        }

    async def _choice_labels(self) -> dict[str, dict[str, str]]:
        """label -> value of each field a ``label = true`` row maps, from ``sys_choice``
        (incident's own choices, else those it inherits from task)."""
        out: dict[str, dict[str, str]] = {}
        for row in self.settings.tag_mapping:
            name = row.servicenow_field
            if not row.label or name in out:
                continue
            labels: dict[str, str] = {}
            for table in ("incident", "task"):
                try:
                    choices = await self.servicenow.query(
                        "sys_choice",
                        {"name": table, "element": name, "inactive": "false"},
                        fields=["value", "label"],
                        limit=1000,
                    )
                except PermanentError as exc:
                    log.warning("choices of %s not readable: %s", name, exc)
                    choices = []
                for choice in choices:
                    label, value = str(choice.get("label") or ""), str(choice.get("value") or "")
                    if label and value:
                        labels.setdefault(label, value)
                if labels:
                    break
            if not labels:
                log.warning(
                    "mapping: %s has no choices to show by label; its label row maps nothing",
                    name,
                )
            out[name] = labels
        return out

    async def close(self) -> None:
        """Close the sessions, then the store (each once, errors logged)."""
        for closer in reversed(self.closers):
            try:
                await closer()
            except Exception:  # closing must go on whatever one closer does
                log.exception("error while closing")
        self.closers.clear()


async def build_engine(
    settings: Settings,
    *,
    clock: Clock | None = None,
    store: LinkStore | None = None,
    metrics: Metrics | None = None,
    force: bool = False,
) -> Engine:
    """Sessions, clients, store, executor and coordinator from the settings."""
    from sync.clients.bigpanda import BigPandaClient
    from sync.clients.bigpanda import make_session as make_bp_session
    from sync.clients.servicenow import ServiceNowClient
    from sync.clients.servicenow import make_session as make_sn_session

    clock = clock or SystemClock()
    closers: list[Callable[[], Awaitable[None]]] = []
    if store is None:
        from sync.store import open_store

        store = await open_store(settings.effective_database_url)
    closers.append(store.close)
    observer = metrics.observe_request if metrics is not None else None
    throttle_observer = metrics.observe_throttle if metrics is not None else None
    skip_observer = metrics.skipped if metrics is not None else None
    pacing = settings.pacing.policy()
    try:
        sn_session = make_sn_session(settings.servicenow)
        closers.append(sn_session.close)
        bp_session = make_bp_session(settings.bigpanda)
        closers.append(bp_session.close)
        servicenow = ServiceNowClient(
            sn_session,
            settings.servicenow,
            clock,
            observer=observer,
            pacing=pacing,
            throttle_observer=throttle_observer,
        )
        bigpanda = BigPandaClient(
            bp_session,
            settings.bigpanda,
            clock,
            observer=observer,
            pacing=pacing,
            throttle_observer=throttle_observer,
            skip_observer=skip_observer,
        )
    except BaseException:
        # a client refusing its settings (ConfigError) must not leak what was opened
        for closer in reversed(closers):
            await closer()
        raise
    executor_metrics: ExecutorMetrics | None = metrics
    coordinator_metrics: CoordinatorMetrics | None = metrics
    lookups = Lookups(
        servicenow, clock, on_miss=metrics.lookup_miss if metrics is not None else None
    )
    executor = Executor(
        store,
        servicenow,
        bigpanda,
        settings,
        clock,
        lookups=lookups,
        metrics=executor_metrics,
    )
    coordinator = Coordinator(
        store,
        servicenow,
        bigpanda,
        executor,
        settings,
        clock=clock,
        metrics=coordinator_metrics,
        force=force,
        lookups=lookups,
    )
    return Engine(settings, store, servicenow, bigpanda, executor, coordinator, closers)
