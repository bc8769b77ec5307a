"""Bedrock's translation offline: OpenAI chat to Converse and back, the event-stream relay fed
real frames (split anywhere, corrupted), the frame bound, and SigV4 as the stand-in checks it."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import orjson
import pytest
from botocore.credentials import ReadOnlyCredentials

from meterway.errors import BadRequest, UpstreamError, UpstreamRateLimited, UpstreamUnavailable
from meterway.providers import bedrock_format as bf
from meterway.providers.anthropic_format import TranslationError
from meterway.providers.base import Api, Call, RequestHead
from meterway.providers.bedrock import ConverseRelay, FrameBound, build, model_id, sign
from tests.upstreams.bedrock import frame

PNG = "iVBORw0KGgo="


def test_system_images_cache_points_and_parameters_take_converse_names() -> None:
    chat: Any = {
        "messages": [
            {
                "role": "system",
                "content": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this"},
                    {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{PNG}"}},
                ],
            },
        ],
        "max_tokens": 10,
        "top_p": 0.5,
        "top_k": 3,
        "stop": "END",
    }
    body = bf.converse_request(chat)
    assert body["system"] == [{"text": "Be brief."}, {"cachePoint": {"type": "default"}}]
    assert body["messages"] == [
        {"role": "user", "content": [{"text": "what is this"}, {"image": {"format": "jpeg", "source": {"bytes": PNG}}}]}
    ]
    assert body["inferenceConfig"] == {"maxTokens": 10, "topP": 0.5, "stopSequences": ["END"]}
    assert body["additionalModelRequestFields"] == {"top_k": 3}


@pytest.mark.parametrize(
    ("choice", "converse"),
    [
        ("auto", {"auto": {}}),
        ("required", {"any": {}}),
        ({"type": "function", "function": {"name": "f"}}, {"tool": {"name": "f"}}),
        ("none", None),
    ],
)
def test_tool_choice(choice: Any, converse: Any) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    body = bf.converse_request({"messages": [{"role": "user", "content": "hi"}], "tools": tools, "tool_choice": choice})
    assert body["toolConfig"]["tools"] == [{"toolSpec": {"name": "f", "inputSchema": {"json": {"type": "object"}}}}]
    assert body["toolConfig"].get("toolChoice") == converse


@pytest.mark.parametrize(
    "url", ["https://example.com/a.png", "data:image/tiff;base64,AAAA", "data:image/png;base64,not base64!"]
)
def test_images_bedrock_cannot_take_are_the_clients_error(url: str) -> None:
    content = [{"type": "image_url", "image_url": {"url": url}}]
    with pytest.raises(TranslationError):
        bf.converse_request({"messages": [{"role": "user", "content": content}]})


def test_an_answer_becomes_the_anthropic_message_with_cache_figures_apart() -> None:
    answer = {
        "output": {
            "message": {"content": [{"text": "hi"}, {"toolUse": {"toolUseId": "t1", "name": "f", "input": {"a": 1}}}]}
        },
        "stopReason": "guardrail_intervened",
        "usage": {"inputTokens": 5, "outputTokens": 2, "cacheReadInputTokens": 3, "cacheWriteInputTokens": 1},
    }
    message = bf.anthropic_message(answer, "m")
    assert message["content"][1] == {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}
    assert message["stop_reason"] == "refusal"
    assert message["usage"] == {
        "input_tokens": 5,
        "output_tokens": 2,
        "cache_read_input_tokens": 3,
        "cache_creation_input_tokens": 1,
    }


def test_route_markers_are_not_part_of_the_model_id_and_embedding_models_are_told_apart() -> None:
    assert (
        model_id("converse/us.anthropic.claude-3-5-sonnet-20240620-v1:0")
        == "us.anthropic.claude-3-5-sonnet-20240620-v1:0"
    )
    assert model_id("invoke/amazon.titan-embed-text-v2:0") == "amazon.titan-embed-text-v2:0"
    assert bf.embed_kind("amazon.titan-embed-text-v2:0") == "titan"
    assert bf.embed_kind("us.cohere.embed-english-v3") == "cohere"
    assert bf.embed_kind("anthropic.claude-3-haiku-20240307-v1:0") is None


def _frames(text: str = "Hello there") -> bytes:
    return b"".join(
        [
            frame("messageStart", {"role": "assistant"}),
            frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": text}}),
            frame("contentBlockStop", {"contentBlockIndex": 0}),
            frame("messageStop", {"stopReason": "end_turn"}),
            frame("metadata", {"usage": {"inputTokens": 4, "outputTokens": 2, "totalTokens": 6}}),
        ]
    )


def _chunks(data: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line[6:]) for line in data.split(b"\n\n") if line.startswith(b"data: {")]


def test_the_relay_reads_frames_split_anywhere() -> None:
    relay = ConverseRelay("d", "m", include_usage=True)
    data = _frames()
    out = b"".join(relay.feed(data[i : i + 7]) for i in range(0, len(data), 7))
    closing = relay.finish()
    chunks = _chunks(out)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "Hello there"
    assert chunks[-1]["usage"]["prompt_tokens"] == 4 and closing.endswith(b"data: [DONE]\n\n")
    assert relay.usage is not None and (relay.usage.prompt_tokens, relay.usage.completion_tokens) == (4, 2)


def test_a_frame_with_a_bad_crc_fails_after_the_chunks_before_it() -> None:
    relay = ConverseRelay("d", "m", include_usage=False)
    good = frame("messageStart", {}) + frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "a"}})
    out = relay.feed(good + frame("contentBlockDelta", {"delta": {"text": "b"}}, bad_crc=True))
    assert _chunks(out)[-1]["choices"][0]["delta"] == {"content": "a"}
    with pytest.raises(UpstreamError, match="broken event stream"):
        relay.finish()


def test_an_exception_frame_is_the_upstreams_error_by_its_type() -> None:
    relay = ConverseRelay("d", "m", include_usage=False)
    with pytest.raises(UpstreamRateLimited, match="slow down"):
        relay.feed(frame("throttlingException", {"message": "slow down"}, message_type="exception"))


def test_a_stream_that_ends_mid_frame_or_before_its_message_ends_is_broken() -> None:
    relay = ConverseRelay("d", "m", include_usage=False)
    relay.feed(_frames()[:-5])
    with pytest.raises(UpstreamError, match="broke off"):
        relay.finish()
    relay = ConverseRelay("d", "m", include_usage=False)
    relay.feed(frame("messageStart", {}))
    with pytest.raises(UpstreamError, match="broke off"):
        relay.finish()


def test_the_frame_bound_reads_declared_lengths_across_reads() -> None:
    data = _frames("x" * 100)
    longest = len(frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "x" * 100}}))
    bound = FrameBound(longest)
    assert not any(bound.over(data[i : i + 3]) for i in range(0, len(data), 3))  # split mid-prelude too
    assert FrameBound(longest - 1).over(data)
    endless = FrameBound(1024)
    assert not endless.over(b"\x01\x00")  # half a declared length: still to come
    assert endless.over(b"\x00\x00")  # 16 MiB promised: cut before a byte of it arrives


def test_sign_adds_sigv4_headers_for_bedrock_in_the_region() -> None:
    credentials = ReadOnlyCredentials("AKIDEXAMPLE", "secret", "token")
    headers = sign(
        "POST",
        "https://bedrock-runtime.eu-west-3.amazonaws.com/model/a%3A0/converse",
        {"Content-Type": "application/json"},
        b"{}",
        credentials,
        "eu-west-3",
    )
    assert headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "/eu-west-3/bedrock/aws4_request" in headers["Authorization"]
    assert headers["X-Amz-Security-Token"] == "token" and headers["X-Amz-Date"]


def test_requests_go_to_the_regions_host_with_the_model_id_escaped() -> None:
    params = {"aws_access_key_id": "AKID", "aws_secret_access_key": "s", "aws_region_name": "ap-south-1"}
    provider = build(label="d", upstream_model="anthropic.claude-v2:1", api_base=None, params=params, env={})
    head = RequestHead(model="claude")
    request = provider.build_request(Call(Api.CHAT, b'{"messages":[{"role":"user","content":"hi"}]}', head, "r"))
    assert str(request.url) == "https://bedrock-runtime.ap-south-1.amazonaws.com/model/anthropic.claude-v2%3A1/converse"
    assert provider.supports(Api.CHAT) and not provider.supports(Api.EMBEDDINGS)
    with pytest.raises(BadRequest):
        provider.build_request(Call(Api.CHAT, b'{"messages":[{"role":"wizard","content":"hi"}]}', head, "r"))


def test_credentials_that_cannot_be_had_make_the_deployment_unavailable_not_a_crash(
    caplog: pytest.LogCaptureFixture,
) -> None:
    params = {"aws_profile_name": "no-such-profile-anywhere", "aws_region_name": "eu-west-3"}
    provider = build(label="d", upstream_model="anthropic.claude-v2:1", api_base=None, params=params, env={})
    call = Call(Api.CHAT, b'{"messages":[{"role":"user","content":"hi"}]}', RequestHead(model="claude"), "r")
    with caplog.at_level(logging.WARNING, logger="meterway"):
        asyncio.run(provider.credentials.attempted())  # as the worker does at start
    with pytest.raises(UpstreamUnavailable, match="AWS credentials are unavailable") as caught:
        provider.build_request(call)
    assert caught.value.http_status() == 502 and "Deployment 'd'" in caught.value.message
    assert "no-such-profile-anywhere" not in caught.value.message  # the reason is the log's
    assert any("no-such-profile-anywhere" in r.getMessage() for r in caplog.records)


def test_a_named_profile_of_the_shared_files_signs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "credentials").write_text("[prod]\naws_access_key_id = AKIAPROFILE\naws_secret_access_key = s3cret\n")
    (tmp_path / "config").write_text("")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    params = {"aws_profile_name": "prod", "aws_region_name": "eu-west-3"}
    provider = build(label="d", upstream_model="anthropic.claude-v2:1", api_base=None, params=params, env={})
    asyncio.run(provider.credentials.attempted())  # resolved off the request path, as the worker does at start
    call = Call(Api.CHAT, b'{"messages":[{"role":"user","content":"hi"}]}', RequestHead(model="claude"), "r")
    request = provider.build_request(call)
    assert request.headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIAPROFILE/")
