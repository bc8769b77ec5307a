"""The router's decisions, offline: which errors are retried, how picks are weighted and limited,
when a deployment cools down, and how `router_settings` is read."""

from __future__ import annotations

import random
from typing import Any

import aiohttp
import orjson
import pytest

from meterway.config.load import parse_config
from meterway.config.routing import RoutingPolicy
from meterway.errors import (
    ConfigError,
    ContentPolicyViolation,
    ContextWindowExceeded,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamTransient,
    UpstreamUnavailable,
    UpstreamUnreachable,
)
from meterway.providers.common import error_from_body
from meterway.providers.transport import map_client_error
from meterway.routing import Router, retry_kind
from meterway.routing.cooldown import Cooldowns
from tests.support.wait import ManualClock


def deployments(*params: dict[str, Any], router: dict[str, Any] | None = None) -> Any:
    data: dict[str, Any] = {
        "model_list": [
            {
                "model_name": "m",
                "litellm_params": {"model": "openai/x", "api_key": "k", **p},
                "model_info": {"id": f"d{i}"},
            }
            for i, p in enumerate(params)
        ]
    }
    if router is not None:
        data["router_settings"] = router
    return parse_config(data, source=None, env={})


def upstream(status: int, message: str = "failed", code: str | None = None) -> UpstreamError:
    """An upstream's error answer as a provider reads it (`map_error`): its class says what it means."""
    return error_from_body(status, orjson.dumps({"error": {"message": message, "code": code}}), "d")


@pytest.mark.parametrize(
    ("err", "kind", "cls"),
    [
        (upstream(500), "retry", UpstreamUnavailable),
        (upstream(503), "retry", UpstreamUnavailable),
        (upstream(429), "retry", UpstreamRateLimited),
        (upstream(408), "retry", UpstreamUnavailable),
        (map_client_error(TimeoutError(), "d"), "retry", UpstreamTimeout),
        (map_client_error(aiohttp.ServerDisconnectedError(), "d"), "retry", UpstreamUnreachable),
        (map_client_error(aiohttp.ClientPayloadError("cut"), "d"), "retry", UpstreamUnavailable),
        (upstream(400, "bad temperature"), None, UpstreamRejected),
        (upstream(401), None, UpstreamRejected),
        (upstream(400, "x", code="context_length_exceeded"), "context_window", ContextWindowExceeded),
        (upstream(400, "This model's maximum context length is 8192 tokens"), "context_window", ContextWindowExceeded),
        (upstream(400, "prompt is too long: 210000 tokens > 200000 maximum"), "context_window", ContextWindowExceeded),
        (upstream(400, "x", code="content_policy_violation"), "content_policy", ContentPolicyViolation),
        (upstream(400, "Blocked by the content management policy"), "content_policy", ContentPolicyViolation),
    ],
)
def test_which_failures_are_retried_or_fall_back(
    err: UpstreamError, kind: str | None, cls: type[UpstreamError]
) -> None:
    assert type(err) is cls
    assert retry_kind(err) == kind


def test_a_429_from_upstream_keeps_its_status_and_message_for_the_client() -> None:
    err = upstream(429, "slow down", code="rate_limit_exceeded")
    assert isinstance(err, UpstreamTransient)
    assert (err.http_status(), err.message, err.code, err.error_type) == (
        429,
        "slow down",
        "rate_limit_exceeded",
        "upstream_error",
    )


def test_an_upstream_5xx_is_a_502_naming_the_deployment() -> None:
    err = upstream(503, "overloaded")
    assert err.http_status() == 502 and err.message == "Upstream deployment 'd' failed with HTTP 503: overloaded"


def test_shuffle_weights_by_rpm_when_no_weight_is_set() -> None:
    s = deployments({"rpm": 90}, {"rpm": 10})
    router = Router(s.deployments, s.routing, rng=random.Random(7))
    group = router.group("m")
    assert group.weights == (90.0, 10.0) and not group.plain
    assert router.group("m").deployments[0].id == "d0"


def test_a_single_deployment_without_retries_or_fallbacks_is_plain() -> None:
    assert Router(deployments({}).deployments).group("m").plain
    s = deployments({}, router={"num_retries": 1})
    assert not Router(s.deployments, s.routing).group("m").plain


async def test_choose_skips_cooling_and_tried_deployments() -> None:
    s = deployments({}, {}, {})
    router = Router(s.deployments, s.routing)
    group = router.group("m")
    router.cooldowns.cool("d0", 30)
    picks = {(await router.choose(group, ["d1"])).id for _ in range(20)}  # type: ignore[union-attr]
    assert picks == {"d2"}
    router.cooldowns.cool("d1", 30), router.cooldowns.cool("d2", 30)
    assert await router.choose(group) is None
    assert 29 < router.retry_after(group) <= 30


async def test_cooldown_starts_after_allowed_fails_or_at_once_on_429() -> None:
    now = [0.0]
    c = Cooldowns(allowed_fails=2, cooldown_s=5, clock=lambda: now[0])
    assert not await c.failed("a", 500) and not await c.failed("a", 500)
    assert await c.failed("a", 500) and c.cooling("a")
    now[0] = 5.1
    assert not c.cooling("a")
    assert await c.failed("b", 429) and c.cooling("b")


async def test_usage_based_routing_counts_rpm_and_prefers_fewest_tokens() -> None:
    s = deployments({"rpm": 2}, {"rpm": 1}, router={"routing_strategy": "usage-based-routing-v2"})
    router = Router(s.deployments, s.routing)
    group = router.group("m")
    first = await router.choose(group)
    assert first is not None and first.id == "d0"  # a tie: the first listed
    await router.finished(first, 0.1, 100)  # it used tokens: the other is preferred next
    second = await router.choose(group)
    third = await router.choose(group)  # d1 is at its rpm of 1
    assert (second and second.id, third and third.id) == ("d1", "d0")
    assert await router.choose(group) is None  # both at their rpm for this minute


async def test_least_busy_and_latency_pick_the_lowest() -> None:
    s = deployments({}, {}, router={"routing_strategy": "least-busy"})
    router = Router(s.deployments, s.routing)
    d0, d1 = s.deployments
    router.started(d0)
    assert {(await router.choose(router.group("m"))).id for _ in range(10)} == {"d1"}  # type: ignore[union-attr]
    s = deployments({}, {}, router={"routing_strategy": "latency-based-routing"})
    router = Router(s.deployments, s.routing)
    d0, d1 = s.deployments
    await router.finished(d0, 0.5, 0)
    await router.finished(d1, 0.1, 0)
    assert {(await router.choose(router.group("m"))).id for _ in range(10)} == {"d1"}  # type: ignore[union-attr]


def test_router_settings_are_read_and_checked() -> None:
    s = deployments(
        {},
        router={
            "routing_strategy": "least-busy",
            "num_retries": 3,
            "timeout": 12,
            "stream_timeout": 4,
            "fallbacks": [{"m": ["m"]}],
            "allowed_fails": 1,
            "cooldown_time": 9,
        },
    )
    assert s.routing == RoutingPolicy(
        strategy="least-busy",
        num_retries=3,
        timeout_s=12.0,
        stream_timeout_s=4.0,
        fallbacks={"m": ()},
        allowed_fails=1,
        cooldown_s=9.0,
    )
    assert s.deployments[0].timeout.total == 12 and s.deployments[0].stream_timeout.sock_read == 4
    assert not [w for w in s.warnings if w.startswith("router_settings")]
    with pytest.raises(ConfigError, match="'gpt-5' is not a model_name"):
        deployments({}, router={"fallbacks": [{"m": ["gpt-5"]}]})
    with pytest.raises(ConfigError, match="routing_strategy"):
        deployments({}, router={"routing_strategy": "fastest"})


def test_routing_keys_in_litellm_settings_count_too_and_router_settings_wins() -> None:
    data: dict[str, Any] = {
        "model_list": [
            {"model_name": n, "litellm_params": {"model": f"openai/{n}", "api_key": "k"}} for n in ("a", "b")
        ],
        "litellm_settings": {"num_retries": 3, "fallbacks": [{"a": ["b"]}], "allowed_fails": 1},
        "router_settings": {"num_retries": 1},
    }
    s = parse_config(data, source=None, env={})
    assert (s.routing.num_retries, s.routing.fallbacks, s.routing.allowed_fails) == (1, {"a": ("b",)}, 1)
    assert not [w for w in s.warnings if "litellm_settings" in w]


def test_the_cooling_count_has_the_cooldowns_in_force_and_not_the_ended_ones() -> None:
    clock = ManualClock()
    cooldowns = Cooldowns(allowed_fails=0, cooldown_s=5, clock=clock)
    assert cooldowns.count() == 0
    cooldowns.cool("a", 5)
    cooldowns.cool("b", 60)  # as announced by another replica
    assert cooldowns.count() == 2
    clock.advance(6)
    assert cooldowns.count() == 1 and not cooldowns.cooling("a") and cooldowns.cooling("b")
