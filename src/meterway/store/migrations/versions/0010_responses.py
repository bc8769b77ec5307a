"""The Responses API's stored responses: per response id its owner, the deployment that served it
(native responses are routed back to it), its status and expiry, and for responses bridged to a
chat API the Response object and its input items, which only meterway holds.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mw_responses",
        sa.Column("response_id", sa.String(128), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=True),
        sa.Column("team_id", sa.String(255), nullable=True),
        sa.Column("model_group", sa.String(255), nullable=True),
        sa.Column("deployment_id", sa.String(255), nullable=False),
        sa.Column("native", sa.Boolean(), nullable=False, server_default="0"),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column("input_items", sa.Text(), nullable=True),
        sa.Column("too_large", sa.Boolean(), nullable=False, server_default="0"),
        sa.Column("metered", sa.Boolean(), nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("response_id", name="pk_mw_responses"),
    )
    op.create_index("ix_mw_responses_expires_at", "mw_responses", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_mw_responses_expires_at", "mw_responses")
    op.drop_table("mw_responses")
