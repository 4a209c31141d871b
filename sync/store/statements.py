"""The hot statements, built once: their parameters come at execution (building a
statement, and its cache key, on every call costs more than running it on SQLite).

The hot upserts are text, the same on SQLite and Postgres: SQLAlchemy cannot cache an
``on_conflict_do_update`` (it would compile it again on every call).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import String, and_, bindparam, case, func, insert, or_, select, text, update
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

import sync.store.tables as t
from sync.model import LIVE_LINK_STATES, LinkState
from sync.store.base import PERMANENT_ERROR_PREFIX, OutboxState
from sync.store.prepared import PreparedStatements


class unindexed(FunctionElement[str]):  # noqa: N801 - SQLAlchemy's idiom for SQL functions
    """A column no index may serve: ``+column`` on SQLite (its documented way to keep a
    term off indexes), the column itself elsewhere."""

    inherit_cache = True
    name = "unindexed"
    type = String()


@compiles(unindexed)
def _unindexed(element: unindexed, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.clauses, **kw)


@compiles(unindexed, "sqlite")
def _unindexed_sqlite(element: unindexed, compiler: SQLCompiler, **kw: Any) -> str:
    return "+" + compiler.process(element.clauses, **kw)


#: the leader table's only row
LEADER_ID = 1

_LIVE = [s.value for s in LIVE_LINK_STATES]

#: the stored leader epoch (a fenced write checks it first; ``FOR SHARE`` on Postgres)
LEADER_EPOCH = select(t.leader.c.epoch).where(t.leader.c.id == LEADER_ID)
CHECKPOINT_VALUE = select(t.checkpoints.c.value).where(t.checkpoints.c.name == bindparam("b_name"))
CURSOR_OF_SIDE = select(t.cursors).where(t.cursors.c.side == bindparam("b_side"))
COUNT_LINKS = select(func.count()).select_from(t.links)
COUNT_LINKS_IN = COUNT_LINKS.where(t.links.c.state.in_(bindparam("b_states", expanding=True)))
COUNT_OUTBOX = select(func.count()).select_from(t.outbox)
COUNT_OUTBOX_IN = COUNT_OUTBOX.where(t.outbox.c.state.in_(bindparam("b_states", expanding=True)))
LINK_BY_ID = select(t.links).where(t.links.c.id == bindparam("b_id"))
#: a page of links, newest first (every cycle asks for the pending ones)
LINKS_NEWEST = (
    select(t.links)
    .order_by(t.links.c.id.desc())
    .limit(bindparam("b_limit"))
    .offset(bindparam("b_offset"))
)
LINKS_IN_NEWEST = LINKS_NEWEST.where(t.links.c.state.in_(bindparam("b_states", expanding=True)))
LIVE_BY_BP = (
    select(t.links)
    .where(t.links.c.bp_incident_id == bindparam("b_value"), t.links.c.state.in_(_LIVE))
    .limit(1)
)
LIVE_BY_SN = (
    select(t.links)
    .where(t.links.c.sn_sys_id == bindparam("b_value"), t.links.c.state.in_(_LIVE))
    .limit(1)
)
#: the live links of several ids: looked up by id. Without statistics SQLite's planner
#: takes the state index for an IN list of ids (a scan of every live link, each call), so
#: the state test is kept off indexes there (:class:`unindexed`).
LIVE_BY_BPS = select(t.links).where(
    t.links.c.bp_incident_id.in_(bindparam("b_values", expanding=True)),
    unindexed(t.links.c.state).in_(_LIVE),
)
LIVE_BY_SNS = select(t.links).where(
    t.links.c.sn_sys_id.in_(bindparam("b_values", expanding=True)),
    unindexed(t.links.c.state).in_(_LIVE),
)
LINKS_FOR_BP = (
    select(t.links)
    .where(t.links.c.bp_incident_id == bindparam("b_value"))
    .order_by(t.links.c.id.desc())
)
INSERT_LINK = insert(t.links).returning(t.links)
#: the field states of a batch of links (a cycle's pairs: one read, not one per pair)
FIELD_STATES_FOR = select(t.field_state).where(
    t.field_state.c.link_id.in_(bindparam("b_ids", expanding=True))
)
#: links per statement of ``field_states_for`` (bound parameters have a limit)
FIELD_STATES_CHUNK = 5000
#: a live link gets its ServiceNow incident (pending -> linked, another live state kept);
#: no row: the link is not live, or there is none (one statement: its row lock is the
#: UPDATE's own)
CONFIRM_LINK = (
    update(t.links)
    .where(t.links.c.id == bindparam("b_id"), t.links.c.state.in_(_LIVE))
    .values(
        sn_sys_id=bindparam("sn_sys_id"),
        sn_number=bindparam("sn_number"),
        state=case(
            (t.links.c.state == LinkState.PENDING.value, LinkState.LINKED.value),
            else_=t.links.c.state,
        ),
        updated_at=bindparam("updated_at"),
    )
    .returning(t.links)
)
NOT_DONE_WITH_KEY = select(t.outbox).where(
    t.outbox.c.idempotency_key == bindparam("b_key"),
    t.outbox.c.state != OutboxState.DONE.value,
)
#: a new item unless its key has a not-done one (then no row): one statement, not a read
#: first; the conflict target is the partial unique index ``uq_outbox_live_idempotency_key``;
#: it returns the new id only (the rest is what was inserted: ``rows.inserted_item``)
INSERT_ITEM_UNLESS_OPEN = (
    text(
        "INSERT INTO outbox (kind, target, payload, idempotency_key, state, attempts, "
        "next_attempt_at, last_error, link_id, bp_incident_id, sn_sys_id, created_at, "
        "updated_at) VALUES (:kind, :target, :payload, :idempotency_key, :state, :attempts, "
        ":next_attempt_at, :last_error, :link_id, :bp_incident_id, :sn_sys_id, :created_at, "
        ":updated_at) ON CONFLICT (idempotency_key) WHERE state <> 'done' DO NOTHING "
        "RETURNING id"
    )
    .bindparams(*(bindparam(c.name, type_=c.type) for c in t.outbox.c if c.name != "id"))
    .columns(t.outbox.c.id)
)
COMPLETE_ITEM = (
    update(t.outbox)
    .where(t.outbox.c.id == bindparam("b_id"))
    .values(state=OutboxState.DONE.value, updated_at=bindparam("updated_at"))
)
#: (target, kind) of the open items of some targets (``open_writes``: pending, in flight,
#: or dead with attempts left and not refused for good)
OPEN_WRITES = (
    select(t.outbox.c.target, t.outbox.c.kind)
    .where(
        t.outbox.c.target.in_(bindparam("b_targets", expanding=True)),
        or_(
            t.outbox.c.state.in_([OutboxState.PENDING.value, OutboxState.IN_FLIGHT.value]),
            and_(
                t.outbox.c.state == OutboxState.DEAD.value,
                t.outbox.c.attempts < bindparam("b_attempts"),
                or_(
                    t.outbox.c.last_error.is_(None),
                    ~t.outbox.c.last_error.startswith(PERMANENT_ERROR_PREFIX),
                ),
            ),
        ),
    )
    .distinct()
)
INSERT_AUDIT = insert(t.audit)
#: outbox items, oldest first
OUTBOX_OLDEST = select(t.outbox).order_by(t.outbox.c.id).limit(bindparam("b_limit"))
OUTBOX_IN_OLDEST = OUTBOX_OLDEST.where(t.outbox.c.state.in_(bindparam("b_states", expanding=True)))
OUTBOX_IN_OLDEST_FOR_TARGET = OUTBOX_IN_OLDEST.where(t.outbox.c.target == bindparam("b_target"))
OUTBOX_BY_IDS = (
    select(t.outbox)
    .where(t.outbox.c.id.in_(bindparam("b_ids", expanding=True)))
    .order_by(t.outbox.c.id)
)
#: the open items without their payloads, oldest first (every cycle reads them)
OUTBOX_HEADS_IN = (
    select(
        t.outbox.c.id,
        t.outbox.c.kind,
        t.outbox.c.target,
        t.outbox.c.state,
        t.outbox.c.attempts,
        t.outbox.c.updated_at,
        t.outbox.c.link_id,
        t.outbox.c.last_error,
    )
    .where(t.outbox.c.state.in_(bindparam("b_states", expanding=True)))
    .order_by(t.outbox.c.id)
)
#: outbox items due (their retry time passed, or their lease expired), oldest first
CLAIM_DUE = (
    select(t.outbox)
    .where(
        or_(
            and_(
                t.outbox.c.state == OutboxState.PENDING.value,
                t.outbox.c.next_attempt_at
                <= bindparam("b_now", type_=t.outbox.c.next_attempt_at.type),
            ),
            and_(
                t.outbox.c.state == OutboxState.IN_FLIGHT.value,
                t.outbox.c.updated_at <= bindparam("b_cutoff", type_=t.outbox.c.updated_at.type),
            ),
        )
    )
    .order_by(t.outbox.c.next_attempt_at, t.outbox.c.id)
    .limit(bindparam("b_limit"))
)
#: the same, each row locked and locked rows skipped (Postgres: replicas claim apart)
CLAIM_DUE_LOCKED = CLAIM_DUE.with_for_update(skip_locked=True)
#: claimed: in flight from now
MARK_IN_FLIGHT = (
    update(t.outbox)
    .where(t.outbox.c.id.in_(bindparam("b_ids", expanding=True)))
    .values(
        state=OutboxState.IN_FLIGHT.value,
        updated_at=bindparam("b_updated_at", type_=t.outbox.c.updated_at.type),
    )
)

UPSERT_FIELD_STATE = text(
    "INSERT INTO field_state (link_id, side, name, value, synced_at) "
    "VALUES (:link_id, :side, :name, :value, :synced_at) "
    "ON CONFLICT (link_id, side, name) "
    "DO UPDATE SET value = excluded.value, synced_at = excluded.synced_at"
).bindparams(bindparam("synced_at", type_=t.field_state.c.synced_at.type))
UPSERT_CHECKPOINT = text(
    "INSERT INTO checkpoints (name, value, updated_at) VALUES (:name, :value, :updated_at) "
    "ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
).bindparams(bindparam("updated_at", type_=t.checkpoints.c.updated_at.type))
UPSERT_CURSOR = text(
    "INSERT INTO cursors (side, watermark, seen, updated_at) "
    "VALUES (:side, :watermark, :seen, :updated_at) "
    "ON CONFLICT (side) DO UPDATE SET watermark = excluded.watermark, "
    "seen = excluded.seen, updated_at = excluded.updated_at"
).bindparams(
    bindparam("watermark", type_=t.cursors.c.watermark.type),
    bindparam("seen", type_=t.cursors.c.seen.type),
    bindparam("updated_at", type_=t.cursors.c.updated_at.type),
)

#: the statements that run prepared on a SQLite file (:mod:`sync.store.prepared`): those
#: of a create, a carried change and a cycle's reads and bookkeeping
PREPARED = PreparedStatements(
    [
        LEADER_EPOCH,
        CHECKPOINT_VALUE,
        CURSOR_OF_SIDE,
        COUNT_LINKS,
        COUNT_LINKS_IN,
        COUNT_OUTBOX,
        COUNT_OUTBOX_IN,
        LINK_BY_ID,
        LINKS_NEWEST,
        LINKS_IN_NEWEST,
        LIVE_BY_BP,
        LIVE_BY_SN,
        LINKS_FOR_BP,
        LIVE_BY_BPS,
        LIVE_BY_SNS,
        FIELD_STATES_FOR,
        OPEN_WRITES,
        INSERT_LINK,
        CONFIRM_LINK,
        NOT_DONE_WITH_KEY,
        INSERT_ITEM_UNLESS_OPEN,
        COMPLETE_ITEM,
        INSERT_AUDIT,
        UPSERT_FIELD_STATE,
        UPSERT_CHECKPOINT,
        UPSERT_CURSOR,
        CLAIM_DUE,
        MARK_IN_FLIGHT,
        OUTBOX_OLDEST,
        OUTBOX_IN_OLDEST,
        OUTBOX_IN_OLDEST_FOR_TARGET,
        OUTBOX_BY_IDS,
        OUTBOX_HEADS_IN,
    ]
)
