"""Tenancy: users, teams and their members, customers.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from meterway.store.types import Money

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _limits() -> list[sa.Column[object]]:
    return [
        sa.Column("max_budget", Money(), nullable=True),
        sa.Column("budget_duration", sa.String(32), nullable=True),
        sa.Column("budget_reset_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("spend", Money(), nullable=False, server_default="0"),
        sa.Column("rpm_limit", sa.Integer, nullable=True),
        sa.Column("tpm_limit", sa.Integer, nullable=True),
        sa.Column("max_parallel_requests", sa.Integer, nullable=True),
    ]


def _times() -> list[sa.Column[object]]:
    return [
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    ]


def upgrade() -> None:
    op.create_table(
        "mw_users",
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("user_email", sa.String(320), nullable=True),
        sa.Column("user_role", sa.String(32), nullable=False, server_default="internal_user"),
        sa.Column("models", sa.JSON, nullable=False),
        sa.Column("metadata", sa.JSON, nullable=False),
        *_limits(),
        *_times(),
        sa.PrimaryKeyConstraint("user_id", name="pk_mw_users"),
    )
    op.create_index("ix_mw_users_user_email", "mw_users", ["user_email"])
    op.create_table(
        "mw_teams",
        sa.Column("team_id", sa.String(255), nullable=False),
        sa.Column("team_alias", sa.String(255), nullable=True),
        sa.Column("models", sa.JSON, nullable=False),
        sa.Column("blocked", sa.Boolean, nullable=False, server_default="0"),
        sa.Column("metadata", sa.JSON, nullable=False),
        *_limits(),
        *_times(),
        sa.PrimaryKeyConstraint("team_id", name="pk_mw_teams"),
    )
    op.create_index("ix_mw_teams_team_alias", "mw_teams", ["team_alias"])
    op.create_table(
        "mw_team_members",
        sa.Column("team_id", sa.String(255), nullable=False),
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("role", sa.String(32), nullable=False, server_default="user"),
        *_times(),
        sa.ForeignKeyConstraint(
            ["team_id"], ["mw_teams.team_id"], name="fk_mw_team_members_team_id_mw_teams", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("team_id", "user_id", name="pk_mw_team_members"),
    )
    op.create_table(
        "mw_customers",
        sa.Column("customer_id", sa.String(255), nullable=False),
        sa.Column("alias", sa.String(255), nullable=True),
        sa.Column("blocked", sa.Boolean, nullable=False, server_default="0"),
        sa.Column("billing_external_customer_id", sa.String(255), nullable=True),
        sa.Column("billing_external_subscription_id", sa.String(255), nullable=True),
        sa.Column("metadata", sa.JSON, nullable=False),
        *_limits(),
        *_times(),
        sa.PrimaryKeyConstraint("customer_id", name="pk_mw_customers"),
    )


def downgrade() -> None:
    op.drop_table("mw_customers")
    op.drop_table("mw_team_members")
    op.drop_index("ix_mw_teams_team_alias", "mw_teams")
    op.drop_table("mw_teams")
    op.drop_index("ix_mw_users_user_email", "mw_users")
    op.drop_table("mw_users")
