"""Stored Responses API responses, on SQLite and real PostgreSQL: an id is taken once, expired
rows are invisible and purged, a status moves on only from where it is allowed to, and the
metering of a response is claimed once."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from meterway.store.engine import create_engine
from meterway.store.migrate import migrate
from meterway.store.response_record import StoredResponse
from meterway.store.responses import ResponseStore
from meterway.store.url import parse

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ResponseStore]:
    url = f"sqlite:///{tmp_path / 'r.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    engine = create_engine(parse(url))
    await migrate(engine)
    yield ResponseStore(engine)
    await engine.dispose()


def _record(
    response_id: str, *, status: str = "completed", expires_in: timedelta = timedelta(days=30)
) -> StoredResponse:
    return StoredResponse(
        response_id=response_id,
        key_id="k1",
        team_id=None,
        model_group="claude",
        deployment_id="claude",
        native=False,
        status=status,
        body=json.dumps({"id": response_id, "object": "response"}),
        input_items="[]",
        too_large=False,
        metered=status == "completed",
        created_at=NOW,
        expires_at=NOW + expires_in,
    )


async def test_an_id_is_taken_once_and_read_back_whole(store: ResponseStore) -> None:
    assert await store.put(_record("resp_1")) is True
    assert await store.put(replace(_record("resp_1"), key_id="someone-else")) is False
    found = await store.get("resp_1", now=NOW)
    assert found == _record("resp_1")


async def test_expired_responses_are_invisible_then_purged(store: ResponseStore) -> None:
    await store.put(_record("resp_old", expires_in=timedelta(seconds=1)))
    await store.put(_record("resp_new"))
    later = NOW + timedelta(seconds=2)
    assert await store.get("resp_old", now=later) is None
    assert await store.purge(now=later) == 1
    assert await store.purge(now=later) == 0
    assert await store.get("resp_new", now=later) is not None


async def test_a_status_moves_only_from_the_states_allowed(store: ResponseStore) -> None:
    await store.put(_record("resp_bg", status="queued"))
    running = frozenset({"queued", "in_progress"})
    assert await store.update("resp_bg", status="cancelled", only_from=running) is True
    assert await store.update("resp_bg", status="completed", body="{}", only_from=running) is False
    found = await store.get("resp_bg", now=NOW)
    assert found is not None and found.status == "cancelled" and found.body == _record("resp_bg").body


async def test_metering_is_claimed_once(store: ResponseStore) -> None:
    await store.put(_record("resp_native", status="queued"))
    assert [await store.mark_metered("resp_native") for _ in range(3)] == [True, False, False]
    assert await store.delete("resp_native") is True and await store.delete("resp_native") is False
