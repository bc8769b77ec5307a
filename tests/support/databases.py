"""Real PostgreSQL for tests: each test gets a database of its own, dropped afterwards.

PostgreSQL is expected on 127.0.0.1:5432 (METERWAY_TEST_PG overrides). Where it is not running, a
test that needs it is skipped with what to start; under CI=true it fails instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

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


class _Databases:
    """Fresh databases for one test process, made ahead and dropped behind in a thread of its own.

    CREATE DATABASE copies the template with its WAL and DROP DATABASE waits for a checkpoint: over
    a second each on a busy machine, for a hundred tests. Here the next database is being made
    while a test runs, and a used one is dropped while the next runs; each is still new and empty
    (from template1) and dropped after its test. The session's end waits for every drop."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="test-databases")
        self._next: Future[str] | None = None
        self._drops: list[Future[None]] = []

    def _create(self) -> str:
        name = "mw_test_" + uuid.uuid4().hex[:12]
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
        return name

    def take(self) -> str:
        ready, self._next = self._next or self._pool.submit(self._create), None
        try:
            name = ready.result()
        except (TimeoutError, OSError, asyncpg.PostgresError) as e:
            _unavailable(f"PostgreSQL unreachable at {ADMIN_URL}: {e.__class__.__name__}: {e}")
        self._next = self._pool.submit(self._create)
        return name

    def drop(self, name: str) -> None:
        self._drops.append(self._pool.submit(_run_here, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def close(self) -> None:
        if self._next is not None:
            with contextlib.suppress(Exception):  # PostgreSQL was unreachable: there is nothing to drop
                self.drop(self._next.result())
        self._pool.shutdown(wait=True)
        for dropped in self._drops:
            dropped.result()  # a database left behind fails the session's last test, not silently


def _run_here(sql: str) -> None:
    """On the pool's thread: async tests (whose loop is already running) use these fixtures too."""
    asyncio.run(_admin(sql))


@pytest.fixture(scope="session")
def _databases() -> Iterator[_Databases]:
    databases = _Databases()
    yield databases
    databases.close()


@pytest.fixture
def pg_url(_databases: _Databases) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test, as a postgresql:// URL."""
    yield from _fresh_database(_databases)


@pytest.fixture
def second_pg_url(_databases: _Databases) -> Iterator[str]:
    """Another fresh database for the same test (e.g. a LiteLLM proxy's, imported from)."""
    yield from _fresh_database(_databases)


@pytest.fixture(scope="module")
def module_pg_url(_databases: _Databases) -> Iterator[str]:
    """The same, shared by the tests of one module (for a module-scoped gateway)."""
    yield from _fresh_database(_databases)


def _fresh_database(databases: _Databases) -> Iterator[str]:
    name = databases.take()
    base = ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        databases.drop(name)
