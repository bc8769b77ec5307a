"""Deployments added at runtime with `/model/new` when STORE_MODEL_IN_DB is on. Their parameters,
credentials included, are stored as one encrypted token; `updated_at` lets replicas that poll see
a change.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mw_models",
        sa.Column("model_id", sa.String(255), primary_key=True),
        sa.Column("model_name", sa.String(255), nullable=False),
        sa.Column("litellm_params", sa.Text(), nullable=False),
        sa.Column("model_info", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index("ix_mw_models_model_name", "mw_models", ["model_name"])


def downgrade() -> None:
    op.drop_index("ix_mw_models_model_name", "mw_models")
    op.drop_table("mw_models")
