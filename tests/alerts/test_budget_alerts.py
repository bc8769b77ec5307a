"""Budget alerts end to end: real gateways (two replicas sharing PostgreSQL and Redis, or one on
SQLite) in front of the stand-in upstream, the real OpenAI SDK as the client, and a stand-in
receiver on a loopback port taking the webhook and Slack posts.

The stand-in answers "hi" with 4 prompt and 7 completion tokens: 0.018 USD a request at the prices
below. A key with max_budget 0.2 and the threshold 0.5 crosses 0.1 on its sixth request and is
refused before its spend reaches 0.2 (its reservations keep spend under the budget). A refusal is
the budget crossing when the request would not fit in what is left even with nothing in flight:
`_refused_alone` asks for more than is left. (Two replicas lease shares of the budget ahead, so a
request may be refused for what the other replica holds: that is no crossing.) Each alert is
posted once, whichever replica saw it, however often it is seen.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from hashlib import sha256
from typing import Any

import asyncpg
import httpx
import openai
import pytest

from tests.alerts.receiver import Receiver
from tests.support.gateway import RunningGateway, run_gateway
from tests.support.wait import eventually
from tests.upstreams.standin import StandIn

HI: Any = [{"role": "user", "content": "hi"}]
BUDGET = 0.2


@pytest.fixture(scope="module")
def standin() -> Iterator[StandIn]:
    with StandIn() as s:
        yield s


def _config(base: str, receiver: Receiver, database_url: str, **general: Any) -> dict[str, Any]:
    return {
        "model_list": [
            {
                "model_name": "priced",
                "litellm_params": {
                    "model": "openai/priced-upstream",
                    "api_base": base + "/v1",
                    "api_key": "sk-upstream",
                    "input_cost_per_token": 0.001,
                    "output_cost_per_token": 0.002,
                },
            }
        ],
        "general_settings": {
            "database_url": database_url,
            "alerting": ["webhook", "slack"],
            "alerting_args": {
                "budget_alert_thresholds": [0.5],
                "budget_alert_scan_interval": 0.2,
                "webhook_url": receiver.url + "/hook",
                "slack_webhook_url": receiver.url + "/slack",
            },
            **general,
        },
    }


@contextmanager
def _replicas(config: dict[str, Any], n: int) -> Iterator[list[RunningGateway]]:
    with ExitStack() as stack:
        yield [stack.enter_context(run_gateway(config)) for _ in range(n)]


def _admin(gw: RunningGateway, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(gw.url + path, json=body, headers={"Authorization": f"Bearer {gw.key}"})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _key(gw: RunningGateway) -> tuple[str, str]:
    """A key of user alice, in team red, bound to customer acme, with a budget of 0.2 USD: the
    key and the team's id."""
    team = _admin(gw, "/team/new", {"team_alias": "red"})["team_id"]
    _admin(gw, "/customer/new", {"user_id": "acme"})
    body = {"max_budget": BUDGET, "user_id": "alice", "team_id": team, "customer_id": "acme", "key_alias": "ci"}
    return _admin(gw, "/key/generate", body)["key"], team


def _spend_until_refused(replicas: list[RunningGateway], key: str) -> int:
    """Requests alternating between the replicas until one is refused for the budget; how many were served."""
    clients = [openai.OpenAI(base_url=gw.v1, api_key=key, max_retries=0) for gw in replicas]
    try:
        for i in range(20):
            try:
                clients[i % len(clients)].chat.completions.create(model="priced", messages=HI, max_tokens=10)
            except openai.BadRequestError as e:
                assert e.code == "budget_exceeded", e
                return i
        raise AssertionError("the key was never refused for its budget")
    finally:
        for c in clients:
            c.close()


def _refused_alone(replicas: list[RunningGateway], key: str) -> None:
    """A request on every replica that could not be paid for by what is left of the budget even
    with nothing in flight (up to 0.2 USD of output alone): each is refused, a budget crossing."""
    for gw in replicas:
        with openai.OpenAI(base_url=gw.v1, api_key=key, max_retries=0) as client:
            with pytest.raises(openai.BadRequestError) as e:
                client.chat.completions.create(model="priced", messages=HI, max_tokens=100)
            assert e.value.code == "budget_exceeded", e.value


def _scanned_twice_more(replicas: list[RunningGateway]) -> None:
    """Every replica has scanned twice since now: whatever it would enqueue, it has."""
    marks = [(gw, _alerts(gw).scans) for gw in replicas]
    for gw, mark in marks:
        eventually(lambda gw=gw, mark=mark: _alerts(gw).scans >= mark + 2, 10, "two more alert scans")


def _alerts(gw: RunningGateway) -> Any:
    services = gw.app.lifecycle.services
    assert services is not None and services.alerts is not None
    return services.alerts


def _delivered(receiver: Receiver, path: str, n: int) -> list[dict[str, Any]]:
    return eventually(lambda: b if len(b := receiver.bodies(path)) >= n else None, 30, f"{n} posts to {path}")


def _assert_budget_alerts(receiver: Receiver, key: str, team: str) -> None:
    hooks = _delivered(receiver, "/hook", 2)
    events = sorted(b["event"] for b in hooks)
    assert events == ["budget_crossed", "threshold_crossed"], hooks
    digest = sha256(key.encode()).hexdigest()
    for body in hooks:
        assert body["token"] == digest and key not in str(body)
        assert (body["user_id"], body["team_id"], body["customer_id"]) == ("alice", team, "acme")
        assert body["event_group"] == "key" and body["key_alias"] == "ci"
        assert body["max_budget"] == BUDGET and 0 < body["spend"] < BUDGET
        assert body["alert_id"] and body["event_message"].startswith("Key Budget: ")
        assert set(body) >= {"projected_exceeded_date", "projected_spend", "user_email", "soft_budget"}
    by_event = {b["event"]: b for b in hooks}
    assert by_event["threshold_crossed"]["spend"] >= BUDGET * 0.5
    assert "Budget Crossed" in by_event["budget_crossed"]["event_message"]
    slack = _delivered(receiver, "/slack", 2)
    assert sorted(set(b) for b in slack) == [{"text"}, {"text"}]
    assert any("budget_crossed" in b["text"] and "Key Budget: Budget Crossed" in b["text"] for b in slack)
    assert all(digest in b["text"] and key not in b["text"] for b in slack)


def test_two_replicas_post_one_budget_crossed_and_one_threshold_crossed_for_a_key(
    standin: StandIn, receiver: Receiver, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    config = _config(standin.base_url, receiver, pg_url, redis_url=redis_url, redis_prefix=redis_prefix)
    with _replicas(config, 2) as replicas:
        key, team = _key(replicas[0])
        assert _spend_until_refused(replicas, key) >= 6
        _refused_alone(replicas, key)  # refused again, on both replicas
        _assert_budget_alerts(receiver, key, team)
        _scanned_twice_more(replicas)
        assert len(receiver.bodies("/hook")) == 2 and len(receiver.bodies("/slack")) == 2
        metrics = httpx.get(replicas[0].url + "/metrics").text + httpx.get(replicas[1].url + "/metrics").text
        assert 'meterway_alerts_sent_total{destination="webhook",event="budget_crossed"} 1.0' in metrics


def test_alerts_queued_during_a_receiver_outage_arrive_once_it_is_back(
    standin: StandIn, receiver: Receiver, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    config = _config(standin.base_url, receiver, pg_url, redis_url=redis_url, redis_prefix=redis_prefix)
    with _replicas(config, 2) as replicas:
        key, team = _key(replicas[0])
        receiver.down()  # first a receiver that is not there at all ...
        _spend_until_refused(replicas, key)
        _refused_alone(replicas, key)
        pending = eventually(
            lambda: r if len(r := _rows(pg_url)) == 4 and all(x["attempts"] > 0 for x in r) else None,
            30,
            "every alert tried and failed",
        )
        assert all(r["status"] == "pending" and "not reached" in r["last_error"] for r in pending)
        assert receiver.posts == []
        receiver.fail_next(4)  # ... then one that answers 503 for a while
        receiver.up()
        eventually(lambda: receiver.refused >= 4, 30, "the receiver's 503s")
        _assert_budget_alerts(receiver, key, team)
        eventually(lambda: all(r["status"] == "sent" for r in _rows(pg_url)), 30, "every alert marked sent")
        _scanned_twice_more(replicas)
        assert len(receiver.bodies("/hook")) == 2 and len(receiver.bodies("/slack")) == 2


def _rows(database_url: str) -> list[dict[str, Any]]:
    """The alert outbox's rows, read from its database as an operator would."""

    async def fetch() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(database_url, timeout=10)
        try:
            found = await conn.fetch("SELECT status, attempts, last_error FROM mw_alerts ORDER BY id")
        finally:
            await conn.close()
        return [dict(r) for r in found]

    return asyncio.run(fetch())


def test_one_sqlite_gateway_posts_each_budget_alert_once(standin: StandIn, receiver: Receiver, tmp_path: Any) -> None:
    config = _config(standin.base_url, receiver, f"sqlite:///{tmp_path / 'one.db'}")
    with _replicas(config, 1) as replicas:
        key, team = _key(replicas[0])
        _spend_until_refused(replicas, key)
        _assert_budget_alerts(receiver, key, team)
        _scanned_twice_more(replicas)
        assert len(receiver.bodies("/hook")) == 2


def test_teams_customers_and_soft_budgets_are_alerted_with_their_event_group(
    standin: StandIn, receiver: Receiver, tmp_path: Any
) -> None:
    config = _config(standin.base_url, receiver, f"sqlite:///{tmp_path / 'scopes.db'}")
    with _replicas(config, 1) as replicas:
        gw = replicas[0]
        team = _admin(gw, "/team/new", {"team_alias": "blue", "max_budget": BUDGET})["team_id"]
        _admin(gw, "/customer/new", {"user_id": "globex", "soft_budget": 0.05})
        body = {"soft_budget": 0.03, "team_id": team, "customer_id": "globex", "key_alias": "soft"}
        key = _admin(gw, "/key/generate", body)["key"]
        _spend_until_refused(replicas, key)
        hooks = _delivered(receiver, "/hook", 4)
        _scanned_twice_more(replicas)
        got = sorted((b["event"], b["event_group"]) for b in receiver.bodies("/hook"))
    assert got == [
        ("budget_crossed", "team"),
        ("soft_budget_crossed", "end_user"),
        ("soft_budget_crossed", "key"),
        ("threshold_crossed", "team"),
    ]
    by = {(b["event"], b["event_group"]): b for b in hooks}
    assert by[("budget_crossed", "team")]["team_id"] == team and by[("budget_crossed", "team")]["team_alias"] == "blue"
    assert by[("budget_crossed", "team")]["event_message"].startswith("Team Budget: Budget Crossed")
    assert by[("soft_budget_crossed", "end_user")]["customer_id"] == "globex"
    assert by[("soft_budget_crossed", "key")]["soft_budget"] == 0.03
