"""Alerts: the outbox budget and credit alerts wait in until their receiver took them.

One row per alert and destination (`webhook`, `slack`). `dedupe` names the crossing (scope,
entity, budget period, event, threshold): the unique index on (dedupe, destination) is what makes
an alert exactly-once across replicas, since every replica that notices the same crossing inserts
the same key and all but the first insert nothing. Rows are claimed like billing exports
(`claimed_until`, and `claimed_by`, the claiming replica's token: a replica whose claim ran out
and was taken by another marks nothing), retried with backoff, `failed` when the receiver refuses
them for good (a 4xx), and kept after delivery (`sent_at`) so that a crossing already alerted is
never alerted again in the same period.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mw_alerts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("dedupe", sa.String(600), nullable=False),
        sa.Column("destination", sa.String(16), nullable=False),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_mw_alerts"),
    )
    op.create_index("ix_mw_alerts_dedupe_destination", "mw_alerts", ["dedupe", "destination"], unique=True)
    op.create_index("ix_mw_alerts_status_next_attempt_at", "mw_alerts", ["status", "next_attempt_at"])


def downgrade() -> None:
    op.drop_table("mw_alerts")
