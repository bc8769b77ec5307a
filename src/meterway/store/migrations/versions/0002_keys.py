"""Virtual keys, stored as SHA-256 digests.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from meterway.store.types import Money

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mw_keys",
        sa.Column("token", sa.String(64), nullable=False),
        sa.Column("key_name", sa.String(32), nullable=False),
        sa.Column("key_alias", sa.String(255), nullable=True),
        sa.Column("models", sa.JSON, nullable=False),
        sa.Column("expires", sa.DateTime(timezone=True), nullable=True),
        sa.Column("blocked", sa.Boolean, nullable=False, server_default="0"),
        sa.Column("user_id", sa.String(255), nullable=True),
        sa.Column("team_id", sa.String(255), nullable=True),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("max_budget", Money(), nullable=True),
        sa.Column("budget_duration", sa.String(32), nullable=True),
        sa.Column("budget_reset_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("spend", Money(), nullable=False, server_default="0"),
        sa.Column("rpm_limit", sa.Integer, nullable=True),
        sa.Column("tpm_limit", sa.Integer, nullable=True),
        sa.Column("max_parallel_requests", sa.Integer, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.ForeignKeyConstraint(
            ["team_id"], ["mw_teams.team_id"], name="fk_mw_keys_team_id_mw_teams", ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("token", name="pk_mw_keys"),
    )
    op.create_index("ix_mw_keys_key_alias", "mw_keys", ["key_alias"])
    op.create_index("ix_mw_keys_user_id", "mw_keys", ["user_id"])
    op.create_index("ix_mw_keys_team_id", "mw_keys", ["team_id"])


def downgrade() -> None:
    op.drop_index("ix_mw_keys_team_id", "mw_keys")
    op.drop_index("ix_mw_keys_user_id", "mw_keys")
    op.drop_index("ix_mw_keys_key_alias", "mw_keys")
    op.drop_table("mw_keys")
