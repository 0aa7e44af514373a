"""The operator's commands and the project's room.

* ``drains`` gain when the drain was asked and its grace: machines are told to stop taking
  jobs by ``drained_at + grace_seconds`` and deleted then.  Existing rows get 0 and 0:
  drained since ever, deleted at once, which is what they meant before this revision.
* ``machines`` gain ``kill_requested_at`` and ``kill_reason`` (``cloudvac kill``), written
  by the operator's command only.
* ``project_room``: what the cloud's quota leaves each space once usage by servers cloudvac
  does not own is counted, as the engine last read it (``cloudvac status`` says when it
  leaves no room for a new machine).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("drains") as batch:
        batch.add_column(sa.Column("drained_at", sa.Double(), nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("grace_seconds", sa.Double(), nullable=False,
                                   server_default="0"))
    with op.batch_alter_table("machines") as batch:
        batch.add_column(sa.Column("kill_requested_at", sa.Double(), nullable=True))
        batch.add_column(sa.Column("kill_reason", sa.Text(), nullable=True))
    op.create_table(
        "project_room",
        sa.Column("space", sa.String(255), nullable=False),
        sa.Column("at", sa.Double(), nullable=False),
        sa.Column("foreign_processors", sa.Integer(), nullable=False),
        sa.Column("room_processors", sa.Integer(), nullable=True),
        sa.Column("room_instances", sa.Integer(), nullable=True),
        sa.Column("smallest_processors", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("space", name="pk_project_room"),
    )


def downgrade() -> None:
    op.drop_table("project_room")
    with op.batch_alter_table("machines") as batch:
        batch.drop_column("kill_reason")
        batch.drop_column("kill_requested_at")
    with op.batch_alter_table("drains") as batch:
        batch.drop_column("grace_seconds")
        batch.drop_column("drained_at")
