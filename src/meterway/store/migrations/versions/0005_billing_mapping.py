"""Billing mapping: users, teams and keys may name their own Lago customer and subscription, and a
customer may name the Lago plan `meterway billing setup` subscribes it to. Pending exports get an
index in claiming order, so a claim reads the oldest due rows instead of sorting every pending one
(a backlog after a Lago outage made each claim slower than the last).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_MAPPED = ("mw_users", "mw_teams", "mw_keys")
_COLUMNS = ("billing_external_customer_id", "billing_external_subscription_id")


def upgrade() -> None:
    for table in _MAPPED:
        with op.batch_alter_table(table) as batch:
            for column in _COLUMNS:
                batch.add_column(sa.Column(column, sa.String(255), nullable=True))
    with op.batch_alter_table("mw_customers") as batch:
        batch.add_column(sa.Column("billing_plan_code", sa.String(255), nullable=True))
    pending = sa.text("status = 'pending'")
    op.create_index(
        "ix_mw_billing_outbox_pending",
        "mw_billing_outbox",
        ["created_at"],
        postgresql_where=pending,
        sqlite_where=pending,
    )


def downgrade() -> None:
    op.drop_index("ix_mw_billing_outbox_pending", "mw_billing_outbox")
    with op.batch_alter_table("mw_customers") as batch:
        batch.drop_column("billing_plan_code")
    for table in _MAPPED:
        with op.batch_alter_table(table) as batch:
            for column in _COLUMNS:
                batch.drop_column(column)
