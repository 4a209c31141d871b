"""Initial link store schema: links, field state, cursors, outbox, audit, leader, checkpoints.

Revision ID: 0001
Revises:
Create Date: 2026-01-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIVE_LINK = sa.text("state IN ('pending', 'linked', 'resolved')")
NOT_DONE = sa.text("state <> 'done'")
# Migrations do not import the application's types: they must keep meaning what they meant.
# Timestamps: timestamptz on Postgres, DATETIME text on SQLite (UTC, see tables.UtcDateTime).
UtcDateTime = sa.DateTime
# 64-bit ids; on SQLite an INTEGER, so that it is the autoincrementing rowid.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "links",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("bp_incident_id", sa.String(64), nullable=False),
        sa.Column("sn_sys_id", sa.String(64), nullable=True),
        sa.Column("sn_number", sa.String(40), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", UtcDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", UtcDateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", UtcDateTime(timezone=True), nullable=True),
        sa.Column("reopen_deadline", UtcDateTime(timezone=True), nullable=True),
        sa.Column("previous_link_id", sa.Integer(), nullable=True),
        sa.CheckConstraint(
            "state IN ('pending', 'linked', 'resolved', 'superseded')",
            name=op.f("ck_links_state_valid"),
        ),
        sa.ForeignKeyConstraint(
            ["previous_link_id"], ["links.id"], name=op.f("fk_links_previous_link_id_links")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_links")),
    )
    op.create_index(
        "uq_links_live_bp_incident_id",
        "links",
        ["bp_incident_id"],
        unique=True,
        sqlite_where=LIVE_LINK,
        postgresql_where=LIVE_LINK,
    )
    op.create_index(
        "uq_links_live_sn_sys_id",
        "links",
        ["sn_sys_id"],
        unique=True,
        sqlite_where=LIVE_LINK,
        postgresql_where=LIVE_LINK,
    )
    op.create_index("ix_links_bp_incident_id", "links", ["bp_incident_id"])
    op.create_index("ix_links_sn_sys_id", "links", ["sn_sys_id"])
    op.create_index("ix_links_state", "links", ["state"])

    op.create_table(
        "field_state",
        sa.Column("link_id", sa.Integer(), nullable=False),
        sa.Column("side", sa.String(16), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("value", sa.Text(), nullable=True),
        sa.Column("synced_at", UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["link_id"],
            ["links.id"],
            name=op.f("fk_field_state_link_id_links"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("link_id", "side", "name", name=op.f("pk_field_state")),
    )

    op.create_table(
        "cursors",
        sa.Column("side", sa.String(16), nullable=False),
        sa.Column("watermark", UtcDateTime(timezone=True), nullable=True),
        sa.Column("seen", sa.JSON(), nullable=False),
        sa.Column("updated_at", UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("side", name=op.f("pk_cursors")),
    )

    op.create_table(
        "outbox",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("target", sa.String(200), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UtcDateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("link_id", sa.Integer(), nullable=True),
        sa.Column("bp_incident_id", sa.String(64), nullable=True),
        sa.Column("sn_sys_id", sa.String(64), nullable=True),
        sa.Column("created_at", UtcDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", UtcDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "state IN ('pending', 'in_flight', 'done', 'dead')", name=op.f("ck_outbox_state_valid")
        ),
        sa.ForeignKeyConstraint(
            ["link_id"], ["links.id"], name=op.f("fk_outbox_link_id_links"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
    )
    op.create_index(
        "uq_outbox_live_idempotency_key",
        "outbox",
        ["idempotency_key"],
        unique=True,
        sqlite_where=NOT_DONE,
        postgresql_where=NOT_DONE,
    )
    op.create_index("ix_outbox_state_next_attempt_at", "outbox", ["state", "next_attempt_at"])
    op.create_index("ix_outbox_link_id", "outbox", ["link_id"])

    op.create_table(
        "audit",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("at", UtcDateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("outcome", sa.String(200), nullable=False),
        sa.Column("link_id", sa.Integer(), nullable=True),
        sa.Column("bp_incident_id", sa.String(64), nullable=True),
        sa.Column("sn_sys_id", sa.String(64), nullable=True),
        sa.Column("field", sa.String(200), nullable=True),
        sa.Column("bp_value", sa.Text(), nullable=True),
        sa.Column("sn_value", sa.Text(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit")),
    )
    op.create_index("ix_audit_link_id", "audit", ["link_id"])
    op.create_index("ix_audit_at", "audit", ["at"])

    op.create_table(
        "leader",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("holder", sa.String(200), nullable=True),
        sa.Column("updated_at", UtcDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_leader_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_leader")),
    )

    op.create_table(
        "checkpoints",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_checkpoints")),
    )


def downgrade() -> None:
    op.drop_table("checkpoints")
    op.drop_table("leader")
    op.drop_index("ix_audit_at", table_name="audit")
    op.drop_index("ix_audit_link_id", table_name="audit")
    op.drop_table("audit")
    op.drop_index("ix_outbox_link_id", table_name="outbox")
    op.drop_index("ix_outbox_state_next_attempt_at", table_name="outbox")
    op.drop_index("uq_outbox_live_idempotency_key", table_name="outbox")
    op.drop_table("outbox")
    op.drop_table("cursors")
    op.drop_table("field_state")
    op.drop_index("ix_links_state", table_name="links")
    op.drop_index("ix_links_sn_sys_id", table_name="links")
    op.drop_index("ix_links_bp_incident_id", table_name="links")
    op.drop_index("uq_links_live_sn_sys_id", table_name="links")
    op.drop_index("uq_links_live_bp_incident_id", table_name="links")
    op.drop_table("links")
