"""Model name -> the deployments serving it -> one pick, by the configured strategy.

`router_settings.routing_strategy` takes LiteLLM's names:

    simple-shuffle           random, weighted by `weight` (or by `rpm`, else `tpm`, when no weight is set)
    least-busy               fewest requests in flight on this replica
    latency-based-routing    lowest recent latency (time to first byte for streams), measured here
    usage-based-routing-v2   fewest tokens used this minute, under each deployment's rpm/tpm
                             (counted in Redis across replicas when Redis is configured)

Deployments cooling down after failures (`routing.cooldown`) are left out of every pick. A group
of one deployment with no retries or fallbacks is "plain": the request path takes its one
deployment without asking anything here, so it costs what it did before the router existed.
What to retry and where to fall back is decided in `retry_kind` and `Router.fallbacks_for`; the
loop that does it is in `api.proxy`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from meterway.config.routing import RoutingPolicy
from meterway.config.settings import Deployment
from meterway.errors import (
    ContentPolicyViolation,
    ContextWindowExceeded,
    MeterwayError,
    ModelNotFound,
    UpstreamError,
    UpstreamTransient,
)
from meterway.routing.cooldown import Cooldowns

if TYPE_CHECKING:
    from meterway.routing.usage import DeploymentLoad

LATENCY_DECAY = 0.3  # weight of the newest latency sample in the moving average

Headers = tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True, slots=True)
class Group:
    name: str
    deployments: tuple[Deployment, ...]
    weights: tuple[float, ...]
    plain: bool  # one deployment, no retries, no fallbacks: the request path skips the router
    headers: Headers  # for a plain group: its deployment, one attempt


def retry_kind(err: MeterwayError) -> str | None:
    """What an attempt's failure allows: "retry" (an UpstreamTransient: 5xx, 429, 408, timeouts,
    connection errors: another attempt may succeed), "context_window" or "content_policy" (a 400
    that another model group may take), or None (the caller's own error: passed on as it is). The
    provider that read the failure gave it its class (`providers.common.error_kind`)."""
    if isinstance(err, UpstreamTransient):
        return "retry"
    if isinstance(err, ContextWindowExceeded):
        return "context_window"
    if isinstance(err, ContentPolicyViolation):
        return "content_policy"
    return None


class Router:
    def __init__(
        self,
        deployments: tuple[Deployment, ...],
        policy: RoutingPolicy | None = None,
        *,
        redis: Any | None = None,
        prefix: str = "meterway:router:",  # Redis keys and channels of cooldowns and usage counts
        rng: random.Random | None = None,
    ) -> None:
        self.policy = policy = policy or RoutingPolicy()
        self.replace(deployments)
        self._rng = rng or random.Random()
        self.cooldowns = Cooldowns(policy.allowed_fails, policy.cooldown_s if policy.cooldowns else 0.0, redis, prefix)
        self.usage: DeploymentLoad | None = None
        if policy.strategy == "usage-based-routing-v2":
            from meterway.routing.usage import DeploymentLoad  # imports redis: only where this strategy is used

            self.usage = DeploymentLoad(redis, prefix)
        self._busy: dict[str, int] = {}  # least-busy: requests in flight per deployment
        self._latency: dict[str, float] = {}  # latency-based: moving average, seconds
        self.tracks = policy.strategy in ("least-busy", "latency-based-routing", "usage-based-routing-v2")

    def replace(self, deployments: tuple[Deployment, ...]) -> None:
        """Serves these deployments from now on (models added or removed at runtime). The maps are
        swapped whole, so a request in flight keeps the deployment it picked."""
        grouped: dict[str, list[Deployment]] = {}
        for d in deployments:
            grouped.setdefault(d.model_name, []).append(d)
        self.deployments = deployments
        self._groups = {name: self._group(name, tuple(ds)) for name, ds in grouped.items()}
        self._headers: dict[str, Headers] = {d.id: route_headers(d, 1) for d in deployments}
        self._by_id = {d.id: d for d in deployments}

    def _group(self, name: str, ds: tuple[Deployment, ...]) -> Group:
        p = self.policy
        plain = (
            len(ds) == 1
            and p.num_retries == 0
            and not any(
                name in f or "*" in f for f in (p.fallbacks, p.context_window_fallbacks, p.content_policy_fallbacks)
            )
            and p.strategy != "usage-based-routing-v2"
        )
        return Group(name, ds, _weights(ds), plain, route_headers(ds[0], 1))

    @property
    def shares_cooldowns(self) -> bool:
        """Whether any group can cool a deployment down (only groups of several do)."""
        return self.cooldowns.cooldown_s > 0 and any(len(g.deployments) > 1 for g in self._groups.values())

    @property
    def model_names(self) -> list[str]:
        return list(self._groups)

    def group(self, model: str) -> Group:
        group = self._groups.get(model)
        if group is None:
            raise ModelNotFound(model, self.model_names)
        return group

    def deployment(self, ident: str | None) -> Deployment | None:
        return None if ident is None else self._by_id.get(ident)

    def headers(self, deployment: Deployment, attempts: int) -> Headers:
        return self._headers[deployment.id] if attempts == 1 else route_headers(deployment, attempts)

    async def choose(self, group: Group, tried: Sequence[str] = ()) -> Deployment | None:
        """The next deployment to try: not cooling down, one not tried yet if there is one, chosen by
        the strategy. None when none is available (all cooling down, or at their rpm/tpm)."""
        ds = group.deployments
        weights = group.weights
        cooldowns = self.cooldowns
        if cooldowns.active() and len(ds) > 1:
            kept = [i for i, d in enumerate(ds) if not cooldowns.cooling(d.id)]
            if not kept:
                return None
            if len(kept) < len(ds):
                ds = tuple(ds[i] for i in kept)
                weights = tuple(weights[i] for i in kept)
        if tried and len(ds) > 1:
            fresh = [i for i, d in enumerate(ds) if d.id not in tried]
            if fresh:
                ds = tuple(ds[i] for i in fresh)
                weights = tuple(weights[i] for i in fresh)
        strategy = self.policy.strategy
        if strategy == "usage-based-routing-v2":
            assert self.usage is not None
            return await self.usage.take(ds)
        if len(ds) == 1:
            return ds[0]
        if strategy == "least-busy":
            return self._lowest(ds, self._busy, 0)
        if strategy == "latency-based-routing":
            return self._lowest(ds, self._latency, 0.0)
        return self._rng.choices(ds, weights=weights)[0]

    def _lowest(self, ds: Sequence[Deployment], values: dict[str, Any], default: float) -> Deployment:
        best = min(values.get(d.id, default) for d in ds)
        return self._rng.choice([d for d in ds if values.get(d.id, default) == best])

    def retry_after(self, group: Group) -> float:
        return self.cooldowns.remaining_s(d.id for d in group.deployments) or self.policy.cooldown_s or 1.0

    def fallbacks_for(self, model: str, kind: str) -> tuple[str, ...]:
        p = self.policy
        table = {
            "retry": p.fallbacks,
            "context_window": p.context_window_fallbacks or p.fallbacks,
            "content_policy": p.content_policy_fallbacks or p.fallbacks,
        }[kind]
        return table.get(model) or table.get("*") or ()

    def started(self, deployment: Deployment) -> None:
        if self.policy.strategy == "least-busy":
            self._busy[deployment.id] = self._busy.get(deployment.id, 0) + 1

    async def finished(self, deployment: Deployment, seconds: float | None, tokens: int) -> None:
        """After an attempt: in-flight count, latency sample (None: it failed) and tokens used."""
        strategy = self.policy.strategy
        if strategy == "least-busy":
            self._busy[deployment.id] -= 1
        elif strategy == "latency-based-routing":
            before = self._latency.get(deployment.id)
            sample = seconds if seconds is not None else 2 * max(self._latency.values(), default=1.0)
            self._latency[deployment.id] = sample if before is None else before + LATENCY_DECAY * (sample - before)
        elif self.usage is not None:
            await self.usage.add_tokens(deployment.id, tokens)

    async def failed(self, group: Group, deployment: Deployment, err: MeterwayError) -> None:
        """Counts the failure towards a cooldown; a group of one is never cooled (nothing else could
        serve it)."""
        if len(group.deployments) > 1 and isinstance(err, UpstreamError):
            await self.cooldowns.failed(deployment.id, err.upstream_status)


def route_headers(deployment: Deployment, attempts: int) -> Headers:
    return ((b"x-meterway-deployment", deployment.id.encode()), (b"x-meterway-attempts", b"%d" % attempts))


def _weights(ds: tuple[Deployment, ...]) -> tuple[float, ...]:
    """`weight` where any is set; else `rpm`, else `tpm`, when every deployment has one; else equal."""
    if any(d.weight != 1.0 for d in ds):
        return tuple(d.weight for d in ds)
    if all(d.rpm for d in ds):
        return tuple(float(d.rpm or 0) for d in ds)
    if all(d.tpm for d in ds):
        return tuple(float(d.tpm or 0) for d in ds)
    return tuple(1.0 for _ in ds)
