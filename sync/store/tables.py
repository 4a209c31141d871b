"""The link store's schema (SQLAlchemy 2 typed declarative), the same on SQLite and Postgres.

Alembic (``migrations/``) owns the schema in databases; this module is what the
migrations must produce (``tests/store/test_migrations.py`` fails on drift).

Invariants the schema itself enforces, so no code path can break them:

- at most one *live* link (pending, linked or resolved) per BigPanda incident, and per
  ServiceNow sys_id: partial unique indexes, which both SQLite and Postgres support;
- at most one not-done outbox item per idempotency key (partial unique index);
- a single leader row (``id = 1``, checked).

Every timestamp goes through :class:`UtcDateTime`: aware UTC in, aware UTC out. Postgres
stores ``timestamptz``; SQLite has no time zone type, so it stores naive UTC text
(``YYYY-MM-DD HH:MM:SS.ffffff``, which sorts and compares correctly as text).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: link states in which a link is live (must match sync.model.LIVE_LINK_STATES)
LIVE_STATES_SQL = text("state IN ('pending', 'linked', 'resolved')")
#: outbox states that hold an idempotency key
NOT_DONE_SQL = text("state <> 'done'")

#: a 64-bit id that is still SQLite's rowid alias (BIGINT is not, and would not autoincrement)
BigId = BigInteger().with_variant(Integer(), "sqlite")


_BindProcessor = Callable[[datetime | None], Any]
_ResultProcessor = Callable[[Any], datetime | None]


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend; a naive datetime is refused (a caller bug)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime given to the store: {value.isoformat()}")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            # SQLite compares datetimes as text: store every value naive UTC in one format
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def bind_processor(self, dialect: Dialect) -> _BindProcessor | None:
        """On SQLite, one step: the text SQLAlchemy's SQLite ``DATETIME`` stores
        (``YYYY-MM-DD HH:MM:SS.ffffff``, naive UTC), made by ``isoformat`` (a store call
        binds several datetimes; the two processors in a row cost twice as much)."""
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        def process(value: datetime | None) -> str | None:
            if value is None:
                return None
            if value.tzinfo is None or value.utcoffset() is None:
                raise ValueError(f"naive datetime given to the store: {value.isoformat()}")
            return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")

        return process

    def result_processor(self, dialect: Dialect, coltype: object) -> _ResultProcessor | None:
        """On SQLite, the stored text read back in one step (``fromisoformat``; what it
        cannot read goes through SQLAlchemy's own processors)."""
        slow = super().result_processor(dialect, coltype)
        if dialect.name != "sqlite" or slow is None:
            return slow

        def process(value: Any) -> datetime | None:
            if isinstance(value, str):
                try:
                    parsed = datetime.fromisoformat(value)
                except ValueError:
                    pass
                else:
                    if parsed.tzinfo is None:
                        return parsed.replace(tzinfo=UTC)
                    return parsed.astimezone(UTC)
            result: datetime | None = slow(value)
            return result

        return process


# Stable constraint names, so migrations can drop them by name on every backend.
NAMING_CONVENTION: dict[str, Any] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UtcDateTime}  # noqa: RUF012 - SQLAlchemy's own idiom


class LinkRow(Base):
    """One BigPanda incident <-> ServiceNow incident pair (history kept across reopens)."""

    __tablename__ = "links"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    bp_incident_id: Mapped[str] = mapped_column(String(64))
    sn_sys_id: Mapped[str | None] = mapped_column(String(64))
    sn_number: Mapped[str | None] = mapped_column(String(40))
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    resolved_at: Mapped[datetime | None]
    reopen_deadline: Mapped[datetime | None]
    previous_link_id: Mapped[int | None] = mapped_column(ForeignKey("links.id"))
    bp_environment_id: Mapped[str | None] = mapped_column(String(200))
    """The BigPanda incident's environment, set with the link (migration 0002)."""

    __table_args__ = (
        CheckConstraint(
            "state IN ('pending', 'linked', 'resolved', 'superseded')", name="state_valid"
        ),
        # The heart of "no duplicates, ever" (SPEC B2): the database refuses a second live
        # link, whatever the code does, however many daemons race.
        Index(
            "uq_links_live_bp_incident_id",
            "bp_incident_id",
            unique=True,
            sqlite_where=LIVE_STATES_SQL,
            postgresql_where=LIVE_STATES_SQL,
        ),
        Index(
            "uq_links_live_sn_sys_id",
            "sn_sys_id",
            unique=True,
            sqlite_where=LIVE_STATES_SQL,
            postgresql_where=LIVE_STATES_SQL,
        ),
        # Plain indexes for history (superseded links too) and lookups whatever the state.
        Index("ix_links_bp_incident_id", "bp_incident_id"),
        Index("ix_links_sn_sys_id", "sn_sys_id"),
        Index("ix_links_sn_number", "sn_number"),  # the status page's search (0005)
        Index("ix_links_state", "state"),
    )


class FieldStateRow(Base):
    """The value bpsync last synced for one field on one side of a link (echo detection)."""

    __tablename__ = "field_state"

    link_id: Mapped[int] = mapped_column(
        ForeignKey("links.id", ondelete="CASCADE"), primary_key=True
    )
    side: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[str | None] = mapped_column(Text)
    synced_at: Mapped[datetime]


class CursorRow(Base):
    """Per side: the poll watermark and the keys already seen at it (SPEC B16)."""

    __tablename__ = "cursors"

    side: Mapped[str] = mapped_column(String(16), primary_key=True)
    watermark: Mapped[datetime | None]
    seen: Mapped[list[str]] = mapped_column(JSON)
    updated_at: Mapped[datetime]


class OutboxRow(Base):
    """A write recorded before it is sent (SPEC B15); dead items are the dead-letter queue."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(40))
    target: Mapped[str] = mapped_column(String(200))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    idempotency_key: Mapped[str] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime]
    last_error: Mapped[str | None] = mapped_column(Text)
    link_id: Mapped[int | None] = mapped_column(ForeignKey("links.id", ondelete="SET NULL"))
    bp_incident_id: Mapped[str | None] = mapped_column(String(64))
    sn_sys_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    __table_args__ = (
        CheckConstraint("state IN ('pending', 'in_flight', 'done', 'dead')", name="state_valid"),
        Index(
            "uq_outbox_live_idempotency_key",
            "idempotency_key",
            unique=True,
            sqlite_where=NOT_DONE_SQL,
            postgresql_where=NOT_DONE_SQL,
        ),
        Index("ix_outbox_state_next_attempt_at", "state", "next_attempt_at"),
        Index("ix_outbox_link_id", "link_id"),
    )


class AuditRow(Base):
    """Every action taken and every conflict decided, with both values."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(40))
    outcome: Mapped[str] = mapped_column(String(200))
    link_id: Mapped[int | None] = mapped_column(Integer)
    """Not a foreign key: the audit outlives what it talks about."""
    bp_incident_id: Mapped[str | None] = mapped_column(String(64))
    sn_sys_id: Mapped[str | None] = mapped_column(String(64))
    field: Mapped[str | None] = mapped_column(String(200))
    bp_value: Mapped[str | None] = mapped_column(Text)
    sn_value: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)

    __table_args__ = (
        Index("ix_audit_link_id", "link_id"),
        Index("ix_audit_at", "at"),
    )


class LeaderRow(Base):
    """The single leader row: the epoch fences writers of replicas that lost leadership."""

    __tablename__ = "leader"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    epoch: Mapped[int] = mapped_column(BigInteger)
    holder: Mapped[str | None] = mapped_column(String(200))
    updated_at: Mapped[datetime]

    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)


class CheckpointRow(Base):
    """Free-form resumable state (backfill progress), by name."""

    __tablename__ = "checkpoints"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime]


class PushEventRow(Base):
    """A change a webhook announced, until the engine has worked it (migration 0003)."""

    __tablename__ = "push_events"

    side: Mapped[str] = mapped_column(String(16), primary_key=True)
    object_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[str | None] = mapped_column(String(64))
    environment_id: Mapped[str | None] = mapped_column(String(200))
    received_at: Mapped[datetime]
    deliveries: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_push_events_received_at", "received_at"),)


class JournalLedgerRow(Base):
    """A journal entry bpsync carries to the other side, recorded before it is sent
    (``sync.journal``); entry id ``history``: a side's history cutoff (migration 0004)."""

    __tablename__ = "journal_ledger"

    link_id: Mapped[int] = mapped_column(
        ForeignKey("links.id", ondelete="CASCADE"), primary_key=True
    )
    side: Mapped[str] = mapped_column(String(16), primary_key=True)
    """The side the entry was read from."""
    entry_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64))
    """Of the normalised text written to the other side."""
    recorded_at: Mapped[datetime]


def _table(row: type[Base]) -> Table:
    table = row.__table__
    assert isinstance(table, Table)
    return table


metadata = Base.metadata
links = _table(LinkRow)
field_state = _table(FieldStateRow)
cursors = _table(CursorRow)
outbox = _table(OutboxRow)
audit = _table(AuditRow)
leader = _table(LeaderRow)
checkpoints = _table(CheckpointRow)
push_events = _table(PushEventRow)
journal_ledger = _table(JournalLedgerRow)
