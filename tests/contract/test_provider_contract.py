"""One contract, every provider family: what a client sees through the gateway is the same whichever
family serves it. Each case is a real request over HTTP, through a real gateway, to a stand-in that
speaks that family's own wire format (`tests/upstreams/`), by the real `openai` or `anthropic` SDK.

The contract: a chat answered whole and streamed, with the upstream's usage metered into the
ledger; an upstream 429 retried, and passed on with its status once retries are spent; a 400 that
says the prompt is too long sent to the context-window fallback, and any other 400 passed on as the
caller's own error; a 2xx answer that is no JSON is a 502, not retried. A new family joins by adding
a `Case` (and teaching the stand-in its format).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
import pytest

from tests.support.gateway import RunningGateway, ledger_row, run_gateway
from tests.upstreams.bedrock import ACCESS_KEY, REGION, SECRET_KEY, BedrockStandIn
from tests.upstreams.standin import reply_for
from tests.upstreams.vertex import VertexStandIn


class ContractStandIn(VertexStandIn, BedrockStandIn):
    """One stand-in for every family: Vertex AI's token endpoint and Bedrock's signed routes beside
    the others' (their routes do not overlap), so the fallback deployment is on the same one."""


UPSTREAM_KEY = "contract-upstream-key"
SAID = "hello there"


@dataclass(frozen=True)
class Case:
    name: str
    model: str  # the gateway's model group, served by one deployment of the family
    messages_api: bool  # the client speaks Anthropic's Messages API (else OpenAI chat)
    wire: (
        str  # the upstream's error format: openai, anthropic, cohere, gemini or bedrock (Vertex AI's: its publisher's)
    )
    too_long: str  # how the family says a prompt is too long
    too_long_code: str | None = None
    token: bool = False  # the upstream takes an access token the gateway minted (Vertex AI), not the key
    signed: bool = False  # the family signs requests (SigV4) instead of sending a key


OPENAI_TOO_LONG = (
    "This model's maximum context length is 128000 tokens. However, your messages resulted in 130512 tokens."
)
ANTHROPIC_TOO_LONG = "prompt is too long: 210000 tokens > 200000 maximum"
COHERE_TOO_LONG = "too many tokens: total number of tokens in the prompt cannot exceed 4081 - received 4292"
BEDROCK_TOO_LONG = "Input is too long for requested model."
GEMINI_TOO_LONG = "The input token count (1048577) exceeds the maximum number of tokens allowed (1048576)."

CASES = [
    Case("openai", "openai", False, "openai", OPENAI_TOO_LONG, "context_length_exceeded"),
    Case("azure", "azure", False, "openai", OPENAI_TOO_LONG, "context_length_exceeded"),
    Case("anthropic", "anthropic", False, "anthropic", ANTHROPIC_TOO_LONG),
    Case("anthropic-messages", "anthropic", True, "anthropic", ANTHROPIC_TOO_LONG),
    Case("cohere", "cohere", False, "cohere", COHERE_TOO_LONG),
    Case("gemini", "gemini", False, "gemini", GEMINI_TOO_LONG),
    Case("bedrock", "bedrock", False, "bedrock", BEDROCK_TOO_LONG, signed=True),
    Case("messages-adapter", "openai", True, "openai", OPENAI_TOO_LONG, "context_length_exceeded"),
    Case("vertex-gemini", "vertex-gemini", False, "gemini", GEMINI_TOO_LONG, token=True),
    Case("vertex-claude", "vertex-claude", False, "anthropic", ANTHROPIC_TOO_LONG, token=True),
    Case("vertex-claude-messages", "vertex-claude", True, "anthropic", ANTHROPIC_TOO_LONG, token=True),
]
FAMILY_MODELS = {
    "openai": {"model": "openai/gpt-up", "api_base": "{base}/v1"},
    "azure": {"model": "azure/gpt-deployment", "api_base": "{base}", "api_version": "2024-10-21"},
    "anthropic": {"model": "anthropic/claude-up", "api_base": "{base}"},
    "cohere": {"model": "cohere/command-up", "api_base": "{base}"},
    "gemini": {"model": "gemini/gemini-up", "api_base": "{base}"},
    "vertex-gemini": {"model": "vertex_ai/gemini-up", "api_base": "{base}", "vertex_credentials": "{credentials}"},
    "vertex-claude": {"model": "vertex_ai/claude-up", "api_base": "{base}", "vertex_credentials": "{credentials}"},
    "bedrock": {
        "model": "bedrock/anthropic.claude-up-v1:0",
        "aws_bedrock_runtime_endpoint": "{base}",
        "aws_access_key_id": ACCESS_KEY,
        "aws_secret_access_key": SECRET_KEY,
        "aws_region_name": REGION,
    },
}


def error_body(wire: str, status: int, message: str, code: str | None = None) -> dict[str, Any]:
    """An error answer as the family writes it."""
    if wire == "anthropic":
        kind = "rate_limit_error" if status == 429 else "invalid_request_error"
        return {"type": "error", "error": {"type": kind, "message": message}}
    if wire in ("cohere", "bedrock"):
        return {"message": message}
    if wire == "gemini":
        state = "RESOURCE_EXHAUSTED" if status == 429 else "INVALID_ARGUMENT"
        return {"error": {"code": status, "message": message, "status": state}}
    kind = "rate_limit_error" if status == 429 else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


@pytest.fixture(scope="module")
def standin() -> Iterator[ContractStandIn]:
    stand_in = ContractStandIn()  # every family's format, Vertex AI's token endpoint, Bedrock's signature check
    with stand_in:
        yield stand_in


@pytest.fixture(scope="module")
def gw(standin: ContractStandIn) -> Iterator[RunningGateway]:
    base = standin.base_url
    credentials = json.dumps(standin.service_account())
    model_list = [
        {
            "model_name": name,
            "litellm_params": {
                **{k: v.format(base=base, credentials=credentials) for k, v in params.items()},
                "api_key": UPSTREAM_KEY,
                "input_cost_per_token": 0.000001,
                "output_cost_per_token": 0.000002,
            },
        }
        for name, params in FAMILY_MODELS.items()
    ]
    model_list.append(
        {
            "model_name": "fallback",
            "litellm_params": {"model": "openai/fallback-up", "api_base": base + "/v1", "api_key": UPSTREAM_KEY},
        }
    )
    config = {
        "model_list": model_list,
        "router_settings": {
            "num_retries": 1,
            "retry_after": 0,
            "context_window_fallbacks": [{name: ["fallback"]} for name in FAMILY_MODELS],
        },
    }
    with run_gateway(config) as g:
        yield g


@dataclass
class Answer:
    text: str
    prompt_tokens: int
    completion_tokens: int
    headers: Any


@dataclass
class Through:
    """One family's case, driven through the gateway by the SDK of the client's API."""

    case: Case
    up: ContractStandIn  # the stand-in, with nothing recorded or scripted from earlier tests
    gw: RunningGateway
    chat: openai.OpenAI
    messages: anthropic.Anthropic

    def ask(self) -> Answer:
        """One request answered whole."""
        model = self.case.model
        if self.case.messages_api:
            raw = self.messages.messages.with_raw_response.create(
                model=model, max_tokens=100, messages=[{"role": "user", "content": SAID}]
            )
            msg = raw.parse()
            block = msg.content[0]
            assert block.type == "text" and msg.stop_reason == "end_turn"
            return Answer(block.text, msg.usage.input_tokens, msg.usage.output_tokens, raw.headers)
        chat_raw = self.chat.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": SAID}]
        )
        answer = chat_raw.parse()
        assert answer.choices[0].finish_reason == "stop" and answer.usage is not None
        text = answer.choices[0].message.content or ""
        return Answer(text, answer.usage.prompt_tokens, answer.usage.completion_tokens, chat_raw.headers)

    def stream(self) -> Answer:
        """One request streamed to its end, with the usage it reports."""
        model = self.case.model
        if self.case.messages_api:
            with self.messages.messages.with_streaming_response.create(
                model=model, max_tokens=100, messages=[{"role": "user", "content": SAID}], stream=True
            ) as r:
                text, prompt, completion = "", 0, 0
                for event in r.parse():
                    if event.type == "message_start":
                        prompt = event.message.usage.input_tokens
                    elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                        text += event.delta.text
                    elif event.type == "message_delta":  # the final figures (an adapter knows the prompt's only now)
                        completion = event.usage.output_tokens
                        prompt = event.usage.input_tokens or prompt
                return Answer(text, prompt, completion, r.headers)
        with self.chat.chat.completions.with_streaming_response.create(
            model=model,
            messages=[{"role": "user", "content": SAID}],
            stream=True,
            stream_options={"include_usage": True},
        ) as r:
            chunks = list(r.parse())
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
            usage = chunks[-1].usage
            assert usage is not None
            return Answer(text, usage.prompt_tokens, usage.completion_tokens, r.headers)

    def fails(self) -> tuple[int, str]:
        """A request that must fail: the status and message the client's SDK raised."""
        with pytest.raises((openai.APIStatusError, anthropic.APIStatusError)) as caught:
            self.ask()
        err = caught.value
        assert isinstance(err, openai.APIStatusError | anthropic.APIStatusError)
        return err.status_code, err.message

    def counted(self) -> tuple[int, int]:
        """The prompt and completion tokens the stand-in last reported, in its family's terms."""
        u = self.up.last.usage
        assert u is not None
        if "inputTokens" in u:  # Bedrock's Converse: cache reads and writes apart from the input
            prompt = u["inputTokens"] + u.get("cacheReadInputTokens", 0) + u.get("cacheWriteInputTokens", 0)
            return prompt, u["outputTokens"]
        if "input_tokens" in u:
            prompt = u["input_tokens"] + u["cache_read_input_tokens"] + u["cache_creation_input_tokens"]
            return prompt, u["output_tokens"]
        return u["prompt_tokens"], u["completion_tokens"]

    def row(self, answer: Answer) -> dict[str, Any]:
        return ledger_row(self.gw.url, self.gw.key, answer.headers["x-request-id"])


@pytest.fixture(params=CASES, ids=[c.name for c in CASES])
def through(request: pytest.FixtureRequest, standin: ContractStandIn, gw: RunningGateway) -> Iterator[Through]:
    standin.reset()
    standin.refused.clear()
    with (
        openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0) as chat,
        anthropic.Anthropic(base_url=gw.url, api_key=gw.key, max_retries=0) as messages,
    ):
        yield Through(request.param, standin, gw, chat, messages)


def test_a_whole_answer_is_translated_and_metered_from_the_upstreams_usage(through: Through) -> None:
    answer = through.ask()
    assert answer.text == reply_for(SAID)
    assert (answer.prompt_tokens, answer.completion_tokens) == through.counted()
    if through.case.token:
        assert through.up.last.credential in through.up.issued
    elif through.case.signed:  # checked by the stand-in against the configured secret
        assert through.up.last.headers["authorization"].startswith("AWS4-HMAC-SHA256 ")
        assert through.up.refused == []
    else:
        assert through.up.last.credential == UPSTREAM_KEY
    row = through.row(answer)
    assert (row["prompt_tokens"], row["completion_tokens"], row["tokens_estimated"]) == (*through.counted(), False)
    assert (row["model"], row["status"]) == (through.case.model, "success") and row["spend"] > 0


def test_a_stream_is_relayed_in_the_clients_format_and_metered(through: Through) -> None:
    answer = through.stream()
    assert answer.text == reply_for(SAID)
    assert (answer.prompt_tokens, answer.completion_tokens) == through.counted()
    assert through.up.last.completed
    row = through.row(answer)
    assert (row["prompt_tokens"], row["completion_tokens"], row["stream"]) == (*through.counted(), True)


def test_an_upstream_429_is_retried_then_passed_on_with_its_status(through: Through) -> None:
    up = through.up
    busy = error_body(through.case.wire, 429, "Rate limit reached for requests; slow down")
    up.script_fail(429, busy)
    answer = through.ask()
    assert answer.text == reply_for(SAID) and answer.headers["x-meterway-attempts"] == "2"
    assert [r.status for r in up.received] == [429, 200]

    up.reset()
    up.script_fail(429, busy, times=2)  # the one retry meets the limit again: the client sees it
    status, message = through.fails()
    assert status == 429 and "slow down" in message
    assert len(up.received) == 2


def test_a_prompt_too_long_goes_to_the_context_window_fallback_and_other_400s_to_the_caller(through: Through) -> None:
    case, up = through.case, through.up
    up.script_fail(400, error_body(case.wire, 400, case.too_long, case.too_long_code))
    answer = through.ask()
    assert answer.text == reply_for(SAID) and answer.headers["x-meterway-deployment"] == "fallback"
    assert isinstance(up.last.json, dict) and up.last.json["model"] == "fallback-up"

    up.reset()
    up.script_fail(400, error_body(case.wire, 400, "Invalid value at 'temperature': 7 is above 2"))
    status, message = through.fails()
    assert status == 400 and "Invalid value at 'temperature'" in message
    assert len(up.received) == 1  # the caller's own error: neither retried nor sent elsewhere


def test_a_2xx_answer_that_is_no_json_is_a_502_naming_the_deployment(through: Through) -> None:
    through.up.script_fail(200, b"<html><body>Welcome to nginx!</body></html>", {"Content-Type": "text/html"})
    status, message = through.fails()
    assert status == 502 and f"'{through.case.model}'" in message and "Welcome to nginx!" in message
    assert len(through.up.received) == 1
