"""Traces reach a real OTLP/HTTP receiver: a server span per request and a client span per upstream
call, with the GenAI attributes, linked parent to child, continuing the client's trace and carried
on to the upstream; with the receiver gone, requests still succeed."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.support.gateway import run_gateway
from tests.support.models import priced
from tests.support.otlp import OtlpReceiver, ReceivedSpan
from tests.upstreams.standin import StandIn

HI: Any = [{"role": "user", "content": "hi"}]
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SERVER, CLIENT = 2, 3


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", r.endpoint)
        monkeypatch.setenv("OTEL_SERVICE_NAME", "meterway-test")
        monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
        yield r


def _pair(spans: list[ReceivedSpan], request_id: str) -> tuple[ReceivedSpan, ReceivedSpan]:
    (server,) = [s for s in spans if s.kind == SERVER and s.attributes.get("meterway.request_id") == request_id]
    (client,) = [s for s in spans if s.kind == CLIENT and s.parent_span_id == server.span_id]
    return server, client


def test_spans_arrive_with_genai_attributes_links_and_the_clients_trace(
    receiver: OtlpReceiver, upstream: StandIn
) -> None:
    with run_gateway({"model_list": [priced(upstream.base_url)]}) as gw:
        admin = {"Authorization": f"Bearer {gw.key}"}
        key = httpx.post(gw.url + "/key/generate", json={"key_alias": "search-bot"}, headers=admin).json()["key"]
        parent = f"00-{TRACE}-00f067aa0ba902b7-01"
        with openai.OpenAI(base_url=gw.v1, api_key=key, max_retries=0) as client:
            plain = client.chat.completions.with_raw_response.create(
                model="priced", messages=HI, user="acme", extra_headers={"traceparent": parent}
            )
            stream = client.chat.completions.with_raw_response.create(model="priced", messages=HI, stream=True)
            list(stream.parse())
            embed = client.embeddings.with_raw_response.create(model="priced", input="hello")
        spans = receiver.wait_for(6)

        server, upstream_span = _pair(spans, plain.headers["x-request-id"])
        assert server.trace_id == upstream_span.trace_id == TRACE  # the client's trace continues
        assert server.parent_span_id == "00f067aa0ba902b7"
        assert server.name == "chat priced" and upstream_span.name.startswith("chat ")
        assert server.resource["service.name"] == "meterway-test"
        assert server.resource["deployment.environment"] == "test"
        with sqlite3.connect(gw.settings.database_url.reveal().removeprefix("sqlite:///")) as db:
            uid, prompt, completion = db.execute(
                "SELECT uid, prompt_tokens, completion_tokens FROM mw_ledger WHERE customer_id = 'acme'"
            ).fetchone()
        a = server.attributes
        assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "priced"
        assert a["gen_ai.usage.input_tokens"] == prompt and a["gen_ai.usage.output_tokens"] == completion
        assert a["gen_ai.provider.name"] == "openai" and a["gen_ai.response.model"]
        assert a["meterway.key_alias"] == "search-bot" and a["meterway.customer_id"] == "acme"
        assert a["meterway.ledger_uid"] == uid and a["http.response.status_code"] == 200
        assert a["meterway.cost_usd"] > 0
        assert not any(key in str(v) for s in spans for v in s.attributes.values())  # never a secret
        assert "gen_ai.input.messages" not in a  # content only when asked
        u = upstream_span.attributes
        assert u["gen_ai.request.model"] and u["server.address"] == "127.0.0.1"
        assert u["http.response.status_code"] == 200
        # the upstream received our client span as its parent
        sent = [r for r in upstream.received if r.headers.get("traceparent", "").startswith(f"00-{TRACE}-")]
        assert sent and sent[0].headers["traceparent"].split("-")[2] == upstream_span.span_id

        streamed, streamed_up = _pair(spans, stream.headers["x-request-id"])
        assert streamed.attributes["gen_ai.request.stream"] is True
        assert streamed.attributes["gen_ai.usage.output_tokens"] > 0 and streamed.trace_id == streamed_up.trace_id
        embedded, _ = _pair(spans, embed.headers["x-request-id"])
        assert embedded.attributes["gen_ai.operation.name"] == "embeddings"
        assert embedded.name == "embeddings priced"


def test_an_upstream_error_marks_both_spans(receiver: OtlpReceiver, upstream: StandIn) -> None:
    with run_gateway({"model_list": [priced(upstream.base_url)]}) as gw:
        upstream.script_fail(500, {"error": {"message": "boom"}})
        with (
            openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0) as client,
            pytest.raises(openai.InternalServerError) as failed,
        ):
            client.chat.completions.create(model="priced", messages=HI)
        rid = failed.value.response.headers["x-request-id"]
        server, client_span = _pair(receiver.wait_for(2), rid)
        assert server.status_code == client_span.status_code == 2
        assert server.attributes["error.type"] == "upstream_error"
        assert client_span.attributes["http.response.status_code"] == 500


def test_with_the_collector_down_requests_succeed_and_the_gateway_stays_ready(
    monkeypatch: pytest.MonkeyPatch, upstream: StandIn
) -> None:
    with OtlpReceiver() as gone:
        endpoint = gone.endpoint
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)  # nothing listens there now
    with run_gateway({"model_list": [priced(upstream.base_url)]}) as gw:
        assert gw.app.services is not None and gw.app.services.tracing is not None
        # each request is answered without waiting for the exporter (a request kept waiting times out)
        with openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0, timeout=5) as client:
            for _ in range(30):
                client.chat.completions.create(model="priced", messages=HI)
        assert httpx.get(gw.url + "/health/ready").status_code == 200


def test_traces_are_off_without_an_endpoint_or_the_otel_callback(upstream: StandIn) -> None:
    with run_gateway({"model_list": [priced(upstream.base_url)]}) as gw:
        assert gw.app.services is not None and gw.app.services.tracing is None
    config = {"model_list": [priced(upstream.base_url)], "litellm_settings": {"callbacks": ["otel"]}}
    with run_gateway(config) as gw:
        assert gw.app.services is not None and gw.app.services.tracing is not None


def test_each_upstream_attempt_has_its_own_client_span(receiver: OtlpReceiver, upstream: StandIn) -> None:
    from tests.upstreams.standin import Script

    with StandIn() as down:
        down.set_default(Script(status=500, body={"error": {"message": "down", "type": "server_error"}}))
        config = {
            "model_list": [
                {
                    "model_name": "p",
                    "litellm_params": {"model": "openai/x", "api_base": down.base_url + "/v1", "api_key": "k"},
                },
                {
                    "model_name": "b",
                    "litellm_params": {"model": "openai/y", "api_base": upstream.base_url + "/v1", "api_key": "k"},
                },
            ],
            "router_settings": {"num_retries": 1, "retry_after": 0.01, "fallbacks": [{"p": ["b"]}]},
        }
        with run_gateway(config) as gw:
            r = httpx.post(
                gw.v1 + "/chat/completions",
                json={"model": "p", "messages": HI},
                headers={"Authorization": f"Bearer {gw.key}"},
            )
            assert r.status_code == 200 and r.headers["x-meterway-attempts"] == "3"
            spans = receiver.wait_for(4)
    (server,) = [s for s in spans if s.kind == SERVER]
    clients = [s for s in spans if s.kind == CLIENT and s.parent_span_id == server.span_id]  # in the order they ended
    assert [c.attributes["meterway.deployment"] for c in clients] == ["p", "p", "b"]
    assert [c.attributes["http.response.status_code"] for c in clients] == [500, 500, 200]
