"""Accounting: one record per finished machine (``store/accounting.py``), written once by the
engine when the machine is gone, read by ``cloudvac accounting`` and the APEL writer.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "accounting",
        sa.Column("space", sa.String(255), nullable=False),
        sa.Column("machine", sa.String(255), nullable=False),
        sa.Column("vm_uuid", sa.String(255), nullable=False),
        sa.Column("machinetype", sa.String(255), nullable=False),
        sa.Column("vo", sa.String(255), nullable=False),
        sa.Column("dirac_site", sa.String(255), nullable=False),
        sa.Column("site", sa.String(255), nullable=False),
        sa.Column("processors", sa.Integer(), nullable=False),
        sa.Column("benchmark_per_processor", sa.Double(), nullable=True),
        sa.Column("benchmark_source", sa.String(16), nullable=False),
        sa.Column("started_at", sa.Double(), nullable=False),
        sa.Column("stopped_at", sa.Double(), nullable=False),
        sa.Column("cpu_seconds", sa.Double(), nullable=True),
        sa.Column("idle_seconds", sa.Double(), nullable=True),
        sa.Column("shutdown_code", sa.Integer(), nullable=True),
        sa.Column("shutdown_text", sa.Text(), nullable=False),
        sa.Column("jobs_production", sa.Integer(), nullable=False),
        sa.Column("jobs_user", sa.Integer(), nullable=False),
        sa.Column("jobs_known", sa.Boolean(), nullable=False),
        sa.Column("fizzled", sa.Boolean(), nullable=False),
        sa.Column("recorded_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("space", "machine", name="pk_accounting"),
    )
    op.create_index("ix_accounting_stopped_at", "accounting", ["stopped_at"])


def downgrade() -> None:
    op.drop_index("ix_accounting_stopped_at", table_name="accounting")
    op.drop_table("accounting")
