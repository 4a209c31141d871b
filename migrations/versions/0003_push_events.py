"""Push mode: the changes webhooks announced, until the engine has worked them.

One row per (side, incident): a delivery of a change the table already holds only
bumps ``deliveries`` and ``received_at``. Written before the receiver answers 202, so a
kill right after the answer loses nothing; deleted once the engine has read and planned
the incident (``sync.push``).

Revision ID: 0003
Revises: 0002
Create Date: 2026-03-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Migrations do not import the application's types (see 0001): timestamps are timestamptz
# on Postgres, DATETIME text (naive UTC) on SQLite.
UtcDateTime = sa.DateTime


def upgrade() -> None:
    op.create_table(
        "push_events",
        sa.Column("side", sa.String(16), nullable=False),
        sa.Column("object_id", sa.String(64), nullable=False),
        sa.Column("version", sa.String(64), nullable=True),
        sa.Column("environment_id", sa.String(200), nullable=True),
        sa.Column("received_at", UtcDateTime(timezone=True), nullable=False),
        sa.Column("deliveries", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("side", "object_id", name=op.f("pk_push_events")),
    )
    op.create_index("ix_push_events_received_at", "push_events", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_push_events_received_at", table_name="push_events")
    op.drop_table("push_events")
