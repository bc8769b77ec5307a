"""The schema revision this code expects, readable without importing Alembic.

Alembic costs about 13 MB of memory and a tenth of a second to import; a gateway whose database
is already at this revision (the normal start) checks it with one query and never imports it.
A test keeps `HEAD` equal to the newest migration.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

HEAD = "0017"


async def current(engine: AsyncEngine) -> str | None:
    """The database's revision, or None when it has never been migrated."""
    try:
        async with engine.connect() as conn:
            row = (await conn.execute(text("SELECT version_num FROM alembic_version"))).first()
    except DBAPIError:  # no alembic_version table yet
        return None
    return None if row is None else str(row[0])
