"""`router_settings`, as LiteLLM users write them, resolved once into a frozen `RoutingPolicy`.

Fallbacks come in LiteLLM's shape, a list of one-key mappings (`[{"gpt-4o": ["gpt-4o-mini"]}]`);
they are checked against the model list here, so a typo fails at start, not on the day a provider
is down.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meterway.errors import ConfigError

STRATEGIES = ("simple-shuffle", "least-busy", "latency-based-routing", "usage-based-routing-v2")
# Older LiteLLM names for the same strategies.
ALIASES = {"usage-based-routing": "usage-based-routing-v2", "shuffle": "simple-shuffle"}

# router_settings keys acted on; the rest of LiteLLM's are reported once as ignored.
ROUTER_KEYS = {
    "routing_strategy",
    "num_retries",
    "retry_after",
    "timeout",
    "stream_timeout",
    "fallbacks",
    "context_window_fallbacks",
    "content_policy_fallbacks",
    "allowed_fails",
    "cooldown_time",
    "disable_cooldowns",
}

DEFAULT_ALLOWED_FAILS = 3  # LiteLLM's default: failures per minute a deployment may have
DEFAULT_COOLDOWN_S = 5.0


@dataclass(frozen=True, slots=True)
class RoutingPolicy:
    strategy: str = "simple-shuffle"
    num_retries: int = 0  # further attempts after the first, within a model group
    retry_backoff_s: float = 0.05  # the first wait before retrying the same deployment; doubles each time
    timeout_s: float | None = None  # default call timeout for deployments that set none
    stream_timeout_s: float | None = None
    fallbacks: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    context_window_fallbacks: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    content_policy_fallbacks: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    allowed_fails: int = DEFAULT_ALLOWED_FAILS
    cooldown_s: float = DEFAULT_COOLDOWN_S
    cooldowns: bool = True


def parse_routing(router: Mapping[str, Any], model_names: set[str]) -> RoutingPolicy:
    strategy = router.get("routing_strategy", "simple-shuffle")
    if not isinstance(strategy, str):
        raise ConfigError("router_settings.routing_strategy must be a string")
    strategy = ALIASES.get(strategy, strategy)
    if strategy not in STRATEGIES:
        raise ConfigError(f"router_settings.routing_strategy: '{strategy}' is not one of {', '.join(STRATEGIES)}")
    disable = router.get("disable_cooldowns", False)
    if not isinstance(disable, bool):
        raise ConfigError("router_settings.disable_cooldowns must be true or false")
    return RoutingPolicy(
        strategy=strategy,
        num_retries=_count(router.get("num_retries", 0), "num_retries"),
        retry_backoff_s=_seconds(router.get("retry_after", 0.05), "retry_after", zero=True) or 0.0,
        timeout_s=_seconds(router.get("timeout"), "timeout"),
        stream_timeout_s=_seconds(router.get("stream_timeout"), "stream_timeout"),
        fallbacks=_fallbacks(router.get("fallbacks"), "fallbacks", model_names),
        context_window_fallbacks=_fallbacks(
            router.get("context_window_fallbacks"), "context_window_fallbacks", model_names
        ),
        content_policy_fallbacks=_fallbacks(
            router.get("content_policy_fallbacks"), "content_policy_fallbacks", model_names
        ),
        allowed_fails=_count(router.get("allowed_fails", DEFAULT_ALLOWED_FAILS), "allowed_fails"),
        cooldown_s=_seconds(router.get("cooldown_time", DEFAULT_COOLDOWN_S), "cooldown_time", zero=True) or 0.0,
        cooldowns=not disable,
    )


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"router_settings.{name} must be a whole number, 0 or more, got {value!r}")
    return value


def _seconds(value: Any, name: str, *, zero: bool = False) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or (value == 0 and not zero):
        raise ConfigError(f"router_settings.{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def _fallbacks(value: Any, name: str, model_names: set[str]) -> dict[str, tuple[str, ...]]:
    """`[{"group": ["other", ...]}, ...]` (LiteLLM's form); a plain mapping is taken too."""
    if value is None:
        return {}
    where = f"router_settings.{name}"
    entries: list[Any] = [value] if isinstance(value, dict) else value
    if not isinstance(entries, list):
        raise ConfigError(f'{where} must be a list like [{{"gpt-4o": ["gpt-4o-mini"]}}]')
    out: dict[str, tuple[str, ...]] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            raise ConfigError(f'{where} entries must be mappings like {{"gpt-4o": ["gpt-4o-mini"]}}')
        for group, targets in entry.items():
            if isinstance(targets, str):
                targets = [targets]
            if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
                raise ConfigError(f"{where}.{group} must be a list of model names")
            for name_ in (group, *targets):
                if name_ not in model_names and name_ != "*":
                    raise ConfigError(f"{where}: '{name_}' is not a model_name of model_list")
            out[str(group)] = tuple(t for t in targets if t != group)
    return out
