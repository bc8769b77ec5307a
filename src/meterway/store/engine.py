"""The async engine, and waiting for the database before anything else uses it.

An init container or a pod that starts before its database must wait, but not forever and not
in silence: `wait_for_database` retries with a bounded backoff and then fails with one message
naming host and port (never the password) and the last reason. A server that answers and refuses
(the database does not exist, the password or the role is wrong) fails at once instead: waiting
does not create a database or fix a password, and ten seconds of "unreachable" hides the cause.
"""

from __future__ import annotations

import asyncio
import logging
import time

from sqlalchemy import event, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from meterway.errors import MeterwayError
from meterway.store.url import where

log = logging.getLogger("meterway.store")


class DatabaseUnavailable(MeterwayError):
    status = 503
    error_type = "database_unavailable"


class DatabaseRefused(DatabaseUnavailable):
    """The server answered and said no (missing database, wrong password or role): no retry."""


# PostgreSQL's SQLSTATEs for refusals that retrying cannot fix (asyncpg's InvalidCatalogNameError,
# InvalidPasswordError, InvalidAuthorizationSpecificationError), and what to tell the reader.
_REFUSALS = {
    "3D000": "does not exist: create it (createdb) or correct the database URL",
    "28P01": "refused the password: correct the database URL's password",
    "28000": "refused the role: create it or correct the database URL's user",
}


def create_engine(url: URL) -> AsyncEngine:
    if url.drivername.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            # WAL lets readers run beside the writer; foreign keys are off in SQLite unless asked.
            # synchronous=NORMAL: a commit is in the WAL (and survives the process being killed)
            # without an fsync per commit; a power cut may lose the last commits (docs/ledger.md).
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True, connect_args={"timeout": 5})


async def wait_for_database(engine: AsyncEngine, timeout_s: float) -> None:
    """Returns once `SELECT 1` succeeds; raises DatabaseUnavailable after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    delay = 0.2
    attempt = 0
    while True:
        attempt += 1
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return
        except Exception as e:  # any driver error: refused, unknown host, auth, missing database
            refusal = _REFUSALS.get(_sqlstate(e) or "")
            if refusal is not None:
                raise DatabaseRefused(f"database {engine.url.database!r} at {where(engine.url)} {refusal}") from None
            reason = _reason(e)
            left = deadline - time.monotonic()
            if left <= 0:
                raise DatabaseUnavailable(
                    f"database at {where(engine.url)} is not reachable after {attempt} attempts "
                    f"in {timeout_s:g}s: {reason}"
                ) from None
            log.warning("waiting for database at %s (%s); retrying", where(engine.url), reason)
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, 5.0)


def _reason(e: BaseException) -> str:
    inner = getattr(e, "orig", None) or e
    text_ = str(inner).strip().splitlines()[0] if str(inner).strip() else inner.__class__.__name__
    return f"{inner.__class__.__name__}: {text_}"[:300]


def _sqlstate(e: BaseException) -> str | None:
    """The SQLSTATE of a driver error (SQLAlchemy's asyncpg adapter keeps asyncpg's), else None."""
    inner = getattr(e, "orig", None) or e
    for candidate in (inner, inner.__cause__):
        state = getattr(candidate, "sqlstate", None)
        if isinstance(state, str):
            return state
    return None
