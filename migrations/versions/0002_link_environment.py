"""The BigPanda environment of an incident becomes a column of its links.

Until now a create wrote a checkpoint ``bp_env:<BigPanda incident id>`` holding the
incident's environment id. The upgrade adds the nullable ``links.bp_environment_id``,
copies each such checkpoint's value into the column of every link of its incident, and
deletes those checkpoints. The downgrade writes them back (from each incident's newest
link that has an environment) and drops the column.

Revision ID: 0002
Revises: 0001
Create Date: 2026-02-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Migrations do not import the application's names: they must keep meaning what they meant.
# ``bp_env:`` is the checkpoint name prefix as stored (``BP_ENV_CHECKPOINT_PREFIX``),
# compared with substr, not LIKE (whose ``_`` matches any character). Plain SQL that
# SQLite and Postgres both run (``||`` concatenates on both).
MOVE_TO_LINKS = sa.text(
    "UPDATE links SET bp_environment_id = ("
    " SELECT checkpoints.value FROM checkpoints"
    " WHERE checkpoints.name = 'bp_env:' || links.bp_incident_id"
    ") WHERE EXISTS ("
    " SELECT 1 FROM checkpoints WHERE checkpoints.name = 'bp_env:' || links.bp_incident_id"
    ")"
)
DELETE_CHECKPOINTS = sa.text("DELETE FROM checkpoints WHERE substr(name, 1, 7) = 'bp_env:'")
BACK_TO_CHECKPOINTS = sa.text(
    "INSERT INTO checkpoints (name, value, updated_at)"
    " SELECT 'bp_env:' || links.bp_incident_id, links.bp_environment_id, links.updated_at"
    " FROM links WHERE links.id = ("
    " SELECT max(newer.id) FROM links AS newer"
    " WHERE newer.bp_incident_id = links.bp_incident_id"
    " AND newer.bp_environment_id IS NOT NULL"
    ")"
)


def upgrade() -> None:
    op.add_column("links", sa.Column("bp_environment_id", sa.String(200), nullable=True))
    op.execute(MOVE_TO_LINKS)
    op.execute(DELETE_CHECKPOINTS)


def downgrade() -> None:
    op.execute(DELETE_CHECKPOINTS)
    op.execute(BACK_TO_CHECKPOINTS)
    # SQLite (3.35 and later) and Postgres both drop a column that no index uses
    op.drop_column("links", "bp_environment_id")
