"""``bpsync demo``: both emulators, an embedded SQLite link store, sample incidents, the
sync engine and a live view of the pairs, in one process.

What runs:

- the ServiceNow and BigPanda emulators (:mod:`sync.emulators`) on 8081 / 8082 (any
  free port when one is taken), with their default credentials;
- sample incidents: the first incidents of the ServiceNow event-log sample
  (:mod:`sync.workload`) become BigPanda alerts ingested through the emulator's alert
  rules (one incident each), tagged ``priority`` (from the log's urgency) and
  ``category``;
- the engine (:func:`sync.engine.build_engine`, the daemon's coordinator and executor)
  running one cycle every ``poll_interval`` against a fresh SQLite file in ``state_dir``;
- "a person" who every ``change_interval`` seconds changes something on either side: a
  BigPanda tag, the next version of the incident's ServiceNow history (urgency, state,
  and at the end a resolve), a BigPanda resolve, or a new alert;
- a live table of the linked pairs (``live``) or plain log lines.

The mapping (:data:`DEMO_TAG_MAPPING`): BigPanda tag ``priority`` (P1-P3) <-> ServiceNow
``urgency`` (1-3), tag ``category`` <-> field ``category``; resolves go both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from sync.constants import SNState
from sync.engine import Engine
from sync.model import Link, LinkState
from sync.settings import Settings, load_settings
from sync.workload import IncidentHistory, load_histories

log = logging.getLogger("sync.demo")

SN_USER, SN_PASSWORD = "bpsync", "bpsync"
#: the ServiceNow user "the person" edits as (not bpsync's own user)
SN_PERSON = "admin"
APP_KEY = "bpsync-demo"

DEMO_TAG_MAPPING: list[dict[str, Any]] = [
    {
        "bigpanda_tag": "priority",
        "servicenow_field": "urgency",
        "direction": "both",
        "value_map": {"P1": "1", "P2": "2", "P3": "3"},
    },
    {"bigpanda_tag": "category", "servicenow_field": "category", "direction": "both"},
]

_SN_STATES = {str(int(s)): s.name.replace("_", " ").title() for s in SNState}  # "6" -> "Resolved"


@dataclass
class DemoOptions:
    duration: float | None = None
    """Stop by itself after this many seconds (None: until Ctrl-C)."""
    live: bool = True
    poll_interval: float = 1.5
    change_interval: float = 3.0
    incidents: int = 6
    state_dir: Path = Path("./var/demo")
    host: str = "127.0.0.1"
    servicenow_port: int = 8081
    bigpanda_port: int = 8082
    seed: int = 7


@dataclass
class DemoResult:
    cycles: int = 0
    failed_cycles: int = 0
    changes: int = 0
    actions: int = 0
    linked: int = 0
    """Links with a ServiceNow incident (linked or resolved) at the end."""
    pairs: list[dict[str, str]] = field(default_factory=list)
    disagreeing: list[str] = field(default_factory=list)
    """BigPanda ids of linked pairs whose mapped values differ at the end (none, or the
    demo shows something the sync did not do)."""


@dataclass
class _Pair:
    bp_id: str
    history: IncidentHistory | None
    next_version: int = 1


class _ActionLog(logging.Handler):
    """Keeps the executor's action lines (kind, outcome, incident) and warnings."""

    def __init__(self, on_event: Callable[[str], None]) -> None:
        super().__init__(logging.INFO)
        self.last: dict[str, tuple[str, datetime]] = {}
        self.count = 0
        self._on_event = on_event

    def emit(self, record: logging.LogRecord) -> None:
        kind = getattr(record, "kind", None)
        outcome = getattr(record, "outcome", None)
        bp_id = getattr(record, "bp_incident_id", None)
        if record.name == "sync.executor" and kind and outcome and bp_id:
            self.count += 1
            what = f"{kind} {outcome}"
            self.last[str(bp_id)] = (what, datetime.now(UTC))
            self._on_event(f"bpsync: {what} ({str(bp_id)[-6:]})")
        elif record.levelno >= logging.WARNING:
            self._on_event(f"{record.levelname.lower()}: {record.getMessage()}")


@contextlib.asynccontextmanager
async def _serve(app: web.Application, host: str, port: int) -> AsyncIterator[str]:
    """Serve on ``port``, or on any free port when it is taken."""
    from sync.emulators.control import serve_app

    try:
        async with serve_app(app, host, port) as url:
            yield url
            return
    except OSError:
        if port == 0:
            raise
    async with serve_app(app, host, 0) as url:
        yield url


class Demo:
    """One demo run (see the module docstring)."""

    def __init__(self, options: DemoOptions, *, console: Console | None = None) -> None:
        self.options = options
        self.console = console or Console()
        self.result = DemoResult()
        self.events: deque[str] = deque(maxlen=8)
        self._stop = asyncio.Event()
        self._random = random.Random(options.seed)
        self._pairs: dict[str, _Pair] = {}
        self._histories: list[IncidentHistory] = []
        self._step = 0
        self._sn_url = self._bp_url = ""
        self._env_id = ""
        self._engine: Engine | None = None
        self._sn_state: Any = None
        self._bp_state: Any = None
        self._actions = _ActionLog(self._event)
        self._started = time.monotonic()

    def request_stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------ events

    def _event(self, text: str) -> None:
        stamp = datetime.now(UTC).strftime("%H:%M:%S")
        self.events.append(f"{stamp}  {text}")
        if not self.options.live and not text.startswith(("bpsync:", "warning", "error")):
            log.info("%s", text)

    # ------------------------------------------------------------------ the run

    async def run(self) -> DemoResult:
        from sync.emulators import bigpanda as bp_emulator
        from sync.emulators import servicenow as sn_emulator

        opts = self.options
        sn_app = sn_emulator.create_app(seed=opts.seed)
        bp_app = bp_emulator.create_app(seed=opts.seed)
        self._sn_state = sn_app[sn_emulator.STATE_KEY]
        self._bp_state = bp_app[bp_emulator.STATE_KEY]
        self._env_id = bp_emulator.DEFAULT_ENVIRONMENT_ID
        root = logging.getLogger()
        level = root.level
        root.addHandler(self._actions)
        root.setLevel(min(level, logging.INFO) if level else logging.INFO)
        try:
            async with (
                _serve(sn_app, opts.host, opts.servicenow_port) as sn_url,
                _serve(bp_app, opts.host, opts.bigpanda_port) as bp_url,
            ):
                self._sn_url, self._bp_url = sn_url, bp_url
                await self._run_with(self._settings())
        finally:
            root.removeHandler(self._actions)
            root.setLevel(level)
        return self.result

    def _settings(self) -> Settings:
        opts = self.options
        state_dir = opts.state_dir
        db = state_dir / "bpsync.db"
        overrides: dict[str, Any] = {
            "servicenow.url": self._sn_url,
            "servicenow.username": SN_USER,
            "servicenow.password": SN_PASSWORD,
            "bigpanda.url": self._bp_url,
            "bigpanda.ui_url": self._bp_url,
            "bigpanda.api_key": "BPUbpsync-emulator",
            "bigpanda.bearer_token": "bpsync-org-token",
            "bigpanda.environments": [self._env_id],
            "tag_mapping": DEMO_TAG_MAPPING,
            "state_dir": str(state_dir),
            "database_url": f"sqlite+aiosqlite:///{db.as_posix()}",
            "poll_interval": opts.poll_interval,
            "retry.interval": 5.0,
            "log_format": "text",
        }
        return load_settings(None, overrides, env_file=None)

    async def _run_with(self, settings: Settings) -> None:
        from sync.engine import build_engine
        from sync.store import upgrade_database

        opts = self.options
        for stale in opts.state_dir.glob("bpsync.db*"):  # the demo's own, from a last run
            stale.unlink()
        opts.state_dir.mkdir(parents=True, exist_ok=True)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        await upgrade_database(settings.effective_database_url)
        if "category" not in self._bp_state.tag_definitions:
            self._bp_state.define_tag("category", description="Incident category (bpsync demo)")
        self._histories = load_histories(limit=max(opts.incidents * 4, 20))
        for _ in range(opts.incidents):
            self._new_incident(quiet=True)
        engine = await build_engine(settings)
        self._engine = engine
        try:
            await engine.check_credentials()
            await engine.prepare()
            self._event(f"{len(self._pairs)} BigPanda incidents loaded from the event-log sample")
            tasks = [
                asyncio.create_task(self._sync_loop(engine), name="demo-sync"),
                asyncio.create_task(self._change_loop(), name="demo-changes"),
            ]
            try:
                if opts.live:
                    await self._live_view(engine)
                else:
                    self.console.print(self.banner())
                    await self._wait_for_stop()
            finally:
                self._stop.set()
                await self._finish(tasks)
            await self._settle(engine)
            pairs = await self._rows(engine)
            self.result.pairs = pairs
            self.result.linked = sum(1 for p in pairs if p["ServiceNow"])
            self.result.actions = self._actions.count
            if not opts.live:
                self.console.print(self._table(pairs))
        finally:
            await engine.close()

    async def _settle(self, engine: Engine, max_cycles: int = 8) -> None:
        """After the last edit, cycle until one has nothing to do: the closing table
        shows what bpsync made of every edit, not an edit still on its way."""
        for _ in range(max_cycles):
            report = await engine.coordinator.run_cycle()
            self.result.cycles += 1
            if not report.ok:
                self.result.failed_cycles += 1
            elif report.actions == 0:
                return

    def _agrees(self, link: Link) -> bool:
        """Do both sides hold corresponding values for every row of the mapping?"""
        bp = self._bp_state.incidents.get(link.bp_incident_id)
        sn = self._sn_state.tables["incident"].get(link.sn_sys_id or "")
        if bp is None or sn is None:
            return False
        priority = bp.tags["priority"].value if "priority" in bp.tags else None
        category = bp.tags["category"].value if "category" in bp.tags else None
        levels: dict[str, str] = DEMO_TAG_MAPPING[0]["value_map"]
        urgency_agrees = levels.get(priority or "") == sn.get("urgency")
        return bool(urgency_agrees and (category or "") == sn.get("category", ""))

    async def _wait_for_stop(self) -> None:
        duration = self.options.duration
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=duration)

    async def _finish(self, tasks: list[asyncio.Task[None]]) -> None:
        """Let the cycle in flight finish its writes (bounded), then stop."""
        done, pending = await asyncio.wait(tasks, timeout=8.0)
        for task in pending:
            task.cancel()
        for task in [*done, *pending]:
            with contextlib.suppress(asyncio.CancelledError):
                exc = None if task.cancelled() else task.exception()
                if exc is not None:
                    log.error("demo task %s failed: %s", task.get_name(), exc)
        if pending:
            await asyncio.wait(pending, timeout=2.0)

    # ------------------------------------------------------------------ loops

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopped; False when the demo is stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=max(0.0, seconds))
        return not self._stop.is_set()

    async def _sync_loop(self, engine: Engine) -> None:
        interval = self.options.poll_interval
        while not self._stop.is_set():
            started = time.monotonic()
            report = await engine.coordinator.run_cycle()
            self.result.cycles += 1
            if not report.ok:
                self.result.failed_cycles += 1
                self._event(f"cycle failed: {report.error}")
            if not await self._sleep(interval - (time.monotonic() - started)):
                return

    async def _change_loop(self) -> None:
        # let the first creates happen before anybody edits
        if not await self._sleep(self.options.change_interval):
            return
        while not self._stop.is_set():
            try:
                await self._change()
            except Exception as exc:  # noqa: BLE001 - a refused demo edit is shown, not fatal
                self._event(f"edit failed: {type(exc).__name__}: {exc}")
            if not await self._sleep(self.options.change_interval):
                return

    # ------------------------------------------------------------------ "a person"

    def _new_incident(self, *, quiet: bool = False) -> None:
        if not self._histories:
            return
        history = self._histories.pop(0)
        first = history.versions[0] if history.versions else None
        fields = dict(first.fields) if first else {}
        urgency = fields.get("urgency") or "3"
        category = fields.get("category") or "Inquiry"
        alert = {
            "app_key": APP_KEY,
            "status": "critical" if urgency == "1" else "warning",
            "host": f"{history.number.lower()}-host",
            "check": fields.get("subcategory") or "health",
            "service": category,
            "description": f"Replayed from the ServiceNow event log ({history.number})",
        }
        result = self._bp_state.ingest_alert(alert)
        if result.incident_id is None:
            return
        tags = {"priority": f"P{urgency}" if urgency in {"1", "2", "3"} else "P3"}
        tags["category"] = category
        self._bp_state.set_tags(result.incident_id, tags, name="demo", email="", by=None)
        self._pairs[result.incident_id] = _Pair(result.incident_id, history)
        if not quiet:
            self._event(f"BigPanda: new alert -> incident {result.incident_id[-6:]} ({tags})")
        self.result.changes += 0 if quiet else 1

    async def _linked(self) -> list[tuple[Link, _Pair]]:
        assert self._engine is not None
        links = await self._engine.store.list_links([LinkState.LINKED], limit=500)
        out = []
        for link in links:
            pair = self._pairs.get(link.bp_incident_id)
            bp = self._bp_state.incidents.get(link.bp_incident_id)
            if pair is not None and bp is not None and bp.active and link.sn_sys_id:
                out.append((link, pair))
        return out

    async def _change(self) -> None:
        steps = ["bp_tag", "sn_version", "bp_new", "sn_version", "bp_resolve", "bp_category"]
        step = steps[self._step % len(steps)]
        self._step += 1
        if step == "bp_new":
            self._new_incident()
            return
        linked = await self._linked()
        if not linked:
            self._new_incident()
            return
        link, pair = self._random.choice(linked)
        short = link.bp_incident_id[-6:]
        if step == "bp_tag":
            old = self._bp_state.incidents[link.bp_incident_id].tags.get("priority")
            now = old.value if old is not None else "P3"
            new = {"P1": "P2", "P2": "P3", "P3": "P1"}.get(now, "P2")
            self._bp_state.set_tags(link.bp_incident_id, {"priority": new}, name="demo", by=None)
            self._event(f"BigPanda: priority of {short} {now} -> {new} (expect urgency)")
        elif step == "bp_category":
            new = self._random.choice(["network", "database", "software", "hardware"])
            self._bp_state.set_tags(link.bp_incident_id, {"category": new}, name="demo", by=None)
            self._event(f"BigPanda: category of {short} -> {new}")
        elif step == "bp_resolve":
            self._bp_state.resolve(link.bp_incident_id, "fixed (demo)", by=None)
            self._event(f"BigPanda: {short} resolved (expect ServiceNow Resolved)")
        else:
            await self._servicenow_edit(link, pair)
        self.result.changes += 1

    async def _servicenow_edit(self, link: Link, pair: _Pair) -> None:
        """The next version of the incident's event-log history, or a field edit."""
        assert link.sn_sys_id is not None
        user = self._sn_state.user(SN_PERSON)
        history = pair.history
        if history is not None and pair.next_version < len(history.versions):
            version = history.versions[pair.next_version]
            pair.next_version += 1
            body = version.patch()
            self._sn_state.update("incident", link.sn_sys_id, body, user)
            label = _SN_STATES.get(body.get("state", ""), body.get("state", "?"))
            self._event(
                f"ServiceNow: {link.sn_number} -> {label}, urgency {body.get('urgency', '-')} "
                f"(event log {history.number})"
            )
            return
        row = self._sn_state.tables["incident"].get(link.sn_sys_id, {})
        new = {"1": "2", "2": "3", "3": "1"}.get(row.get("urgency", "3"), "2")
        self._sn_state.update("incident", link.sn_sys_id, {"urgency": new}, user)
        self._event(f"ServiceNow: urgency of {link.sn_number} -> {new} (expect priority)")

    # ------------------------------------------------------------------ the view

    def banner(self) -> Panel:
        sn, bp, env = self._sn_url, self._bp_url, self._env_id
        db = (self.options.state_dir / "bpsync.db").as_posix()
        lines = [
            "[bold]bpsync demo[/]: two local emulators, the sync engine, and a person who "
            "edits incidents on both sides.",
            "Mapping: BigPanda tag [cyan]priority[/] P1-P3 <-> ServiceNow [cyan]urgency[/] 1-3; "
            "tag [cyan]category[/] <-> [cyan]category[/]; resolves go both ways.",
            "",
            f"ServiceNow emulator  {sn}   user {SN_USER} / password {SN_PASSWORD}",
            f"  curl -u {SN_USER}:{SN_PASSWORD} '{sn}/api/now/table/incident?"
            "sysparm_query=correlation_idISNOTEMPTY&sysparm_fields=number,state,urgency,category'",
            f"BigPanda emulator    {bp}   API key BPUbpsync-emulator, org token bpsync-org-token",
            f"  curl -H 'Authorization: Bearer BPUbpsync-emulator' "
            f"'{bp}/resources/v2.0/environments/{env}/incidents'",
            f"Link store           {db}",
            f"  BPSYNC_DATABASE_URL=sqlite+aiosqlite:///{db} bpsync links list",
            "",
            f"A cycle every {self.options.poll_interval:g} s; an edit every "
            f"{self.options.change_interval:g} s. Ctrl-C stops.",
        ]
        return Panel(Text.from_markup("\n".join(lines)), title="bpsync demo", expand=False)

    async def _rows(self, engine: Engine) -> list[dict[str, str]]:
        links = await engine.store.list_links(
            [LinkState.PENDING, LinkState.LINKED, LinkState.RESOLVED], limit=30
        )
        rows = []
        self.result.disagreeing = [
            link.bp_incident_id
            for link in links
            if link.state == LinkState.LINKED and not self._agrees(link)
        ]
        for link in links:
            bp = self._bp_state.incidents.get(link.bp_incident_id)
            sn = self._sn_state.tables["incident"].get(link.sn_sys_id or "", {})
            priority = bp.tags["priority"].value if bp and "priority" in bp.tags else "-"
            bp_cat = bp.tags["category"].value if bp and "category" in bp.tags else "-"
            last = self._actions.last.get(link.bp_incident_id)
            synced = link.updated_at or link.created_at
            if last is not None and last[1] > synced:
                synced = last[1]
            rows.append(
                {
                    "BigPanda": link.bp_incident_id,
                    "ServiceNow": link.sn_number or "",
                    "state": (
                        f"{link.state.value}: BP {(bp.status if bp else '?').lower()}, "
                        f"SN {_SN_STATES.get(sn.get('state', ''), '?')}"
                    ),
                    "fields": (
                        f"priority {priority} / urgency {sn.get('urgency', '-')}; "
                        f"category {bp_cat} / {sn.get('category', '-')}"
                    ),
                    "last sync": _ago(synced),
                    "last action": last[0] if last else "",
                }
            )
        return rows

    @staticmethod
    def _table(rows: list[dict[str, str]]) -> Table:
        table = Table(title=f"linked pairs ({len(rows)})", expand=False)
        for name in ("BigPanda", "ServiceNow", "state", "fields", "last sync", "last action"):
            table.add_column(name, no_wrap=name in {"BigPanda", "ServiceNow"})
        for row in rows:
            table.add_row(*row.values())
        return table

    async def _view(self, engine: Engine) -> RenderableType:
        rows = await self._rows(engine)
        elapsed = time.monotonic() - self._started
        status = Text(
            f"cycles {self.result.cycles} ({self.result.failed_cycles} failed) | "
            f"edits {self.result.changes} | bpsync actions {self._actions.count} | "
            f"{elapsed:.0f} s",
            style="dim",
        )
        events = Panel(Text("\n".join(self.events) or "-"), title="what happens", expand=False)
        return Group(self.banner(), self._table(rows), events, status)

    async def _live_view(self, engine: Engine) -> None:
        deadline = (
            None if self.options.duration is None else time.monotonic() + self.options.duration
        )
        with Live(await self._view(engine), console=self.console, refresh_per_second=4) as live:
            while not self._stop.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                await self._sleep(0.5)
                live.update(await self._view(engine))


def _ago(when: datetime) -> str:
    seconds = max(0, int((datetime.now(UTC) - when).total_seconds()))
    if seconds < 60:
        return f"{seconds} s ago"
    return f"{seconds // 60} min ago"


async def run_demo(options: DemoOptions, *, console: Console | None = None) -> DemoResult:
    """Run the demo until ``options.duration`` passes or :meth:`Demo.request_stop`."""
    return await Demo(options, console=console).run()


__all__ = ["DEMO_TAG_MAPPING", "Demo", "DemoOptions", "DemoResult", "run_demo"]
