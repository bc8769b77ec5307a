"""Stream relays hold the client's final event themselves, found while they read each upstream
read once; what a stream delivered is let go once usage has come; the demo model is an upstream
transport answering what its provider builds."""

from __future__ import annotations

import itertools

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

import meterway.app  # noqa: F401  (the providers import each other through the config package)
from meterway.errors import BadRequest
from meterway.ledger.tokens import DeliveredStream, TokenCounter
from meterway.providers import sse
from meterway.providers.anthropic import MessagesPassthroughRelay
from meterway.providers.base import Api, Call, RequestHead, StreamRelay
from meterway.providers.messages_adapter import MessagesAdapter
from meterway.providers.mock import MockProvider
from meterway.providers.openai import PassthroughRelay, UsageStrippingRelay

USAGE = b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}\n\n'
CHUNK = b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"hi"}}],"usage":null}\n\n'
ANTHROPIC_BODY = (
    b'event: message_start\r\ndata: {"type":"message_start","message":{"usage":{"input_tokens":9}}}\r\n\r\n'
    b"\n\n"  # a stray blank line: passed on as it came
    b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"text":"message_stop"}}\n\n'
)
DELTA = b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":4}}\n\n'
ANTHROPIC = ANTHROPIC_BODY + DELTA
STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'


def _relay(relay: StreamRelay, reads: list[bytes]) -> tuple[bytes, bytes]:
    out = b"".join(relay.feed(data) for data in reads)
    return out, relay.finish()


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@given(st.lists(st.integers(min_value=0), max_size=8))
def test_openai_pass_through_relays_every_byte_but_holds_done_until_finish(cuts: list[int]) -> None:
    relay = PassthroughRelay()
    out, final = _relay(relay, _cut(CHUNK * 3 + USAGE + sse.DONE, cuts))
    assert out == CHUNK * 3 + USAGE and final == sse.DONE
    assert relay.done and relay.usage is not None and relay.usage.total_tokens == 7


def test_openai_pass_through_drops_and_stops_at_what_follows_done() -> None:
    relay = PassthroughRelay()
    assert relay.feed(CHUNK + sse.DONE + CHUNK) == CHUNK and relay.done
    assert relay.feed(CHUNK) == b""
    assert relay.finish() == sse.DONE


@given(st.lists(st.integers(min_value=0), max_size=8))
def test_usage_stripping_relay_meters_the_usage_event_and_holds_done(cuts: list[int]) -> None:
    relay = UsageStrippingRelay()
    out, final = _relay(relay, _cut(CHUNK * 2 + USAGE + sse.DONE + CHUNK, cuts))
    stripped = CHUNK.replace(b',"usage":null', b"")
    assert out == stripped * 2 and final == sse.DONE and relay.done
    assert relay.usage is not None and relay.usage.total_tokens == 7


def test_usage_stripping_relay_without_done_closes_with_its_unfinished_event() -> None:
    relay = UsageStrippingRelay()
    assert relay.feed(CHUNK + b"data: [DONE]") == CHUNK.replace(b',"usage":null', b"")
    assert not relay.done and relay.finish() == sse.DONE


@given(st.lists(st.integers(min_value=0), max_size=8))
def test_anthropic_pass_through_relays_bytes_as_they_came_but_message_delta_and_stop(cuts: list[int]) -> None:
    """message_delta is held with message_stop: it carries the usage, which `settle` may replace."""
    relay = MessagesPassthroughRelay()
    out, final = _relay(relay, _cut(ANTHROPIC + STOP + b"event: ping\ndata: {}\n\n", cuts))
    assert out == ANTHROPIC_BODY and final == DELTA + STOP and relay.done
    assert relay.usage is not None and (relay.usage.prompt_tokens, relay.usage.completion_tokens) == (9, 4)


@pytest.mark.parametrize("stop", [b"event:message_stop\ndata: {}\n\n", b'data: {"type" : "message_stop"}\n\n'])
def test_anthropic_message_stop_is_told_apart_however_it_is_written(stop: bytes) -> None:
    relay = MessagesPassthroughRelay()
    assert relay.feed(ANTHROPIC + stop) == ANTHROPIC_BODY
    assert relay.finish() == DELTA + stop


def test_anthropic_stream_that_never_ends_its_last_event_closes_with_it_as_it_came() -> None:
    relay = MessagesPassthroughRelay()
    assert relay.feed(ANTHROPIC + b"event: message_stop\r\ndata: {}") == ANTHROPIC_BODY
    assert not relay.done and relay.finish() == DELTA + b"event: message_stop\r\ndata: {}"


def test_delivered_stream_let_go_keeps_only_its_size() -> None:
    delivered = DeliveredStream(TokenCounter())
    delivered.add(CHUNK)
    delivered.forget()
    delivered.add(CHUNK * 10_000)  # past the window: neither kept nor counted
    assert delivered.size == len(CHUNK) * 10_001 and bool(delivered)
    assert delivered.whole() is None and delivered.head(100) == b"" and delivered.tokens() == 0


def _call(api: Api, body: dict[str, object], stream: bool = False) -> Call:
    return Call(api, orjson.dumps(body), RequestHead(str(body["model"]), stream), "req-1")


async def test_demo_model_is_an_upstream_answering_the_request_its_provider_builds() -> None:
    provider = MockProvider(label="demo", upstream_model="demo-upstream")
    call = _call(Api.CHAT, {"model": "demo", "messages": [{"role": "user", "content": "hello"}]})
    answer = await provider.upstream.send(provider.build_request(call), {}, None, "demo")  # type: ignore[arg-type]
    assert (answer.status, answer.content_type) == (200, "application/json")
    body = orjson.loads(await answer.read(1 << 20, None))
    assert body["model"] == "demo-upstream" and body["choices"][0]["message"]["content"].endswith("hello")
    assert provider.parse_response(call, orjson.dumps(body)).usage is not None


async def test_demo_model_streams_one_chunk_a_word_through_the_ordinary_relay() -> None:
    provider = MockProvider(label="demo", upstream_model="demo")
    call = _call(Api.CHAT, {"model": "demo", "stream": True, "messages": [{"role": "user", "content": "hi"}]}, True)
    answer = await provider.upstream.send(provider.build_request(call), {}, None, "demo")  # type: ignore[arg-type]
    assert answer.content_type == "text/event-stream" and not answer.pending()
    relay = provider.open_stream(call)
    out = b"".join([relay.feed(data) async for data in answer])
    assert relay.finish() == sse.DONE and b"[DONE]" not in out and b'"usage"' not in out
    assert relay.usage is not None and relay.usage.completion_tokens > 0


async def test_demo_model_answers_messages_through_the_adapter_as_a_chat_upstream() -> None:
    provider = MessagesAdapter(MockProvider(label="demo", upstream_model="demo"))
    body = {"model": "demo", "max_tokens": 20, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    call = _call(Api.MESSAGES, body, True)
    inner = provider.inner
    assert isinstance(inner, MockProvider)
    answer = await inner.upstream.send(provider.build_request(call), {}, None, "demo")  # type: ignore[arg-type]
    relay = provider.open_stream(call)
    out = b"".join([relay.feed(data) async for data in answer])
    assert relay.done  # the inner relay saw [DONE]: nothing after it would be read
    assert b"message_start" in out and b"message_stop" in relay.finish()


async def test_demo_model_refuses_a_request_it_cannot_read_as_the_clients_error() -> None:
    provider = MockProvider(label="demo", upstream_model="demo")
    call = _call(Api.CHAT, {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "tools": ["x"]})
    with pytest.raises(BadRequest, match="demo model cannot read"):
        await provider.upstream.send(provider.build_request(call), {}, None, "demo")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (b'data: {"id":"c","choices":[],"usage":null}', b'data: {"id":"c","choices":[]}'),
        (b'data: {"usage":null,"id":"c","choices":[]}', b'data: {"id":"c","choices":[]}'),
        (b'data: {"id":"c", "usage" : null, "choices":[]}', b'data: {"id":"c", "choices":[]}'),
        (b'data: {"id":"c","x":{"a":1,"usage":null},"usage":null}', b'data: {"id":"c","x":{"a":1}}'),
        (b'data: {"id":"c","choices":[{"delta":{"content":"usage"}}]}', None),
    ],
)
def test_usage_the_gateway_asked_for_is_taken_out_of_every_chunk(event: bytes, expected: bytes | None) -> None:
    relay = UsageStrippingRelay()
    assert relay.feed(event + b"\n\n") == (expected or event) + b"\n\n"


FINISH_WITH_USAGE = (
    b'data: {"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}\n\n'
)
SPACED_FINISH_WITH_USAGE = (
    b'data: {"id" : "c" , "choices" : [{"index" : 0 , "delta" : {} , "finish_reason" : "stop"}] , '
    b'"usage" : {"prompt_tokens" : 5 , "completion_tokens" : 2 , "total_tokens" : 7}}\n\n'
)


@given(st.lists(st.integers(min_value=0), max_size=8), st.sampled_from([FINISH_WITH_USAGE, SPACED_FINISH_WITH_USAGE]))
def test_usage_beside_a_choice_is_metered_and_taken_out_without_the_choice(cuts: list[int], last: bytes) -> None:
    relay = UsageStrippingRelay()
    out, final = _relay(relay, _cut(CHUNK * 2 + last + sse.DONE, cuts))
    assert final == sse.DONE and relay.done
    assert relay.usage is not None and (relay.usage.prompt_tokens, relay.usage.completion_tokens) == (5, 2)
    *chunks, finish = [orjson.loads(sse.parse_event(e).data) for e in out.split(b"\n\n") if e]
    assert all("usage" not in c for c in (*chunks, finish)) and len(chunks) == 2
    assert finish == {"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}


@given(st.lists(st.integers(min_value=0), max_size=8))
def test_pass_through_reads_usage_beside_a_choice_and_relays_it(cuts: list[int]) -> None:
    relay = PassthroughRelay()
    out, final = _relay(relay, _cut(CHUNK + SPACED_FINISH_WITH_USAGE + sse.DONE, cuts))
    assert out == CHUNK + SPACED_FINISH_WITH_USAGE and final == sse.DONE
    assert relay.usage is not None and relay.usage.total_tokens == 7


@pytest.mark.parametrize(
    ("event", "expected"),
    [  # other fields of the event kept; a usage nested in a choice is not the chunk's; figures beyond 64 bits
        (
            b'id: 9\ndata: {"choices":[{"index":0}],"usage":{"prompt_tokens":1}}',
            b'id: 9\ndata: {"choices":[{"index":0}]}',
        ),
        (
            b'data: {"choices":[{"index":0,"x":{"usage":{"a":1}}}],"usage":null}',
            b'data: {"choices":[{"index":0,"x":{"usage":{"a":1}}}]}',
        ),
        (
            b'data: {"n":123456789012345678901234,"choices":[{"index":0}],"usage":{"prompt_tokens":1}}',
            b'data: {"n":123456789012345678901234,"choices":[{"index":0}]}',
        ),
    ],
)
def test_usage_beside_a_choice_leaves_the_rest_of_the_event(event: bytes, expected: bytes) -> None:
    relay = UsageStrippingRelay()
    assert relay.feed(event + b"\n\n") == expected + b"\n\n"


def test_usage_beside_a_choice_with_an_escaped_lone_surrogate_is_still_taken_out() -> None:
    relay = UsageStrippingRelay()
    event = b'data: {"choices":[{"delta":{"content":"\\ud800 \xc3\xa9"}}],"usage":{"prompt_tokens":1}}\n\n'
    assert relay.feed(event) == b'data: {"choices":[{"delta":{"content":"\\ud800 \\u00e9"}}]}\n\n'
    assert relay.usage is not None and relay.usage.prompt_tokens == 1
