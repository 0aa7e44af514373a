"""Credential expiry per space (Keystone and Check-in tokens), for status and alerts.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NAME = sa.String(255)
_TIME: sa.Double[float] = sa.Double()


def upgrade() -> None:
    op.create_table(
        "credentials",
        sa.Column("space", _NAME, nullable=False),
        sa.Column("kind", _NAME, nullable=False),
        sa.Column("expires_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("space", "kind", name=op.f("pk_credentials")),
    )


def downgrade() -> None:
    op.drop_table("credentials")
