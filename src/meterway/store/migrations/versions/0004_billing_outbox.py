"""Billing export: a stable id per ledger row, and the outbox its export waits in.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("mw_ledger") as batch:
        batch.add_column(sa.Column("uid", sa.String(32), nullable=True))
    op.create_index("ix_mw_ledger_uid", "mw_ledger", ["uid"], unique=True)
    op.create_table(
        "mw_billing_outbox",
        sa.Column("ledger_uid", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("lago_error", sa.JSON, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("ledger_uid", name="pk_mw_billing_outbox"),
    )
    op.create_index("ix_mw_billing_outbox_status_next_attempt_at", "mw_billing_outbox", ["status", "next_attempt_at"])


def downgrade() -> None:
    op.drop_table("mw_billing_outbox")
    op.drop_index("ix_mw_ledger_uid", "mw_ledger")
    with op.batch_alter_table("mw_ledger") as batch:
        batch.drop_column("uid")
