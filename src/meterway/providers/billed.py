"""The usage a client is shown when meterway counted it: the ledger row's figures, in the client's format.

An upstream that reports no usage (or figures that are no counts) is metered by the ledger's own
count (`ledger.recorder`). A client that asked for usage is then given exactly that count, never a
0 nor a figure of its own: a whole body gets it in its `usage`, a chat stream a final usage chunk
(`ChatUsageChunk`), an Anthropic stream its `message_delta` usage. The rewrite happens only then, after
the row is committed, so a body the upstream reported usage for passes through untouched.

How a client tells such figures from reported ones: a whole answer carries the header
`x-meterway-usage-estimated: true`; a stream (its headers are sent before anyone can know) carries
`"meterway": {"usage_estimated": true}` in the event that holds the usage (docs/ledger.md, "What
the client is shown").
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from meterway.providers import sse
from meterway.providers.base import Api, Usage
from meterway.providers.responses_format import responses_usage

HEADER = (b"x-meterway-usage-estimated", b"true")
MARK: dict[str, Any] = {"usage_estimated": True}  # the `meterway` member of a stream's usage event


def openai_usage(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def anthropic_usage(usage: Usage) -> dict[str, int]:
    """Anthropic's `input_tokens` leaves out cache reads and writes, which the ledger's prompt includes."""
    return {
        "input_tokens": max(usage.prompt_tokens - usage.cached_tokens - usage.cache_write_tokens, 0),
        "output_tokens": usage.completion_tokens,
    }


def body_with_usage(api: Api, body: bytes, usage: Usage) -> bytes:
    """A whole answer with `usage` replaced by the billed figures. A body that is no JSON object is
    returned as it came (it was relayed as such: nothing to put usage in). Decoded by the standard
    library: orjson reads an integer past 64 bits as a float, which would change a figure the
    client is owed elsewhere in the body."""
    try:
        answer = json.loads(body)
    except ValueError:
        return body
    if not isinstance(answer, dict) or api in (
        Api.RERANK,
        Api.MODERATIONS,
        Api.IMAGES,
        Api.IMAGE_EDITS,
        Api.IMAGE_VARIATIONS,
    ):  # their usage is their own shape
        return body
    if api is Api.MESSAGES:
        answer["usage"] = anthropic_usage(usage)
    elif api is Api.RESPONSES:
        answer["usage"] = responses_usage(usage)
    elif api is Api.EMBEDDINGS:
        answer["usage"] = {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens}
    else:
        answer["usage"] = openai_usage(usage)
    return json.dumps(answer, separators=(",", ":")).encode()


def usage_chunk(template: dict[str, Any], usage: Usage) -> bytes:
    """OpenAI's last chunk of a stream whose client asked for usage: no choices, the usage, and the
    id, `created` and `model` of the stream's other chunks (taken from `template`)."""
    chunk: dict[str, Any] = {
        "id": template.get("id") or "",
        "object": template.get("object") or "chat.completion.chunk",
        "created": template.get("created") or 0,
        "model": template.get("model") or "",
        "choices": [],
        "usage": openai_usage(usage),
        "meterway": MARK,
    }
    return sse.format_data(orjson.dumps(chunk))


def last_chunk(tail: bytes) -> dict[str, Any]:
    """The last JSON chunk in the tail of a relayed stream (for its id, `created` and `model`);
    empty when there is none."""
    for event in reversed(tail.replace(b"\r\n", b"\n").split(b"\n\n")):
        data = sse.parse_event(event.strip()).data
        if not data or data == b"[DONE]":
            continue
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
        if isinstance(chunk, dict):
            return chunk
    return {}


def message_delta_with_usage(event: bytes, usage: Usage) -> bytes:
    """An Anthropic `message_delta` event (as it came, separator included) with its usage replaced
    by the billed figures: Anthropic's SDK takes `input_tokens` and `output_tokens` from it for the
    final message. An event it cannot read is returned as it came."""
    parsed = sse.parse_event(event.strip())
    try:
        data = json.loads(parsed.data)
    except ValueError:
        return event
    if not isinstance(data, dict):
        return event
    data["usage"] = {**(data["usage"] if isinstance(data.get("usage"), dict) else {}), **anthropic_usage(usage)}
    data["meterway"] = MARK
    return b"event: message_delta\ndata: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def message_start_with_usage(event: bytes) -> bytes:
    """An Anthropic `message_start` event (without its separator) that came without usage, given a
    zero one: Anthropic's SDKs build the final message on that object, and the billed figures are
    only known at the end, when `message_delta_with_usage` sets them. One it cannot read is returned
    as it came."""
    try:
        data = json.loads(sse.parse_event(event).data)
    except ValueError:
        return event
    message = data.get("message") if isinstance(data, dict) else None
    if not isinstance(message, dict) or message.get("usage") is not None:
        return event
    message["usage"] = {"input_tokens": 0, "output_tokens": 0}
    return b"event: message_start\ndata: " + json.dumps(data, separators=(",", ":")).encode()


def response_event_with_usage(closing: bytes, usage: Usage) -> bytes:
    """A Responses stream's closing bytes (its terminal event, `response.completed` or the like,
    held by the relay) with the billed figures as the Response's usage when it came without one,
    marked as counted. Closing bytes with no such event, or whose Response has its own usage, are
    returned as they came."""
    blocks = closing.split(b"\n\n")
    for i in reversed(range(len(blocks))):
        data = sse.parse_event(blocks[i].strip()).data
        if not data or b'"response"' not in data:
            continue
        try:
            event = json.loads(data)
        except ValueError:
            continue
        response = event.get("response") if isinstance(event, dict) else None
        if not isinstance(response, dict):
            continue
        if response.get("usage") is not None:
            return closing
        response["usage"] = responses_usage(usage)
        event["meterway"] = MARK
        name = str(event.get("type") or "message").encode()
        blocks[i] = b"event: " + name + b"\ndata: " + json.dumps(event, separators=(",", ":")).encode()
        return b"\n\n".join(blocks)
    return closing
