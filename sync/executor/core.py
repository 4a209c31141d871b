"""The executor: carries out the planner's actions through the clients, durably.

Contract
========

Per pair, :meth:`Executor.execute` runs the action list in order and records each
outcome in the store on its own: one incident's failure never undoes another's, and a
failed write of a pair does not stop the pair's other writes (except a failed create,
which everything after it depends on).

The outbox (SPEC B13, B15)
--------------------------
Every HTTP write is an outbox item before it is sent: ``enqueue`` (the payload is the
serialised action plus the BigPanda environment and, for a create, the pending link id;
the idempotency key is a hash of kind, target and payload) -> send -> ``complete``.
Killed between any two steps, the item is still there and :meth:`Executor.drive_due`
sends it again (an in-flight item whose lease expired is claimed again). Writes are
idempotent or made so (the create protocol below), so "at least once" is safe.

Writes to one target (``servicenow:<sys_id>``, ``servicenow:create:<bp id>``,
``bigpanda:<bp id>``) go out in queue order: a new write whose target still has an
older open item (waiting for a retry) is queued behind it rather than sent, so an old
value can never overwrite a newer one.

Attempts, dead letters and notification
---------------------------------------
An *attempt* is one drive of an item: up to ``retry.in_cycle_attempts`` sends inside
the cycle with a short backoff (``in_cycle_backoff`` doubling up to
``in_cycle_backoff_max``; a ``Retry-After`` is honoured: nothing is sent to that side
before it elapses, and an item whose ``Retry-After`` exceeds the in-cycle cap is not sent
in this cycle at all). The store counts attempts. After failed attempt ``n``:

- ``n < min(dlq_after, attempts)``: back to pending, next attempt at
  ``now + max(retry.interval, Retry-After)``.
- ``n >= min(dlq_after, attempts)``: the item is dead-lettered (state ``dead``, the reason
  in ``last_error``, visible in ``bpsync dlq list``). While ``n < attempts`` a dead item
  still gets its remaining attempts, every ``retry.interval`` after the last one; a
  success at any point completes it (it leaves the dead-letter queue).
- ``n == min(notify_after, attempts)``: the operator is notified once: an ERROR log line
  with both ids and the reason, the ``notifications`` metric, and a JSON POST to
  ``retry.notify_url`` when set (a failing notify is logged, never raised).
- ``n == attempts``: the last attempt failed: no more automatic attempts
  (``bpsync dlq retry`` starts over with 0 attempts), and B14 for a ServiceNow write.

With the seed's values (6 attempts, dead-letter after 5, notify after 6): attempts 1-4
fail -> pending, 15 minutes apart; attempt 5 fails -> dead; attempt 6 (15 minutes later,
from the dead-letter queue) fails -> notify, B14, no more attempts.

A :class:`~sync.errors.PermanentError` is one attempt only: dead-lettered at once with
the vendor's message (``last_error`` starts with ``permanent: ``; such an item is never
re-driven automatically), the operator notified, and B14. A :class:`~sync.errors.FatalError`
(credentials) or a :class:`~sync.errors.StoreError` (including ``FencedError``) leaves
the item as it is and propagates: the coordinator stops the cycle.

Error communication (B14)
-------------------------
A ServiceNow write that fails permanently, or whose last attempt fails, puts a
:class:`~sync.actions.CommentBigPanda` with ServiceNow's message (and detail) on the
BigPanda incident and sets the link tag to ``error``. The tag value last written is
kept as the link's BigPanda field state under the link tag's name; the next successful
ServiceNow write of that link sets the tag back to the incident's link value.

The link tag holds ``"<number> <url>"`` (SPEC B1: the ServiceNow number and URL), with
``url = {servicenow.base_url}/nav_to.do?uri=incident.do?sys_id=<sys_id>``, the form
that opens the incident inside ServiceNow's frame (:func:`link_tag_value`).

Idempotent create (B2, B15)
---------------------------
``previous_link_id`` -> that link becomes ``superseded`` (history kept) ->
``create_pending_link`` (``DuplicateLinkError``: another cycle or replica owns it, skip)
-> the environment is remembered (checkpoint ``bp_env:<id>``) -> enqueue (these three in
one transaction: ``create_pending_link_and_enqueue``) -> search
``correlation_id`` (active incidents not already linked in this incident's history): one
found is adopted (its fields that differ from the plan are PATCHed), none -> create
with ``correlation_id`` = BigPanda id and ``correlation_display`` = ``BigPanda`` ->
``confirm_link`` -> record field states (with the audit entry, one transaction:
``confirm_link_and_record``) -> :class:`~sync.actions.SetLinkTag` (enqueued in the
transaction that completes the create: ``complete_and_enqueue``).
:meth:`Executor.recover_pending_links` handles pending links without an outbox item
(a crash between the link and the enqueue, or a dropped dead letter): found by
``correlation_id`` -> adopted; not found -> superseded and handed back for re-planning.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import aiohttp

from sync.actions import (
    STORE_ONLY_KINDS,
    Action,
    CommentBigPanda,
    CreateServiceNowIncident,
    MarkLinkLinked,
    MarkLinkResolved,
    RecordConflict,
    RecordSynced,
    RefLookup,
    ReopenServiceNow,
    ResolveBigPanda,
    ResolveServiceNow,
    SetLinkTag,
    UpdateBigPandaTags,
    UpdateServiceNowFields,
)
from sync.clients.base import BigPandaAPI, ServiceNowAPI, SNRecord
from sync.clock import Clock
from sync.constants import (
    LINK_TAG_ERROR_VALUE,
    SN_CORRELATION_DISPLAY,
    SN_RESOLVED_STATES,
    Side,
    SNState,
)
from sync.errors import ApiError, NotFoundError, PermanentError, TransientError
from sync.lookups import Lookups
from sync.model import Link, LinkState
from sync.settings import Settings
from sync.store.base import (
    DuplicateLinkError,
    FieldStates,
    LinkStore,
    NewOutboxItem,
    OutboxItem,
    OutboxState,
)

log = logging.getLogger(__name__)

#: how long a claimed item may stay in flight before another drive may claim it again
DEFAULT_LEASE_S = 120.0
#: how many due items one drive handles (the rest wait for the next cycle)
DEFAULT_DRIVE_LIMIT = 500
#: bound of the notify POST
NOTIFY_TIMEOUT_S = 10.0
#: ``last_error`` prefix of an item dead-lettered by a permanent error: never re-driven
PERMANENT_PREFIX = "permanent: "
#: checkpoint key prefix remembering a BigPanda incident's environment
BP_ENV_CHECKPOINT = "bp_env:"

SIDE_OF_KIND: dict[str, Side] = {
    "sn.create": Side.SERVICENOW,
    "sn.update": Side.SERVICENOW,
    "sn.resolve": Side.SERVICENOW,
    "sn.reopen": Side.SERVICENOW,
    "bp.tags": Side.BIGPANDA,
    "bp.resolve": Side.BIGPANDA,
    "bp.comment": Side.BIGPANDA,
    "bp.link_tag": Side.BIGPANDA,
}

WriteAction = (
    CreateServiceNowIncident
    | UpdateServiceNowFields
    | UpdateBigPandaTags
    | ResolveServiceNow
    | ResolveBigPanda
    | ReopenServiceNow
    | CommentBigPanda
    | SetLinkTag
)

_WRITE_CLASSES: dict[str, type[Any]] = {
    "sn.create": CreateServiceNowIncident,
    "sn.update": UpdateServiceNowFields,
    "sn.resolve": ResolveServiceNow,
    "sn.reopen": ReopenServiceNow,
    "bp.tags": UpdateBigPandaTags,
    "bp.resolve": ResolveBigPanda,
    "bp.comment": CommentBigPanda,
    "bp.link_tag": SetLinkTag,
}


class ExecutorMetrics(Protocol):
    """What the executor reports (``sync.engine`` adapts ``sync.metrics.Metrics``)."""

    def action_done(self, kind: str, outcome: str, duration_s: float) -> None: ...

    def notification(self, kind: str) -> None: ...


# --------------------------------------------------------------------------- payloads


def _encode_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$dt": value.isoformat()}
    if isinstance(value, RefLookup):
        return {"$ref": [value.table, value.column, value.value]}
    if isinstance(value, Mapping):
        return {str(k): _encode_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode_value(v) for v in value]
    return value


def _decode_value(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$dt"}:
            return datetime.fromisoformat(value["$dt"])
        if set(value) == {"$ref"}:
            table, column, ref_value = value["$ref"]
            return RefLookup(str(table), str(column), str(ref_value))
        return {k: _decode_value(v) for k, v in value.items()}
    if isinstance(value, list):  # the actions' sequences are tuples
        return tuple(_decode_value(v) for v in value)
    return value


def encode_action(action: WriteAction) -> dict[str, Any]:
    """The action as JSON-safe data (datetimes and look-ups tagged)."""
    assert is_dataclass(action)
    return {f.name: _encode_value(getattr(action, f.name)) for f in fields(action)}


def decode_action(data: Mapping[str, Any]) -> WriteAction:
    """Inverse of :func:`encode_action`; ValueError for an unknown kind or shape."""
    kind = str(data.get("kind", ""))
    cls = _WRITE_CLASSES.get(kind)
    if cls is None:
        raise ValueError(f"unknown outbox action kind {kind!r}")
    try:
        action = cls(**{k: _decode_value(v) for k, v in data.items()})
    except TypeError as exc:
        raise ValueError(f"malformed {kind} payload: {exc}") from None
    assert isinstance(action, _WRITE_CLASSES[kind])
    return action  # type: ignore[no-any-return]


def target_of(action: WriteAction) -> str:
    """The outbox target: writes to one target are sent in queue order."""
    if isinstance(action, CreateServiceNowIncident):
        return f"servicenow:create:{action.bp_incident_id}"
    if isinstance(action, UpdateServiceNowFields | ResolveServiceNow | ReopenServiceNow):
        return f"servicenow:{action.sys_id}"
    return f"bigpanda:{action.bp_incident_id}"


def idempotency_key(kind: str, target: str, payload: Mapping[str, Any]) -> str:
    """A stable hash of the write's content and ids."""
    blob = json.dumps(
        {"kind": kind, "target": target, "payload": payload}, sort_keys=True, default=str
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:40]


def incident_url(base_url: str, sys_id: str) -> str:
    """The URL that opens a ServiceNow incident (inside the ServiceNow frame)."""
    return f"{base_url.rstrip('/')}/nav_to.do?uri=incident.do?sys_id={sys_id}"


def link_tag_value(base_url: str, number: str, sys_id: str) -> str:
    """The link tag's value: ``"<number> <url>"`` (SPEC B1)."""
    url = incident_url(base_url, sys_id)
    return f"{number} {url}" if number else url


def _ids_of(action: Action) -> tuple[str | None, str | None, int | None]:
    bp = getattr(action, "bp_incident_id", None)
    sn = getattr(action, "sys_id", None)
    link = getattr(action, "link_id", None)
    return bp, sn, link


def _ref_value(value: Any) -> str:
    """A reference field's sys_id, whether bare or ``{"link", "value"}``."""
    if isinstance(value, Mapping):
        value = value.get("value")
    return "" if value is None else str(value)


def _states(
    link_id: int, record_bp: Mapping[str, str | None], record_sn: Mapping[str, str | None]
) -> list[FieldStates]:
    """The field states to record for a link (no entry for an empty side)."""
    out = []
    if record_bp:
        out.append(FieldStates(link_id, Side.BIGPANDA, record_bp))
    if record_sn:
        out.append(FieldStates(link_id, Side.SERVICENOW, record_sn))
    return out


# --------------------------------------------------------------------------- results


@dataclass(slots=True)
class PairResult:
    """The outcome of one pair's actions.

    ``recorded`` is True when every write either succeeded or is durably in the outbox
    (so the coordinator may move its cursor past the change).
    """

    outcomes: list[tuple[str, str]] = field(default_factory=list)
    recorded: bool = True
    adopted: bool = False
    """A create adopted the ServiceNow incident found by correlation_id."""

    def add(self, kind: str, outcome: str) -> None:
        self.outcomes.append((kind, outcome))


@dataclass(slots=True)
class DriveReport:
    """What :meth:`Executor.drive_due` did."""

    sent: int = 0
    completed: int = 0
    failed: int = 0
    dead: int = 0
    deferred: int = 0


class _Deferred(Exception):  # noqa: N818 - control flow, not an error
    """An item that must not be sent yet (Retry-After beyond the in-cycle cap)."""

    def __init__(self, side: str, wait_s: float) -> None:
        super().__init__(f"{side}: waiting {wait_s:.1f}s for Retry-After")
        self.side = side
        self.wait_s = wait_s


# --------------------------------------------------------------------------- executor


class Executor:
    """Runs actions through the clients, through the outbox, recording every outcome."""

    def __init__(
        self,
        store: LinkStore,
        servicenow: ServiceNowAPI,
        bigpanda: BigPandaAPI,
        settings: Settings,
        clock: Clock,
        *,
        lookups: Lookups | None = None,
        metrics: ExecutorMetrics | None = None,
        lease_s: float = DEFAULT_LEASE_S,
    ) -> None:
        self._store = store
        self._sn = servicenow
        self._bp = bigpanda
        self._settings = settings
        self._retry = settings.retry
        self._clock = clock
        self._lookups = lookups or Lookups(servicenow, clock)
        self._metrics = metrics
        self._lease_s = lease_s
        #: items claimed before this executor existed belong to a process that is gone:
        #: one writer at a time (the SQLite lock, the Postgres leader's epoch fencing)
        self._started_at = clock.now()
        #: side -> monotonic time before which nothing is sent to it (Retry-After)
        self._not_before: dict[str, float] = {}
        #: target -> {id: kind} of its open items (pending retry / in flight / dead with
        #: attempts left)
        self._open: dict[str, dict[int, str]] = {}
        #: bp incident id -> (sys_id, link id) confirmed by a create, for its log line
        self._created: dict[str, tuple[str, int]] = {}
        #: bp incident ids whose create (in the current execute) adopted an incident
        self._adopted: set[str] = set()
        self.notifications = 0

    # ------------------------------------------------------------------ public API

    @property
    def base_url(self) -> str:
        return self._settings.servicenow.base_url or ""

    async def execute(self, actions: Sequence[Action], *, environment_id: str | None) -> PairResult:
        """Run one pair's actions in order; each outcome is recorded on its own."""
        result = PairResult()
        for action in actions:
            started = self._clock.monotonic()
            outcome = await self._execute_one(action, environment_id, result)
            if (
                isinstance(action, CreateServiceNowIncident)
                and action.bp_incident_id in self._adopted
            ):
                result.adopted = True  # (_log_action forgets it)
            self._log_action(action, outcome, self._clock.monotonic() - started)
            result.add(action.kind, outcome)
            if isinstance(action, CreateServiceNowIncident) and outcome != "ok":
                break  # everything after a create depends on its link
        return result

    def has_open_writes(self, bp_incident_id: str, sn_sys_id: str | None) -> bool:
        """True while a write to this pair waits in the outbox (a retry, an item in
        flight, a dead item with attempts left), as known since the last drive_due."""
        targets = [f"bigpanda:{bp_incident_id}", f"servicenow:create:{bp_incident_id}"]
        if sn_sys_id:
            targets.append(f"servicenow:{sn_sys_id}")
        return any(self._open.get(target) for target in targets)

    def reopen_waits(self, sn_sys_id: str | None) -> bool:
        """A reopen of this ServiceNow incident waits in the outbox (as known since the
        last drive_due): until it is sent, the incident still reads Resolved."""
        if not sn_sys_id:
            return False
        return "sn.reopen" in self._open.get(f"servicenow:{sn_sys_id}", {}).values()

    async def drive_due(self, *, limit: int = DEFAULT_DRIVE_LIMIT) -> DriveReport:
        """Send again what is due: failed writes whose interval passed, dead items with
        attempts left, and in-flight items whose lease expired or that a previous process
        claimed before it was killed (this one started later)."""
        report = DriveReport()
        now = self._clock.now()
        open_items = await self._store.list_outbox(
            [OutboxState.PENDING, OutboxState.IN_FLIGHT, OutboxState.DEAD], limit=1_000_000
        )
        self._open = {}
        finals: list[OutboxItem] = []
        interval = timedelta(seconds=self._retry.interval)
        for item in open_items:
            if item.state == OutboxState.DEAD:
                exhausted = item.attempts >= self._retry.attempts
                if exhausted or (item.last_error or "").startswith(PERMANENT_PREFIX):
                    continue  # waits for an operator (dlq retry|drop), blocks nothing
                if item.updated_at + interval <= now:
                    finals.append(item)
            self._open.setdefault(item.target, {})[item.id] = item.kind
        # an item left in flight by a killed process is claimed again at once, not after
        # the lease (which protects this process's own claims, made since it started)
        since_start_s = (now - self._started_at).total_seconds()
        lease_s = min(self._lease_s, since_start_s + 0.001)
        claimed = await self._store.claim_due(now, limit=limit, lease_s=lease_s)
        batch = sorted([*claimed, *finals], key=lambda x: x.id)
        for item in batch[:limit]:
            if self._blocked(item.target, item.id):
                report.deferred += 1  # stays in flight; claimed again after its lease
                continue
            try:
                action = decode_action(item.payload.get("action", {}))
            except ValueError as exc:
                await self._store.dead_letter(item.id, f"unreadable outbox item: {exc}", now)
                self._close(item)
                report.dead += 1
                continue
            env = item.payload.get("environment_id")
            meta = {k: v for k, v in item.payload.items() if k != "action"}
            started = self._clock.monotonic()
            # sent again: a killed process may have sent it already (attempts count only
            # failures), so it is always re-checked (the create searches first, B2)
            outcome = await self._drive(
                item, action, env if isinstance(env, str) else None, meta, resend=True
            )
            self._log_action(action, outcome, self._clock.monotonic() - started, retry=True)
            report.sent += 1
            if outcome == "ok":
                report.completed += 1
            elif outcome == "dead":
                report.dead += 1
            elif outcome == "deferred":
                report.deferred += 1
            else:
                report.failed += 1
        return report

    async def recover_pending_links(self) -> list[Link]:
        """Pending links that no outbox item owns (a crash between the link and the
        enqueue, or a dropped dead letter): adopt the incident found by correlation_id,
        or supersede the link and return it so the caller re-plans its incident."""
        pending = await self._store.list_links([LinkState.PENDING], limit=10_000)
        if not pending:
            return []
        open_items = await self._store.list_outbox(
            [OutboxState.PENDING, OutboxState.IN_FLIGHT, OutboxState.DEAD], limit=1_000_000
        )
        owned = {item.link_id for item in open_items if item.kind == "sn.create"}
        replan: list[Link] = []
        for link in pending:
            if link.id in owned:
                continue
            record = await self._find_existing(link.bp_incident_id, link.id)
            now = self._clock.now()
            if record is None:
                replan.append(await self._store.set_link_state(link.id, LinkState.SUPERSEDED, now))
                log.warning(
                    "pending link without an outbox item and no ServiceNow incident: "
                    "superseded, the incident will be planned again",
                    extra={"bp_incident_id": link.bp_incident_id, "link_id": link.id},
                )
                continue
            sys_id, number = str(record.get("sys_id", "")), str(record.get("number", ""))
            await self._store.confirm_link(link.id, sys_id, number, now)
            await self._store.append_audit(
                "action",
                "adopted",
                now,
                link_id=link.id,
                bp_incident_id=link.bp_incident_id,
                sn_sys_id=sys_id,
                detail={"reason": "pending link recovered by correlation_id"},
            )
            log.info(
                "pending link recovered: adopted the ServiceNow incident found by correlation_id",
                extra={"bp_incident_id": link.bp_incident_id, "sn_sys_id": sys_id},
            )
            env = await self.environment_of(link.bp_incident_id)
            if env is not None:
                await self._run_write(
                    SetLinkTag(
                        link.bp_incident_id,
                        env,
                        self._settings.incidents.link_tag,
                        link_tag_value(self.base_url, number, sys_id),
                        link_id=link.id,
                    ),
                    env,
                    PairResult(),
                )
        return replan

    async def environment_of(self, bp_incident_id: str) -> str | None:
        """The BigPanda environment remembered for an incident (at its create)."""
        return await self._store.get_checkpoint(BP_ENV_CHECKPOINT + bp_incident_id)

    # ------------------------------------------------------------------ one action

    async def _execute_one(self, action: Action, env: str | None, result: PairResult) -> str:
        if action.kind in STORE_ONLY_KINDS:
            await self._apply_store_only(action)
            return "ok"
        assert not isinstance(
            action, MarkLinkLinked | MarkLinkResolved | RecordSynced | RecordConflict
        )
        if isinstance(action, CreateServiceNowIncident):
            return await self._start_create(action, result)
        return await self._run_write(action, env, result)

    async def _apply_store_only(self, action: Action) -> None:
        now = self._clock.now()
        if isinstance(action, MarkLinkResolved):
            await self._store.set_link_state(
                action.link_id,
                LinkState.RESOLVED,
                now,
                resolved_at=action.resolved_at,
                reopen_deadline=action.reopen_deadline,
            )
        elif isinstance(action, MarkLinkLinked):
            await self._store.set_link_state(action.link_id, LinkState.LINKED, now)
        elif isinstance(action, RecordSynced):
            await self._record(action.link_id, action.record_bp, action.record_sn)
        elif isinstance(action, RecordConflict):
            await self._store.append_audit(
                "conflict",
                f"{action.winner.value} wins",
                now,
                link_id=action.link_id,
                bp_incident_id=action.bp_incident_id,
                field=action.sn_field,
                bp_value=action.bp_value,
                sn_value=action.sn_value,
                detail={"bp_tag": action.bp_tag, "policy": action.policy},
            )

    async def _start_create(self, action: CreateServiceNowIncident, result: PairResult) -> str:
        now = self._clock.now()
        if action.previous_link_id is not None:
            previous = await self._store.get_link(action.previous_link_id)
            if previous is not None and previous.state != LinkState.SUPERSEDED:
                await self._store.set_link_state(previous.id, LinkState.SUPERSEDED, now)
        env = action.environment_id
        # the pending link, the environment and the create's outbox item in one
        # transaction (all or nothing): a crash leaves either none or all of them
        try:
            link, item = await self._store.create_pending_link_and_enqueue(
                action.bp_incident_id,
                now,
                lambda link: self._new_item(action, env, {"link_id": link.id})[0],
                previous_link_id=action.previous_link_id,
                checkpoint=(BP_ENV_CHECKPOINT + action.bp_incident_id, env),
            )
        except DuplicateLinkError:
            log.info(
                "another cycle or replica owns this incident's link; create skipped",
                extra={"bp_incident_id": action.bp_incident_id},
            )
            return "skipped"
        except Exception:
            result.recorded = False
            raise
        meta = {"environment_id": env, "link_id": link.id}
        return await self._send_enqueued(item, action, env, meta)

    async def _run_write(
        self,
        action: WriteAction,
        env: str | None,
        result: PairResult,
        *,
        extra: Mapping[str, Any] | None = None,
    ) -> str:
        """enqueue (SPEC B15: before it is sent) -> send now unless queued behind an older
        write -> complete/fail."""
        new, meta = self._new_item(action, env, extra)
        try:
            item = await self._store.enqueue(
                new.kind,
                new.target,
                new.payload,
                new.idempotency_key,
                self._clock.now(),
                link_id=new.link_id,
                bp_incident_id=new.bp_incident_id,
                sn_sys_id=new.sn_sys_id,
            )
        except Exception:
            result.recorded = False
            raise
        return await self._send_enqueued(item, action, env, meta)

    @staticmethod
    def _new_item(
        action: WriteAction, env: str | None, extra: Mapping[str, Any] | None = None
    ) -> tuple[NewOutboxItem, dict[str, Any]]:
        """The outbox item of a write (its payload: the action and ``meta``) and meta."""
        meta: dict[str, Any] = {"environment_id": env, **(extra or {})}
        payload = {"action": encode_action(action), **meta}
        target = target_of(action)
        key = idempotency_key(action.kind, target, payload)
        bp_id, sn_id, link_id = _ids_of(action)
        link_id = link_id if link_id is not None else meta.get("link_id")
        new = NewOutboxItem(action.kind, target, payload, key, link_id, bp_id, sn_id)
        return new, meta

    async def _send_enqueued(
        self, item: OutboxItem, action: WriteAction, env: str | None, meta: Mapping[str, Any]
    ) -> str:
        if item.state != OutboxState.PENDING or item.attempts > 0:
            return "queued"  # the same write is already waiting for its retry
        self._open.setdefault(item.target, {})[item.id] = item.kind
        if self._blocked(item.target, item.id):
            return "queued"
        return await self._drive(item, action, env, meta)

    # ------------------------------------------------------------------ one attempt

    def _blocked(self, target: str, item_id: int) -> bool:
        return any(other < item_id for other in self._open.get(target, ()))

    def _close(self, item: OutboxItem) -> None:
        ids = self._open.get(item.target)
        if ids is not None:
            ids.pop(item.id, None)
            if not ids:
                del self._open[item.target]

    async def _drive(
        self,
        item: OutboxItem,
        action: WriteAction,
        env: str | None,
        meta: Mapping[str, Any],
        *,
        resend: bool = False,
    ) -> str:
        """One attempt (with its in-cycle retries), then complete / fail / dead-letter."""
        records: list[FieldStates] = []
        try:
            follow_ups = await self._attempt(
                action, env, meta, records, retried=resend or item.attempts > 0
            )
        except _Deferred as exc:
            return await self._failed(item, action, env, exc, retry_after_s=exc.wait_s)
        except TransientError as exc:
            return await self._failed(item, action, env, exc, retry_after_s=exc.retry_after_s)
        except PermanentError as exc:
            return await self._failed_permanently(item, action, env, exc)
        # follow-ups (the link tag after a create) are in the outbox BEFORE this item is
        # complete: killed in between, the create is re-driven (idempotent, B2) and the
        # follow-up is still there, never lost (B15)
        # (one transaction: the field states the write recorded, the follow-ups, complete)
        news = [self._new_item(f, env) for f in follow_ups]
        f_items = await self._store.complete_and_enqueue(
            item.id,
            self._clock.now(),
            follow_ups=[new for new, _ in news],
            field_states=records,
        )
        self._close(item)
        for follow_up, f_item, (_, f_meta) in zip(follow_ups, f_items, news, strict=True):
            await self._send_enqueued(f_item, follow_up, env, f_meta)
        return "ok"

    async def _attempt(
        self,
        action: WriteAction,
        env: str | None,
        meta: Mapping[str, Any],
        records: list[FieldStates],
        *,
        retried: bool,
    ) -> list[WriteAction]:
        side = SIDE_OF_KIND[action.kind].value
        delay_s = self._retry.in_cycle_backoff
        for attempt_no in range(1, self._retry.in_cycle_attempts + 1):
            await self._wait_for(side)
            records.clear()
            try:
                recheck = retried or attempt_no > 1
                return await self._apply(action, env, meta, records, recheck=recheck)
            except TransientError as exc:
                if exc.retry_after_s:
                    mono = self._clock.monotonic() + exc.retry_after_s
                    self._not_before[exc.side] = max(self._not_before.get(exc.side, 0.0), mono)
                if attempt_no >= self._retry.in_cycle_attempts:
                    raise
                wait_s = max(delay_s, exc.retry_after_s or 0.0)
                if wait_s > self._retry.in_cycle_backoff_max:
                    raise
                log.debug("transient failure, retrying in %.2fs: %s", wait_s, exc)
                await self._clock.sleep(wait_s)
                delay_s = min(delay_s * 2, self._retry.in_cycle_backoff_max)
        raise AssertionError("unreachable: the loop returns or raises")

    async def _wait_for(self, side: str) -> None:
        """Honour a Retry-After for ``side``: wait if short, else defer the item."""
        remaining_s = self._not_before.get(side, 0.0) - self._clock.monotonic()
        if remaining_s <= 0:
            return
        if remaining_s > self._retry.in_cycle_backoff_max:
            raise _Deferred(side, remaining_s)
        await self._clock.sleep(remaining_s)

    async def _failed(
        self,
        item: OutboxItem,
        action: WriteAction,
        env: str | None,
        exc: Exception,
        *,
        retry_after_s: float | None,
    ) -> str:
        now = self._clock.now()
        reason = str(exc)
        attempt_no = item.attempts + 1
        dead_at = min(self._retry.dlq_after, self._retry.attempts)
        notify_at = min(self._retry.notify_after, self._retry.attempts)
        if attempt_no >= dead_at:
            updated = await self._store.dead_letter(item.id, reason, now)
            outcome = "dead"
        else:
            wait_s = max(self._retry.interval, retry_after_s or 0.0)
            updated = await self._store.fail(item.id, reason, now + timedelta(seconds=wait_s), now)
            outcome = "retry"
        if updated.attempts >= self._retry.attempts:
            self._close(item)
        log.warning(
            "write failed (attempt %d of %d): %s",
            updated.attempts,
            self._retry.attempts,
            reason,
            extra=self._item_extra(updated),
        )
        if updated.attempts == notify_at:
            await self._notify(updated, reason)
        if updated.attempts >= self._retry.attempts and isinstance(exc, ApiError):
            await self._communicate_error(action, env, exc, updated)
        return outcome

    async def _failed_permanently(
        self, item: OutboxItem, action: WriteAction, env: str | None, exc: PermanentError
    ) -> str:
        reason = str(exc)
        updated = await self._store.dead_letter(
            item.id, PERMANENT_PREFIX + reason, self._clock.now()
        )
        self._close(item)
        log.warning("write refused, not retried: %s", reason, extra=self._item_extra(updated))
        await self._notify(updated, reason)
        await self._communicate_error(action, env, exc, updated)
        return "dead"

    # ------------------------------------------------------------------ B14 and notify

    async def _communicate_error(
        self, action: WriteAction, env: str | None, exc: ApiError, item: OutboxItem
    ) -> None:
        """B14: a ServiceNow write failed for good -> comment + link tag ``error``."""
        if SIDE_OF_KIND[action.kind] is not Side.SERVICENOW:
            return
        bp_id = action.bp_incident_id
        env = env or await self.environment_of(bp_id)
        if env is None:
            log.warning(
                "cannot report the ServiceNow error on BigPanda: environment unknown",
                extra={"bp_incident_id": bp_id},
            )
            return
        message = exc.message + (f" ({exc.detail})" if exc.detail else "")
        text = f"ServiceNow refused the {action.kind} write: {message}"
        link_id = item.link_id
        await self._run_write(CommentBigPanda(bp_id, env, text, link_id=link_id), env, PairResult())
        await self._run_write(
            SetLinkTag(
                bp_id, env, self._settings.incidents.link_tag, LINK_TAG_ERROR_VALUE, link_id
            ),
            env,
            PairResult(),
        )

    async def _notify(self, item: OutboxItem, reason: str) -> None:
        """The operator notification: ERROR log, metric, optional POST."""
        self.notifications += 1
        log.error(
            "write failed for good after %d attempt(s): %s",
            item.attempts,
            reason,
            extra={**self._item_extra(item), "notify": True},
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

    # ------------------------------------------------------------------ the writes

    async def _apply(
        self,
        action: WriteAction,
        env: str | None,
        meta: Mapping[str, Any],
        records: list[FieldStates],
        *,
        recheck: bool = False,
    ) -> list[WriteAction]:
        """Send one write and record its effect; returns follow-up writes. Field states
        appended to ``records`` are recorded with the item's completion (one transaction).

        ``recheck`` (a retry): the target is read first and only what still differs is
        sent. The write may have landed in part before it failed, or a person may have
        set the same value while it waited; resending it would be an echo (B5)."""
        if isinstance(action, CreateServiceNowIncident):
            link_id = meta.get("link_id")
            if not isinstance(link_id, int):
                raise PermanentError("bpsync", "create without a pending link id")
            return await self._apply_create(action, link_id, recheck=recheck)
        if isinstance(action, UpdateServiceNowFields):
            values = {**action.fields, **await self._lookups.resolve_fields(action.lookups)}
            if values and recheck:
                current = await self._sn.get_incident(action.sys_id)
                values = {k: v for k, v in values.items() if _ref_value(current.get(k)) != v}
            if values:
                await self._sn.update_incident(action.sys_id, values)
            await self._record(action.link_id, action.record_bp, action.record_sn)
            return await self._after_servicenow_success(action.link_id, env)
        if isinstance(action, ResolveServiceNow):
            if await self._resolve_is_stale(action, env):
                return []
            values = {
                "state": str(int(SNState.RESOLVED)),
                "close_code": action.close_code,
                "close_notes": action.close_notes,
            }
            resolved_by = None
            if action.resolved_by is not None:
                resolved_by = await self._lookups.resolve(action.resolved_by)
                if resolved_by is not None:
                    values["resolved_by"] = resolved_by
            record = await self._sn.update_incident(action.sys_id, values)
            if resolved_by is not None and _ref_value(record.get("resolved_by")) != resolved_by:
                # the Resolved business rule stamps the API user on the state change:
                # resolved_by_email's user is set once the incident is Resolved (B7)
                await self._sn.update_incident(action.sys_id, {"resolved_by": resolved_by})
            if action.reopen_deadline is not None:
                await self._store.set_link_state(
                    action.link_id,
                    LinkState.RESOLVED,
                    self._clock.now(),
                    resolved_at=self._clock.now(),
                    reopen_deadline=action.reopen_deadline,
                )
            return await self._after_servicenow_success(action.link_id, env)
        if isinstance(action, ReopenServiceNow):
            values = {"state": str(int(SNState.IN_PROGRESS))}
            if action.work_note:
                values["work_notes"] = action.work_note
            await self._sn.update_incident(action.sys_id, values)
            link = await self._store.get_link(action.link_id)
            if link is not None and link.state == LinkState.RESOLVED:
                await self._store.set_link_state(
                    action.link_id, LinkState.LINKED, self._clock.now()
                )
            return await self._after_servicenow_success(action.link_id, env)
        if isinstance(action, UpdateBigPandaTags):
            tags, remove_tags = dict(action.tags), action.remove_tags
            if remove_tags or recheck:
                # with removals, several calls: even a first attempt may follow a partial
                # success of an earlier one, so send only what still differs
                current = await self._bp.get_tags(action.environment_id, action.bp_incident_id)
                tags = {k: v for k, v in tags.items() if current.get(k) != v}
                remove_tags = tuple(t for t in remove_tags if t in current)
            if tags:
                await self._bp.set_tags(action.environment_id, action.bp_incident_id, tags)
            for tag_id in remove_tags:
                await self._bp.delete_tag(action.environment_id, action.bp_incident_id, tag_id)
            records.extend(_states(action.link_id, action.record_bp, action.record_sn))
            return []
        if isinstance(action, ResolveBigPanda):
            if await self._resolve_is_stale(action, env):
                return []
            await self._bp.resolve_incident(
                action.environment_id, action.bp_incident_id, action.comment
            )
            if action.reopen_deadline is not None:
                await self._store.set_link_state(
                    action.link_id,
                    LinkState.RESOLVED,
                    self._clock.now(),
                    resolved_at=self._clock.now(),
                    reopen_deadline=action.reopen_deadline,
                )
            return []
        if isinstance(action, CommentBigPanda):
            await self._bp.add_comment(action.environment_id, action.bp_incident_id, action.text)
            return []
        current_tags = (
            await self._bp.get_tags(action.environment_id, action.bp_incident_id) if recheck else {}
        )
        if current_tags.get(action.tag_id) != action.value:
            await self._bp.set_tag(
                action.environment_id, action.bp_incident_id, action.tag_id, action.value
            )
        if action.link_id is not None:
            records.append(
                FieldStates(action.link_id, Side.BIGPANDA, {action.tag_id: action.value})
            )
        return []

    async def _resolve_is_stale(
        self, action: ResolveServiceNow | ResolveBigPanda, env: str | None
    ) -> bool:
        """A resolve sent late (a retry, or queued behind another write of the target)
        may find the pair moved on: its link resolved or superseded, or the side that was
        resolved reopened. Sent anyway it would resolve a reopened incident (B9), or mark
        a superseded link resolved next to the live one. Then it is dropped."""
        link = await self._store.get_link(action.link_id)
        if link is None or link.state != LinkState.LINKED:
            stale = True
        elif isinstance(action, ResolveServiceNow):
            env = env or await self.environment_of(action.bp_incident_id)
            try:
                bp = None
                if env is not None:
                    bp = await self._bp.get_incident(
                        env, action.bp_incident_id, expand_alerts=False
                    )
            except NotFoundError:
                bp = None
            stale = bp is not None and bp.active
        elif action.sys_id is not None:
            try:
                record = await self._sn.get_incident(action.sys_id)
            except NotFoundError:
                return False
            stale = int(str(record.get("state") or "1")) not in SN_RESOLVED_STATES
        else:
            stale = False
        if stale:
            log.info(
                "%s dropped: the pair changed since it was planned",
                action.kind,
                extra={"bp_incident_id": action.bp_incident_id, "link_id": action.link_id},
            )
        return stale

    async def _after_servicenow_success(self, link_id: int, env: str | None) -> list[WriteAction]:
        """B14, the way back: the link tag says ``error`` -> set it to the link value."""
        tag = self._settings.incidents.link_tag
        state = (await self._store.field_states(link_id)).get((Side.BIGPANDA, tag))
        if state is None or state.value != LINK_TAG_ERROR_VALUE:
            return []
        link = await self._store.get_link(link_id)
        if link is None or not link.sn_sys_id:
            return []
        env = env or await self.environment_of(link.bp_incident_id)
        if env is None:
            return []
        value = link_tag_value(self.base_url, link.sn_number or "", link.sn_sys_id)
        return [SetLinkTag(link.bp_incident_id, env, tag, value, link_id=link_id)]

    async def _find_existing(
        self, bp_incident_id: str, link_id: int, links: Sequence[Link] | None = None
    ) -> SNRecord | None:
        """An active incident with this correlation_id that no older link of the incident
        owns (after a reopen past the window, the old incident has the same id).
        ``links``: the incident's links, when the caller has just read them."""
        found = await self._sn.find_by_correlation_id(bp_incident_id, active_only=True)
        if links is None:
            links = await self._store.links_for_bp(bp_incident_id)
        history = {old.sn_sys_id for old in links if old.id != link_id and old.sn_sys_id}
        candidates = [r for r in found if str(r.get("sys_id", "")) not in history]
        if not candidates:
            return None
        # the oldest wins, should a foreign tool have made two
        candidates.sort(key=lambda r: (str(r.get("sys_created_on", "")), str(r.get("number", ""))))
        return candidates[0]

    async def _apply_create(
        self, action: CreateServiceNowIncident, link_id: int, *, recheck: bool
    ) -> list[WriteAction]:
        # the incident's links (history for _find_existing) hold this one: one read
        links = await self._store.links_for_bp(action.bp_incident_id)
        link = next((old for old in links if old.id == link_id), None)
        if link is None:
            link = await self._store.get_link(link_id)
        if link is None:
            raise PermanentError("bpsync", f"the pending link {link_id} no longer exists")
        if link.state == LinkState.SUPERSEDED:
            log.info("create dropped: its link was superseded", extra={"link_id": link_id})
            return []
        adopted_now = False
        if link.sn_sys_id is None:
            values = {**action.fields, **await self._lookups.resolve_fields(action.lookups)}
            # B2: search correlation_id unless a batched check just found nothing and
            # this is the first attempt (a retry may follow a create that went through)
            existing = (
                None
                if action.checked_absent and not recheck
                else await self._find_existing(action.bp_incident_id, link_id, links)
            )
            adopted = adopted_now = existing is not None
            if existing is not None:
                current = {k: ("" if v is None else str(v)) for k, v in existing.items()}
                differing = {k: v for k, v in values.items() if current.get(k) != v}
                record = existing
                if differing:
                    record = await self._sn.update_incident(str(existing["sys_id"]), differing)
            else:
                record = await self._sn.create_incident(
                    {
                        **values,
                        "correlation_id": action.bp_incident_id,
                        "correlation_display": SN_CORRELATION_DISPLAY,
                    }
                )
            sys_id = str(record.get("sys_id", "") or (existing or {}).get("sys_id", ""))
            number = str(record.get("number", "") or (existing or {}).get("number", ""))
            # confirm, audit and field states in one transaction
            link = await self._store.confirm_link_and_record(
                link_id,
                sys_id,
                number,
                self._clock.now(),
                audit_outcome="adopted" if adopted else "created",
                field_states=_states(link_id, action.record_bp, action.record_sn),
            )
        else:
            await self._record(link_id, action.record_bp, action.record_sn)
        assert link.sn_sys_id is not None
        self._created[action.bp_incident_id] = (link.sn_sys_id, link_id)
        if link.sn_sys_id and adopted_now:
            self._adopted.add(action.bp_incident_id)
        value = link_tag_value(self.base_url, link.sn_number or "", link.sn_sys_id)
        return [
            SetLinkTag(
                action.bp_incident_id,
                action.environment_id,
                self._settings.incidents.link_tag,
                value,
                link_id=link_id,
            )
        ]

    async def _record(
        self,
        link_id: int,
        record_bp: Mapping[str, str | None],
        record_sn: Mapping[str, str | None],
    ) -> None:
        now = self._clock.now()
        if record_bp:
            await self._store.record_field_states(link_id, Side.BIGPANDA, record_bp, now)
        if record_sn:
            await self._store.record_field_states(link_id, Side.SERVICENOW, record_sn, now)

    # ------------------------------------------------------------------ logging

    def _item_extra(self, item: OutboxItem) -> dict[str, Any]:
        return {
            "outbox_id": item.id,
            "kind": item.kind,
            "bp_incident_id": item.bp_incident_id,
            "sn_sys_id": item.sn_sys_id,
            "link_id": item.link_id,
            "attempts": item.attempts,
            "reason": item.last_error,
        }

    def _log_action(
        self, action: Action, outcome: str, duration_s: float, *, retry: bool = False
    ) -> None:
        bp_id, sn_id, link_id = _ids_of(action)
        if isinstance(action, CreateServiceNowIncident):
            sn_id, link_id = self._created.pop(action.bp_incident_id, (sn_id, link_id))
            self._adopted.discard(action.bp_incident_id)
        log.info(
            "%s %s",
            action.kind,
            outcome,
            extra={
                "kind": action.kind,
                "outcome": outcome,
                "bp_incident_id": bp_id,
                "sn_sys_id": sn_id,
                "link_id": link_id,
                "duration_ms": round(duration_s * 1000, 1),
                "retry": retry,
            },
        )
        if self._metrics is not None:
            self._metrics.action_done(action.kind, outcome, duration_s)
