"""What hostile input needs of the schema.

- Token counters become 64-bit wherever they are stored or summed (ledger rows and the daily
  rollup, its request counts too): an upstream may report billions of tokens, and a day's sum of
  two such rows passes 2^31. Money was 64-bit already.
- `mw_ledger.flags`: what was wrong with a row's input, comma-separated (`usage_negative`,
  `usage_absurd`, `cut`...), NULL for an ordinary row. A row is written flagged rather than lost.
- `mw_ledger_quarantine`: a row the database refused even after its values were cut to their
  columns' bounds, kept whole as JSON with the database's reason, to be seen and reprocessed.
- `customer_id` on keys and teams: a key (or every key of a team) bound to one customer is
  charged to it whatever the request's `user` says; `mw_ledger.end_user` keeps that `user` as
  the end user, nothing more.

Existing rows keep their values: widening an integer column loses nothing.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_TOKENS = ("prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens", "reasoning_tokens")
_LEDGER = (*_TOKENS, "total_tokens")
_ROLLUP = ("requests", "errors", "unpriced", *_TOKENS)


def upgrade() -> None:
    with op.batch_alter_table("mw_ledger") as batch:
        for name in _LEDGER:
            batch.alter_column(name, type_=sa.BigInteger(), existing_type=sa.Integer(), existing_nullable=False)
        batch.add_column(sa.Column("flags", sa.String(128), nullable=True))
        batch.add_column(sa.Column("end_user", sa.String(255), nullable=True))
    with op.batch_alter_table("mw_usage_daily") as batch:
        for name in _ROLLUP:
            batch.alter_column(name, type_=sa.BigInteger(), existing_type=sa.Integer(), existing_nullable=False)
    op.create_table(
        "mw_ledger_quarantine",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("uid", sa.String(32), nullable=True),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("row", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reprocessed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_mw_ledger_quarantine"),
    )
    op.create_index("ix_mw_ledger_quarantine_created_at", "mw_ledger_quarantine", ["created_at"])
    for table in ("mw_keys", "mw_teams"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("customer_id", sa.String(255), nullable=True))
        op.create_index(f"ix_{table}_customer_id", table, ["customer_id"])


def downgrade() -> None:
    for table in ("mw_teams", "mw_keys"):
        op.drop_index(f"ix_{table}_customer_id", table)
        with op.batch_alter_table(table) as batch:
            batch.drop_column("customer_id")
    op.drop_index("ix_mw_ledger_quarantine_created_at", "mw_ledger_quarantine")
    op.drop_table("mw_ledger_quarantine")
    with op.batch_alter_table("mw_usage_daily") as batch:
        for name in _ROLLUP:
            batch.alter_column(name, type_=sa.Integer(), existing_type=sa.BigInteger(), existing_nullable=False)
    with op.batch_alter_table("mw_ledger") as batch:
        batch.drop_column("end_user")
        batch.drop_column("flags")
        for name in _LEDGER:
            batch.alter_column(name, type_=sa.Integer(), existing_type=sa.BigInteger(), existing_nullable=False)
