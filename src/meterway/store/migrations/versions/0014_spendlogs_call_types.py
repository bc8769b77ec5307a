"""The `"LiteLLM_SpendLogs"` view names the images and audio endpoints as LiteLLM's call types
(`CallTypes` in LiteLLM's `litellm/types/utils.py`), so SQL that filters or groups by `call_type`
counts them as it did on LiteLLM: `images` as `aimage_generation`, an image edit (any `image…`
endpoint with `edit` in its name) as `aimage_edit`, any other `image…` endpoint (variations) as
`aimage_generation`, `transcriptions` and `translations` as `atranscription` (LiteLLM has no call
type of its own for a translation; both are audio in, text out, billed by the second), `speech`
as `aspeech`. Rerank and moderations keep 0013's names.

Only the view changes (same columns, replaced in place); SQLite has no view and nothing to do.
A downgrade puts back 0013's view.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

# 0013's branches, then the audio and image endpoints; the LIKE branches come after the exact ones
_NEW = """WHEN 'rerank' THEN 'arerank'
        WHEN 'moderations' THEN 'amoderation'
        WHEN 'images' THEN 'aimage_generation'
        WHEN 'transcriptions' THEN 'atranscription'
        WHEN 'translations' THEN 'atranscription'
        WHEN 'speech' THEN 'aspeech'
        ELSE CASE
            WHEN l.endpoint LIKE 'image%edit%' THEN 'aimage_edit'
            WHEN l.endpoint LIKE 'image%' THEN 'aimage_generation'
            ELSE l.endpoint END
        END"""
_OLD = """WHEN 'rerank' THEN 'arerank'
        WHEN 'moderations' THEN 'amoderation'
        ELSE l.endpoint END"""


def _migration(name: str) -> ModuleType:
    """An earlier migration by file name (which is no module name to import)."""
    spec = importlib.util.spec_from_file_location(f"meterway_migration_{name[:4]}", Path(__file__).with_name(name))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _replace_view(branches: str) -> None:
    """The view as 0012 made it, with 0012's call types followed by `branches`."""
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    view = _migration("0012_spendlogs_view.py")
    version = bind.dialect.server_version_info or (0,)
    call_type = view._CALL_TYPE.replace("ELSE l.endpoint END", branches)
    sql = view._view(version >= (13,), call_type)
    op.execute(sa.text(sql.replace("CREATE VIEW", "CREATE OR REPLACE VIEW", 1)))


def upgrade() -> None:
    _replace_view(_NEW)


def downgrade() -> None:
    _replace_view(_OLD)
