"""Real PostgreSQL for tests: each test gets a database of its own, dropped afterwards.

PostgreSQL is expected on 127.0.0.1:5432 (METERWAY_TEST_PG overrides). Where it is not running, a
test that needs it is skipped with what to start; under CI=true it fails instead.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import asyncpg
import pytest

ADMIN_URL = os.environ.get("METERWAY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _unavailable(what: str) -> None:
    message = f"{what}; start it (pg_ctlcluster <version> main start) or set METERWAY_TEST_PG"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN_URL, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _run(sql: str) -> None:
    """In a thread of its own, so that async tests (whose loop is already running) can use it."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(lambda: asyncio.run(_admin(sql))).result()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test, as a postgresql:// URL."""
    yield from _fresh_database()


@pytest.fixture
def second_pg_url() -> Iterator[str]:
    """Another fresh database for the same test (e.g. a LiteLLM proxy's, imported from)."""
    yield from _fresh_database()


@pytest.fixture(scope="module")
def module_pg_url() -> Iterator[str]:
    """The same, shared by the tests of one module (for a module-scoped gateway)."""
    yield from _fresh_database()


def _fresh_database() -> Iterator[str]:
    name = "mw_test_" + uuid.uuid4().hex[:12]
    try:
        _run(f'CREATE DATABASE "{name}"')
    except (TimeoutError, OSError, asyncpg.PostgresError) as e:
        _unavailable(f"PostgreSQL unreachable at {ADMIN_URL}: {e.__class__.__name__}: {e}")
    base = ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        _run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
