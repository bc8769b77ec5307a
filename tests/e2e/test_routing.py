"""Routing over real HTTP: strategies, retries, fallbacks and cooldowns, with stand-in upstreams.

Each deployment gets its own stand-in, so what each upstream received says where the gateway sent
requests. Cross-replica behaviour (cooldowns, usage-based routing) runs two `meterway serve`
processes sharing Redis.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support.gateway import RunningGateway, run_gateway
from tests.support.gateway import ledger_row as shared_ledger_row
from tests.support.serve import Served
from tests.support.serve import replicas as two_serving
from tests.support.wait import clear_of_minute_edge, eventually
from tests.upstreams.standin import Script, StandIn

HI: Any = [{"role": "user", "content": "hi"}]
MASTER = "sk-routing-master-key"


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[StandIn, StandIn]]:
    with StandIn() as a, StandIn() as b:
        yield a, b


@pytest.fixture
def ups(pair: tuple[StandIn, StandIn]) -> tuple[StandIn, StandIn]:
    for s in pair:
        s.reset()
    return pair


def dep(name: str, up: StandIn, ident: str, **params: Any) -> dict[str, Any]:
    return {
        "model_name": name,
        "litellm_params": {
            "model": f"openai/{ident}-up",
            "api_base": up.base_url + "/v1",
            "api_key": "sk-up",
            **params,
        },
        "model_info": {"id": ident},
    }


def chat(gw: RunningGateway | Served, model: str, *, key: str | None = None, **extra: Any) -> httpx.Response:
    return httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": model, "messages": HI, **extra},
        headers={"Authorization": f"Bearer {key or getattr(gw, 'key', MASTER)}"},
        timeout=30,
    )


def ledger_row(gw: RunningGateway, request_id: str) -> dict[str, Any]:
    return shared_ledger_row(gw.url, gw.key, request_id)


def test_simple_shuffle_spreads_requests_by_weight(ups: tuple[StandIn, StandIn]) -> None:
    a, b = ups
    config = {"model_list": [dep("m", a, "heavy", weight=3), dep("m", b, "light", weight=1)]}
    n = 400
    with run_gateway(config) as gw:

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(headers={"Authorization": f"Bearer {gw.key}"}, timeout=30) as c:
                body = {"model": "m", "messages": HI}
                return list(
                    await asyncio.gather(*(c.post(gw.url + "/v1/chat/completions", json=body) for _ in range(n)))
                )

        responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses)
    heavy = sum(r.headers["x-meterway-deployment"] == "heavy" for r in responses)
    assert len(a.received) == heavy and len(b.received) == n - heavy
    # binomial(400, 0.75): mean 300, standard deviation 8.7; five of them either side
    assert 256 <= heavy <= 344, heavy
    assert {r.headers["x-meterway-attempts"] for r in responses} == {"1"}


def test_single_deployment_answers_carry_deployment_and_attempt_headers(ups: tuple[StandIn, StandIn]) -> None:
    with run_gateway({"model_list": [dep("solo", ups[0], "solo")]}) as gw:
        r = chat(gw, "solo")
        s = chat(gw, "solo", stream=True)
    assert r.status_code == 200 and r.headers["x-meterway-deployment"] == "solo"
    assert r.headers["x-meterway-attempts"] == "1" and s.headers["x-meterway-deployment"] == "solo"


@pytest.mark.parametrize("status", [500, 429])
def test_failing_deployment_is_retried_elsewhere_and_cooled_down(ups: tuple[StandIn, StandIn], status: int) -> None:
    a, b = ups
    a.set_default(Script(status=status, body={"error": {"message": "down", "type": "server_error"}}))
    config = {
        "model_list": [dep("m", a, "bad"), dep("m", b, "good")],
        "router_settings": {"num_retries": 2, "allowed_fails": 0, "cooldown_time": 30},
    }
    with run_gateway(config) as gw:
        first = None
        for _ in range(40):  # until the shuffle picks the failing one first
            r = chat(gw, "m")
            assert r.status_code == 200 and r.headers["x-meterway-deployment"] == "good"
            if r.headers["x-meterway-attempts"] == "2":
                first = r
                break
        assert first is not None, "the failing deployment was never picked first"
        assert len(a.received) == 1
        row = ledger_row(gw, first.headers["x-request-id"])
        assert row["model_id"] == "good" and row["attempts"] == 2 and row["status"] == "success"
        for _ in range(10):
            assert chat(gw, "m").headers["x-meterway-attempts"] == "1"
        assert len(a.received) == 1  # cooling down: no more requests
        metrics = httpx.get(gw.url + "/metrics").text
    assert 'meterway_upstream_errors_total{deployment="bad"' in metrics


def test_fallback_group_answers_when_the_whole_group_fails(ups: tuple[StandIn, StandIn]) -> None:
    a, b = ups
    a.set_default(Script(status=503, body={"error": {"message": "overloaded", "type": "server_error"}}))
    config = {
        "model_list": [dep("primary", a, "p1"), dep("backup", b, "b1")],
        "router_settings": {"num_retries": 1, "retry_after": 0.01, "fallbacks": [{"primary": ["backup"]}]},
    }
    with run_gateway(config) as gw, openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(model="primary", messages=HI)
        answer = raw.parse()
        row = ledger_row(gw, raw.headers["x-request-id"])
    assert answer.choices[0].message.content and raw.headers["x-meterway-deployment"] == "b1"
    assert raw.headers["x-meterway-attempts"] == "3"  # primary twice (one retry), then backup
    assert len(a.received) == 2 and b.last.json["model"] == "b1-up"
    assert row["model"] == "primary" and row["model_id"] == "b1" and row["attempts"] == 3


def test_caller_errors_are_not_retried_and_context_window_errors_fall_back(ups: tuple[StandIn, StandIn]) -> None:
    a, b = ups
    config = {
        "model_list": [dep("small", a, "small"), dep("large", b, "large")],
        "router_settings": {"num_retries": 2, "context_window_fallbacks": [{"small": ["large"]}]},
    }
    with run_gateway(config) as gw:
        a.script_fail(400, {"error": {"message": "bad temperature", "type": "invalid_request_error"}})
        refused = chat(gw, "small")
        assert refused.status_code == 400 and refused.headers["x-meterway-attempts"] == "1"
        a.script_fail(
            400,
            {"error": {"message": "too long", "type": "invalid_request_error", "code": "context_length_exceeded"}},
        )
        r = chat(gw, "small")
    assert r.status_code == 200 and r.headers["x-meterway-deployment"] == "large"
    assert len(a.received) == 2 and len(b.received) == 1


def test_stream_is_retried_before_its_first_byte_but_not_after(ups: tuple[StandIn, StandIn]) -> None:
    a, b = ups
    config = {"model_list": [dep("m", a, "one"), dep("m", b, "two")], "router_settings": {"num_retries": 3}}
    with run_gateway(config) as gw, openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0) as client:
        for s in (a, b):
            s.set_default(Script(break_after=0))  # the connection drops before any event
        b.set_default(None)
        text = ""
        for chunk in client.chat.completions.create(model="m", messages=HI, stream=True):
            text += chunk.choices[0].delta.content or "" if chunk.choices else ""
        assert text.startswith("Hello from the stand-in")
        assert len(b.received) == 1

        for s in (a, b):
            s.reset()
            s.set_default(Script(break_after=2))  # drops after two events: the client has bytes
        with pytest.raises(openai.APIError):
            for _ in client.chat.completions.create(model="m", messages=HI, stream=True):
                pass
    assert len(a.received) + len(b.received) == 1  # not retried


@contextmanager
def replicas(tmp_path: Path, config: dict[str, Any], redis_url: str, prefix: str) -> Iterator[tuple[Served, Served]]:
    config = {**config, "general_settings": {"master_key": MASTER, "redis_url": redis_url, "redis_prefix": prefix}}
    with two_serving(tmp_path, config) as both:
        yield both


def cooling_down(replica: Served) -> float:
    """The replica's `meterway_deployments_cooling_down`, from its /metrics."""
    text = httpx.get(replica.url + "/metrics").text
    found = re.search(r"^meterway_deployments_cooling_down (\S+)$", text, re.MULTILINE)
    assert found, text
    return float(found.group(1))


def test_cooldown_started_on_one_replica_is_kept_by_the_other(
    tmp_path: Path, ups: tuple[StandIn, StandIn], redis_url: str, redis_prefix: str
) -> None:
    a, b = ups
    a.set_default(Script(status=500, body={"error": {"message": "down", "type": "server_error"}}))
    config = {
        "model_list": [dep("m", a, "bad"), dep("m", b, "good")],
        "router_settings": {"num_retries": 1, "allowed_fails": 0, "cooldown_time": 60},
    }
    with replicas(tmp_path, config, redis_url, redis_prefix) as (one, two):
        for _ in range(40):
            if chat(one, "m").headers["x-meterway-attempts"] == "2":
                break
        assert len(a.received) == 1
        assert cooling_down(one) == 1  # it started the cooldown, and announced it over Redis
        eventually(lambda: cooling_down(two) == 1, 10, "replica two taking in the cooldown replica one announced")
        for _ in range(20):
            r = chat(two, "m")
            assert r.status_code == 200 and r.headers["x-meterway-attempts"] == "1"
    assert len(a.received) == 1


def test_usage_based_routing_keeps_each_deployment_under_its_rpm_across_replicas(
    tmp_path: Path, ups: tuple[StandIn, StandIn], redis_url: str, redis_prefix: str
) -> None:
    a, b = ups
    config = {
        "model_list": [dep("m", a, "a", rpm=4), dep("m", b, "b", rpm=6)],
        "router_settings": {"routing_strategy": "usage-based-routing-v2"},
    }
    with replicas(tmp_path, config, redis_url, redis_prefix) as (one, two):
        clear_of_minute_edge(4)  # rpm windows are whole minutes: the burst stays in one

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(headers={"Authorization": f"Bearer {MASTER}"}, timeout=30) as c:
                body = {"model": "m", "messages": HI}
                return list(
                    await asyncio.gather(
                        *(c.post((one, two)[i % 2].url + "/v1/chat/completions", json=body) for i in range(16))
                    )
                )

        responses = asyncio.run(burst())
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 10 + [429] * 6, codes
    assert (len(a.received), len(b.received)) == (4, 6)
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["code"] == "no_deployment_available" and "retry-after" in refused.headers
