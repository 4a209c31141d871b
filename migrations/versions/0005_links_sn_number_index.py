"""An index on ``links.sn_number``: the status page finds a link's trail by its INC
number (``sync.runtime.status``), as ``bpsync links show`` finds it by sys_id.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_links_sn_number", "links", ["sn_number"])


def downgrade() -> None:
    op.drop_index("ix_links_sn_number", table_name="links")
