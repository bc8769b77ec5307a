"""The usage ledger (one row per request) and its daily rollup.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from meterway.store.types import Money

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_TOKENS = ("prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens", "reasoning_tokens")
_PRICES = ("price_input", "price_output", "price_cache_read", "price_cache_write")
_DIMENSIONS = ("customer_id", "key_id", "user_id", "team_id", "model_group")


def _tokens() -> list[sa.Column[object]]:
    return [sa.Column(name, sa.Integer, nullable=False, server_default="0") for name in _TOKENS]


def upgrade() -> None:
    op.create_table(
        "mw_ledger",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), autoincrement=True, nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("endpoint", sa.String(16), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=True),
        sa.Column("key_alias", sa.String(255), nullable=True),
        sa.Column("user_id", sa.String(255), nullable=True),
        sa.Column("team_id", sa.String(255), nullable=True),
        sa.Column("customer_id", sa.String(255), nullable=True),
        sa.Column("model_group", sa.String(255), nullable=True),
        sa.Column("deployment_id", sa.String(255), nullable=True),
        sa.Column("upstream_model", sa.String(255), nullable=True),
        sa.Column("stream", sa.Boolean, nullable=False, server_default="0"),
        *_tokens(),
        sa.Column("total_tokens", sa.Integer, nullable=False, server_default="0"),
        sa.Column("tokens_estimated", sa.Boolean, nullable=False, server_default="0"),
        *(sa.Column(name, sa.BigInteger, nullable=True) for name in _PRICES),
        sa.Column("cost", Money(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("http_status", sa.Integer, nullable=False),
        sa.Column("error_type", sa.String(64), nullable=True),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("ttft_ms", sa.Float, nullable=True),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_mw_ledger"),
    )
    op.create_index("ix_mw_ledger_request_id", "mw_ledger", ["request_id"])
    op.create_index("ix_mw_ledger_started_at", "mw_ledger", ["started_at"])
    for dimension in ("customer_id", "key_id", "user_id", "team_id", "model_group"):
        op.create_index(f"ix_mw_ledger_{dimension}_started_at", "mw_ledger", [dimension, "started_at"])
    op.create_table(
        "mw_usage_daily",
        sa.Column("day", sa.String(10), nullable=False),
        *(sa.Column(name, sa.String(255), nullable=False, server_default="") for name in _DIMENSIONS),
        *(sa.Column(name, sa.BigInteger, nullable=False, server_default="-1") for name in _PRICES),
        sa.Column("requests", sa.Integer, nullable=False, server_default="0"),
        sa.Column("errors", sa.Integer, nullable=False, server_default="0"),
        sa.Column("unpriced", sa.Integer, nullable=False, server_default="0"),
        *_tokens(),
        sa.Column("cost", Money(), nullable=False, server_default="0"),
        sa.UniqueConstraint("day", *_DIMENSIONS, *_PRICES, name="uq_mw_usage_daily_group"),
    )
    op.create_index("ix_mw_usage_daily_customer_id_day", "mw_usage_daily", ["customer_id", "day"])
    op.create_index("ix_mw_usage_daily_day_model_group", "mw_usage_daily", ["day", "model_group"])


def downgrade() -> None:
    op.drop_table("mw_usage_daily")
    op.drop_table("mw_ledger")
