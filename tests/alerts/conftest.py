"""Fixtures the alert tests share: a receiver standing in for WEBHOOK_URL and SLACK_WEBHOOK_URL,
and a migrated store on the test's own PostgreSQL database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from meterway.store.runtime import Store
from tests.alerts.receiver import Receiver, running_receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as r:
        yield r


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[Store]:
    opened = await Store.open(pg_url, wait_s=10, run_migrations=True)
    try:
        yield opened
    finally:
        await opened.close()
