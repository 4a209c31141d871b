"""Journals both ways: the ledger of the entries bpsync carries, each recorded before it
is sent, one row per (link, side read from, entry id) with the digest of the text
written to the other side (``sync.journal``).

The links that exist when journals come get a history cutoff on both sides (entry id
``history``, time = the upgrade): what was said on them before is not copied over all
at once; what is said from now on is carried.

Revision ID: 0004
Revises: 0003
Create Date: 2026-03-02 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Migrations do not import the application's types (see 0001): timestamps are timestamptz
# on Postgres, DATETIME text (naive UTC) on SQLite.
UtcDateTime = sa.DateTime

# ``history`` is the cutoff's entry id as stored (``sync.journal.HISTORY``); plain SQL that
# SQLite and Postgres both run (CURRENT_TIMESTAMP is UTC text on SQLite, timestamptz on
# Postgres; the store reads both as aware UTC)
HISTORY_CUTOFFS = sa.text(
    "INSERT INTO journal_ledger (link_id, side, entry_id, digest, recorded_at)"
    " SELECT links.id, sides.side, 'history', '', CURRENT_TIMESTAMP"
    " FROM links CROSS JOIN (SELECT 'bigpanda' AS side UNION ALL SELECT 'servicenow') AS sides"
    " WHERE links.state IN ('pending', 'linked', 'resolved')"
)


def upgrade() -> None:
    op.create_table(
        "journal_ledger",
        sa.Column("link_id", sa.Integer(), nullable=False),
        sa.Column("side", sa.String(16), nullable=False),
        sa.Column("entry_id", sa.String(64), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("recorded_at", UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["link_id"],
            ["links.id"],
            name=op.f("fk_journal_ledger_link_id_links"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("link_id", "side", "entry_id", name=op.f("pk_journal_ledger")),
    )
    op.execute(HISTORY_CUTOFFS)


def downgrade() -> None:
    op.drop_table("journal_ledger")
