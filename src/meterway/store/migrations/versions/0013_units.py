"""Units beside tokens: what a request used that is not billed by the token. `queries` are rerank
search units, `images` generated images, `audio_ms` audio duration in milliseconds (an integer, so
sums are exact), `characters` speech input. Each is a 64-bit counter on the ledger and in the daily
rollup, 0 for every existing row (none of them used a unit).

The `"LiteLLM_SpendLogs"` view (0012) reads none of these columns, so on PostgreSQL the columns are
added and dropped with the view in place; SQLite has no view and rebuilds the tables in batch mode.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_UNITS = ("queries", "images", "audio_ms", "characters")
_TABLES = ("mw_ledger", "mw_usage_daily")


def upgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table) as batch:
            for name in _UNITS:
                batch.add_column(sa.Column(name, sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table) as batch:
            for name in reversed(_UNITS):
                batch.drop_column(name)
