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


def test_a_hit_keeps_its_units_and_images_and_big_answers_are_not_stored() -> None:
    """A rerank hit is metered in search units (priced at hit_cost_ratio of the normal price);
    images are never stored (answers up to 64 MiB), nor any answer over the per-entry bound."""
    import asyncio
    import sqlite3

    from meterway.cache import MAX_ENTRY_BYTES, CacheSettings, Entry, LocalStore, ResponseCache
    from meterway.providers.base import Api
    from tests.upstreams.images import IMAGES_KEY, ImageStandIn
    from tests.upstreams.providers import ProviderStandIn

    query_price, image_price, unit = 0.002, 0.04, 10**10
    with ProviderStandIn() as providers, ImageStandIn() as images:
        config = {
            "model_list": [
                {
                    "model_name": "rerank",
                    "litellm_params": {
                        "model": "cohere/rerank-v3.5",
                        "api_base": providers.base_url,
                        "api_key": "co-key",
                    },
                    "model_info": {"input_cost_per_query": query_price},
                },
                {
                    "model_name": "dalle",
                    "litellm_params": {
                        "model": "openai/dall-e-3",
                        "api_base": images.base_url + "/v1",
                        "api_key": IMAGES_KEY,
                    },
                    "model_info": {"output_cost_per_image": image_price},
                },
            ],
            "litellm_settings": {"cache": True, "cache_params": {"type": "local", "hit_cost_ratio": 0.5}},
        }
        with run_gateway(config) as gw:

            def send(path: str, body: dict[str, Any]) -> httpx.Response:
                r = httpx.post(gw.url + path, json=body, headers={"Authorization": f"Bearer {gw.key}"}, timeout=30)
                assert r.status_code == 200, r.text
                return r

            def row(r: httpx.Response) -> dict[str, Any]:
                path = gw.settings.database_url.reveal().removeprefix("sqlite:///")
                with sqlite3.connect(path) as db:
                    db.row_factory = sqlite3.Row
                    found = db.execute("SELECT * FROM mw_ledger WHERE request_id = ?", (r.headers["x-request-id"],))
                    return dict(found.fetchone())

            rerank = {"model": "rerank", "query": "q", "documents": ["a", "b", "c"]}
            miss, hit = send("/v1/rerank", rerank), send("/v1/rerank", rerank)
            assert miss.headers["x-meterway-cache"] == "miss" and hit.headers["x-meterway-cache"] == "hit"
            assert row(miss)["queries"] == 1 and row(miss)["cost"] == round(query_price * unit)
            hit_row = row(hit)
            assert hit_row["cache_hit"] and hit_row["queries"] == 1 and hit_row["cost"] == round(query_price * unit / 2)

            paint = {"model": "dalle", "prompt": "a lighthouse", "n": 3, "size": "1024x1024"}
            first, second = send("/v1/images/generations", paint), send("/v1/images/generations", paint)
            assert second.headers.get("x-meterway-cache", "miss") == "miss"
            assert len(images.received) == 2  # both reached the upstream
            assert row(first)["images"] == row(second)["images"] == 3
            assert row(second)["cost"] == round(3 * image_price * unit)

    async def bound() -> None:
        cache = ResponseCache(CacheSettings(), LocalStore(), "t")
        for size in (MAX_ENTRY_BYTES, MAX_ENTRY_BYTES + 1):
            key = cache.key(Api.CHAT, "m", b'{"n": %d}' % size)
            assert key is not None
            await cache.put(key, Entry(b"x" * size, False, "application/json", None, None), None)
            assert (await cache.get(key) is not None) == (size == MAX_ENTRY_BYTES)

    asyncio.run(bound())
