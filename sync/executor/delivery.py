"""Delivery: the outbox's attempts, backoff, dead letters: the retry policy in one place.

The outbox (SPEC B13, B15)
--------------------------
Every HTTP write is an outbox item before it is sent: ``enqueue`` (the payload is the
serialised action plus the BigPanda environment and, for a create, the pending link id;
the idempotency key is a hash of kind, target and payload, :mod:`sync.executor.codec`)
-> send -> ``complete``. Killed between any two steps, the item is still there and
:meth:`Delivery.drive_due` sends it again (an in-flight item whose lease expired is
claimed again). Writes are idempotent or made so (the create protocol,
:mod:`sync.executor.writes`), so "at least once" is safe.

Writes to one target (``servicenow:<sys_id>``, ``servicenow:create:<bp id>``,
``bigpanda:<bp id>``) go out in queue order: a new write whose target still has an
older open item (waiting for a retry) is queued behind it rather than sent, so an old
value can never overwrite a newer one.

Attempts, dead letters and notification
---------------------------------------
An *attempt* is one drive of an item: up to ``retry.in_cycle_attempts`` sends inside
the cycle with a short backoff (``in_cycle_backoff`` doubling up to
``in_cycle_backoff_max``; an error whose ``Retry-After`` exceeds that cap ends the
attempt). When a write may be sent is the client's pacer's to say, one hold per
family (BigPanda's endpoint families; ServiceNow's instance): before each send the
item asks it (``held_for``); a hold the client waits out, the write waits for there;
a hold past the outage window (``pacing.outage_after``: a long ``Retry-After``)
defers the item unsent, as a failed attempt. A hold of one BigPanda family defers no
write to another. The store counts attempts. After failed attempt ``n``:

- ``n < min(dlq_after, attempts)``: back to pending, next attempt at
  ``now + max(retry.interval, Retry-After)``.
- ``n >= min(dlq_after, attempts)``: the item is dead-lettered (state ``dead``, the reason
  in ``last_error``, visible in ``bpsync dlq list``). While ``n < attempts`` a dead item
  still gets its remaining attempts, every ``retry.interval`` after the last one; a
  success at any point completes it (it leaves the dead-letter queue).
- ``n == min(notify_after, attempts)``: the operator is notified once
  (:mod:`sync.executor.alerts`).
- ``n == attempts``: the last attempt failed: no more automatic attempts
  (``bpsync dlq retry`` starts over with 0 attempts).
- B14 for a ServiceNow write comes with its first failed attempt (the plan's
  ``on_refused`` steps), once per incident and outage: not again while the link tag
  says ``error`` (:meth:`sync.executor.writes.Writes.follow_ups`).
- A success closes the dead letters of its target that it covers (superseded).

With the seed's values (6 attempts, dead-letter after 5, notify after 6): attempts 1-4
fail -> pending, 15 minutes apart; attempt 5 fails -> dead; attempt 6 (15 minutes later,
from the dead-letter queue) fails -> notify, no more attempts; B14 at attempt 1.

A :class:`~sync.errors.PermanentError` is one attempt only: dead-lettered at once with
the vendor's message (``last_error`` starts with ``permanent: ``; such an item is never
re-driven automatically), the operator notified, and B14 (unless already shown). A
:class:`~sync.errors.FatalError` (credentials) or a :class:`~sync.errors.StoreError`
(including ``FencedError``) leaves the item as it is and propagates: the coordinator
stops the cycle.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from sync.actions import Action
from sync.clients.pacing import PacingPolicy
from sync.clock import Clock
from sync.errors import ApiError, PermanentError, TransientError
from sync.executor.alerts import Alerts, item_extra
from sync.executor.codec import WriteAction, decode_action, new_outbox_item
from sync.executor.writes import Effects, Writes
from sync.followups import supersedes
from sync.settings import RetrySettings
from sync.store.base import (
    LinkStore,
    NewAuditEntry,
    NewOutboxItem,
    OutboxItem,
    OutboxState,
)

# every line the executor logs is on "sync.executor" (log consumers filter on it)
log = logging.getLogger("sync.executor")

#: how long a claimed item may stay in flight before another drive may claim it again
DEFAULT_LEASE_S = 120.0
#: how many due items one drive handles (the rest wait for the next cycle)
DEFAULT_DRIVE_LIMIT = 500
#: ``last_error`` prefix of an item dead-lettered by a permanent error: never re-driven
PERMANENT_PREFIX = "permanent: "


@dataclass(slots=True)
class DriveReport:
    """What :meth:`Executor.drive_due` did."""

    sent: int = 0
    completed: int = 0
    failed: int = 0
    dead: int = 0
    deferred: int = 0


class _Deferred(Exception):  # noqa: N818 - control flow, not an error
    """An item that must not be sent yet: its family is held past the outage window."""

    def __init__(self, family: str, wait_s: float) -> None:
        super().__init__(f"{family}: held for {wait_s:.1f}s (Retry-After or throttling)")
        self.family = family
        self.wait_s = wait_s


class ActionLogger(Protocol):
    """Logs (and counts) one action's outcome: the executor's action line."""

    def __call__(
        self, action: Action, outcome: str, duration_s: float, *, retry: bool = False
    ) -> None: ...


class Delivery:
    """Sends outbox items: in target order, with retries, dead letters and alerts."""

    def __init__(
        self,
        store: LinkStore,
        clock: Clock,
        retry: RetrySettings,
        writes: Writes,
        alerts: Alerts,
        *,
        pacing: PacingPolicy,
        log_action: ActionLogger,
        lease_s: float = DEFAULT_LEASE_S,
    ) -> None:
        self._store = store
        self._clock = clock
        self._retry = retry
        self._pacing = pacing
        self._writes = writes
        self._alerts = alerts
        self._log_action = log_action
        self._lease_s = lease_s
        #: items claimed before this executor existed belong to a process that is gone:
        #: one writer at a time (the SQLite lock, the Postgres leader's epoch fencing)
        self._started_at = clock.now()
        #: target -> {id: kind} of its open items (pending retry / in flight / dead with
        #: attempts left), for queue order (the coordinator asks the store: ``open_writes``)
        self._open: dict[str, dict[int, str]] = {}
        #: targets with a dead letter (checked for superseded ones when a write succeeds)
        self._dead_targets: set[str] = set()

    # ------------------------------------------------------------------ open items

    def _blocked(self, target: str, item_id: int) -> bool:
        return any(other < item_id for other in self._open.get(target, ()))

    def _close(self, item: OutboxItem) -> None:
        ids = self._open.get(item.target)
        if ids is not None:
            ids.pop(item.id, None)
            if not ids:
                del self._open[item.target]

    # ------------------------------------------------------------------ enqueue, send

    async def drive_due(self, *, limit: int = DEFAULT_DRIVE_LIMIT) -> DriveReport:
        """Send again what is due: failed writes whose interval passed, dead items with
        attempts left, and in-flight items whose lease expired or that a previous process
        claimed before it was killed (this one started later)."""
        report = DriveReport()
        now = self._clock.now()
        # the open items without their payloads: a deep backlog (an outage's) is read
        # every cycle, its payloads only when sent
        heads = await self._store.outbox_heads(
            [OutboxState.PENDING, OutboxState.IN_FLIGHT, OutboxState.DEAD]
        )
        self._open = {}
        final_ids: list[int] = []
        interval = timedelta(seconds=self._retry.interval)
        self._dead_targets = {i.target for i in heads if i.state == OutboxState.DEAD}
        for head in heads:
            if head.state == OutboxState.DEAD:
                exhausted = head.attempts >= self._retry.attempts
                if exhausted or (head.last_error or "").startswith(PERMANENT_PREFIX):
                    continue  # waits for an operator (dlq retry|drop), blocks nothing
                if head.updated_at + interval <= now:
                    final_ids.append(head.id)
            self._open.setdefault(head.target, {})[head.id] = head.kind
        finals = [
            item
            for item in (await self._store.outbox_items(final_ids) if final_ids else [])
            if item.state == OutboxState.DEAD  # still: nothing closed it since
        ]
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

    async def enqueue(self, new: NewOutboxItem) -> OutboxItem:
        """The write's outbox item, stored (SPEC B15: before it is sent)."""
        return await self._store.enqueue(
            new.kind,
            new.target,
            new.payload,
            new.idempotency_key,
            self._clock.now(),
            link_id=new.link_id,
            bp_incident_id=new.bp_incident_id,
            sn_sys_id=new.sn_sys_id,
        )

    async def run_write(self, action: WriteAction, env: str | None) -> str:
        """enqueue -> send now unless queued behind an older write -> complete/fail."""
        new, meta = new_outbox_item(action, env)
        item = await self.enqueue(new)
        return await self.send_enqueued(item, action, env, meta)

    async def send_enqueued(
        self, item: OutboxItem, action: WriteAction, env: str | None, meta: Mapping[str, Any]
    ) -> str:
        if item.state != OutboxState.PENDING or item.attempts > 0:
            return "queued"  # the same write is already waiting for its retry
        self._open.setdefault(item.target, {})[item.id] = item.kind
        if self._blocked(item.target, item.id):
            return "queued"
        return await self._drive(item, action, env, meta)

    # ------------------------------------------------------------------ one attempt

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
        effects = Effects()
        try:
            await self._attempt(action, env, meta, effects, retried=resend or item.attempts > 0)
        except _Deferred as exc:
            return await self._failed(item, action, env, exc, retry_after_s=exc.wait_s)
        except TransientError as exc:
            return await self._failed(item, action, env, exc, retry_after_s=exc.retry_after_s)
        except PermanentError as exc:
            return await self._failed_permanently(item, action, env, exc)
        # the plan's next steps (the link tag after a create, B14's way back) are in the
        # outbox BEFORE this item is complete: killed in between, the write is re-driven
        # (idempotent, B2) and the steps are still there, never lost (B15)
        # (one transaction: a create's confirmation, the field states the write
        # recorded, the steps, complete)
        follow_ups = await self._writes.follow_ups(
            action, env, item.link_id, confirmed=effects.confirm
        )
        news = [new_outbox_item(f, f.environment_id) for f in follow_ups]
        f_items = await self._store.complete_and_enqueue(
            item.id,
            self._clock.now(),
            follow_ups=[new for new, _ in news],
            field_states=effects.records,
            confirm=effects.confirm,
        )
        self._close(item)
        if item.target in self._dead_targets:
            await self._close_superseded(item, action)
        for follow_up, f_item, (_, f_meta) in zip(follow_ups, f_items, news, strict=True):
            await self.send_enqueued(f_item, follow_up, follow_up.environment_id, f_meta)
        return "ok"

    async def _attempt(
        self,
        action: WriteAction,
        env: str | None,
        meta: Mapping[str, Any],
        effects: Effects,
        *,
        retried: bool,
    ) -> None:
        delay_s = self._retry.in_cycle_backoff
        for attempt_no in range(1, self._retry.in_cycle_attempts + 1):
            self._defer_if_held(action)
            effects.clear()
            try:
                recheck = retried or attempt_no > 1
                await self._writes.apply(action, env, meta, effects, recheck=recheck)
                return
            except TransientError as exc:
                if attempt_no >= self._retry.in_cycle_attempts:
                    raise
                wait_s = max(delay_s, exc.retry_after_s or 0.0)
                if wait_s > self._retry.in_cycle_backoff_max:
                    raise
                log.debug("transient failure, retrying in %.2fs: %s", wait_s, exc)
                await self._clock.sleep(wait_s)
                delay_s = min(delay_s * 2, self._retry.in_cycle_backoff_max)
        raise AssertionError("unreachable: the loop returns or raises")

    def _defer_if_held(self, action: WriteAction) -> None:
        """Ask the client's pacer how long the write's family is held: a hold the
        client would wait out is its own to wait (the write waits for its turn there);
        one past the outage window (``PacingPolicy.refuses``: a long Retry-After) defers
        the item, unsent. Only the write's own family counts: a BigPanda family's hold
        does not defer a write to another."""
        family, held_s = self._writes.hold_of(action)
        if self._pacing.refuses(held_s):
            raise _Deferred(family, held_s)

    async def _close_superseded(self, done: OutboxItem, action: WriteAction) -> None:
        """Dead letters of the same target that this success made pointless
        (:func:`sync.followups.supersedes`) are closed: ``dlq list`` keeps only what
        still needs a person."""
        dead = await self._store.list_outbox(
            [OutboxState.DEAD], limit=1_000_000, target=done.target
        )
        left = False
        now = self._clock.now()
        for item in dead:
            try:
                old = decode_action(item.payload.get("action", {}))
            except ValueError:
                old = None
            if item.id > done.id or old is None or not supersedes(action, old):
                left = True
                continue
            await self._store.complete(item.id, now)
            self._close(item)
            await self._store.record_audit(
                NewAuditEntry(
                    "action",
                    "superseded",
                    link_id=item.link_id,
                    bp_incident_id=item.bp_incident_id,
                    sn_sys_id=item.sn_sys_id,
                    detail={"outbox_id": item.id, "by": done.id, "kind": item.kind},
                ),
                now,
            )
            log.info(
                "dead letter %d closed: a later %s write (%d) succeeded",
                item.id,
                done.kind,
                done.id,
                extra=item_extra(item),
            )
        if not left:
            self._dead_targets.discard(done.target)

    # ------------------------------------------------------------------ failures

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
            self._dead_targets.add(item.target)
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
            extra=item_extra(updated),
        )
        if updated.attempts == notify_at:
            await self._alerts.notify(updated, reason)
        if isinstance(exc, ApiError):
            # B14 at the first failure, not the last: the BigPanda user hears of it
            # while it happens (once per incident per outage: see Writes.follow_ups)
            final = updated.attempts >= self._retry.attempts
            await self._communicate_error(action, env, exc, updated, final=final)
        return outcome

    async def _failed_permanently(
        self, item: OutboxItem, action: WriteAction, env: str | None, exc: PermanentError
    ) -> str:
        reason = str(exc)
        updated = await self._store.dead_letter(
            item.id, PERMANENT_PREFIX + reason, self._clock.now()
        )
        self._dead_targets.add(item.target)
        self._close(item)
        log.warning("write refused, not retried: %s", reason, extra=item_extra(updated))
        await self._alerts.notify(updated, reason)
        await self._communicate_error(action, env, exc, updated, final=True)
        return "dead"

    async def _communicate_error(
        self,
        action: WriteAction,
        env: str | None,
        exc: ApiError,
        item: OutboxItem,
        *,
        final: bool,
    ) -> None:
        """The plan's steps for a refusal (B14: the comment, the ``error`` link tag),
        through the outbox."""
        steps = await self._writes.follow_ups(
            action, env, item.link_id, refusal=exc, retrying=not final
        )
        for write in steps:
            await self.run_write(write, write.environment_id)
