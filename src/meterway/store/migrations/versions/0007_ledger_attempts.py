"""What routing did for a ledger row: how many upstream attempts it took (retries and fallbacks add
to the first; a cache hit makes none), and whether the response cache answered it. Existing rows
each made one attempt and no cache existed, which the server defaults say.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("mw_ledger") as batch:
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("cache_hit", sa.Boolean(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("mw_ledger") as batch:
        batch.drop_column("cache_hit")
        batch.drop_column("attempts")
