"""The schema, as SQLAlchemy Core tables. Migrations in `store/migrations` create and change it;
this module is what the code reads and writes through, and a test checks the two agree."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    func,
)

from meterway.store.types import Money

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _times() -> list[Column[object]]:
    return [
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    ]


def _limits() -> list[Column[object]]:
    """Budget and rate limits, the same on every entity that carries them."""
    return [
        Column("max_budget", Money(), nullable=True),
        Column("budget_duration", String(32), nullable=True),
        Column("budget_reset_at", DateTime(timezone=True), nullable=True),
        Column("spend", Money(), nullable=False, server_default="0"),
        Column("rpm_limit", Integer, nullable=True),
        Column("tpm_limit", Integer, nullable=True),
        Column("max_parallel_requests", Integer, nullable=True),
    ]


users = Table(
    "mw_users",
    metadata,
    Column("user_id", String(255), primary_key=True),
    Column("user_email", String(320), nullable=True, index=True),
    Column("user_role", String(32), nullable=False, server_default="internal_user"),
    Column("models", JSON, nullable=False, default=list),
    Column("metadata", JSON, nullable=False, default=dict),
    *_limits(),
    *_times(),
)

teams = Table(
    "mw_teams",
    metadata,
    Column("team_id", String(255), primary_key=True),
    Column("team_alias", String(255), nullable=True, index=True),
    Column("models", JSON, nullable=False, default=list),
    Column("blocked", Boolean, nullable=False, server_default="0"),
    Column("metadata", JSON, nullable=False, default=dict),
    *_limits(),
    *_times(),
)

team_members = Table(
    "mw_team_members",
    metadata,
    Column("team_id", String(255), ForeignKey("mw_teams.team_id", ondelete="CASCADE"), primary_key=True),
    Column("user_id", String(255), primary_key=True),
    Column("role", String(32), nullable=False, server_default="user"),
    *_times(),
)

customers = Table(
    "mw_customers",
    metadata,
    Column("customer_id", String(255), primary_key=True),  # the request's `user` field
    Column("alias", String(255), nullable=True),
    Column("blocked", Boolean, nullable=False, server_default="0"),
    Column("billing_external_customer_id", String(255), nullable=True),
    Column("billing_external_subscription_id", String(255), nullable=True),
    Column("metadata", JSON, nullable=False, default=dict),
    *_limits(),
    *_times(),
)

keys = Table(
    "mw_keys",
    metadata,
    Column("token", String(64), primary_key=True),  # SHA-256 hex digest of the key; the key is never stored
    Column("key_name", String(32), nullable=False),  # "sk-...abcd": enough to recognise, not to use
    Column("key_alias", String(255), nullable=True, index=True),
    Column("models", JSON, nullable=False, default=list),
    Column("expires", DateTime(timezone=True), nullable=True),
    Column("blocked", Boolean, nullable=False, server_default="0"),
    Column("user_id", String(255), nullable=True, index=True),
    Column("team_id", String(255), ForeignKey("mw_teams.team_id", ondelete="SET NULL"), nullable=True, index=True),
    Column("metadata", JSON, nullable=False, default=dict),
    *_limits(),
    *_times(),
)
