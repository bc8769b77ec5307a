"""`Metrics.observe` keeps the label children it uses instead of looking them up per request. These
tests hold it to what a `.labels()` lookup at every request gives (the reference below is the
stage as it was written before the children were kept), and show its tables stay bounded however
many distinct labels hostile requests bring."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest

from meterway.auth import Principal
from meterway.config.load import parse_config
from meterway.config.settings import Deployment
from meterway.context import RequestContext
from meterway.errors import BudgetExceeded, MeterwayError, PermissionDenied, RateLimited, UpstreamError
from meterway.providers.base import Api, Usage
from meterway.telemetry import metrics as metrics_module
from meterway.telemetry.metrics import ANOMALIES, USD_PER_UNIT, Metrics, _rejection

MODELS = ("chat-a", "chat-b")
DEPLOYMENTS = parse_config(
    {
        "model_list": [
            {"model_name": name, "litellm_params": {"model": f"openai/{name}", "api_base": "http://127.0.0.1:9/v1"}}
            for name in MODELS
        ]
    },
    source=None,
    env={},
).deployments


def observe_plainly(m: Metrics, ctx: RequestContext) -> None:
    """The reference: every child looked up with `.labels()` when it is used."""
    endpoint = ctx.api.value
    model = ctx.model_group if ctx.deployment is not None else ""
    m.requests.labels(endpoint, model, str(ctx.status_code)).inc()
    if ctx.ended_ns is not None:
        m.duration.labels(endpoint, model).observe((ctx.ended_ns - ctx.started_ns) / 1e9)
    if ctx.stream and ctx.first_byte_ns is not None:
        m.ttft.labels(model).observe((ctx.first_byte_ns - ctx.started_ns) / 1e9)
    if ctx.cache_looked:
        m.cache.labels(model, "hit" if ctx.cache_hit else "miss").inc()
    err = ctx.error
    if err is not None:
        reason = _rejection(err)
        if reason is not None:
            m.rejections.labels(reason).inc()
        elif ctx.forwarded and ctx.deployment is not None and err.status >= 500:
            m.upstream_errors.labels(ctx.deployment.id, err.error_type).inc()
    if ctx.flags and ctx.deployment is not None:
        for kind in ANOMALIES.intersection(ctx.flags):
            m.usage_anomalies.labels(ctx.deployment.id, kind.removeprefix("usage_")).inc()
    usage = ctx.counted
    if usage is None or not usage.total_tokens:
        return
    inp, out = max(usage.prompt_tokens, 0), max(usage.completion_tokens, 0)
    cost = max(ctx.cost_units or 0, 0) * USD_PER_UNIT
    m.tokens.labels(model, "input").inc(inp)
    m.tokens.labels(model, "output").inc(out)
    m.cost.labels(model).inc(cost)
    team = m.teams(ctx.principal.team_id if ctx.principal is not None else None)
    if team:
        m.team_tokens.labels(team, "input").inc(inp)
        m.team_tokens.labels(team, "output").inc(out)
        m.team_cost.labels(team).inc(cost)
    customer = m.customers(ctx.user)
    if customer:
        m.customer_tokens.labels(customer, "input").inc(inp)
        m.customer_tokens.labels(customer, "output").inc(out)
        m.customer_cost.labels(customer).inc(cost)


def exposition(m: Metrics) -> str:
    """The scrape's text without the `_created` timestamps, which differ between two registries."""
    assert m.registry is not None
    lines = generate_latest(m.registry).decode().splitlines()
    return "\n".join(line for line in lines if "_created{" not in line and "_created " not in line)


def finished(
    api: Api,
    deployment: Deployment | None,
    status: int,
    *,
    stream: bool = False,
    error: MeterwayError | None = None,
    usage: Usage | None = None,
    cost_units: int | None = None,
    team: str | None = None,
    user: str | None = None,
    cache: bool | None = None,
    flags: list[str] | None = None,
    ended: bool = True,
) -> RequestContext:
    ctx = RequestContext.start("req", api)
    if deployment is not None:
        ctx.model_group, ctx.deployment, ctx.forwarded = deployment.model_name, deployment, True
    ctx.status_code, ctx.stream, ctx.error = status, stream, error
    ctx.counted, ctx.cost_units, ctx.user = usage, cost_units, user
    ctx.principal = Principal("digest", "key", team_id=team)
    ctx.cache_looked, ctx.cache_hit = cache is not None, bool(cache)
    ctx.flags = flags or []
    if ended:
        ctx.ended_ns = ctx.started_ns + 3_000_000
    if stream:
        ctx.first_byte_ns = ctx.started_ns + 700_000
    return ctx


ERRORS: tuple[MeterwayError | None, ...] = (
    None,
    BudgetExceeded("over budget"),
    RateLimited("too many", limit="rpm"),
    RateLimited("too many"),
    PermissionDenied("blocked", code="customer_blocked"),
    UpstreamError("upstream failed", deployment="d", upstream_status=500),
)

requests = st.builds(
    finished,
    st.sampled_from(list(Api)),
    st.sampled_from((None, *DEPLOYMENTS)),
    st.sampled_from((200, 200, 400, 429, 500, 502, 504)),
    stream=st.booleans(),
    error=st.sampled_from(ERRORS),
    usage=st.none() | st.builds(Usage, st.integers(-5, 10_000), st.integers(-5, 10_000), st.integers(-5, 20_000)),
    cost_units=st.none() | st.integers(-10, 10**12),
    team=st.sampled_from((None, "", "team-a", "team-b", "team-c", "team-d")),
    user=st.sampled_from((None, "acme", "globex", "initech", "\ud800lone", "x" * 300)),
    cache=st.sampled_from((None, True, False)),
    flags=st.sampled_from(([], ["usage_invalid"], ["usage_absurd", "cut"])),
    ended=st.booleans(),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(requests, max_size=12))
def test_kept_children_give_the_same_scrape_as_a_lookup_per_request(seen: list[RequestContext]) -> None:
    kept, plain = Metrics(max_label_values=2), Metrics(max_label_values=2)
    for ctx in seen:
        kept.observe(ctx)
        observe_plainly(plain, ctx)
    assert exposition(kept) == exposition(plain)


def test_a_chat_charged_to_a_team_and_a_customer_counts_as_before_on_every_request() -> None:
    kept, plain = Metrics(), Metrics()
    for i in range(5):
        usage = Usage(10, 5 + i, 15 + i)
        ctx = finished(Api.CHAT, DEPLOYMENTS[0], 200, stream=i % 2 == 1, usage=usage, cost_units=7 * 10**6)
        ctx.principal, ctx.user = Principal("digest", "key", team_id="team-a"), "acme"
        kept.observe(ctx)
        observe_plainly(plain, ctx)
    text = exposition(kept)
    assert text == exposition(plain)
    assert 'meterway_requests_total{endpoint="chat",model="chat-a",status="200"} 5.0' in text
    assert 'meterway_team_tokens_total{team="team-a",type="output"} 35.0' in text
    assert 'meterway_customer_tokens_total{customer="acme",type="input"} 50.0' in text
    assert 'meterway_time_to_first_token_seconds_count{model="chat-a"} 2.0' in text


def test_tables_stay_bounded_under_many_distinct_hostile_labels() -> None:
    kept, plain = Metrics(max_label_values=5), Metrics(max_label_values=5)
    # models a configuration could never hold, every status code, a new team and customer each time
    for i in range(1200):
        ctx = finished(Api.CHAT, DEPLOYMENTS[i % 2], 100 + i % 900, usage=Usage(1, 1, 2), cost_units=1, team=f"t{i}")
        ctx.model_group, ctx.user = f"model-{i}", f"customer-{i}"
        kept.observe(ctx)
        observe_plainly(plain, ctx)
    for i in range(200):  # one pair, every status code
        ctx = finished(Api.EMBEDDINGS, DEPLOYMENTS[0], 100 + i, usage=Usage(1, 0, 1))
        kept.observe(ctx)
        observe_plainly(plain, ctx)
    assert len(kept._served) == metrics_module.MAX_SERVED
    assert all(len(served.statuses) <= metrics_module.MAX_STATUSES for served in kept._served.values())
    assert len(kept._teams) <= 6 and len(kept._customers) <= 6
    assert exposition(kept) == exposition(plain)  # past every bound, still counted as before
