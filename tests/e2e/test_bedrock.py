"""AWS Bedrock behind the OpenAI API: the `openai` SDK's chat (plain, streamed, with tools and
images) and embeddings through the gateway, at a stand-in that checks every request's SigV4
signature with botocore, answers Converse in its own shapes (streams in AWS's binary event-stream
framing) and refuses what Bedrock refuses. Usage is recorded as Bedrock reported it."""

from __future__ import annotations

import base64
import json
import logging
import socket
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.support.gateway import RunningGateway, ledger_row, run_gateway
from tests.support.wait import eventually
from tests.upstreams.bedrock import (
    ACCESS_KEY,
    LONG_FRAMES,
    LONG_TEXT,
    REGION,
    SECRET_KEY,
    TOOL_USE_ID,
    BedrockStandIn,
)
from tests.upstreams.standin import REPLY_PREFIX, TOOL_ARGUMENT_VALUE, count_words, embedding_for

CLAUDE = "anthropic.claude-3-5-sonnet-20240620-v1:0"
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
HI: Any = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}]
PROMPT_TOKENS = 2 + 2 + 3  # words of the user turn and the system, + 3 for the one message
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16).decode()
EVENT_BOUND = 256 * 1024
ROLE = "arn:aws:iam::123456789012:role/bedrock-invoke"


def _params(up: BedrockStandIn, model: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "aws_access_key_id": ACCESS_KEY,
        "aws_secret_access_key": SECRET_KEY,
        "aws_region_name": REGION,
        "aws_bedrock_runtime_endpoint": up.base_url,
        **extra,
    }


@pytest.fixture(scope="module")
def bedrock() -> Iterator[BedrockStandIn]:
    with BedrockStandIn() as s:
        yield s


@pytest.fixture(scope="module")
def gw(bedrock: BedrockStandIn) -> Iterator[RunningGateway]:
    config = {
        "model_list": [
            {"model_name": "claude", "litellm_params": _params(bedrock, f"bedrock/{CLAUDE}")},
            {"model_name": "claude-us", "litellm_params": _params(bedrock, f"bedrock/converse/us.{CLAUDE}")},
            {
                "model_name": "claude-wrong-secret",
                "litellm_params": _params(bedrock, f"bedrock/{CLAUDE}", aws_secret_access_key="not-the-secret"),
            },
            {
                "model_name": "claude-wrong-region",
                "litellm_params": _params(bedrock, f"bedrock/{CLAUDE}", aws_region_name="us-east-1"),
            },
            {
                "model_name": "claude-role",
                "litellm_params": _params(
                    bedrock,
                    f"bedrock/{CLAUDE}",
                    aws_role_name=ROLE,
                    aws_session_name="gateway-test",
                    aws_sts_endpoint=bedrock.base_url,
                ),
            },
            {"model_name": "titan", "litellm_params": _params(bedrock, "bedrock/amazon.titan-embed-text-v2:0")},
            {"model_name": "cohere-embed", "litellm_params": _params(bedrock, "bedrock/cohere.embed-english-v3")},
        ],
        "general_settings": {"max_upstream_event_bytes": EVENT_BOUND},
    }
    before = len(bedrock.assumed)
    with run_gateway(config) as g:
        # the role is assumed off the request path as the gateway starts: done before tests look at `last`
        eventually(lambda: len(bedrock.assumed) > before, 10, "the role assumed at start")
        yield g


@pytest.fixture
def up(bedrock: BedrockStandIn) -> BedrockStandIn:
    bedrock.reset()
    bedrock.refused.clear()
    bedrock.cache_read = 0
    return bedrock


@pytest.fixture
def client(gw: RunningGateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0) as c:
        yield c


def test_plain_chat_is_signed_translated_and_metered_as_bedrock_reported(
    gw: RunningGateway, up: BedrockStandIn, client: openai.OpenAI
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="claude", messages=HI, max_tokens=50, temperature=0.2, stop=["END"]
    )
    answer = raw.parse()
    assert answer.choices[0].message.content == REPLY_PREFIX + "hello there"
    assert answer.choices[0].finish_reason == "stop" and answer.model == CLAUDE
    completion = count_words(REPLY_PREFIX + "hello there")
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (PROMPT_TOKENS, completion)
    sent = up.last
    assert sent.status == 200 and up.refused == []  # the stand-in checked the signature and took it
    assert sent.path == f"/model/{CLAUDE}/converse"
    assert sent.headers["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/")
    assert f"/{REGION}/bedrock/aws4_request" in sent.headers["authorization"]
    assert sent.json == {
        "messages": [{"role": "user", "content": [{"text": "hello there"}]}],
        "system": [{"text": "Be brief."}],
        "inferenceConfig": {"maxTokens": 50, "temperature": 0.2, "stopSequences": ["END"]},
    }
    row = ledger_row(gw.url, gw.key, raw.headers["x-request-id"])
    assert (row["prompt_tokens"], row["completion_tokens"], row["tokens_estimated"]) == (
        PROMPT_TOKENS,
        completion,
        False,
    )
    # priced from the bundled table's Bedrock entry (USD 3 and 15 per million tokens)
    assert Decimal(str(row["spend"])) == (Decimal(3) * PROMPT_TOKENS + Decimal(15) * completion) / 1_000_000


def test_the_model_id_is_escaped_in_the_path_and_signed_as_sent(up: BedrockStandIn, client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(model="claude-us", messages=HI)
    assert answer.choices[0].message.content == REPLY_PREFIX + "hello there"
    # `bedrock/converse/…` names the route; the inference profile's id goes in the path, its colon escaped
    assert up.last.path == f"/model/us.{CLAUDE}/converse" and up.refused == []
    assert answer.model == f"us.{CLAUDE}"
    assert "inferenceConfig" not in up.last.json  # nothing set: Bedrock's own defaults


def test_streamed_chat_arrives_as_openai_chunks_with_bedrock_usage(
    gw: RunningGateway, up: BedrockStandIn, client: openai.OpenAI
) -> None:
    up.cache_read = 4  # reported apart from inputTokens, as Converse does: counted in the prompt
    raw = client.chat.completions.with_raw_response.create(
        model="claude", messages=HI, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY_PREFIX + "hello there"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens == PROMPT_TOKENS + 8
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 4
    assert up.last.path.endswith("/converse-stream") and up.last.completed
    assert up.last.headers["accept"] == "application/vnd.amazon.eventstream"
    row = ledger_row(gw.url, gw.key, raw.headers["x-request-id"])
    assert (row["prompt_tokens"], row["tokens_estimated"]) == (PROMPT_TOKENS + 8, False)


@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls_round_trip(stream: bool, up: BedrockStandIn, client: openai.OpenAI) -> None:
    ask: Any = [{"role": "user", "content": "weather in Paris?"}]
    if stream:
        calls: dict[int, dict[str, str]] = {}
        finish = None
        for c in client.chat.completions.create(model="claude", messages=ask, tools=TOOLS, stream=True):
            if not c.choices:
                continue
            finish = c.choices[0].finish_reason or finish
            for tc in c.choices[0].delta.tool_calls or []:
                entry = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] = tc.id or entry["id"]
                if tc.function is not None:
                    entry["name"] += tc.function.name or ""
                    entry["arguments"] += tc.function.arguments or ""
        (call,) = calls.values()
        call_id, name, arguments = call["id"], call["name"], call["arguments"]
    else:
        answer = client.chat.completions.create(model="claude", messages=ask, tools=TOOLS, tool_choice="required")
        finish = answer.choices[0].finish_reason
        (tool_call,) = answer.choices[0].message.tool_calls or []
        call_id, name, arguments = tool_call.id, tool_call.function.name, tool_call.function.arguments
        assert up.last.json["toolConfig"]["toolChoice"] == {"any": {}}
    assert finish == "tool_calls" and name == "get_weather" and call_id == TOOL_USE_ID
    assert json.loads(arguments) == {"city": TOOL_ARGUMENT_VALUE}
    assert up.last.json["toolConfig"]["tools"] == [
        {
            "toolSpec": {
                "name": "get_weather",
                "description": "Weather for a city",
                "inputSchema": {"json": TOOLS[0]["function"]["parameters"]},
            }
        }
    ]

    follow: Any = [
        *ask,
        {
            "role": "assistant",
            "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}],
        },
        {"role": "tool", "tool_call_id": call_id, "content": '{"temp": 21}'},
        {"role": "user", "content": "thanks"},
    ]
    final = client.chat.completions.create(model="claude", messages=follow, tools=TOOLS)
    assert final.choices[0].message.content == REPLY_PREFIX + "thanks"
    sent = up.last.json["messages"]
    assert sent[1] == {
        "role": "assistant",
        "content": [{"toolUse": {"toolUseId": TOOL_USE_ID, "name": "get_weather", "input": {"city": "Paris"}}}],
    }
    # the tool's result and the next user text are one user turn, as Converse wants turns to alternate
    assert sent[2] == {
        "role": "user",
        "content": [
            {"toolResult": {"toolUseId": TOOL_USE_ID, "content": [{"text": '{"temp": 21}'}]}},
            {"text": "thanks"},
        ],
    }


def test_an_image_goes_as_converse_bytes(up: BedrockStandIn, client: openai.OpenAI) -> None:
    content: Any = [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
    ]
    answer = client.chat.completions.create(model="claude", messages=[{"role": "user", "content": content}])
    assert answer.choices[0].message.content == REPLY_PREFIX + "what is this"
    assert up.last.json["messages"][0]["content"][1] == {"image": {"format": "png", "source": {"bytes": PNG}}}


def test_an_image_by_url_is_the_clients_error(up: BedrockStandIn, client: openai.OpenAI) -> None:
    content: Any = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="claude", messages=[{"role": "user", "content": content}])
    assert "data URL" in caught.value.message
    assert up.received == []


@pytest.mark.parametrize("model", ["claude-wrong-secret", "claude-wrong-region"])
def test_a_signature_bedrock_would_refuse_is_refused_and_reported_in_openai_format(
    model: str, up: BedrockStandIn, client: openai.OpenAI
) -> None:
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(model=model, messages=HI)
    assert caught.value.status_code == 403
    assert up.refused == ["InvalidSignatureException"]
    expected = "signature we calculated does not match" if model == "claude-wrong-secret" else "valid region"
    assert expected in caught.value.message and "refused the gateway's AWS credentials" in caught.value.message
    assert SECRET_KEY not in caught.value.message and "not-the-secret" not in caught.value.message
    assert isinstance(caught.value.body, dict) and caught.value.body.get("type")


def test_a_role_is_assumed_through_sts_and_renewed_before_it_expires(
    gw: RunningGateway, up: BedrockStandIn, client: openai.OpenAI
) -> None:
    answer = client.chat.completions.create(model="claude-role", messages=HI)
    assert answer.choices[0].message.content == REPLY_PREFIX + "hello there"
    (role, session, issued) = up.assumed[-1]  # the role was assumed when the gateway started
    assert (role, session) == (ROLE, "gateway-test") and up.refused == []
    sent = up.last
    assert sent.headers["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={issued}/")
    assert sent.headers["x-amz-security-token"] == up.keys[issued][1]


def test_assumed_role_credentials_are_renewed_before_they_expire(up: BedrockStandIn) -> None:
    up.role_minutes = 12  # inside the 15-minute window: renewed (by a thread) as soon as they are read
    start = len(up.assumed)
    config = {
        "model_list": [
            {
                "model_name": "claude-role",
                "litellm_params": _params(up, f"bedrock/{CLAUDE}", aws_role_name=ROLE, aws_sts_endpoint=up.base_url),
            }
        ]
    }
    try:
        with run_gateway(config) as g, openai.OpenAI(base_url=g.v1, api_key=g.key, max_retries=0) as c:
            c.chat.completions.create(model="claude-role", messages=HI)  # signed with the first; renewal starts
            first = up.received_for("/converse")[-1].headers["authorization"]  # (STS calls arrive beside it)
            eventually(lambda: len(up.assumed) >= start + 2, 10, "the credentials renewed through STS")
            time.sleep(0.2)  # the renewing thread keeps them once STS has answered
            up.keys.pop(up.assumed[start][2])  # the first ones stop working: only renewed ones can sign now
            answer = c.chat.completions.create(model="claude-role", messages=HI)
            assert answer.choices[0].message.content == REPLY_PREFIX + "hello there"
            assert up.received_for("/converse")[-1].headers["authorization"] != first and up.refused == []
            assert up.assumed[start][1] == "meterway"  # the default session name
            # that request started the next renewal: let it end here, not in another test's records
            eventually(lambda: len(up.assumed) >= start + 3, 10, "the next renewal")
    finally:
        up.role_minutes = 60


def test_throttling_is_a_429_with_bedrocks_message(up: BedrockStandIn, client: openai.OpenAI) -> None:
    up.script_fail(
        429,
        {"message": "Too many requests, please wait before trying again."},
        {"x-amzn-ErrorType": "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"},
    )
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="claude", messages=HI)
    assert "Too many requests" in caught.value.message


@pytest.mark.parametrize("kind", ["cut", "bad_crc", "exception"])
def test_a_broken_stream_ends_with_an_error_event_and_is_still_metered(
    kind: str, gw: RunningGateway, up: BedrockStandIn, client: openai.OpenAI
) -> None:
    up.misbehave(kind, at=3)  # after messageStart and two pieces of text
    raw = client.chat.completions.with_raw_response.create(model="claude", messages=HI, stream=True)
    text = ""
    with pytest.raises(openai.APIError):
        for c in raw.parse():
            text += "".join(ch.delta.content or "" for ch in c.choices)
    assert text and (REPLY_PREFIX + "hello there").startswith(text)
    row = ledger_row(gw.url, gw.key, raw.headers["x-request-id"])
    assert row["status"] != "success" and row["completion_tokens"] > 0 and row["tokens_estimated"] is True, str(row)


def test_a_frame_longer_than_the_event_bound_is_cut_before_it_arrives(
    gw: RunningGateway, up: BedrockStandIn, client: openai.OpenAI
) -> None:
    up.misbehave("endless", at=0)  # its prelude promises 16 MiB, and bytes keep coming
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model="claude", messages=HI, stream=True)
    assert failed.value.status_code == 502  # nothing had been sent: the status says it
    error = failed.value.response.json()["error"]
    assert error["code"] == "upstream_too_large" and str(EVENT_BOUND) in error["message"]
    row = ledger_row(gw.url, gw.key, failed.value.response.headers["x-request-id"])
    assert row["status"] == "upstream_error" and row["flags"] == ["upstream_too_large"]
    assert up.last.completed is False  # cut off, not read to its end


def test_a_stream_of_small_frames_longer_than_the_event_bound_is_relayed_whole(
    gw: RunningGateway, up: BedrockStandIn, client: openai.OpenAI
) -> None:
    up.misbehave("long", at=0)  # about 500 kB of frames, none with a blank line: one endless event to SSE eyes
    raw = client.chat.completions.with_raw_response.create(model="claude", messages=HI, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert len(text) == len(REPLY_PREFIX + "hello there") + LONG_FRAMES * len(LONG_TEXT) > EVENT_BOUND
    row = ledger_row(gw.url, gw.key, raw.headers["x-request-id"])
    assert row["status"] == "success" and row["flags"] == []


def test_a_stream_without_usage_is_counted_by_the_ledger(
    gw: RunningGateway, up: BedrockStandIn, client: openai.OpenAI
) -> None:
    up.misbehave("no_metadata", at=0)
    raw = client.chat.completions.with_raw_response.create(model="claude", messages=HI, stream=True)
    chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY_PREFIX + "hello there"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    row = ledger_row(gw.url, gw.key, raw.headers["x-request-id"])
    assert row["status"] == "success" and row["tokens_estimated"] is True


def test_titan_embeddings_report_their_input_tokens(
    gw: RunningGateway, up: BedrockStandIn, client: openai.OpenAI
) -> None:
    raw = client.embeddings.with_raw_response.create(model="titan", input="alpha beta gamma", dimensions=8)
    result = raw.parse()
    assert [d.embedding for d in result.data] == [embedding_for("alpha beta gamma")]
    assert up.last.path == "/model/amazon.titan-embed-text-v2:0/invoke" and up.refused == []
    assert up.last.json == {"inputText": "alpha beta gamma", "dimensions": 8}
    row = ledger_row(gw.url, gw.key, raw.headers["x-request-id"])
    assert (row["prompt_tokens"], row["tokens_estimated"]) == (3, False)
    with pytest.raises(openai.BadRequestError):  # Titan takes one text per call
        client.embeddings.create(model="titan", input=["one", "two"])


def test_cohere_embeddings_on_bedrock_take_the_input_type(up: BedrockStandIn, client: openai.OpenAI) -> None:
    result = client.embeddings.create(
        model="cohere-embed", input=["first text", "second"], extra_body={"input_type": "search_query"}
    )
    assert [d.embedding for d in result.data] == [embedding_for("first text"), embedding_for("second")]
    assert up.last.json == {"texts": ["first text", "second"], "input_type": "search_query"}


def test_a_messages_api_stream_is_served_over_converse_stream(gw: RunningGateway, up: BedrockStandIn) -> None:
    with (
        anthropic.Anthropic(base_url=gw.url, api_key=gw.key, max_retries=0) as client,
        client.messages.stream(
            model="claude", max_tokens=20, messages=[{"role": "user", "content": "hello there"}]
        ) as stream,
    ):
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == REPLY_PREFIX + "hello there" and final.stop_reason == "end_turn"
    assert final.usage.output_tokens == count_words(text)
    assert up.last.path.endswith("/converse-stream") and up.refused == []


def test_messages_api_is_served_over_converse(gw: RunningGateway, up: BedrockStandIn) -> None:
    r = httpx.post(
        gw.url + "/v1/messages",
        headers={"x-api-key": gw.key, "anthropic-version": "2023-06-01"},
        json={"model": "claude", "max_tokens": 20, "messages": [{"role": "user", "content": "hello there"}]},
    )
    assert r.status_code == 200, r.text
    assert r.json()["content"][0]["text"] == REPLY_PREFIX + "hello there"
    assert up.last.path.endswith("/converse") and up.refused == []


@pytest.fixture
def silent_sts() -> Iterator[str]:
    """An STS endpoint that accepts connections and never answers them."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_credentials_still_being_resolved_fail_a_request_at_once_and_never_block_the_worker(
    up: BedrockStandIn, silent_sts: str
) -> None:
    config = {
        "model_list": [
            {
                "model_name": "claude-stuck",
                "litellm_params": _params(up, f"bedrock/{CLAUDE}", aws_role_name=ROLE, aws_sts_endpoint=silent_sts),
            }
        ]
    }
    with run_gateway(config) as g, openai.OpenAI(base_url=g.v1, api_key=g.key, max_retries=0, timeout=30) as c:
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(openai.APIStatusError) as caught:
                c.chat.completions.create(model="claude-stuck", messages=HI)
            assert time.monotonic() - started < 1.0
            assert caught.value.status_code == 502
            assert "its AWS credentials are unavailable" in caught.value.message
            started = time.monotonic()
            assert httpx.get(f"{g.url}/health/liveliness", timeout=5).status_code == 200
            assert time.monotonic() - started < 1.0
    assert up.received_for("/converse") == []


def test_a_credentials_failure_is_logged_and_never_shown_to_the_client(
    up: BedrockStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    # a one-letter session name: botocore refuses the AssumeRole call (RoleSessionName, and the role's ARN)
    params = _params(up, f"bedrock/{CLAUDE}", aws_role_name=ROLE, aws_session_name="x", aws_sts_endpoint=up.base_url)
    config = {"model_list": [{"model_name": "claude-broken", "litellm_params": params}]}
    with (
        caplog.at_level(logging.WARNING, logger="meterway"),
        run_gateway(config) as g,
        openai.OpenAI(base_url=g.v1, api_key=g.key, max_retries=0) as c,
    ):
        for _ in range(2):
            with pytest.raises(openai.APIStatusError) as caught:
                c.chat.completions.create(model="claude-broken", messages=HI)
            message = caught.value.message
            assert "its AWS credentials are unavailable (see the gateway's log)" in message
            assert "RoleSessionName" not in message and "123456789012" not in message
            assert "ParamValidationError" not in message
    logged = [r.getMessage() for r in caplog.records if "RoleSessionName" in r.getMessage()]
    assert len(logged) == 1 and SECRET_KEY not in logged[0]


def test_a_stored_role_model_keeps_its_credentials_across_reloads(up: BedrockStandIn) -> None:
    config = {
        "model_list": [{"model_name": "demo", "litellm_params": {"model": "mock/demo"}}],
        "general_settings": {"store_model_in_db": True},
    }
    params = _params(up, f"bedrock/{CLAUDE}", aws_role_name=ROLE, aws_sts_endpoint=up.base_url)
    with run_gateway(config) as g, openai.OpenAI(base_url=g.v1, api_key=g.key, max_retries=0) as c:
        admin = {"Authorization": f"Bearer {g.key}"}
        start = len(up.assumed)
        added = {"model_name": "stored-role", "litellm_params": params, "model_info": {"id": "stored-role-1"}}
        assert httpx.post(g.url + "/model/new", json=added, headers=admin).status_code == 200
        assert c.chat.completions.create(model="stored-role", messages=HI).choices[0].message.content  # at once
        assert len(up.assumed) == start + 1
        for n in range(2):  # each addition reloads every stored model
            other = {"model_name": f"o{n}", "litellm_params": {"model": "mock/o"}, "model_info": {"id": f"o-{n}"}}
            assert httpx.post(g.url + "/model/new", json=other, headers=admin).status_code == 200
            assert c.chat.completions.create(model="stored-role", messages=HI).choices[0].message.content
        time.sleep(0.3)  # a re-resolution, were there one, would have reached STS by now
        assert len(up.assumed) == start + 1
