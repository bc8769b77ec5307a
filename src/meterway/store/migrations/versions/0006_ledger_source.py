"""Where a ledger row came from: `gateway` (a request meterway served) or `webhook` (usage another
proxy reported). Existing rows are all the gateway's, which the server default says. A partial
index holds the other rows only, so counting and re-queuing them reads few index entries however
large the ledger grows.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("mw_ledger") as batch:
        batch.add_column(sa.Column("source", sa.String(16), nullable=False, server_default="gateway"))
    op.create_index(
        "ix_mw_ledger_source",
        "mw_ledger",
        ["source"],
        postgresql_where=sa.text("source <> 'gateway'"),
        sqlite_where=sa.text("source <> 'gateway'"),
    )


def downgrade() -> None:
    op.drop_index("ix_mw_ledger_source", "mw_ledger")
    with op.batch_alter_table("mw_ledger") as batch:
        batch.drop_column("source")
