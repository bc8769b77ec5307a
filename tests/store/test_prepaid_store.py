"""The prepaid store on SQLite and PostgreSQL: due readings claimed once (another claimer gets
none until the interval passes again), history kept only when a reading changed, webhooks taken
once, and the period's ledger rows grouped in one statement."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from meterway.store.prepaid import Reading
from meterway.store.runtime import Store
from tests.support.rows import ledger_entry

NOW = datetime.now(UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    url = f"sqlite:///{tmp_path / 'prepaid.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    opened = await Store.open(url, wait_s=10, run_migrations=True, export=True)
    try:
        yield opened
    finally:
        await opened.close()


def _reading(entity: str, read_at: datetime, balance: int = 100, wallets: bool = True) -> Reading:
    return Reading(
        entity,
        "acme",
        entity,
        "p",
        "USD",
        NOW - timedelta(days=1),
        None,
        wallets,
        balance,
        0,
        0,
        (),
        "schedule",
        read_at,
    )


async def test_due_readings_are_claimed_once_and_without_wallets_less_often(store: Store) -> None:
    await store.prepaid.save(_reading("old", NOW - timedelta(seconds=120)), 100)
    await store.prepaid.save(_reading("fresh", NOW), 100)
    await store.prepaid.save(_reading("bare", NOW - timedelta(seconds=120), wallets=False), 0)
    assert await store.prepaid.claim_due(NOW, 60, 600) == ["old"]
    assert await store.prepaid.claim_due(NOW, 60, 600) == []  # claimed: attempt_at is now
    assert sorted(await store.prepaid.claim_due(NOW + timedelta(seconds=700), 60, 600)) == ["bare", "fresh", "old"]


async def test_history_only_when_the_reading_changed_and_webhooks_taken_once(store: Store) -> None:
    await store.prepaid.save(_reading("acme", NOW - timedelta(seconds=2)), 100)
    await store.prepaid.save(_reading("acme", NOW - timedelta(seconds=1)), 100)
    await store.prepaid.save(_reading("acme", NOW, balance=300), 300)
    assert [h.balance for h in await store.prepaid.history("acme")] == [300, 100]
    assert await store.prepaid.entities_of("acme") == ["acme"]
    assert await store.prepaid.take_webhook("k", "wallet.updated", "acme", NOW)
    assert not await store.prepaid.take_webhook("k", "wallet.updated", "acme", NOW)
    await store.prepaid.forget_webhook("k")
    assert await store.prepaid.take_webhook("k", "wallet.updated", "acme", NOW)


async def test_the_periods_rows_are_summed_per_model_with_their_count(store: Store) -> None:
    rows = [
        ledger_entry(customer_id="acme", model_group=m, prompt_tokens=p, completion_tokens=1, total_tokens=p + 1)
        for m, p in (("a", 1), ("a", 2), ("b", 5))
    ]
    await store.ledger.write(rows)
    got = await store.prepaid.period_rows("customer_id", "acme", NOW - timedelta(days=1), ("model_group",), False)
    summed = {r["model_group"]: (int(r["prompt_tokens"]), int(r["count"]), int(r["sent"])) for r in got}
    assert summed == {"a": (3, 2, 0), "b": (5, 1, 0)}


async def test_an_older_reading_never_overwrites_a_newer_one_nor_makes_history(store: Store) -> None:
    await store.prepaid.save(_reading("acme", NOW, balance=500), 500)  # the top-up's reading
    late = _reading("acme", NOW - timedelta(seconds=5), balance=100)  # a slow read begun before it
    assert not await store.prepaid.save(late, 100)
    got = await store.prepaid.get("acme")
    assert got is not None and got.balance == 500 and got.read_at == NOW
    assert [h.balance for h in await store.prepaid.history("acme")] == [500]


async def test_ids_never_stored_stay_out_and_idle_entities_are_not_scheduled(store: Store) -> None:
    assert not await store.prepaid.save(_reading("nobody", NOW, wallets=False), 0, create=False)
    await store.prepaid.failed("nobody", "Lago did not answer", NOW)
    assert await store.prepaid.get("nobody") is None
    await store.prepaid.save(_reading("used", NOW - timedelta(days=3)), 100)
    await store.prepaid.save(_reading("idle", NOW - timedelta(days=3)), 100)
    await store.prepaid.touch("used", NOW)
    assert await store.prepaid.claim_due(NOW, 60, 600, idle_s=86_400) == ["used"]


async def test_webhook_keys_are_recorded_when_applied_and_pruned_after_a_while(store: Store) -> None:
    assert not await store.prepaid.webhook_taken("k")
    assert await store.prepaid.take_webhook("k", "wallet.updated", "acme", NOW - timedelta(days=8))
    assert await store.prepaid.take_webhook("j", "wallet.updated", "acme", NOW)
    assert await store.prepaid.webhook_taken("k")
    assert await store.prepaid.prune_webhooks(NOW - timedelta(days=7)) == 1
    assert not await store.prepaid.webhook_taken("k") and await store.prepaid.webhook_taken("j")
