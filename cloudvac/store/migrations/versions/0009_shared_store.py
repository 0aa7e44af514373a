"""Several managers on one store: instances, space leases, store facts, uploaded files in
the database, and removals waiting for confirmation (``store/hatables.py``).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "instances",
        sa.Column("instance", sa.String(64), nullable=False),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("presence_key", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.Double(), nullable=False),
        sa.Column("seen_at", sa.Double(), nullable=False),
        sa.Column("cycle_seconds", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("instance", name="pk_instances"),
    )
    op.create_table(
        "space_leases",
        sa.Column("space", sa.String(255), nullable=False),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.Column("renewed_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("space", name="pk_space_leases"),
    )
    op.create_table(
        "store_facts",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_store_facts"),
    )
    op.create_table(
        "joboutputs",
        sa.Column("space", sa.String(255), nullable=False),
        sa.Column("machine", sa.String(255), nullable=False),
        sa.Column("file", sa.String(255), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("written_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("space", "machine", "file", name="pk_joboutputs"),
    )
    op.create_table(
        "removals",
        sa.Column("space", sa.String(255), nullable=False),
        sa.Column("machinetype", sa.String(255), nullable=False),
        sa.Column("noticed_at", sa.Double(), nullable=False),
        sa.Column("machines", sa.Integer(), nullable=False),
        sa.Column("confirmed_at", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("space", "machinetype", name="pk_removals"),
    )


def downgrade() -> None:
    for table in ("removals", "joboutputs", "store_facts", "space_leases", "instances"):
        op.drop_table(table)
