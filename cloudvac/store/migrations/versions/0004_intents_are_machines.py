"""Intents are machine rows in state 'intent' (one row per machine from the decision to
create it), and heartbeat lists are answered from an index.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NAME = sa.String(255)
_TIME: sa.Double[float] = sa.Double()


def upgrade() -> None:
    # An intent whose machine already has a row (a create answered before the upgrade) is
    # that row; any other becomes a row in state 'intent'.  Revision 0 is right: a Store
    # opened on the upgraded database starts with a full read.
    op.execute("""
        INSERT INTO machines (space, name, machinetype, state, cloud_id, processors, hs06,
                              created_at, delete_reason, fault, address, updated_at, rev)
        SELECT i.space, i.name, i.machinetype, 'intent', '', i.processors, i.hs06,
               i.created_at, '', '', '', i.created_at, 0
        FROM intents i
        WHERE NOT EXISTS (SELECT 1 FROM machines m WHERE m.space = i.space
                          AND m.name = i.name)
    """)
    op.drop_table("intents")
    op.create_index("ix_machines_space_machinetype_heartbeat_at", "machines",
                    ["space", "machinetype", "heartbeat_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_machines_space_machinetype_heartbeat_at", table_name="machines")
    op.create_table(
        "intents",
        sa.Column("space", _NAME, nullable=False),
        sa.Column("name", _NAME, nullable=False),
        sa.Column("machinetype", _NAME, nullable=False),
        sa.Column("processors", sa.Integer(), nullable=False),
        sa.Column("hs06", _TIME, nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("space", "name", name=op.f("pk_intents")),
    )
    op.execute("""
        INSERT INTO intents (space, name, machinetype, processors, hs06, created_at)
        SELECT space, name, machinetype, processors, hs06, COALESCE(created_at, updated_at)
        FROM machines WHERE state = 'intent'
    """)
    op.execute("DELETE FROM machines WHERE state = 'intent'")
