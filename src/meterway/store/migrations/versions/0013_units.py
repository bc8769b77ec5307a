"""Units beside tokens: what a request used that is not billed by the token. `queries` are rerank
search units, `images` generated images, `audio_ms` audio duration in milliseconds (an integer, so
sums are exact), `characters` speech input. Each is a 64-bit counter on the ledger and in the daily
rollup, 0 for every existing row (none of them used a unit).

The `"LiteLLM_SpendLogs"` view (0012) reads none of these columns, so on PostgreSQL the columns are
added and dropped with the view in place; SQLite has no view and rebuilds the tables in batch mode.
The view is replaced (same columns) so that the ledger's new endpoints read as LiteLLM's call types:
`rerank` as `arerank`, `moderations` as `amoderation`.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_UNITS = ("queries", "images", "audio_ms", "characters")
_TABLES = ("mw_ledger", "mw_usage_daily")


def _spendlogs() -> ModuleType:
    """Migration 0012, whose view this one replaces (its file name is no module name to import)."""
    spec = importlib.util.spec_from_file_location(
        "meterway_migration_0012", Path(__file__).with_name("0012_spendlogs_view.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _replace_view(call_type: str | None) -> None:
    """The view as 0012 made it, with `call_type` (None: 0012's own) naming the endpoints."""
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    view = _spendlogs()
    version = bind.dialect.server_version_info or (0,)
    sql = view._view(version >= (13,), call_type or view._CALL_TYPE)
    op.execute(sa.text(sql.replace("CREATE VIEW", "CREATE OR REPLACE VIEW", 1)))


def upgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table) as batch:
            for name in _UNITS:
                batch.add_column(sa.Column(name, sa.BigInteger(), nullable=False, server_default="0"))
    call_type = _spendlogs()._CALL_TYPE.replace(
        "ELSE l.endpoint END",
        "WHEN 'rerank' THEN 'arerank'\n        WHEN 'moderations' THEN 'amoderation'\n        ELSE l.endpoint END",
    )
    _replace_view(call_type)


def downgrade() -> None:
    _replace_view(None)
    for table in _TABLES:
        with op.batch_alter_table(table) as batch:
            for name in reversed(_UNITS):
                batch.drop_column(name)
