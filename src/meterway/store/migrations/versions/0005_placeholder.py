"""Placeholder for revision 0005, which is written on main (billing ids on users, teams and keys).

It changes nothing. It exists so that 0006 has its parent on this branch; at the merge, main's
0005 replaces this file.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from __future__ import annotations

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
