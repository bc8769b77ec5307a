"""A native response is continued where it was made: with two native deployments under one model
name, each on its own upstream (own store, own key), a request with `previous_response_id` goes to
the deployment that made that response, whatever the router would have picked; the upstream that
did not make it never sees the continuation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.support.gateway import RunningGateway, run_gateway
from tests.upstreams.providers import ProviderStandIn

CONTINUATIONS = 8  # with two deployments picked at random, all 8 land on the holder by chance once in 256


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[ProviderStandIn, ProviderStandIn]]:
    with ProviderStandIn() as a, ProviderStandIn() as b:
        yield a, b


@pytest.fixture(scope="module")
def gw(upstreams: tuple[ProviderStandIn, ProviderStandIn]) -> Iterator[RunningGateway]:
    a, b = upstreams

    def native(base: str, key: str, ident: str) -> dict[str, Any]:
        params = {"model": "openai/gpt-up", "api_base": base + "/v1", "api_key": key}
        return {"model_name": "gpt", "litellm_params": params, "model_info": {"id": ident}}

    with run_gateway({"model_list": [native(a.base_url, "sk-a", "gpt-a"), native(b.base_url, "sk-b", "gpt-b")]}) as g:
        yield g


def test_a_continuation_goes_to_the_deployment_that_made_the_response(
    gw: RunningGateway, upstreams: tuple[ProviderStandIn, ProviderStandIn]
) -> None:
    a, b = upstreams
    with openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0) as client:
        first = client.responses.create(model="gpt", input="my name is Ada")
        holder, other = (a, b) if a.received_for("/responses") else (b, a)
        assert len(holder.received_for("/responses")) == 1 and not other.received_for("/responses")
        for turn in range(CONTINUATIONS):
            raw = client.responses.with_raw_response.create(
                model="gpt", input=f"turn {turn}", previous_response_id=first.id
            )
            assert raw.parse().status == "completed"
        assert not other.received_for("/responses"), "the upstream that did not make the response saw it"
        continued = holder.received_for("/responses")[1:]
        assert len(continued) == CONTINUATIONS
        assert all(r.json["previous_response_id"] == first.id for r in continued)
        assert {r.headers["authorization"] for r in continued} == {
            holder.received_for("/responses")[0].headers["authorization"]
        }
