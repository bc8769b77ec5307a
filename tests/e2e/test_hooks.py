"""The seam later stages (limits, ledger) plug into: hooks before and after the upstream call."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from meterway.context import RequestContext
from meterway.errors import RateLimited
from tests.e2e.conftest import e2e_config
from tests.support.gateway import RunningGateway, run_gateway
from tests.upstreams.standin import StandIn


@dataclass
class Recorder:
    name: str
    log: list[str]
    seen: list[RequestContext] = field(default_factory=list)
    refuse: bool = False

    async def before(self, ctx: RequestContext) -> None:
        self.log.append(f"{self.name}.before")
        if self.refuse:
            raise RateLimited("too many requests for this key", retry_after=7)

    async def after(self, ctx: RequestContext) -> None:
        self.log.append(f"{self.name}.after")
        self.seen.append(ctx)


@pytest.fixture
def hooked(standin: StandIn) -> Iterator[tuple[RunningGateway, Recorder, Recorder]]:
    log: list[str] = []
    first, second = Recorder("first", log), Recorder("second", log)
    with run_gateway(e2e_config(standin.base_url), hooks=(first, second)) as gw:
        yield gw, first, second


def _post(gw: RunningGateway, body: dict[str, object]) -> httpx.Response:
    return httpx.post(gw.v1 + "/chat/completions", json=body, headers={"Authorization": f"Bearer {gw.key}"})


def test_after_hooks_see_status_usage_and_timings_in_reverse_order(
    hooked: tuple[RunningGateway, Recorder, Recorder], upstream: StandIn
) -> None:
    gw, first, _ = hooked
    r = _post(
        gw, {"model": "gpt-test", "user": "customer-9", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    )
    assert r.status_code == 200
    assert first.log == ["first.before", "second.before", "second.after", "first.after"]
    ctx = first.seen[0]
    assert ctx.status_code == 200 and ctx.error is None and ctx.user == "customer-9" and ctx.stream
    assert ctx.deployment is not None and ctx.deployment.id == "gpt-test"
    assert ctx.usage is not None and ctx.usage.total_tokens == upstream.last.usage["total_tokens"]  # type: ignore[index]
    assert ctx.request_id == r.headers["x-request-id"]
    assert ctx.first_byte_ns is not None and ctx.ended_ns is not None and ctx.ended_ns >= ctx.first_byte_ns


def test_after_hooks_see_upstream_errors(hooked: tuple[RunningGateway, Recorder, Recorder], upstream: StandIn) -> None:
    gw, first, _ = hooked
    upstream.script_fail(500, {"error": {"message": "boom"}})
    assert _post(gw, {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}).status_code == 502
    ctx = first.seen[0]
    assert ctx.status_code == 502 and ctx.error is not None and ctx.usage is None


def test_a_refusing_hook_answers_429_and_earlier_hooks_still_settle(
    hooked: tuple[RunningGateway, Recorder, Recorder], upstream: StandIn
) -> None:
    gw, first, second = hooked
    second.refuse = True
    r = _post(gw, {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 429 and r.headers["retry-after"] == "7"
    assert r.json()["error"]["type"] == "rate_limit_error"
    assert first.log == ["first.before", "second.before", "first.after"]
    assert upstream.received == []
