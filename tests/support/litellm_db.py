"""A LiteLLM proxy's database, built from the migrations LiteLLM itself ships.

The `litellm-proxy-extras` package holds the SQL files Prisma Migrate applies when a LiteLLM proxy
starts (`migrations/<timestamp>_<name>/migration.sql`). Applying them in order, as `prisma migrate
deploy` does, gives the schema a real proxy of that release has, with no hand-kept copy to drift:
a test that imports from it reads the tables, columns, defaults and types LiteLLM really writes.

Each file is sent as one simple-protocol query: PostgreSQL runs a multi-statement file as one
implicit transaction (as Prisma does), and a file that is a lone `CREATE INDEX CONCURRENTLY` runs
outside any transaction, as it must. `_prisma_migrations` is filled as Prisma would, so the
database looks migrated to a LiteLLM proxy started on it.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import asyncpg


def migrations_dir() -> Path:
    """Where the installed `litellm-proxy-extras` keeps its migrations."""
    import litellm_proxy_extras

    return Path(litellm_proxy_extras.__file__).parent / "migrations"


def migrations() -> list[Path]:
    """Every migration.sql, in the order Prisma applies them (directory names sort by timestamp)."""
    return [d / "migration.sql" for d in sorted(migrations_dir().iterdir()) if (d / "migration.sql").is_file()]


_PRISMA_TABLE = """
CREATE TABLE IF NOT EXISTS "_prisma_migrations" (
    "id" VARCHAR(36) PRIMARY KEY NOT NULL,
    "checksum" VARCHAR(64) NOT NULL,
    "finished_at" TIMESTAMPTZ,
    "migration_name" VARCHAR(255) NOT NULL,
    "logs" TEXT,
    "rolled_back_at" TIMESTAMPTZ,
    "started_at" TIMESTAMPTZ NOT NULL DEFAULT now(),
    "applied_steps_count" INTEGER NOT NULL DEFAULT 0
)
"""


async def create_litellm_database(url: str) -> None:
    """Applies LiteLLM's migrations, in order, to the empty database at `url` (postgresql://…)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(_PRISMA_TABLE)
        for path in migrations():
            sql = path.read_text()
            try:
                await conn.execute(sql)
            except asyncpg.PostgresError as e:
                raise RuntimeError(f"LiteLLM migration {path.parent.name} failed: {e}") from e
            await conn.execute(
                'INSERT INTO "_prisma_migrations" (id, checksum, finished_at, migration_name, applied_steps_count) '
                "VALUES ($1, $2, now(), $3, 1)",
                str(uuid.uuid4()),
                hashlib.sha256(sql.encode()).hexdigest(),
                path.parent.name,
            )
    finally:
        await conn.close()


def litellm_version() -> str:
    """The LiteLLM release whose migrations these are (the installed `litellm-proxy-extras`)."""
    from importlib.metadata import version

    return version("litellm-proxy-extras")
