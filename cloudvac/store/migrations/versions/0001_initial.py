"""Initial schema: machines, intents, backoff, drains, events.

Revision ID: 0001
Revises:
Create Date: 2025-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the types in tables.py at this revision: a migration must not change
# meaning when tables.py evolves later.
_NAME = sa.String(255)
_TIME: sa.Double[float] = sa.Double()


def upgrade() -> None:
    op.create_table(
        "machines",
        sa.Column("space", _NAME, nullable=False),
        sa.Column("name", _NAME, nullable=False),
        sa.Column("machinetype", _NAME, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("cloud_id", _NAME, nullable=False),
        sa.Column("processors", sa.Integer(), nullable=False),
        sa.Column("hs06", _TIME, nullable=True),
        sa.Column("created_at", _TIME, nullable=True),
        sa.Column("started_at", _TIME, nullable=True),
        sa.Column("stopped_at", _TIME, nullable=True),
        sa.Column("heartbeat_at", _TIME, nullable=True),
        sa.Column("shutdown_code", sa.Integer(), nullable=True),
        sa.Column("shutdown_text", sa.Text(), nullable=True),
        sa.Column("shutdown_at", _TIME, nullable=True),
        sa.Column("delete_requested_at", _TIME, nullable=True),
        sa.Column("delete_reason", sa.Text(), nullable=False),
        sa.Column("fault", sa.Text(), nullable=False),
        sa.Column("address", sa.Text(), nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("space", "name", name="pk_machines"),
    )
    op.create_table(
        "intents",
        sa.Column("space", _NAME, nullable=False),
        sa.Column("name", _NAME, nullable=False),
        sa.Column("machinetype", _NAME, nullable=False),
        sa.Column("processors", sa.Integer(), nullable=False),
        sa.Column("hs06", _TIME, nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("space", "name", name="pk_intents"),
    )
    op.create_table(
        "backoff",
        sa.Column("space", _NAME, nullable=False),
        sa.Column("machinetype", _NAME, nullable=False),
        sa.Column("last_abort_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("space", "machinetype", name="pk_backoff"),
    )
    op.create_table(
        "drains",
        sa.Column("space", _NAME, nullable=False),
        sa.Column("machinetype", _NAME, nullable=False),
        sa.PrimaryKeyConstraint("space", "machinetype", name="pk_drains"),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", _TIME, nullable=False),
        sa.Column("space", _NAME, nullable=False),
        sa.Column("machinetype", _NAME, nullable=False),
        sa.Column("machine", _NAME, nullable=False),
        sa.Column("kind", _NAME, nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
    )
    op.create_index("ix_events_space_at", "events", ["space", "at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_events_space_at", table_name="events")
    op.drop_table("events")
    op.drop_table("drains")
    op.drop_table("backoff")
    op.drop_table("intents")
    op.drop_table("machines")
