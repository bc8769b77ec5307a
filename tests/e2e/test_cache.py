"""The response cache over real HTTP: two `meterway serve` processes sharing Redis answer the second
identical request (plain or streamed) without reaching the upstream, meter it as a hit, and let a
request skip the cache as LiteLLM clients ask."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support.gateway import ledger_row as shared_ledger_row
from tests.support.gateway import run_gateway
from tests.support.serve import Served
from tests.support.serve import replicas as two_serving
from tests.upstreams.standin import StandIn

MASTER = "sk-cache-master-key"
PRICES = {"input_cost_per_token": 0.000001, "output_cost_per_token": 0.000002}


def config(up: StandIn, cache_params: dict[str, Any]) -> dict[str, Any]:
    return {
        "model_list": [
            {
                "model_name": "m",
                "litellm_params": {"model": "openai/m-up", "api_base": up.base_url + "/v1", "api_key": "k", **PRICES},
                "model_info": {"id": "m-dep"},
            }
        ],
        "litellm_settings": {"cache": True, "cache_params": cache_params},
    }


@contextmanager
def replicas(tmp_path: Path, data: dict[str, Any], redis_url: str, prefix: str) -> Iterator[tuple[Served, Served]]:
    data = {**data, "general_settings": {"master_key": MASTER, "redis_url": redis_url, "redis_prefix": prefix}}
    with two_serving(tmp_path, data) as both:
        yield both


def post(served: Served, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(
        served.url + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {MASTER}", **headers},
        timeout=30,
    )


def ledger_row(served: Served, request_id: str) -> dict[str, Any]:
    return shared_ledger_row(served.url, MASTER, request_id)


def test_second_identical_request_is_answered_from_redis_by_the_other_replica(
    tmp_path: Path, upstream: StandIn, redis_url: str, redis_prefix: str
) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "cache me"}]}
    with replicas(tmp_path, config(upstream, {"type": "redis", "ttl": 60}), redis_url, redis_prefix) as (one, two):
        first = post(one, {**body, "user": "alice"})
        second = post(two, {**body, "user": "bob"})  # `user` does not change the answer: still a hit
        assert first.headers["x-meterway-cache"] == "miss" and second.headers["x-meterway-cache"] == "hit"
        assert second.json() == first.json() and len(upstream.received) == 1
        assert second.headers["x-meterway-deployment"] == "m-dep" and second.headers["x-meterway-attempts"] == "0"
        hit = ledger_row(two, second.headers["x-request-id"])
        miss = ledger_row(one, first.headers["x-request-id"])
        assert hit["cache_hit"] is True and hit["attempts"] == 0 and hit["status"] == "success"
        assert hit["spend"] == 0 and hit["total_tokens"] == miss["total_tokens"] > 0
        assert miss["cache_hit"] is False and miss["spend"] > 0

        bypass = post(two, {**body, "cache": {"no-cache": True}})
        header_bypass = post(one, body, **{"Cache-Control": "no-cache"})
        assert bypass.headers["x-meterway-cache"] == "miss" and header_bypass.headers["x-meterway-cache"] == "miss"
        assert len(upstream.received) == 3

        with openai.OpenAI(base_url=one.url + "/v1", api_key=MASTER, max_retries=0) as a:
            streamed = "".join(
                c.choices[0].delta.content or ""
                for c in a.chat.completions.create(model="m", messages=body["messages"], stream=True)
                if c.choices
            )
        with openai.OpenAI(base_url=two.url + "/v1", api_key=MASTER, max_retries=0) as b:
            raw = b.chat.completions.with_raw_response.create(model="m", messages=body["messages"], stream=True)
            assert raw.headers["x-meterway-cache"] == "hit"
            replayed = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        assert replayed == streamed and streamed.startswith("Hello from the stand-in")
        assert len(upstream.received) == 4  # the replayed stream did not reach the upstream
        metrics = httpx.get(two.url + "/metrics").text  # replica two answered: 2 hits, 1 miss (the bypass)
        assert 'meterway_cache_lookups_total{model="m",result="hit"} 2.0' in metrics
        assert 'meterway_cache_lookups_total{model="m",result="miss"} 1.0' in metrics


def test_no_store_is_not_kept_and_ttl_expires_a_local_entry(upstream: StandIn) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "local"}]}
    with run_gateway(config(upstream, {"type": "local"})) as gw:

        def send(extra: dict[str, Any]) -> httpx.Response:
            return httpx.post(
                gw.v1 + "/chat/completions", json={**body, **extra}, headers={"Authorization": f"Bearer {gw.key}"}
            )

        assert send({"cache": {"no-store": True}}).headers["x-meterway-cache"] == "miss"
        assert send({}).headers["x-meterway-cache"] == "miss"  # the first was not stored
        assert send({}).headers["x-meterway-cache"] == "hit"
        assert len(upstream.received) == 2


@pytest.mark.parametrize("value", ["memcached", "s3"])
def test_unsupported_cache_types_fail_at_start(upstream: StandIn, value: str) -> None:
    from meterway.config.load import parse_config
    from meterway.errors import ConfigError

    with pytest.raises(ConfigError, match="not supported"):
        parse_config(config(upstream, {"type": value}), source=None, env={})
