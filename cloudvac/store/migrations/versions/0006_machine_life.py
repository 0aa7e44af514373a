"""A machine's life as the VM-facing side sees it: when the VM's own shutdown_message was
recorded (it is never overwritten after) and when its user_data was first served.

Rows of earlier revisions get neither: a message recorded before this revision may be
replaced once more by the VM's own.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("machines") as batch:
        batch.add_column(sa.Column("reported_at", sa.Double(), nullable=True))
        batch.add_column(sa.Column("user_data_at", sa.Double(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("machines") as batch:
        batch.drop_column("user_data_at")
        batch.drop_column("reported_at")
