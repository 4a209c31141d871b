"""The hot statements, built once: their parameters come at execution (building a
statement, and its cache key, on every call costs more than running it on SQLite).

The hot upserts are text, the same on SQLite and Postgres: SQLAlchemy cannot cache an
``on_conflict_do_update`` (it would compile it again on every call).
"""

from __future__ import annotations

from sqlalchemy import and_, bindparam, insert, or_, select, text, update

import sync.store.tables as t
from sync.model import LIVE_LINK_STATES
from sync.store.base import PERMANENT_ERROR_PREFIX, OutboxState

#: the leader table's only row
LEADER_ID = 1

_LIVE = [s.value for s in LIVE_LINK_STATES]

LINK_BY_ID = select(t.links).where(t.links.c.id == bindparam("b_id"))
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
LIVE_BY_BPS = select(t.links).where(
    t.links.c.bp_incident_id.in_(bindparam("b_values", expanding=True)),
    t.links.c.state.in_(_LIVE),
)
LIVE_BY_SNS = select(t.links).where(
    t.links.c.sn_sys_id.in_(bindparam("b_values", expanding=True)),
    t.links.c.state.in_(_LIVE),
)
LINKS_FOR_BP = (
    select(t.links)
    .where(t.links.c.bp_incident_id == bindparam("b_value"))
    .order_by(t.links.c.id.desc())
)
INSERT_LINK = insert(t.links).returning(t.links)
CONFIRM_LINK = (
    update(t.links)
    .where(t.links.c.id == bindparam("b_id"))
    .values(
        sn_sys_id=bindparam("sn_sys_id"),
        sn_number=bindparam("sn_number"),
        state=bindparam("state"),
        updated_at=bindparam("updated_at"),
    )
    .returning(t.links)
)
NOT_DONE_WITH_KEY = select(t.outbox).where(
    t.outbox.c.idempotency_key == bindparam("b_key"),
    t.outbox.c.state != OutboxState.DONE.value,
)
INSERT_ITEM = insert(t.outbox).returning(t.outbox)
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
