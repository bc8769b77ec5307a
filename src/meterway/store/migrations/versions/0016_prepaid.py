"""Prepaid credits: the last reading of each charged entity's Lago wallets, its history, and the
Lago webhooks already taken.

`mw_prepaid_balances` holds, per charged entity (by `billing.charge_by`), what Lago last reported
(its active wallets' ongoing balance and the usage Lago had counted) and the Lago price of the
entity's ledger rows at that reading: every replica reads it, so a top-up one replica heard of
is honoured by all. `mw_prepaid_history` keeps the readings for the UI and `customers info`.
`mw_lago_webhooks` makes the webhook receiver idempotent on Lago's `X-Lago-Unique-Key`.
Amounts are integers of 1e-10 of the plan's currency, as everywhere in meterway.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mw_prepaid_balances",
        sa.Column("entity_id", sa.String(255), nullable=False),
        sa.Column("lago_customer_id", sa.String(255), nullable=True),
        sa.Column("subscription_id", sa.String(255), nullable=True),
        sa.Column("plan_code", sa.String(255), nullable=True),
        sa.Column("currency", sa.String(8), nullable=True),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("has_wallets", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("balance_units", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("lago_usage_units", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("priced_units", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("advance_units", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("advance_paid_units", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("wallets", sa.JSON, nullable=True),
        sa.Column("reason", sa.String(32), nullable=True),
        sa.Column("read_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("entity_id", name="pk_mw_prepaid_balances"),
    )
    op.create_index("ix_mw_prepaid_balances_lago_customer_id", "mw_prepaid_balances", ["lago_customer_id"])
    op.create_table(
        "mw_prepaid_history",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("entity_id", sa.String(255), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("balance_units", sa.BigInteger, nullable=False),
        sa.Column("lago_usage_units", sa.BigInteger, nullable=False),
        sa.Column("priced_units", sa.BigInteger, nullable=False),
        sa.Column("available_units", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_mw_prepaid_history"),
    )
    op.create_index("ix_mw_prepaid_history_entity_id_at", "mw_prepaid_history", ["entity_id", "at"])
    op.create_table(
        "mw_lago_webhooks",
        sa.Column("unique_key", sa.String(255), nullable=False),
        sa.Column("webhook_type", sa.String(100), nullable=False),
        sa.Column("lago_customer_id", sa.String(255), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("unique_key", name="pk_mw_lago_webhooks"),
    )
    op.create_index("ix_mw_lago_webhooks_received_at", "mw_lago_webhooks", ["received_at"])


def downgrade() -> None:
    op.drop_table("mw_lago_webhooks")
    op.drop_table("mw_prepaid_history")
    op.drop_table("mw_prepaid_balances")
