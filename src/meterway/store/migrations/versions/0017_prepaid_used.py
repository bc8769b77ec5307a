"""Prepaid readings: when a request last asked for the entity (`last_used_at`).

The schedule re-reads only entities some request asked for lately: ids a client invents once
are not read from Lago forever. Rows already there count as used at their last reading.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("mw_prepaid_balances") as batch:
        batch.add_column(sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE mw_prepaid_balances SET last_used_at = COALESCE(read_at, attempt_at)")


def downgrade() -> None:
    with op.batch_alter_table("mw_prepaid_balances") as batch:
        batch.drop_column("last_used_at")
