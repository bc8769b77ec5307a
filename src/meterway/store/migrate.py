"""Applying migrations: `meterway migrate`, and `serve` at start.

Alembic keeps the applied revision in the database, so running it again is a no-op and a
database left at an earlier revision is brought forward from there; nothing is ever dropped to
make room. It runs on the connection we open, so it waits for the database like everything else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_LOCK = 0x6D657465  # any constant shared by every meterway process


def _config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    revision = ScriptDirectory.from_config(_config()).get_current_head()
    assert revision is not None
    return revision


@dataclass(frozen=True, slots=True)
class Migrated:
    before: str | None
    after: str | None


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_current)


async def migrate(engine: AsyncEngine, target: str = "head") -> Migrated:
    def run(connection: Connection) -> Migrated:
        if connection.dialect.name == "postgresql":
            # Replicas starting together migrate one after the other; the lock ends with the transaction.
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
        before = _current(connection)
        command.upgrade(_config(connection), target)
        return Migrated(before, _current(connection))

    async with engine.begin() as conn:
        return await conn.run_sync(run)
