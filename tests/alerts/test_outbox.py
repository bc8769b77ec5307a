"""The alert outbox on real PostgreSQL: the API other modules enqueue through (prepaid credits),
two workers over one database enqueuing and sending the same alert, and a claim that ran out."""

from __future__ import annotations

import asyncio

import aiohttp

from meterway.alerts import Alerts, credits_alert
from meterway.config.alerting import Alerting
from meterway.config.secret import Secret
from meterway.store.runtime import Store
from tests.alerts.receiver import Receiver


def _alerting(receiver: Receiver) -> Alerting:
    return Alerting(destinations={"webhook": Secret(receiver.url + "/hook"), "slack": Secret(receiver.url + "/slack")})


async def _drain(*workers: Alerts) -> None:
    """Send rounds on every worker at once until none has anything due (bounded)."""
    for _ in range(50):
        if sum(await asyncio.gather(*(w.send_round() for w in workers))) == 0:
            return
    raise AssertionError("the outbox never drained")


async def test_credits_alerts_enqueued_by_two_replicas_are_posted_once(store: Store, receiver: Receiver) -> None:
    async with aiohttp.ClientSession() as session:
        one = Alerts(_alerting(receiver), store.engine, session)
        two = Alerts(_alerting(receiver), store.engine, session)
        low = credits_alert("credits_low", "acme", "acme:2026-12-01:low", available=4.5, funded=100, low_balance=5)
        new = await asyncio.gather(one.enqueue(low), two.enqueue(low), one.enqueue(low))
        assert sorted(new) == [0, 0, 2]  # one row per destination, from whichever insert came first
        await _drain(one, two)
    [hook] = receiver.bodies("/hook")
    assert (hook["event"], hook["event_group"], hook["customer_id"]) == ("credits_low", "end_user", "acme")
    assert hook["spend"] == 4.5 and hook["max_budget"] == 100 and "Low Balance" in hook["event_message"]
    [slack] = receiver.bodies("/slack")
    assert "credits_low" in slack["text"] and "acme" in slack["text"]


async def test_a_claim_that_ran_out_is_taken_and_sent_by_another_worker(store: Store, receiver: Receiver) -> None:
    async with aiohttp.ClientSession() as session:
        alerting = Alerting(destinations={"webhook": Secret(receiver.url + "/hook")})
        dead, alive = Alerts(alerting, store.engine, session), Alerts(alerting, store.engine, session)
        await dead.enqueue(credits_alert("credits_exhausted", "acme", "acme:p1:out", available=0))
        [claimed] = await dead.outbox.claim(
            10, hold_s=0.0, token="the dead replica's"
        )  # a worker that died holding it: its claim is over
        assert await alive.send_round() == 1
        assert await alive.send_round() == 0
    [hook] = receiver.bodies("/hook")
    assert hook["event"] == "credits_exhausted" and hook["alert_id"] == f"mw-alert-{claimed.id}"
    rows = await alive.outbox.rows()
    assert [(r["status"], r["attempts"]) for r in rows] == [("sent", 0)]


async def test_alerting_off_enqueues_nothing(store: Store) -> None:
    async with aiohttp.ClientSession() as session:
        off = Alerts(None, store.engine, session)
        assert not off.enabled
        assert await off.enqueue(credits_alert("credits_low", "acme", "x", available=1)) == 0
        assert await off.outbox.rows() == []
