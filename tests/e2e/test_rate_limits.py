"""Rate limits of a key through the real SDK: rpm and requests in flight, in one gateway and
across two gateways that share Redis."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support.gateway import RunningGateway, run_gateway
from tests.support.wait import clear_of_minute_edge
from tests.upstreams.standin import StandIn

MESSAGES: Any = [{"role": "user", "content": "hi"}]


def _key(gw: RunningGateway, **limits: int) -> str:
    r = httpx.post(gw.url + "/key/generate", json=limits, headers={"Authorization": f"Bearer {gw.key}"})
    assert r.status_code == 200, r.text
    return str(r.json()["key"])


def test_rpm_limit_answers_429_with_retry_after_and_ratelimit_headers(gateway: RunningGateway) -> None:
    clear_of_minute_edge()
    key = _key(gateway, rpm_limit=3)
    with openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0) as client:
        for _ in range(3):
            client.chat.completions.create(model="demo", messages=MESSAGES)
        with pytest.raises(openai.RateLimitError) as e:
            client.chat.completions.create(model="demo", messages=MESSAGES)
    headers = e.value.response.headers
    assert 1 <= int(headers["retry-after"]) <= 60
    assert headers["x-ratelimit-limit-requests"] == "3" and headers["x-ratelimit-remaining-requests"] == "0"
    assert e.value.code == "rate_limit_exceeded" and "rpm_limit is 3" in e.value.message


def test_parallel_limit_refuses_the_extra_request_and_frees_its_slot_after(
    gateway: RunningGateway, upstream: StandIn
) -> None:
    key = _key(gateway, max_parallel_requests=1)
    upstream.script_delay(1.0)
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "gpt-test", "messages": MESSAGES}
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(httpx.post, gateway.v1 + "/chat/completions", json=body, headers=headers, timeout=10)
        upstream.wait_for_received(1)  # the first request holds the one slot
        second = httpx.post(gateway.v1 + "/chat/completions", json=body, headers=headers, timeout=10)
        assert second.status_code == 429 and "max_parallel_requests is 1" in second.json()["error"]["message"]
        assert slow.result().status_code == 200
    # the slot came back: failures and successes alike leave nothing reserved
    upstream.script_fail(500, {"error": {"message": "boom"}})
    assert httpx.post(gateway.v1 + "/chat/completions", json=body, headers=headers).status_code == 502
    for _ in range(3):
        assert httpx.post(gateway.v1 + "/chat/completions", json=body, headers=headers).status_code == 200


def test_rpm_limit_holds_exactly_across_two_gateways_sharing_redis(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    clear_of_minute_edge()
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    config = {
        "model_list": [{"model_name": "demo", "litellm_params": {"model": "mock/demo"}}],
        "general_settings": {"database_url": db, "redis_url": redis_url, "redis_prefix": redis_prefix},
    }
    with run_gateway(config) as one, run_gateway(config) as two:
        key = _key(one, rpm_limit=30)

        def call(i: int) -> int:
            gw = one if i % 2 else two
            r = httpx.post(
                gw.v1 + "/chat/completions",
                json={"model": "demo", "messages": MESSAGES},
                headers={"Authorization": f"Bearer {key}"},
                timeout=10,
            )
            return r.status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(call, range(50)))
    assert statuses.count(200) == 30 and statuses.count(429) == 20


def _post(gw: RunningGateway, key: str, **extra: Any) -> int:
    r = httpx.post(
        gw.v1 + "/chat/completions",
        json={"model": "demo", "messages": MESSAGES, **extra},
        headers={"Authorization": f"Bearer {key}"},
    )
    return r.status_code


def test_a_teams_limit_is_shared_by_all_its_keys(gateway: RunningGateway, admin: httpx.Client) -> None:
    clear_of_minute_edge()
    admin.post("/team/delete", json={"team_ids": ["team-rpm"]})
    assert admin.post("/team/new", json={"team_id": "team-rpm", "rpm_limit": 3}).status_code == 200
    a = admin.post("/key/generate", json={"team_id": "team-rpm"}).json()["key"]
    b = admin.post("/key/generate", json={"team_id": "team-rpm"}).json()["key"]
    assert [_post(gateway, k) for k in (a, b, a, b)] == [200, 200, 200, 429]


def test_a_customers_limit_follows_the_user_field(gateway: RunningGateway, admin: httpx.Client) -> None:
    clear_of_minute_edge()
    admin.post("/customer/delete", json={"user_ids": ["cust-rpm"]})
    assert admin.post("/customer/new", json={"user_id": "cust-rpm", "rpm_limit": 2}).status_code == 200
    key = admin.post("/key/generate", json={}).json()["key"]
    assert [_post(gateway, key, user="cust-rpm") for _ in range(3)] == [200, 200, 429]
    assert _post(gateway, key, user="someone-else") == 200 and _post(gateway, key) == 200


def test_many_concurrent_requests_with_limits_in_redis_all_succeed(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    """The Redis pool waits for a free connection under load instead of failing requests."""
    import aiohttp

    config = {
        "model_list": [{"model_name": "demo", "litellm_params": {"model": "mock/demo"}}],
        "general_settings": {
            "database_url": f"sqlite:///{tmp_path / 'c.db'}",
            "redis_url": redis_url,
            "redis_prefix": redis_prefix,
        },
    }
    with run_gateway(config) as gw:
        key = _key(gw, rpm_limit=1_000_000, max_parallel_requests=10_000)

        async def burst() -> list[int]:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

                async def one() -> int:
                    async with session.post(
                        gw.v1 + "/chat/completions",
                        json={"model": "demo", "messages": MESSAGES},
                        headers={"Authorization": f"Bearer {key}"},
                    ) as r:
                        await r.read()
                        return r.status

                return await asyncio.gather(*(one() for _ in range(300)))

        statuses = asyncio.run(burst())
    assert statuses.count(200) == 300, sorted(set(statuses))
