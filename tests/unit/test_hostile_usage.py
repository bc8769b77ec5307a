"""The pure pieces that keep a misbehaving upstream from mis-metering: usage figures judged, usage
found whatever the whitespace, events bounded, streams counted in pieces as they pass, error pages
summarised."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import meterway.app  # noqa: F401  (the providers import each other through the config package)
from meterway.ledger import usage_checks
from meterway.ledger.tokens import PIECE, WINDOW, DeliveredStream, TokenCounter
from meterway.providers import anthropic, cohere, gemini, sse
from meterway.providers.base import NOT_A_COUNT, RequestHead, Usage, tokens
from meterway.providers.openai import decode_usage, excerpt, find_usage_object, usage_from_tail

COUNTER = TokenCounter()


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, 0), (7, 7), (-5, -5), (3e9, 3_000_000_000), (1.5, NOT_A_COUNT), ("7", NOT_A_COUNT), (True, NOT_A_COUNT)],
)
def test_a_usage_figure_is_kept_as_reported_or_marked_no_count(value: object, expected: int) -> None:
    assert tokens(value) == expected


def test_a_figure_beyond_what_json_carries_exactly_is_no_count() -> None:
    assert tokens(2**60) == NOT_A_COUNT and tokens(1e300) == NOT_A_COUNT


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": -1_000_000, "completion_tokens": 5},
        {"prompt_tokens": "ten", "completion_tokens": 5},
        {"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": -3}},
        {"prompt_tokens": 2**60, "completion_tokens": 5},
        {"prompt_tokens": 1e300, "completion_tokens": 5},
        "plenty",
    ],
)
def test_openai_usage_that_is_no_count_is_not_believed(usage: Any) -> None:
    found = decode_usage(orjson.dumps({"choices": [], "usage": usage}))
    assert found is not None and not usage_checks.believable(found)


def test_every_provider_keeps_a_bad_figure_visible_in_its_sums() -> None:
    """A sum of a bad figure and good ones must stay bad: -1 + 5 cached tokens would look like 4."""
    wire = anthropic._envelope.decode(b'{"usage": {"input_tokens": "x", "cache_read_input_tokens": 5}}').usage
    found = anthropic.usage_from_anthropic(wire)
    assert found is not None and not usage_checks.believable(found)
    assert not usage_checks.believable(gemini.usage_of({"promptTokenCount": 3, "candidatesTokenCount": 1.5}) or Usage())
    assert not usage_checks.believable(cohere.usage_of({"billed_units": {"input_tokens": -2}}) or Usage())
    chat = anthropic.fmt.messages_usage_to_chat({"input_tokens": 4, "cache_read_input_tokens": "x"})
    assert chat["prompt_tokens"] < 0


@pytest.mark.parametrize(
    ("usage", "head", "info", "body", "expected"),
    [
        (Usage(10, 5, 15), RequestHead("m", max_tokens=5), {}, b"{}", False),
        (Usage(10, 6, 16), RequestHead("m", max_tokens=5), {}, b"{}", True),
        (Usage(10, 9, 19), RequestHead("m", max_tokens=5), {}, b'{"n": 2}', False),
        (Usage(10, 9, 19), RequestHead("m"), {"max_output_tokens": 8}, b"{}", True),
        (Usage(9000, 1, 9001), RequestHead("m"), {"max_input_tokens": 8192}, b"{}", True),
        (Usage(9000, 1, 9001), RequestHead("m"), {"max_tokens": 4096}, b"{}", False),  # LiteLLM's ambiguous key
        (Usage(3_000_000_000, 1, 3_000_000_001), None, {}, b"{}", True),
        (Usage(99_000_000, 1, 99_000_001), None, {}, b"{}", False),
    ],
)
def test_absurd_usage_is_beyond_what_the_request_could_use(
    usage: Usage, head: RequestHead | None, info: dict[str, Any], body: bytes, expected: bool
) -> None:
    assert usage_checks.absurd(usage, head, info, body) is expected


USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}


@pytest.mark.parametrize(
    "dump",
    [
        lambda v: json.dumps(v, separators=(",", ":")),
        lambda v: json.dumps(v),
        lambda v: json.dumps(v, separators=(" , ", " : ")),
        lambda v: json.dumps(v, indent=2),
        lambda v: json.dumps(v, indent="\t", separators=(",", " :\r\n ")),
    ],
    ids=["compact", "spaced", "spaced-colon", "indented", "tabs-and-newlines"],
)
def test_usage_is_found_whatever_the_whitespace(dump: Any) -> None:
    text = dump({"id": "x", "choices": [], "usage": USAGE})
    assert find_usage_object(text.encode()) >= 0
    found = decode_usage(text.encode())
    assert found is not None and (found.prompt_tokens, found.completion_tokens) == (11, 7)
    tail = b'data: {"choices":[{"delta":{"content":"hi"}}],"usage":null}\n\n'
    one_line = dump({"id": "x", "choices": [], "usage": USAGE}).replace("\r", "").replace("\n", "")
    stream = tail + b"data: " + one_line.encode() + b"\n\ndata: [DONE]\n\n"
    found = usage_from_tail(stream)
    assert found is not None and found.total_tokens == 18


def test_usage_is_not_found_in_a_string_or_as_null() -> None:
    assert find_usage_object(b'{"content": "the \\"usage\\": {", "usage": null}') < 0
    assert find_usage_object(b'{"usage" : null}') < 0


@given(st.lists(st.binary(min_size=0, max_size=300), max_size=40), st.integers(min_value=16, max_value=400))
@settings(max_examples=300, deadline=None)
def test_an_event_bound_sees_every_event_longer_than_it(reads: list[bytes], limit: int) -> None:
    """The same verdict as splitting the whole stream into events and measuring each."""
    bound = sse.EventBound(limit)
    cut_at = next((i for i, data in enumerate(reads) if bound.over(data)), None)
    seen = b"".join(reads if cut_at is None else reads[: cut_at + 1])
    splitter = sse.EventSplitter(limit)
    longest_ok = True
    try:
        splitter.feed(seen)
    except sse.EventTooLarge:
        longest_ok = False
    if cut_at is None:
        assert longest_ok
    else:  # it stopped at the first read that made an event too long, and not before
        before = b"".join(reads[:cut_at])
        try:
            sse.EventSplitter(limit).feed(before)
        except sse.EventTooLarge:
            pytest.fail("cut a read too late")
        assert not longest_ok


def test_an_event_splitter_with_a_limit_refuses_an_endless_event() -> None:
    splitter = sse.EventSplitter(limit=100)
    assert splitter.feed(b"data: 1\n\ndata: 2\r\n\r\n") == [b"data: 1", b"data: 2"]
    with pytest.raises(sse.EventTooLarge):
        splitter.feed(b"data: " + b"x" * 200)


def _chunks(text: str, sizes: list[int]) -> list[bytes]:
    events, i = [], 0
    for size in sizes:
        piece = text[i : i + size]
        i += size
        if piece:
            events.append(b"data: " + orjson.dumps({"choices": [{"index": 0, "delta": {"content": piece}}]}) + b"\n\n")
    if i < len(text):
        events.append(b"data: " + orjson.dumps({"choices": [{"index": 0, "delta": {"content": text[i:]}}]}) + b"\n\n")
    return [*events, b"data: [DONE]\n\n"]


@given(
    st.text(alphabet=st.sampled_from("ab \n\u00e9\u4e2d"), min_size=0, max_size=3 * PIECE),
    st.lists(st.integers(min_value=1, max_value=4096), max_size=50),
)
@settings(max_examples=60, deadline=None)
def test_a_stream_counted_as_it_passes_counts_what_counting_it_whole_counts_within_a_token_per_piece(
    text: str, sizes: list[int]
) -> None:
    stream = DeliveredStream(COUNTER)
    for chunk in _chunks(text, sizes):
        stream.add(chunk)
    counted = stream.tokens()
    whole = COUNTER._encode(text) if text else 0
    assert abs(counted - whole) <= len(text) // (PIECE * 3 // 4) + 1


def test_a_long_stream_is_not_kept_past_its_window() -> None:
    stream = DeliveredStream(COUNTER)
    event = _chunks("lorem ipsum dolor " * 20, [10_000])[0]
    while stream.size <= WINDOW:
        stream.add(event)
        assert stream.whole() is not None or stream.size > WINDOW
    assert stream.whole() is None and stream.chunks is None
    for _ in range(200):
        stream.add(event)
    assert sum(len(t) for t in stream._text) <= PIECE  # only less than a piece of text is held
    assert stream.tokens() > 0


def test_an_error_page_is_summarised() -> None:
    page = b"<html><head><title>502 Bad Gateway</title><style>p{}</style></head><body><h1>Bad &amp; Gateway</h1>"
    page += b"<p>nginx</p>" * 10_000 + b"</body></html>"
    text = excerpt(page)
    assert text.startswith("502 Bad Gateway Bad & Gateway nginx") and "<" not in text and len(text) <= 300


def test_the_metrics_stage_never_raises_on_figures_below_zero() -> None:
    """Prometheus refuses a negative counter increment with a ValueError; raised after the response,
    it reset the client's keep-alive connection."""
    from prometheus_client import generate_latest

    from meterway.context import RequestContext
    from meterway.providers.base import Api
    from meterway.telemetry.metrics import Metrics

    metrics = Metrics()
    ctx = RequestContext.start("req-1", Api.CHAT)
    ctx.model_group, ctx.status_code, ctx.ended_ns = "m", 200, ctx.started_ns + 1_000_000
    ctx.counted, ctx.cost_units = Usage(-1_000_000, 5, -999_995), -30
    metrics.observe(ctx)
    assert metrics.registry is not None
    text = generate_latest(metrics.registry).decode()
    assert 'meterway_tokens_total{model="",type="input"} 0.0' in text
    assert 'meterway_tokens_total{model="",type="output"} 5.0' in text
    assert 'meterway_requests_total{endpoint="chat",model="",status="200"} 1.0' in text


@pytest.mark.parametrize(
    "final",
    [
        b"event: message_stop\ndata: {}\n\n",
        b"event:message_stop\ndata: {}\n\n",
        b'data: {"type" : "message_stop"}\n\n',
    ],
)
def test_anthropic_s_final_event_is_held_back_however_it_is_spaced(final: bytes) -> None:
    finale = sse.Finale(anthropic=True)
    before = b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"text":"message_stop"}}\n\n'
    assert finale.feed(before + final) == before
    assert finale.finish() == final


def test_bytes_after_the_final_event_are_dropped_not_held() -> None:
    finale = sse.Finale(anthropic=False)
    assert finale.feed(b"data: 1\n\ndata: [DONE]\n\ndata: more") == b"data: 1\n\n"
    assert finale.done
    for _ in range(1000):
        assert finale.feed(b"data: junk\n\n" * 100) == b""
    assert finale.finish(b"closing") == b"data: [DONE]\n\n"


def test_a_final_event_not_yet_ended_is_held_until_it_is() -> None:
    finale = sse.Finale(anthropic=False)
    assert finale.feed(b"data: 1\n\ndata: [DONE]") == b"data: 1\n\n" and not finale.done
    assert finale.feed(b"\n\n") == b"" and finale.done
    assert finale.finish() == b"data: [DONE]\n\n"
