"""The store as the running gateway uses it: opened once per worker, in the background.

Importing SQLAlchemy and opening (and migrating) the database takes longer than a liveness probe
may wait, so the gateway answers `/health/live` at once and opens the store beside it;
`/health/ready` waits for it, and model requests wait for it (bounded) so that their rows are
committed before their responses complete.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from meterway.store import revision
from meterway.store.engine import DatabaseUnavailable, create_engine, wait_for_database
from meterway.store.entities import customer_store, team_store, user_store
from meterway.store.keys import KeyStore
from meterway.store.ledger import LedgerStore
from meterway.store.outbox import OutboxStore
from meterway.store.prepaid import PrepaidStore
from meterway.store.reports import Reports
from meterway.store.responses import ResponseStore
from meterway.store.url import named, parse, where

if TYPE_CHECKING:
    from meterway.store.migrate import Migrated

log = logging.getLogger("meterway.store")


class NotMigrated(DatabaseUnavailable):
    """The database is not at the revision this code expects, and this caller does not migrate."""

    def __init__(self, url: URL, at: str | None) -> None:
        super().__init__(
            f"database {named(url)} is not migrated (revision {at or 'empty'}, expected {revision.HEAD}): "
            "run `meterway migrate`"
        )


def absent_sqlite(url: URL) -> bool:
    """A SQLite file that does not exist yet (connecting would create it): a command that must
    write nothing (a dry run, a read) takes it as a database with no schema, without connecting."""
    if not url.drivername.startswith("sqlite") or url.database in (None, "", ":memory:"):
        return False
    return not Path(url.database).exists()


class Store:
    def __init__(self, engine: AsyncEngine, *, export: bool = False) -> None:
        """`export`: billing is on, so each billable ledger row enqueues its export to Lago."""
        self.engine = engine
        self.keys = KeyStore(engine)
        self.users = user_store(engine)
        self.teams = team_store(engine)
        self.customers = customer_store(engine)
        self.ledger = LedgerStore(engine, export=export)
        self.reports = Reports(engine)
        self.outbox = OutboxStore(engine)
        self.responses = ResponseStore(engine)
        self.prepaid = PrepaidStore(engine)

    @classmethod
    async def open(cls, url: str, *, wait_s: float, run_migrations: bool, export: bool = False) -> Store:
        """The store over `url`, migrated first when `run_migrations`; otherwise a database not at
        this code's revision raises NotMigrated having written nothing (an absent SQLite file is
        not even created), so a command that only reads never changes a schema behind its back."""
        parsed = parse(url)
        if not run_migrations and absent_sqlite(parsed):
            raise NotMigrated(parsed, None)
        engine = create_engine(parsed)
        try:
            await wait_for_database(engine, wait_s)
            at = await revision.current(engine)
            if at != revision.HEAD:
                if at is not None and at.isdigit() and at > revision.HEAD:
                    raise DatabaseUnavailable(
                        f"database {named(parsed)} is at revision {at}, newer than this version of meterway "
                        f"knows ({revision.HEAD}): run a newer meterway"
                    )
                if not run_migrations:
                    raise NotMigrated(parsed, at)
                done = await asyncio.to_thread(_migrate_apart, url)
                log.info("database at %s migrated from %s to %s", where(parsed), done.before or "empty", done.after)
        except BaseException:
            await engine.dispose()
            raise
        log.info("store open: %s", where(parsed))
        return cls(engine, export=export)

    async def ping(self) -> None:
        """One round trip to the database (readiness)."""
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        await self.ledger.release()
        await asyncio.to_thread(self.ledger.close)
        await self.engine.dispose()


def _migrate_apart(url: str) -> Migrated:
    """Alembic does its (synchronous, Python-heavy) work on the thread that runs it, which for an
    async engine is the event loop's. It runs here instead, in a thread with an engine and a loop
    of its own, so the gateway keeps answering (liveness above all) while a database migrates."""
    from meterway.store.migrate import migrate  # imports Alembic: only when there is work

    async def run() -> Migrated:
        engine = create_engine(parse(url))
        try:
            return await migrate(engine)
        finally:
            await engine.dispose()

    return asyncio.run(run())
