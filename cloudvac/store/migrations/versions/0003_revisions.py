"""Space revisions: every write of a space's machines is stamped, so the per-cycle read
of a space's history fetches only what changed since the last one.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "space_revisions",
        sa.Column("space", sa.String(255), nullable=False),
        sa.Column("rev", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("space", name=op.f("pk_space_revisions")),
    )
    # Existing rows get revision 0: the first read after the upgrade is a full one anyway.
    op.add_column("machines", sa.Column("rev", sa.Integer(), server_default="0",
                                        nullable=False))
    op.create_index("ix_machines_space_rev", "machines", ["space", "rev"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_machines_space_rev", table_name="machines")
    with op.batch_alter_table("machines") as batch:
        batch.drop_column("rev")
    op.drop_table("space_revisions")
