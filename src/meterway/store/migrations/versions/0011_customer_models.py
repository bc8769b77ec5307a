"""What a LiteLLM user's entities carry that meterway's did not.

- `mw_customers.models`: the models an end user may call (LiteLLM's `LiteLLM_EndUserTable` carries
  such a list and enforces it); empty means no restriction of its own, as on keys, users and teams.
- `soft_budget` on keys, users, teams and customers: a spend at which to warn, never to refuse
  (LiteLLM's budget rows carry it). NULL is none.

Existing rows get an empty list and no soft budget: nothing they could do before is refused.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from meterway.store.types import Money

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_ENTITIES = ("mw_keys", "mw_users", "mw_teams", "mw_customers")


def upgrade() -> None:
    with op.batch_alter_table("mw_customers") as batch:
        batch.add_column(sa.Column("models", sa.JSON(), nullable=False, server_default="[]"))
    for table in _ENTITIES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("soft_budget", Money(), nullable=True))


def downgrade() -> None:
    for table in reversed(_ENTITIES):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("soft_budget")
    with op.batch_alter_table("mw_customers") as batch:
        batch.drop_column("models")
