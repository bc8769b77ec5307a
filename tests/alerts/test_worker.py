"""The alert worker on real PostgreSQL, one step at a time (a scan, a send round, a stop), with
entity rows written as the store writes them and a stand-in receiver on a loopback port: what is
queued for which budget, what a refusal counts as, what a receiver's answer does to a row, and
what a stopping replica leaves behind."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa

from meterway.alerts import Alerts, credits_alert
from meterway.config.alerting import Alerting
from meterway.config.secret import Secret
from meterway.store.runtime import Store
from meterway.store.tables import alerts, users
from meterway.store.types import MONEY_UNIT
from meterway.telemetry.metrics import Metrics
from tests.alerts.receiver import Receiver
from tests.support.wait import eventually_async


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _webhook(receiver: Receiver, **kw: Any) -> Alerting:
    return Alerting(destinations={"webhook": Secret(receiver.url + "/hook")}, **kw)


def _units(usd: float) -> int:
    return int(Decimal(str(usd)) / MONEY_UNIT)


async def _user(store: Store, user_id: str, **values: Any) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(users.insert().values(user_id=user_id, **_money(values)))


async def _update(store: Store, user_id: str, **values: Any) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(users.update().where(users.c.user_id == user_id).values(**_money(values)))


def _money(values: dict[str, Any]) -> dict[str, Any]:
    return {k: Decimal(str(v)) if isinstance(v, float | int) and k != "user_id" else v for k, v in values.items()}


async def _events(store: Store) -> list[str]:
    async with store.engine.connect() as conn:
        found = await conn.execute(sa.select(alerts.c.event, alerts.c.dedupe).order_by(alerts.c.id))
        return [f"{e} {d.split(':')[1]}" for e, d in found]


async def test_ten_thousand_alerts_found_in_one_scan_are_all_queued(
    store: Store, receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    """6 parameters a row: one statement for 10,000 rows would pass asyncpg's 32,767 and fail every scan."""
    async with store.engine.begin() as conn:
        rows = [{"user_id": f"u{i}", "max_budget": Decimal(1), "spend": Decimal("0.9")} for i in range(10_000)]
        await conn.execute(users.insert(), rows)
    worker = Alerts(_webhook(receiver, thresholds=(0.85,)), store.engine, session)
    assert await worker.scan() == 10_000
    assert await worker.scan() == 0
    assert await worker.outbox.pending() == 10_000


async def test_a_refusal_is_a_budget_crossing_only_when_the_request_does_not_fit_with_nothing_in_flight(
    store: Store, receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    await _user(store, "alice", max_budget=1.0, spend=0.5)
    worker = Alerts(_webhook(receiver), store.engine, session)
    counter = "user:alice:budget:all"
    # 0.5 spent, 0.3 asked of 1.0: refused only because requests in flight hold the rest
    worker.budget_refused(counter, used=_units(0.5), amount=_units(0.3), limit=_units(1.0))
    assert await worker.scan() == 0
    # 0.6 asked: it would not fit even alone, the budget is broken
    worker.budget_refused(counter, used=_units(0.5), amount=_units(0.6), limit=_units(1.0))
    assert await worker.scan() == 1
    assert await _events(store) == ["budget_crossed alice"]


async def test_a_raised_budget_alerts_again_when_it_is_crossed_again(
    store: Store, receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    await _user(store, "bob", max_budget=1.0, spend=1.0)  # no budget_duration: one period, the budget's life
    worker = Alerts(_webhook(receiver, thresholds=(0.5,)), store.engine, session)
    assert await worker.scan() == 2
    await _update(store, "bob", max_budget=4.0)
    assert await worker.scan() == 0  # 1.0 of 4.0: nothing crossed
    await _update(store, "bob", spend=4.0)
    assert await worker.scan() == 2
    await _update(store, "bob", max_budget=3.0)  # lowered, and already past
    assert await worker.scan() == 2
    assert sorted(await _events(store)) == ["budget_crossed bob"] * 3 + ["threshold_crossed bob"] * 3


async def test_a_new_budget_period_alerts_again_and_a_period_that_ended_is_not_alerted(
    store: Store, receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    now = datetime.now(UTC)
    await _user(
        store, "carol", max_budget=1.0, spend=1.0, budget_duration="1d", budget_reset_at=now + timedelta(days=1)
    )
    worker = Alerts(_webhook(receiver, thresholds=()), store.engine, session)
    assert await worker.scan() == 1  # no thresholds: budget_crossed alone
    await _update(store, "carol", spend=0.0, budget_reset_at=now + timedelta(days=2))  # the next period
    assert await worker.scan() == 0
    await _update(store, "carol", spend=1.0)
    assert await worker.scan() == 1
    # a period that ended keeps its spend until a request resets it: no crossing of anything
    await _user(
        store, "dave", max_budget=1.0, spend=1.0, budget_duration="1d", budget_reset_at=now - timedelta(hours=1)
    )
    worker.budget_refused("user:dave:budget:x", used=_units(1.0), amount=_units(0.5), limit=_units(1.0))
    assert await worker.scan() == 0
    assert await _events(store) == ["budget_crossed carol", "budget_crossed carol"]


async def test_a_stopping_worker_queues_the_refusals_it_noted_last_and_ends_promptly(
    store: Store, receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    await _user(store, "erin", max_budget=1.0, spend=0.99)
    worker = Alerts(_webhook(receiver, thresholds=(), scan_interval_s=3600), store.engine, session)
    running = asyncio.create_task(worker.run())
    await eventually_async(lambda: worker.scans >= 1, 10, "the first scan")  # the next is an hour away
    worker.budget_refused("user:erin:budget:all", used=_units(0.99), amount=_units(0.5), limit=_units(1.0))
    worker.stop()
    await asyncio.wait_for(running, 10)  # not an hour: the pause ends at stop
    assert await _events(store) == ["budget_crossed erin"]


async def test_a_stopping_worker_releases_its_claims_for_another_replica(
    store: Store, receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    stopping, other = (Alerts(_webhook(receiver), store.engine, session) for _ in range(2))
    await stopping.enqueue(credits_alert("credits_low", "acme", "acme:p1:low", available=1))
    [claimed] = await stopping.outbox.claim(10, 30.0, stopping._token)  # as its send round does
    assert await other.send_round() == 0  # held for 30 s
    await stopping.finish()  # what `run` does once stopped (and services, if `run` must be cancelled)
    assert await other.send_round() == 1
    [row] = await other.outbox.rows()
    assert (row["id"], row["status"], row["claimed_by"], row["claimed_until"]) == (claimed.id, "sent", None, None)


async def test_a_replica_whose_claim_was_taken_marks_nothing(
    store: Store, receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    worker = Alerts(_webhook(receiver), store.engine, session)
    await worker.enqueue(credits_alert("credits_exhausted", "acme", "acme:p1:out", available=0))
    [row] = await worker.outbox.claim(10, 0.0, "slow")  # claimed, then its claim ran out ...
    [again] = await worker.outbox.claim(10, 30.0, "fast")  # ... and another replica took it
    assert again.id == row.id
    assert not await worker.outbox.sent(row.id, "slow")
    assert not await worker.outbox.retry(row.id, "slow", 1.0, "late")
    assert not await worker.outbox.failed(row.id, "slow", "late")
    [stored] = await worker.outbox.rows()
    assert (stored["status"], stored["claimed_by"], stored["attempts"]) == ("pending", "fast", 0)
    assert await worker.outbox.sent(row.id, "fast")


async def test_a_receiver_that_refuses_for_good_fails_the_row_counted_and_logged_once(
    store: Store, receiver: Receiver, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics()
    worker = Alerts(_webhook(receiver), store.engine, session, metrics)
    for n in range(3):
        await worker.enqueue(credits_alert("credits_low", f"c{n}", f"c{n}:p1:low", available=1))
    receiver.fail_next(3, status=404)
    with caplog.at_level(logging.INFO, logger="meterway.alerts"):
        assert await worker.send_round() == 3
        assert await worker.send_round() == 0  # failed rows are not due again
    rows = await worker.outbox.rows()
    assert [r["status"] for r in rows] == ["failed"] * 3
    assert all("answered HTTP 404: receiver says no (404)" in r["last_error"] for r in rows)
    assert metrics.alerts_failed.labels("credits_low", "webhook")._value.get() == 3
    said = [r.getMessage() for r in caplog.records if r.name == "meterway.alerts"]
    assert len([m for m in said if "refused" in m]) == 1, said
    # a 503 is retried, and logged once when the destination changes state
    await worker.enqueue(credits_alert("credits_low", "c9", "c9:p1:low", available=1))
    receiver.fail_next(1)
    with caplog.at_level(logging.INFO, logger="meterway.alerts"):
        assert await worker.send_round() == 1
    [*_, retried] = await worker.outbox.rows()
    assert (retried["status"], retried["attempts"]) == ("pending", 1)
    assert retried["next_attempt_at"] is not None
    said = [r.getMessage() for r in caplog.records if r.name == "meterway.alerts"]
    assert len([m for m in said if "not delivered" in m]) == 1, said


async def test_a_row_for_a_destination_of_another_replica_wakes_no_backoff(
    store: Store, receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    both = Alerting(destinations={"webhook": Secret(receiver.url + "/hook"), "slack": Secret(receiver.url + "/slack")})
    await Alerts(both, store.engine, session).enqueue(credits_alert("credits_low", "acme", "acme:p1:low", available=1))
    webhook_only = Alerts(_webhook(receiver), store.engine, session)
    receiver.fail_next(1)
    assert await webhook_only.send_round() == 2  # the webhook's 503 (backoff), slack not configured here
    async with store.engine.begin() as conn:  # slack's row due again, the webhook's still in backoff
        await conn.execute(alerts.update().where(alerts.c.destination == "slack").values(next_attempt_at=None))
        far = datetime.now(UTC) + timedelta(hours=1)
        await conn.execute(alerts.update().where(alerts.c.destination == "webhook").values(next_attempt_at=far))
    assert await webhook_only.send_round() == 1  # slack's row again: says nothing of the webhook
    by = {r["destination"]: r for r in await webhook_only.outbox.rows()}
    assert by["webhook"]["next_attempt_at"] is not None and by["webhook"]["status"] == "pending"
    assert by["slack"]["attempts"] == 0 and "not configured" in by["slack"]["last_error"]
    assert receiver.posts == []


async def test_wake_makes_due_only_the_rows_of_the_destination_that_answers_again(
    store: Store, receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    both = Alerting(destinations={"webhook": Secret(receiver.url + "/hook"), "slack": Secret(receiver.url + "/slack")})
    worker = Alerts(both, store.engine, session)
    await worker.enqueue(credits_alert("credits_low", "acme", "acme:p1:low", available=1))
    async with store.engine.begin() as conn:
        await conn.execute(alerts.update().values(next_attempt_at=datetime.now(UTC) + timedelta(hours=1)))
    assert await worker.outbox.wake("slack") == 1
    by = {r["destination"]: r["next_attempt_at"] for r in await worker.outbox.rows()}
    assert by["slack"] is None and by["webhook"] is not None
