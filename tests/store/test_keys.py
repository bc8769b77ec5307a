"""Virtual keys in the store, on SQLite and real PostgreSQL: only digests are kept."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from meterway.auth.keys import digest, new_key, reference
from meterway.store.engine import create_engine
from meterway.store.keys import KeyStore
from meterway.store.migrate import migrate
from meterway.store.url import parse


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[KeyStore]:
    url = f"sqlite:///{tmp_path / 'k.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    engine = create_engine(parse(url))
    await migrate(engine)
    yield KeyStore(engine)
    await engine.dispose()


def test_new_keys_are_long_random_and_digested_as_litellm_does() -> None:
    a, b = new_key(), new_key()
    assert a != b and a.startswith("sk-") and len(a) >= 3 + 32
    assert digest(a) == hashlib.sha256(a.encode()).hexdigest()
    assert reference(digest(a)) == digest(a), "a digest naming a key in a management call stays that digest"
    assert digest(digest(a)) != digest(a), "a digest given to authenticate is hashed like any guess"


async def test_created_key_is_stored_as_its_digest_only(store: KeyStore) -> None:
    key = new_key()
    rec = await store.create(
        key,
        key_alias="ci",
        models=["gpt-4o"],
        max_budget=Decimal("100.5"),
        budget_duration="30d",
        rpm_limit=60,
        metadata={"project": "x"},
        team_id=None,
    )
    assert rec.token == digest(key) and rec.key_name == f"sk-...{key[-4:]}"
    assert rec.models == ("gpt-4o",) and rec.max_budget == Decimal("100.5") and rec.spend == Decimal(0)
    assert rec.metadata == {"project": "x"} and rec.created_at is not None
    async with store._engine.connect() as conn:
        dump = [tuple(map(str, r)) for r in await conn.execute(sa.text("SELECT * FROM mw_keys"))]
    assert key not in repr(dump) and key[3:] not in repr(dump)
    assert (await store.get(key)) == rec and (await store.get(rec.token)) == rec


async def test_update_block_list_and_delete(store: KeyStore) -> None:
    k1, k2 = new_key(), new_key()
    await store.create(k1, user_id="u1")
    await store.create(k2, user_id="u2")
    blocked = await store.update(k1, blocked=True, models=["a", "b"])
    assert blocked is not None and blocked.blocked and blocked.models == ("a", "b")
    assert [r.token for r in await store.list(user_id="u2")] == [digest(k2)]
    assert len(await store.list()) == 2
    assert await store.delete(k1) and not await store.delete(k1)
    assert await store.get(k1) is None and await store.update(k1, blocked=False) is None


async def test_expiry_is_read_back_and_checked(store: KeyStore) -> None:
    past = datetime.now(UTC) - timedelta(minutes=1)
    rec = await store.create(new_key(), expires=past)
    assert rec.expired() and not (await store.create(new_key())).expired()


def test_unknown_fields_are_refused(tmp_path: Path) -> None:
    async def run() -> None:
        engine = create_engine(parse(f"sqlite:///{tmp_path / 'k.db'}"))
        try:
            with pytest.raises(TypeError, match="colour"):
                await KeyStore(engine).create(new_key(), colour="red")
        finally:
            await engine.dispose()

    asyncio.run(run())
