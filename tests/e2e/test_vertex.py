"""Google Vertex AI behind the OpenAI and Anthropic APIs: Gemini and Claude deployments whose access
tokens the gateway mints from service-account keys at a stand-in token endpoint (which verifies the
JWT's signature) and keeps fresh; the stand-in refuses any call without a token it issued. Driven by
the `openai` and `anthropic` SDKs, metered from Vertex's own usage figures."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from meterway.errors import ConfigError
from meterway.providers.base import Api
from tests.support.gateway import RunningGateway, run_gateway, settings_for
from tests.upstreams.standin import REPLY_PREFIX, TOOL_ARGUMENT_VALUE, count_words, embedding_for
from tests.upstreams.vertex import VERTEX_ANTHROPIC_VERSION, VertexStandIn, unknown_private_key

PROJECT = "proj-e2e"
HI: Any = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}]
PROMPT_TOKENS = 2 + 3 + 2 + 3  # words + 3 per message (the stand-in's count)
TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
GEMINI_PATH = f"/v1/projects/{PROJECT}/locations/us-central1/publishers/google/models/gemini-2.5-flash"
CLAUDE_PATH = f"/v1/projects/{PROJECT}/locations/us-east5/publishers/anthropic/models/claude-sonnet-4@20250514"


@pytest.fixture(scope="module")
def vertex() -> Iterator[VertexStandIn]:
    with VertexStandIn() as s:
        yield s


@pytest.fixture(scope="module")
def key_file(vertex: VertexStandIn, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vertex") / "service-account.json"
    path.write_text(json.dumps(vertex.service_account()))
    return path


@pytest.fixture(scope="module")
def gw(vertex: VertexStandIn, key_file: Path) -> Iterator[RunningGateway]:
    base = {"api_base": vertex.base_url, "vertex_project": PROJECT}
    stranger = vertex.service_account("stranger@standin-project.iam.gserviceaccount.com")
    stranger["private_key"] = unknown_private_key()
    config = {
        "model_list": [
            {
                "model_name": "gemini",
                "litellm_params": {
                    "model": "vertex_ai/gemini-2.5-flash",
                    "vertex_credentials": str(key_file),  # a path, as LiteLLM users write it
                    "vertex_location": "us-central1",
                    "input_cost_per_token": 0.000001,
                    "output_cost_per_token": 0.000002,
                    **base,
                },
            },
            {
                "model_name": "vertex-embed",
                "litellm_params": {
                    "model": "vertex_ai/text-embedding-005",
                    "vertex_credentials": key_file.read_text(),  # the JSON itself
                    "input_cost_per_token": 0.000001,
                    **base,
                },
            },
            {
                "model_name": "claude",
                "litellm_params": {
                    "model": "vertex_ai/claude-sonnet-4@20250514",
                    "vertex_credentials": str(key_file),
                    "vertex_location": "us-east5",
                    **base,
                },
            },
            {
                "model_name": "unsigned",  # a key the token endpoint does not know: its JWT fails verification
                "litellm_params": {
                    "model": "vertex_ai/gemini-2.5-flash",
                    "vertex_credentials": json.dumps(stranger),
                    **base,
                },
            },
        ]
    }
    with run_gateway(config) as g:
        yield g


@pytest.fixture
def up(vertex: VertexStandIn) -> VertexStandIn:
    vertex.reset()
    return vertex


@pytest.fixture
def client(gw: RunningGateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0) as c:
        yield c


def row(gw: RunningGateway, request_id: str) -> dict[str, Any]:
    r = httpx.get(
        gw.url + "/spend/logs", params={"request_id": request_id}, headers={"Authorization": f"Bearer {gw.key}"}
    )
    (found,) = r.json()["data"]
    return found  # type: ignore[no-any-return]


def model_calls(up: VertexStandIn) -> list[Any]:
    return [r for r in up.received if r.path != "/token"]


def test_gemini_chat_goes_to_vertex_with_a_token_minted_from_the_service_account(
    gw: RunningGateway, up: VertexStandIn, client: openai.OpenAI
) -> None:
    raw = client.chat.completions.with_raw_response.create(model="gemini", messages=HI, max_tokens=50)
    answer = raw.parse()
    assert answer.choices[0].message.content == REPLY_PREFIX + "hello there"
    (sent,) = model_calls(up)
    assert sent.path == GEMINI_PATH + ":generateContent"
    token = sent.headers["authorization"].removeprefix("Bearer ")
    assert token in up.tokens_for("meterway@standin-project.iam.gserviceaccount.com")
    assert sent.json["contents"] == [{"role": "user", "parts": [{"text": "hello there"}]}]
    completion = count_words(REPLY_PREFIX + "hello there")
    r = row(gw, raw.headers["x-request-id"])
    assert (r["prompt_tokens"], r["completion_tokens"], r["tokens_estimated"]) == (PROMPT_TOKENS, completion, False)
    assert Decimal(str(r["spend"])) == Decimal("0.000001") * PROMPT_TOKENS + Decimal("0.000002") * completion


def test_gemini_stream_arrives_as_openai_chunks_with_vertex_usage(
    gw: RunningGateway, up: VertexStandIn, client: openai.OpenAI
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gemini", messages=HI, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY_PREFIX + "hello there"
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == PROMPT_TOKENS
    (sent,) = model_calls(up)
    assert sent.path == GEMINI_PATH + ":streamGenerateContent" and sent.query == {"alt": "sse"}
    r = row(gw, raw.headers["x-request-id"])
    assert (r["prompt_tokens"], r["tokens_estimated"]) == (PROMPT_TOKENS, False)


def test_gemini_tool_call_round_trips(up: VertexStandIn, client: openai.OpenAI) -> None:
    ask: Any = [{"role": "user", "content": "weather in Paris?"}]
    answer = client.chat.completions.create(model="gemini", messages=ask, tools=TOOLS)
    (call,) = answer.choices[0].message.tool_calls or []
    assert answer.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": TOOL_ARGUMENT_VALUE}
    assert model_calls(up)[-1].json["tools"] == [{"functionDeclarations": [TOOLS[0]["function"]]}]


def test_embeddings_go_to_predict_and_are_metered_from_vertex_token_counts(
    gw: RunningGateway, up: VertexStandIn, client: openai.OpenAI
) -> None:
    raw = client.embeddings.with_raw_response.create(model="vertex-embed", input=["one two", "three"], dimensions=4)
    answer = raw.parse()
    assert [d.embedding for d in answer.data] == [embedding_for("one two", 4), embedding_for("three", 4)]
    (sent,) = model_calls(up)
    assert sent.path.endswith("/publishers/google/models/text-embedding-005:predict")
    assert sent.json == {
        "instances": [{"content": "one two"}, {"content": "three"}],
        "parameters": {"outputDimensionality": 4},
    }
    r = row(gw, raw.headers["x-request-id"])
    assert (r["prompt_tokens"], r["tokens_estimated"]) == (3, False)


def test_claude_chat_goes_to_raw_predict_with_vertex_anthropic_version_and_no_model(
    gw: RunningGateway, up: VertexStandIn, client: openai.OpenAI
) -> None:
    raw = client.chat.completions.with_raw_response.create(model="claude", messages=HI, max_tokens=64)
    answer = raw.parse()
    assert answer.choices[0].message.content == REPLY_PREFIX + "hello there"
    (sent,) = model_calls(up)
    assert sent.path == CLAUDE_PATH + ":rawPredict"
    assert sent.json["anthropic_version"] == VERTEX_ANTHROPIC_VERSION and "model" not in sent.json
    r = row(gw, raw.headers["x-request-id"])
    usage = sent.response["usage"]
    assert (r["prompt_tokens"], r["completion_tokens"]) == (usage["input_tokens"], usage["output_tokens"])
    # priced from the bundled table's vertex_ai/claude-sonnet-4@20250514: $3 and $15 per million
    expected = (Decimal(3) * usage["input_tokens"] + Decimal(15) * usage["output_tokens"]) / 1_000_000
    assert Decimal(str(r["spend"])) == expected


def test_claude_stream_through_openai_sdk(up: VertexStandIn, client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="claude", messages=HI, max_tokens=64, stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY_PREFIX + "hello there"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    (sent,) = model_calls(up)
    assert sent.path == CLAUDE_PATH + ":streamRawPredict" and sent.json["stream"] is True


def test_claude_on_messages_api_plain_and_streamed(gw: RunningGateway, up: VertexStandIn) -> None:
    with anthropic.Anthropic(base_url=gw.url, api_key=gw.key, max_retries=0) as c:
        message = c.messages.create(
            model="claude", max_tokens=64, messages=[{"role": "user", "content": "hello there"}]
        )
        assert message.content[0].type == "text" and message.content[0].text == REPLY_PREFIX + "hello there"
        assert message.usage.input_tokens == 2 + 3
        with c.messages.stream(
            model="claude", max_tokens=64, messages=[{"role": "user", "content": "hello again"}]
        ) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
    assert text == REPLY_PREFIX + "hello again" and final.usage.output_tokens == count_words(text)
    plain, streamed = model_calls(up)
    assert plain.path == CLAUDE_PATH + ":rawPredict" and streamed.path == CLAUDE_PATH + ":streamRawPredict"
    assert "model" not in plain.json and plain.json["anthropic_version"] == VERTEX_ANTHROPIC_VERSION


def test_claude_count_tokens_asks_vertex_count_tokens_model(gw: RunningGateway, up: VertexStandIn) -> None:
    with anthropic.Anthropic(base_url=gw.url, api_key=gw.key, max_retries=0) as c:
        counted = c.messages.count_tokens(model="claude", messages=[{"role": "user", "content": "count these words"}])
    assert counted.input_tokens == 3 + 3
    (sent,) = model_calls(up)
    assert sent.path == CLAUDE_PATH.rsplit("/", 1)[0] + "/count-tokens:rawPredict"
    assert sent.json["model"] == "claude-sonnet-4@20250514"
    assert sent.headers["authorization"].removeprefix("Bearer ") in up.issued


def test_vertex_429_reaches_the_client_as_a_rate_limit_error(up: VertexStandIn, client: openai.OpenAI) -> None:
    body = {
        "error": {
            "code": 429,
            "message": "Quota exceeded for aiplatform.googleapis.com",
            "status": "RESOURCE_EXHAUSTED",
        }
    }
    up.script_fail(429, body, path=":generateContent")
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gemini", messages=HI)
    assert "Quota exceeded" in str(caught.value)


def test_stream_cut_by_vertex_ends_with_an_error_event(up: VertexStandIn, client: openai.OpenAI) -> None:
    up.script_break_stream(1, path=":streamRawPredict")
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model="claude", messages=HI, max_tokens=64, stream=True))


def test_credentials_the_token_endpoint_refuses_give_a_clear_openai_error(
    gw: RunningGateway, up: VertexStandIn
) -> None:
    r = httpx.post(
        gw.v1 + "/chat/completions",
        json={"model": "unsigned", "messages": HI},
        headers={"Authorization": f"Bearer {gw.key}"},
    )
    assert r.status_code == 502
    error = r.json()["error"]
    assert error["code"] == "upstream_credentials"
    assert "no valid Google access token" in error["message"] and "invalid_grant" in error["message"]
    assert model_calls(up) == []  # nothing went to Vertex without a token


def test_expiring_tokens_are_refreshed_ahead_and_requests_keep_working(vertex: VertexStandIn, tmp_path: Path) -> None:
    email = "short-lived@standin-project.iam.gserviceaccount.com"
    info = vertex.service_account(email, lifetime=3)
    config = {
        "model_list": [
            {
                "model_name": "gemini",
                "litellm_params": {
                    "model": "vertex_ai/gemini-2.5-flash",
                    "vertex_credentials": json.dumps(info),  # project from the service account
                    "api_base": vertex.base_url,
                },
            }
        ]
    }
    with run_gateway(config) as g, openai.OpenAI(base_url=g.v1, api_key=g.key, max_retries=0) as c:
        c.chat.completions.create(model="gemini", messages=HI)
        first = model_calls(vertex)[-1].headers["authorization"]
        time.sleep(3.5)  # past the first token's expiry: the stand-in refuses it by now
        answer = c.chat.completions.create(model="gemini", messages=HI)
        assert answer.choices[0].message.content == REPLY_PREFIX + "hello there"
        later = model_calls(vertex)[-1]
    assert later.path.startswith("/v1/projects/standin-project/locations/us-central1/")
    assert later.headers["authorization"] != first
    assert len(vertex.tokens_for(email)) >= 2


def test_unreadable_credentials_are_a_config_error_naming_the_entry(tmp_path: Path) -> None:
    entry = {"model_name": "g", "litellm_params": {"model": "vertex_ai/gemini-2.5-flash", "vertex_project": "p"}}
    with pytest.raises(ConfigError, match=r"model_list\[0\].*vertex_credentials: cannot read"):
        settings_for(
            {
                "model_list": [
                    {
                        **entry,
                        "litellm_params": {
                            **entry["litellm_params"],
                            "vertex_credentials": str(tmp_path / "none.json"),
                        },
                    }
                ]
            }
        )
    (tmp_path / "bad.json").write_text('{"type": "nonsense"}')
    with pytest.raises(ConfigError, match="only 'service_account' and 'authorized_user'"):
        settings_for(
            {
                "model_list": [
                    {
                        **entry,
                        "litellm_params": {**entry["litellm_params"], "vertex_credentials": str(tmp_path / "bad.json")},
                    }
                ]
            }
        )


def test_a_vertex_model_added_at_runtime_gets_its_token_and_keeps_it_across_reloads(vertex: VertexStandIn) -> None:
    email = "runtime@standin-project.iam.gserviceaccount.com"
    info = vertex.service_account(email)
    config = {
        "model_list": [{"model_name": "demo", "litellm_params": {"model": "mock/demo"}}],
        "general_settings": {"store_model_in_db": True},
    }
    params = {
        "model": "vertex_ai/gemini-2.5-flash",
        "vertex_credentials": json.dumps(info),
        "api_base": vertex.base_url,
    }
    with run_gateway(config) as g, openai.OpenAI(base_url=g.v1, api_key=g.key, max_retries=0) as c:
        admin = {"Authorization": f"Bearer {g.key}"}
        added = {"model_name": "added", "litellm_params": params, "model_info": {"id": "added-1"}}
        assert httpx.post(g.url + "/model/new", json=added, headers=admin).status_code == 200
        assert c.chat.completions.create(model="added", messages=HI).choices[0].message.content  # at once
        assert len(vertex.tokens_for(email)) == 1
        other = {"model_name": "other", "litellm_params": {"model": "mock/other"}, "model_info": {"id": "other-1"}}
        assert httpx.post(g.url + "/model/new", json=other, headers=admin).status_code == 200  # a reload
        assert c.chat.completions.create(model="added", messages=HI).choices[0].message.content
    assert len(vertex.tokens_for(email)) == 1  # the rebuilt deployment took over the token it had


def test_project_location_and_credentials_from_the_environment(
    vertex: VertexStandIn, key_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    monkeypatch.setenv("VERTEXAI_PROJECT", "env-project")
    monkeypatch.setenv("VERTEXAI_LOCATION", "europe-west4")
    config = {
        "model_list": [
            {
                "model_name": "gemini",
                "litellm_params": {"model": "vertex_ai/gemini-2.5-flash", "api_base": vertex.base_url},
            }
        ]
    }
    with run_gateway(config) as g, openai.OpenAI(base_url=g.v1, api_key=g.key, max_retries=0) as c:
        assert c.chat.completions.create(model="gemini", messages=HI).choices[0].message.content
    sent = model_calls(vertex)[-1]
    assert sent.path.startswith("/v1/projects/env-project/locations/europe-west4/publishers/google/")
    assert sent.headers["authorization"].removeprefix("Bearer ") in vertex.issued


def _vertex_entry(**params: Any) -> dict[str, Any]:
    return {"model_list": [{"model_name": "g", "litellm_params": {"model": "vertex_ai/gemini-2.5-flash", **params}}]}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("vertex_location", "evil.example/#"),
        ("vertex_location", "us-central1.evil.example"),
        ("vertex_project", "evil.example/#"),
        ("vertex_project", "p"),
        ("vertex_project", "my-project/locations/x"),
    ],
)
def test_a_location_or_project_that_is_not_googles_is_a_config_error_naming_it(
    vertex: VertexStandIn, field: str, value: str
) -> None:
    params = {"vertex_project": PROJECT, "vertex_credentials": vertex.service_account(), field: value}
    with pytest.raises(ConfigError, match=rf"model_list\[0\].*litellm_params\.{field}"):
        settings_for(_vertex_entry(**params))


def test_a_domain_scoped_project_is_taken_and_the_model_name_is_quoted_in_the_path(vertex: VertexStandIn) -> None:
    settings = settings_for(
        _vertex_entry(vertex_project="example.com:my-project", vertex_credentials=vertex.service_account())
    )
    assert "/projects/example.com:my-project/locations/us-central1/" in settings.deployments[0].provider.root  # type: ignore[attr-defined]
    entry = _vertex_entry(vertex_project=PROJECT, vertex_credentials=vertex.service_account())
    entry["model_list"][0]["litellm_params"]["model"] = "vertex_ai/gemini-2.5-flash#x/../y"
    provider: Any = settings_for(entry).deployments[0].provider
    assert provider.root.startswith(f"https://us-central1-aiplatform.googleapis.com/v1/projects/{PROJECT}/")
    assert provider.root.endswith("/models/gemini-2.5-flash%23x%2F..%2Fy")
    sent = provider.urls[Api.CHAT]  # the URL requests go to: still escaped, no fragment
    assert sent.raw_path.endswith("/models/gemini-2.5-flash%23x%2F..%2Fy:generateContent") and not sent.fragment


def test_external_account_credentials_are_refused(vertex: VertexStandIn) -> None:
    # an identity pool's credentials would have google-auth read a host file and POST it to a URL of the config's
    external = {
        "type": "external_account",
        "audience": "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/x",
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_url": vertex.base_url + "/token",
        "credential_source": {"file": "/proc/self/environ"},
    }
    for credentials in (external, json.dumps(external), {**external, "type": "impersonated_service_account"}):
        with pytest.raises(ConfigError, match=r"litellm_params\.vertex_credentials.*only 'service_account'"):
            settings_for(_vertex_entry(vertex_project=PROJECT, vertex_credentials=credentials))


def test_a_model_added_at_runtime_cannot_name_a_credentials_file(vertex: VertexStandIn, key_file: Path) -> None:
    config = {
        "model_list": [{"model_name": "demo", "litellm_params": {"model": "mock/demo"}}],
        "general_settings": {"store_model_in_db": True},
    }
    params = {"model": "vertex_ai/gemini-2.5-flash", "vertex_project": PROJECT, "api_base": vertex.base_url}
    with run_gateway(config) as g:
        admin = {"Authorization": f"Bearer {g.key}"}
        for credentials in (str(key_file), "os.environ/GOOGLE_APPLICATION_CREDENTIALS"):
            added = {"model_name": "added", "litellm_params": {**params, "vertex_credentials": credentials}}
            answer = httpx.post(g.url + "/model/new", json=added, headers=admin)
            assert answer.status_code == 400, answer.text
            assert "vertex_credentials" in answer.json()["error"]["message"]
        inline = {"model_name": "added", "litellm_params": {**params, "vertex_credentials": key_file.read_text()}}
        assert httpx.post(g.url + "/model/new", json=inline, headers=admin).status_code == 200
