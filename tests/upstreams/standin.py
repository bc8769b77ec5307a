"""A stand-in upstream LLM provider for meterway's end-to-end tests.

`StandIn` runs a small aiohttp server on a free loopback port, in a background thread with its own
event loop.  It speaks the OpenAI wire format (chat completions, legacy completions, embeddings,
models; also under the Azure ``/openai/deployments/{deployment}/...`` URL shape) and the Anthropic
Messages format, answers deterministically, records every request it receives, and can be scripted
to fail, stall, break a stream half-way or drop the connection.

Deterministic answers (see the module-level helpers, which tests may use to compute expectations):

* reply text: ``reply_for(<text of the last user message>)``; asked for JSON (chat's
  ``response_format``, the Responses API's ``text.format``, Gemini's ``responseMimeType``, Cohere's
  ``response_format``), ``json_answer(<the schema sent, if any>, <that text>)`` as JSON text: the
  schema's ``structured_answer``, else ``{"answer": <that text>}``;
* OpenAI ``prompt_tokens``: words of every message's text content + 3 per message;
* Anthropic ``input_tokens``: words of the system text + words of every message's text + 3 per message;
* ``completion_tokens`` / ``output_tokens``: ``count_words(reply)``; for a tool call
  ``count_words(tool name) + count_words(arguments JSON)``.
* Anthropic structured output (``output_config.format``, or the beta's ``output_format`` with its
  ``anthropic-beta`` header): refused as Anthropic refuses it (a model before Claude 4.5, an object not
  closed, a keyword it does not enforce), else answered with ``structured_answer(schema)`` as JSON text.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import json as jsonlib
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import orjson
from aiohttp import web

STANDIN_MODEL = "standin-model"
REPLY_PREFIX = "Hello from the stand-in. You said: "
ECHO_LIMIT = 40
PER_MESSAGE_TOKENS = 3
TOOL_CALL_ID = "call_standin_1"
TOOL_USE_ID = "toolu_standin_1"
TOOL_ARGUMENT_VALUE = "Paris"
CACHE_READ_TOKENS = 7
DEFAULT_EMBEDDING_DIMENSIONS = 8
MAX_EMBEDDING_DIMENSIONS = 4096
SYSTEM_FINGERPRINT = "fp_standin"
SSE_CONTENT_TYPE = "text/event-stream"
JSON_CONTENT_TYPE = "application/json"
HOST = "127.0.0.1"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
SHUTDOWN_GRACE_S = 1.0
CLIENT_MAX_SIZE = 64 * 1024 * 1024

STRUCTURED_OUTPUT_MODELS = (
    "claude-sonnet-4-5",
    "claude-opus-4-5",
    "claude-haiku-4-5",
    "claude-sonnet-4-6",
    "claude-opus-4-6",
    "claude-opus-4-7",
)
"""Models whose names start with one of these take `output_config.format`, as Anthropic lists them."""
STRUCTURED_OUTPUTS_BETA = "structured-outputs-2025-11-13"
STRUCTURED_STRING_FORMATS = (
    "date-time",
    "time",
    "date",
    "duration",
    "email",
    "hostname",
    "uri",
    "ipv4",
    "ipv6",
    "uuid",
)
STRUCTURED_UNSUPPORTED = (
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "pattern",
    "maxItems",
    "uniqueItems",
    "oneOf",
    "not",
    "if",
    "patternProperties",
)
"""JSON Schema keywords Anthropic's structured output refuses (its documented limits, as a 400)."""
FORMAT_SAMPLES = {
    "date-time": "2026-01-02T03:04:05Z",
    "time": "03:04:05",
    "date": "2026-01-02",
    "duration": "P1D",
    "email": "standin@example.com",
    "hostname": "example.com",
    "uri": "https://example.com/",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "uuid": "00000000-0000-4000-8000-000000000000",
}

OPENAI_PREFIXES = ("/v1", "/openai/v1", "/openai/deployments/{deployment}")
ANTHROPIC_PREFIXES = ("/v1", "/anthropic/v1")

Json = Any
Frame = tuple[str | None, Json]  # (SSE event name or None, data: JSON value or a raw string such as "[DONE]")


# --------------------------------------------------------------------------------------------------
# Deterministic helpers (public so tests can compute expected values)
# --------------------------------------------------------------------------------------------------


def count_words(text: str) -> int:
    """The stand-in's token count for a piece of text: whitespace-separated words."""
    return len(text.split())


def reply_for(user_text: str) -> str:
    """The reply text the stand-in gives to a conversation whose last user message is `user_text`."""
    return REPLY_PREFIX + user_text[:ECHO_LIMIT]


def tool_arguments(schema: Json) -> dict[str, Any]:
    """The arguments the stand-in "calls" a tool with: one value per required property, as
    `structured_answer` gives it (`TOOL_ARGUMENT_VALUE` for a plain or untyped string)."""
    required = schema.get("required") if isinstance(schema, Mapping) else None
    if not isinstance(required, list):
        return {}
    properties = schema.get("properties")
    typed = properties if isinstance(properties, Mapping) else {}
    defs = {**schema.get("definitions", {}), **schema.get("$defs", {})}
    return {str(name): structured_answer(typed.get(name) or {"type": "string"}, defs) for name in required}


def schema_in_prompt(texts: list[str]) -> Json:
    """The first JSON schema (an object with `properties`) written into the prompt, or None: what a
    model asked for "JSON" with the schema in its instructions (instructor's JSON mode) follows."""
    decoder = jsonlib.JSONDecoder()
    for text in texts:
        start = text.find("{")
        while start != -1:
            try:
                value, _ = decoder.raw_decode(text, start)
            except ValueError:
                value = None
            if isinstance(value, dict) and isinstance(value.get("properties"), dict):
                return value
            start = text.find("{", start + 1)
    return None


def tool_arguments_json(schema: Json) -> str:
    """`tool_arguments` serialised as the OpenAI `arguments` string, e.g. '{"location": "Paris"}'."""
    return jsonlib.dumps(tool_arguments(schema))


def structured_answer(schema: Json, definitions: Mapping[str, Json] | None = None) -> Json:
    """The value the stand-in answers a structured-output request with: the first choice of every
    `enum`/`const`/`anyOf`, each required property of an object, one item per array, `TOOL_ARGUMENT_VALUE`
    for a plain string (a sample for a string `format`), 1 for an integer, 1.5 for a number."""
    defs = definitions if definitions is not None else {**schema.get("definitions", {}), **schema.get("$defs", {})}
    if "$ref" in schema:
        return structured_answer(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for combinator in ("anyOf", "allOf"):
        if schema.get(combinator):
            return structured_answer(schema[combinator][0], defs)
    kind = schema.get("type")
    if kind == "object":
        properties = schema.get("properties", {})
        return {
            name: structured_answer(properties.get(name, {"type": "string"}), defs)
            for name in schema.get("required", [])
        }
    if kind == "array":
        return [structured_answer(schema.get("items", {"type": "string"}), defs)]
    samples: dict[str, Json] = {"integer": 1, "number": 1.5, "boolean": True, "null": None}
    if kind in samples:
        return samples[kind]
    return FORMAT_SAMPLES.get(schema.get("format", ""), TOOL_ARGUMENT_VALUE)


def json_answer(schema: Json, text: str) -> Json:
    """What the stand-in answers a request for JSON with: `structured_answer` of the schema sent,
    or, with no schema (JSON mode), `{"answer": text}`."""
    return structured_answer(schema) if isinstance(schema, dict) else {"answer": text}


def embedding_for(item: str | list[int], dimensions: int = DEFAULT_EMBEDDING_DIMENSIONS) -> list[float]:
    """The deterministic embedding of one input (a string or a token array).

    Every component is k/128 for an integer k in [-128, 127], so it is exactly representable as a
    float32 and the float and base64 encodings carry identical values.
    """
    if isinstance(item, str):
        seed = b"s:" + item.encode("utf-8")
    else:
        seed = b"t:" + ",".join(str(token) for token in item).encode("ascii")
    raw = b""
    block = 0
    while len(raw) < dimensions:
        raw += hashlib.sha256(seed + block.to_bytes(4, "little")).digest()
        block += 1
    return [(byte - 128) / 128 for byte in raw[:dimensions]]


def encode_embedding_base64(vector: list[float]) -> str:
    """OpenAI's `encoding_format: "base64"`: base64 of the little-endian float32 bytes."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def decode_embedding_base64(data: str) -> list[float]:
    raw = base64.b64decode(data)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


# --------------------------------------------------------------------------------------------------
# Records and scripts
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Script:
    """Scripted behaviour for one request.

    Applied in this order: wait `delay` seconds; then `drop` the connection without answering; else
    answer `status` with `body` (a dict is sent as JSON, bytes as-is) and `headers`; else answer
    normally, but if `break_after` is set abort the connection after that many SSE events (a
    non-streaming answer is cut half-way through its body instead).  `path`, if set, restricts the
    script to requests whose path contains that string (other requests skip over it).
    """

    status: int | None = None
    body: Mapping[str, Any] | bytes | None = None
    headers: Mapping[str, str] | None = None
    delay: float = 0.0
    break_after: int | None = None
    drop: bool = False
    path: str | None = None
    # answer without usage, even when the request asks for it: OpenAI chat and embeddings, Anthropic
    # messages (no usage in message_start, message_delta or the body), Cohere and Gemini (ProviderStandIn)
    no_usage: bool = False
    event_gap: float = 0.0  # seconds between a stream's events (a stream still going when a test acts)
    # Misbehaviours of a buggy or hostile upstream (OpenAI chat and Anthropic messages):
    usage_raw: bytes | None = None  # the answer's `usage` value, as these JSON bytes (b'{"prompt_tokens": -5}')
    pretty: bool = False  # JSON written with spaces everywhere: an indented body, `"usage" : {` in events
    endless_event: int = 0  # a stream that sends this many bytes of one event and never ends it
    long_stream: int = 0  # a stream of about this many bytes of content events, without usage
    long_text: str = "lorem ipsum dolor sit amet "  # the content of each of those events
    huge_body: int = 0  # a 200 JSON answer of this many bytes, written as it is made (never held whole)
    after_done: int = 0  # a stream that goes on writing events, this many bytes, after its final event
    # OpenAI chat stream asked for usage, answered as LiteLLM and some servers do: the usage in the
    # finish_reason chunk, beside its choice, and no usage-only chunk after it
    usage_in_last_choice: bool = False

    def applies_to(self, path: str) -> bool:
        return self.path is None or self.path in path


@dataclass
class Received:
    """One request as the stand-in received it, plus what it answered."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes
    json: Any | None  # parsed body, None if empty or not JSON
    deployment: str | None = None  # Azure route's {deployment}
    script: Script | None = None  # the script consumed by this request, if any
    status: int | None = None  # status answered; None if the connection was dropped
    response: Any | None = None  # JSON body answered (non-streaming answers and errors)
    events: list[Any] = field(default_factory=list)  # data of each SSE event written (not "[DONE]")
    usage: dict[str, Any] | None = None  # usage of the answer (also for streams that did not report it)
    completed: bool = False  # the whole answer was handed to the transport
    written_after_done: int = 0  # bytes a stream wrote after its final event (`Script.after_done`)

    @property
    def api_version(self) -> str | None:
        """Azure's `api-version` query parameter, if present."""
        return self.query.get("api-version")

    @property
    def credential(self) -> str | None:
        """The key the caller presented: `x-api-key`, `api-key`, `x-goog-api-key` or the bearer token."""
        for name in ("x-api-key", "api-key", "x-goog-api-key"):
            if self.headers.get(name):
                return self.headers[name]
        auth = self.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            return auth[7:].strip() or None
        return None

    @property
    def stream(self) -> bool:
        return isinstance(self.json, dict) and self.json.get("stream") is True


@dataclass
class _Call:
    request: web.Request
    record: Received
    script: Script | None
    payload: dict[str, Any]
    json_error: str | None


# --------------------------------------------------------------------------------------------------
# Payload helpers
# --------------------------------------------------------------------------------------------------


def _dumps(value: Json) -> bytes:
    return orjson.dumps(value)


_USAGE_SLOT = "__standin_usage__"


def _scripted_json(value: Json, script: Script | None, *, event: bool) -> bytes:
    """A JSON answer or event as a misbehaving script writes it: its `usage` (where it has one,
    also nested in Anthropic's message_start) replaced by `usage_raw`, and/or written with spaces
    around every colon and comma (`pretty`: indented too, for a whole body)."""
    if script is None or (script.usage_raw is None and not script.pretty):
        return _dumps(value)
    if script.usage_raw is not None and isinstance(value, dict):
        if isinstance(value.get("usage"), dict):
            value = {**value, "usage": _USAGE_SLOT}
        for key in ("message", "response"):  # Anthropic's message_start; a Responses event
            nested = value.get(key)
            if isinstance(nested, dict) and isinstance(nested.get("usage"), dict):
                value = {**value, key: {**nested, "usage": _USAGE_SLOT}}
    if script.pretty:
        raw = (
            jsonlib.dumps(value, separators=(" , ", " : "))
            if event
            else jsonlib.dumps(value, indent=2, separators=(",", " : "))
        ).encode()
    else:
        raw = _dumps(value)
    if script.usage_raw is not None:
        raw = raw.replace(f'"{_USAGE_SLOT}"'.encode(), script.usage_raw)
    return raw


def _pieces(text: str) -> list[str]:
    """Split text into per-word stream fragments that concatenate back to exactly `text`."""
    words = text.split(" ")
    return [words[0], *(" " + word for word in words[1:])]


def _halves(text: str) -> list[str]:
    middle = len(text) // 2
    return [text[:middle], text[middle:]]


def _openai_text(content: Json) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            part["text"]
            for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        ]
        return " ".join(parts)
    return ""


def _anthropic_text(content: Json) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    parts: list[str] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            parts.append(block["text"])
        elif block.get("type") == "tool_result":
            parts.append(_anthropic_text(block.get("content")))
    return " ".join(part for part in parts if part)


def _has_cache_control(value: Json) -> bool:
    if isinstance(value, dict):
        return "cache_control" in value or any(_has_cache_control(item) for item in value.values())
    if isinstance(value, list):
        return any(_has_cache_control(item) for item in value)
    return False


def _last_user_text(messages: list[Any], text_of: Callable[[Json], str]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return text_of(message.get("content"))
    return ""


def _pick_openai_tool(payload: dict[str, Any]) -> tuple[str, str] | None:
    """(name, arguments JSON) of the tool to call, or None to answer with text."""
    tools = payload.get("tools")
    choice = payload.get("tool_choice")
    if not isinstance(tools, list) or not tools or choice == "none":
        return None
    functions = [
        tool["function"] for tool in tools if isinstance(tool, dict) and isinstance(tool.get("function"), dict)
    ]
    if not functions:
        return None
    chosen = functions[0]
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        wanted = choice["function"].get("name")
        chosen = next((fn for fn in functions if fn.get("name") == wanted), chosen)
    return str(chosen.get("name", "")), tool_arguments_json(chosen.get("parameters"))


def _pick_anthropic_tool(payload: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    tools = payload.get("tools")
    choice = payload.get("tool_choice")
    if not isinstance(tools, list) or not tools:
        return None
    if isinstance(choice, dict) and choice.get("type") == "none":
        return None
    named = [tool for tool in tools if isinstance(tool, dict) and isinstance(tool.get("name"), str)]
    if not named:
        return None
    chosen = named[0]
    if isinstance(choice, dict) and choice.get("type") == "tool":
        chosen = next((tool for tool in named if tool["name"] == choice.get("name")), chosen)
    schema = chosen.get("input_schema")
    if isinstance(schema, dict) and "properties" not in schema:  # an open object: the prompt says what goes in
        messages = [m for m in payload.get("messages", []) if isinstance(m, dict)]
        texts = [_anthropic_text(payload.get("system")), *(_anthropic_text(m.get("content")) for m in messages)]
        schema = schema_in_prompt(texts) or schema
    return chosen["name"], tool_arguments(schema)


def _thinking_refusal(payload: dict[str, Any], max_tokens: int) -> str | None:
    """Anthropic's own checks on extended thinking, so a translation that breaks them fails here too."""
    thinking = payload.get("thinking")
    if not isinstance(thinking, dict) or thinking.get("type") != "enabled":
        return None
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or budget < 1024:
        return "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
    if budget >= max_tokens:
        return "`max_tokens` must be greater than `thinking.budget_tokens`"
    choice = payload.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") in ("any", "tool"):
        return "Thinking may not be enabled when tool_choice forces tool use."
    return None


def _structured_schema_refusal(schema: Json, where: str = "schema") -> str | None:
    """Anthropic's limits on a structured-output schema, checked as its API checks them."""
    if isinstance(schema, list):
        for i, item in enumerate(schema):
            if (refusal := _structured_schema_refusal(item, f"{where}[{i}]")) is not None:
                return refusal
        return None
    if not isinstance(schema, dict):
        return None
    for keyword in STRUCTURED_UNSUPPORTED:
        if keyword in schema:
            return f"output_config.format.{where}: '{keyword}' is not supported"
    if schema.get("minItems", 0) not in (0, 1):
        return f"output_config.format.{where}: minItems values other than 0 or 1 are not supported"
    if schema.get("type") == "string" and "format" in schema and schema["format"] not in STRUCTURED_STRING_FORMATS:
        return f"output_config.format.{where}: string format {schema['format']!r} is not supported"
    if schema.get("type") == "object" and schema.get("additionalProperties") is not False:
        return (
            f"output_config.format.{where}: For 'object' type, 'additionalProperties' must be explicitly set to false"
        )
    for key, value in schema.items():
        if key in ("properties", "$defs", "definitions") and isinstance(value, dict):
            for name, sub in value.items():
                if (refusal := _structured_schema_refusal(sub, f"{where}.{key}.{name}")) is not None:
                    return refusal
        elif key in ("items", "anyOf", "allOf") and (refusal := _structured_schema_refusal(value, f"{where}.{key}")):
            return refusal
    return None


def _output_format(payload: dict[str, Any], headers: Mapping[str, str]) -> tuple[Json, str | None]:
    """(the schema the answer must follow or None, a refusal): `output_config.format`, or the beta's
    `output_format`, which Anthropic refuses as an unknown field unless the beta header names it."""
    found = (
        (payload.get("output_config") or {}).get("format") if isinstance(payload.get("output_config"), dict) else None
    )
    if "output_format" in payload:
        betas = [b.strip() for b in headers.get("anthropic-beta", "").split(",")]
        if STRUCTURED_OUTPUTS_BETA not in betas:
            return None, "output_format: Extra inputs are not permitted"
        found = payload["output_format"]
    if found is None:
        return None, None
    model = str(payload.get("model"))
    if not model.startswith(STRUCTURED_OUTPUT_MODELS):
        return None, f"'{model}' does not support structured outputs (output_config.format)"
    if not isinstance(found, dict) or found.get("type") != "json_schema" or not isinstance(found.get("schema"), dict):
        return None, "output_config.format: expected {'type': 'json_schema', 'schema': {...}}"
    if (refusal := _structured_schema_refusal(found["schema"])) is not None:
        return None, refusal
    return found["schema"], None


def _is_int_list(value: Json) -> bool:
    return isinstance(value, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in value)


def _prompts(prompt: Json) -> list[tuple[str, int]] | None:
    """Legacy completions `prompt` -> [(text echoed in the reply, prompt tokens)], or None if invalid."""
    if isinstance(prompt, str):
        return [(prompt, count_words(prompt))]
    if not isinstance(prompt, list) or not prompt:
        return None
    if all(isinstance(item, str) for item in prompt):
        return [(item, count_words(item)) for item in prompt]
    if _is_int_list(prompt):
        return [(" ".join(map(str, prompt)), len(prompt))]
    if all(_is_int_list(item) and item for item in prompt):
        return [(" ".join(map(str, item)), len(item)) for item in prompt]
    return None


def _embedding_inputs(value: Json) -> list[str | list[int]] | None:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(item, str) for item in value):
        return list(value)
    if _is_int_list(value):
        return [list(value)]
    if all(_is_int_list(item) and item for item in value):
        return [list(item) for item in value]
    return None


def _openai_usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _include_usage(payload: dict[str, Any]) -> bool:
    options = payload.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _headers_of(request: web.BaseRequest) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


def _has_bearer(headers: Mapping[str, str]) -> bool:
    auth = headers.get("authorization", "")
    return auth[:7].lower() == "bearer " and bool(auth[7:].strip())


def _abort(request: web.BaseRequest) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


# --------------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------------


class StandIn:
    """A scripted, recording OpenAI/Anthropic stand-in on 127.0.0.1:<free port>."""

    speaks_responses = True  # OpenAI's Responses API (`tests.upstreams.responses`); a chat-only server: 404

    def __init__(self) -> None:
        # imported here: that module builds on this one's helpers
        from tests.upstreams.responses import ResponsesApi

        self.responses = ResponsesApi(self)
        self.host = HOST
        self.port = 0
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._scripts: deque[Script] = deque()
        self._default: Script | None = None
        self._ids = itertools.count(1)
        self._request_ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None
        self._start_error: BaseException | None = None

    # ---- lifecycle -----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if not self.port:
            raise RuntimeError("StandIn is not started")
        return f"http://{self.host}:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def start(self) -> StandIn:
        if self._thread is not None:
            raise RuntimeError("StandIn already started")
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="standin-upstream", daemon=True)
        self._thread.start()
        if not ready.wait(START_TIMEOUT_S):
            raise RuntimeError("StandIn did not start in time")
        if self._start_error is not None:
            self._thread.join(STOP_TIMEOUT_S)
            self._thread = None
            raise RuntimeError("StandIn failed to start") from self._start_error
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(STOP_TIMEOUT_S)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(STOP_TIMEOUT_S)
            self._thread = None
            self._loop = None
            self.port = 0

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self, ready: threading.Event) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            try:
                loop.run_until_complete(self._startup())
            except BaseException as exc:
                self._start_error = exc
                ready.set()
                return
            ready.set()
            loop.run_forever()
            pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()

    async def _startup(self) -> None:
        self._stopping = asyncio.Event()
        runner = web.AppRunner(
            self._build_app(), access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE_S
        )
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, 0))
            site = web.SockSite(runner, sock)
            await site.start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = sock.getsockname()[1]

    async def _shutdown(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ---- records ---------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget received requests, queued scripts and the default script."""
        with self._lock:
            self.received.clear()
            self._scripts.clear()
            self._default = None

    def wait_for_received(self, count: int, timeout: float = 5.0) -> list[Received]:
        """Block until at least `count` requests have arrived; returns a snapshot of `received`."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self.received) >= count, timeout):
                raise AssertionError(f"stand-in received {len(self.received)} requests, expected {count}")
            return list(self.received)

    def received_for(self, path_suffix: str) -> list[Received]:
        """Received requests whose path ends with `path_suffix` (e.g. "/chat/completions")."""
        with self._lock:
            return [record for record in self.received if record.path.endswith(path_suffix)]

    @property
    def last(self) -> Received:
        with self._lock:
            if not self.received:
                raise AssertionError("stand-in received no requests")
            return self.received[-1]

    def _add_received(self, record: Received) -> None:
        with self._arrived:
            self.received.append(record)
            self._arrived.notify_all()

    # ---- scripts ---------------------------------------------------------------------------------

    def script(self, item: Script, times: int = 1) -> None:
        """Queue `item` for the next `times` (matching) requests."""
        with self._lock:
            self._scripts.extend([item] * times)

    def set_default(self, item: Script | None) -> None:
        """Behaviour for requests that find no queued script (None: answer normally)."""
        with self._lock:
            self._default = item

    @property
    def pending_scripts(self) -> int:
        with self._lock:
            return len(self._scripts)

    def script_fail(
        self,
        status: int,
        body: Mapping[str, Any] | bytes,
        headers: Mapping[str, str] | None = None,
        *,
        path: str | None = None,
        times: int = 1,
    ) -> None:
        self.script(Script(status=status, body=body, headers=headers, path=path), times)

    def script_delay(self, seconds: float, *, path: str | None = None, times: int = 1) -> None:
        self.script(Script(delay=seconds, path=path), times)

    def script_break_stream(self, n_events: int, *, path: str | None = None, times: int = 1) -> None:
        self.script(Script(break_after=n_events, path=path), times)

    def script_drop(self, *, path: str | None = None, times: int = 1) -> None:
        self.script(Script(drop=True, path=path), times)

    def _take_script(self, path: str) -> Script | None:
        with self._lock:
            for index, item in enumerate(self._scripts):
                if item.applies_to(path):
                    del self._scripts[index]
                    return item
            if self._default is not None and self._default.applies_to(path):
                return self._default
            return None

    # ---- app ---------------------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=CLIENT_MAX_SIZE)
        self._add_routes(app.router)
        app.router.add_route("*", "/{tail:.*}", self._route(self._not_found))
        return app

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        """The routes this stand-in answers (a subclass adds its own formats' before these)."""
        if self.speaks_responses:
            self.responses.add_routes(router)
        for prefix in OPENAI_PREFIXES:
            router.add_post(f"{prefix}/chat/completions", self._route(self._chat))
            router.add_post(f"{prefix}/completions", self._route(self._completions))
            router.add_post(f"{prefix}/embeddings", self._route(self._embeddings))
        for prefix in ("/v1", "/openai/v1"):
            router.add_get(f"{prefix}/models", self._route(self._models))
            router.add_get(f"{prefix}/models/{{model}}", self._route(self._model))
        for prefix in ANTHROPIC_PREFIXES:
            router.add_post(f"{prefix}/messages", self._route(self._messages))
            router.add_post(f"{prefix}/messages/count_tokens", self._route(self._count_tokens))

    def _route(
        self, handler: Callable[[_Call], Awaitable[web.StreamResponse]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def serve(request: web.Request) -> web.StreamResponse:
            return await self._serve(request, handler)

        return serve

    async def _serve(
        self, request: web.Request, handler: Callable[[_Call], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        body = await request.read()
        parsed: Json = None
        json_error: str | None = None
        if body:
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                json_error = str(exc)
        script = self._take_script(request.path)
        record = Received(
            method=request.method,
            path=request.path,
            query={key: value for key, value in request.query.items()},
            headers=_headers_of(request),
            body=body,
            json=parsed,
            deployment=request.match_info.get("deployment"),
            script=script,
        )
        self._add_received(record)
        if json_error is None and body and not isinstance(parsed, dict):
            json_error = "the request body must be a JSON object"
        call = _Call(request, record, script, parsed if isinstance(parsed, dict) else {}, json_error)
        if script is not None:
            if script.delay > 0:
                await self._pause(script.delay)
            if script.drop:
                _abort(request)
                return web.Response()
            if script.status is not None:
                return self._scripted(call, script)
        if self._stopping is not None and self._stopping.is_set():
            _abort(request)
            return web.Response()
        return await handler(call)

    async def _pause(self, seconds: float) -> None:
        assert self._stopping is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    def _scripted(self, call: _Call, script: Script) -> web.StreamResponse:
        status = script.status
        assert status is not None
        headers = dict(script.headers or {})
        if isinstance(script.body, bytes | bytearray):
            raw = bytes(script.body)
            try:
                call.record.response = orjson.loads(raw)
                default_type = JSON_CONTENT_TYPE
            except orjson.JSONDecodeError:
                default_type = "text/plain; charset=utf-8"
        else:
            call.record.response = dict(script.body or {})
            raw = _dumps(call.record.response)
            default_type = JSON_CONTENT_TYPE
        if not any(name.lower() == "content-type" for name in headers):
            headers["Content-Type"] = default_type
        call.record.status = status
        call.record.completed = True
        return web.Response(status=status, body=raw, headers=headers)

    # ---- response writers ------------------------------------------------------------------------

    async def _json(
        self,
        call: _Call,
        body: Json,
        *,
        status: int = 200,
        usage: dict[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> web.StreamResponse:
        raw = _scripted_json(body, call.script if status == 200 else None, event=False)
        record = call.record
        record.status, record.response, record.usage = status, body, usage
        script = call.script
        if status == 200 and script is not None and script.break_after is not None:
            partial = web.StreamResponse(status=status, headers=headers)
            partial.content_type = JSON_CONTENT_TYPE
            partial.content_length = len(raw)
            try:
                await partial.prepare(call.request)
                await partial.write(raw[: len(raw) // 2])
            except ConnectionError:
                pass
            _abort(call.request)
            return partial
        record.completed = True
        return web.Response(status=status, body=raw, content_type=JSON_CONTENT_TYPE, headers=headers)

    async def _generated(self, call: _Call, script: Script, model: str) -> web.StreamResponse:
        """Answers made as they are written, never held whole: an endless event, a long stream
        without usage, a huge body. Bounded by their sizes; stops when the reader leaves."""
        record = call.record
        record.status = 200
        response = web.StreamResponse(status=200)
        response.content_type = JSON_CONTENT_TYPE if script.huge_body else SSE_CONTENT_TYPE
        try:
            await response.prepare(call.request)
            if script.long_stream:  # content events first (then the endless event, if one is scripted too)
                head = {"id": "chatcmpl-long", "object": "chat.completion.chunk", "created": 0, "model": model}
                text = script.long_text
                event = f"data: {_dumps({**head, 'choices': [{'index': 0, 'delta': {'content': text}}]}).decode()}\n\n"
                batch = (event * max(1, 65536 // len(event))).encode()
                for _ in range(max(1, script.long_stream // len(batch))):
                    await response.write(batch)
                if not script.endless_event:
                    stop = {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
                    await response.write(f"data: {_dumps(stop).decode()}\n\ndata: [DONE]\n\n".encode())
            if script.endless_event:
                await response.write(b'data: {"id":"chatcmpl-endless","choices":[{"index":0,"delta":{"content":"')
                piece = b"x" * 65536
                for _ in range(script.endless_event // len(piece)):
                    await response.write(piece)
                _abort(call.request)  # it never ended its event: the connection just goes
                return response
            if script.huge_body:
                await response.write(b'{"id":"chatcmpl-huge","object":"chat.completion","choices":[{"index":0,')
                await response.write(b'"message":{"role":"assistant","content":"')
                piece = b"y" * 65536
                for _ in range(script.huge_body // len(piece)):
                    await response.write(piece)
                await response.write(b'"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1}}')
            record.completed = True
            await response.write_eof()
        except ConnectionError:
            record.completed = False
        return response

    async def _sse(
        self,
        call: _Call,
        frames: list[Frame],
        *,
        usage: dict[str, Any] | None,
        headers: Mapping[str, str] | None = None,
    ) -> web.StreamResponse:
        record = call.record
        record.status, record.usage = 200, usage
        response = web.StreamResponse(status=200, headers=headers)
        response.headers["Content-Type"] = SSE_CONTENT_TYPE
        response.headers["Cache-Control"] = "no-cache"
        limit = call.script.break_after if call.script is not None else None
        try:
            await response.prepare(call.request)
            for index, (event, data) in enumerate(frames):
                if limit is not None and index >= limit:
                    break
                text = data if isinstance(data, str) else _scripted_json(data, call.script, event=True).decode()
                prefix = f"event: {event}\n" if event else ""
                # Record before writing: the caller may act on this event before the write returns here.
                if not isinstance(data, str):
                    record.events.append(data)
                if limit is None and index == len(frames) - 1:
                    record.completed = True
                await response.write(f"{prefix}data: {text}\n\n".encode())
                await asyncio.sleep(call.script.event_gap if call.script is not None else 0)
            if limit is not None:
                _abort(call.request)
                return response
            extra = call.script.after_done if call.script is not None else 0
            junk = b'data: {"choices":[{"index":0,"delta":{"content":"after the end "}}]}\n\n' * 512
            while record.written_after_done < extra:
                await response.write(junk)
                record.written_after_done += len(junk)
                await asyncio.sleep(0.005)
            await response.write_eof()
        except ConnectionError:
            record.completed = False
        return response

    def _request_id(self) -> str:
        return f"req_standin_{next(self._request_ids)}"

    # ---- OpenAI ------------------------------------------------------------------------------------

    async def _openai_error(
        self,
        call: _Call,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> web.StreamResponse:
        body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
        return await self._json(call, body, status=status)

    async def _openai_guard(self, call: _Call, *, needs_body: bool = True) -> web.StreamResponse | None:
        headers = call.record.headers
        if not _has_bearer(headers) and not headers.get("api-key"):
            return await self._openai_error(
                call,
                401,
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        if needs_body and (call.json_error is not None or not call.record.body):
            detail = call.json_error or "the request body is empty"
            return await self._openai_error(
                call, 400, f"We could not parse the JSON body of your request. ({detail})", code="invalid_json"
            )
        return None

    def _openai_model(self, call: _Call) -> str:
        model = call.payload.get("model")
        if isinstance(model, str) and model:
            return model
        return call.record.deployment or STANDIN_MODEL

    def _openai_headers(self) -> dict[str, str]:
        return {"x-request-id": self._request_id(), "openai-processing-ms": "1"}

    async def _chat(self, call: _Call) -> web.StreamResponse:
        if (error := await self._openai_guard(call)) is not None:
            return error
        payload = call.payload
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages:
            return await self._openai_error(call, 400, "'messages' is a required property", param="messages")
        model = self._openai_model(call)
        prompt_tokens = sum(
            count_words(_openai_text(message.get("content"))) + PER_MESSAGE_TOKENS
            for message in messages
            if isinstance(message, dict)
        )
        tool = _pick_openai_tool(payload)
        content: str | None
        if tool is not None:
            content, finish_reason = None, "tool_calls"
            completion_tokens = count_words(tool[0]) + count_words(tool[1])
        else:
            content, finish_reason = reply_for(_last_user_text(messages, _openai_text)), "stop"
            response_format = payload.get("response_format")
            schema = (
                (response_format.get("json_schema") or {}).get("schema") if isinstance(response_format, dict) else None
            )
            if isinstance(schema, dict):
                content = jsonlib.dumps(structured_answer(schema))  # what OpenAI's structured outputs guarantee
            elif isinstance(response_format, dict) and response_format.get("type") in ("json_object", "json_schema"):
                content = jsonlib.dumps({"answer": content})
            completion_tokens = count_words(content)
        usage = _openai_usage(prompt_tokens, completion_tokens)
        completion_id = f"chatcmpl-standin-{next(self._ids)}"
        created = int(time.time())
        headers = self._openai_headers()
        no_usage = call.script is not None and call.script.no_usage
        script = call.script
        if script is not None and (script.endless_event or script.long_stream or script.huge_body):
            return await self._generated(call, script, model)

        if payload.get("stream") is True:
            include_usage = _include_usage(payload) and not no_usage

            def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
                data: dict[str, Any] = {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "system_fingerprint": SYSTEM_FINGERPRINT,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                }
                if include_usage:
                    data["usage"] = None
                return data

            frames: list[Frame] = [(None, chunk({"role": "assistant", "content": "" if tool is None else None}))]
            if tool is not None:
                name, arguments = tool
                first = {
                    "index": 0,
                    "id": TOOL_CALL_ID,
                    "type": "function",
                    "function": {"name": name, "arguments": ""},
                }
                frames.append((None, chunk({"tool_calls": [first]})))
                for fragment in _halves(arguments):
                    frames.append((None, chunk({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]})))
            else:
                assert content is not None
                frames.extend((None, chunk({"content": piece})) for piece in _pieces(content))
            last_choice = include_usage and script is not None and script.usage_in_last_choice
            frames.append(
                (None, {**chunk({}, finish_reason), "usage": usage} if last_choice else chunk({}, finish_reason))
            )
            if include_usage and not last_choice:
                final = {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "system_fingerprint": SYSTEM_FINGERPRINT,
                    "choices": [],
                    "usage": usage,
                }
                frames.append((None, final))
            frames.append((None, "[DONE]"))
            return await self._sse(call, frames, usage=usage, headers=headers)

        message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None, "annotations": []}
        if tool is not None:
            message["tool_calls"] = [
                {"id": TOOL_CALL_ID, "type": "function", "function": {"name": tool[0], "arguments": tool[1]}}
            ]
        body = {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
            "usage": usage,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        if no_usage:
            del body["usage"]
        return await self._json(call, body, usage=usage, headers=headers)

    async def _completions(self, call: _Call) -> web.StreamResponse:
        if (error := await self._openai_guard(call)) is not None:
            return error
        payload = call.payload
        prompts = _prompts(payload.get("prompt"))
        if prompts is None:
            return await self._openai_error(
                call, 400, "'prompt' must be a string, an array of strings or an array of tokens", param="prompt"
            )
        model = self._openai_model(call)
        replies = [reply_for(text) for text, _ in prompts]
        prompt_tokens = sum(tokens for _, tokens in prompts)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": sum(count_words(reply) for reply in replies),
            "total_tokens": prompt_tokens + sum(count_words(reply) for reply in replies),
        }
        completion_id = f"cmpl-standin-{next(self._ids)}"
        created = int(time.time())
        headers = self._openai_headers()

        def envelope(choices: list[dict[str, Any]]) -> dict[str, Any]:
            return {
                "id": completion_id,
                "object": "text_completion",
                "created": created,
                "model": model,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": choices,
            }

        if payload.get("stream") is True:
            include_usage = _include_usage(payload)

            def chunk(index: int, text: str, finish: str | None = None) -> dict[str, Any]:
                data = envelope([{"text": text, "index": index, "logprobs": None, "finish_reason": finish}])
                if include_usage:
                    data["usage"] = None
                return data

            frames: list[Frame] = []
            for index, reply in enumerate(replies):
                frames.extend((None, chunk(index, piece)) for piece in _pieces(reply))
                frames.append((None, chunk(index, "", "stop")))
            if include_usage:
                frames.append((None, {**envelope([]), "usage": usage}))
            frames.append((None, "[DONE]"))
            return await self._sse(call, frames, usage=usage, headers=headers)

        choices = [
            {"text": reply, "index": index, "logprobs": None, "finish_reason": "stop"}
            for index, reply in enumerate(replies)
        ]
        return await self._json(call, {**envelope(choices), "usage": usage}, usage=usage, headers=headers)

    async def _embeddings(self, call: _Call) -> web.StreamResponse:
        if (error := await self._openai_guard(call)) is not None:
            return error
        payload = call.payload
        inputs = _embedding_inputs(payload.get("input"))
        if inputs is None:
            return await self._openai_error(
                call,
                400,
                "'input' must be a string, an array of strings, an array of tokens or an array of token arrays",
                param="input",
            )
        dimensions = payload.get("dimensions", DEFAULT_EMBEDDING_DIMENSIONS)
        if (
            not isinstance(dimensions, int)
            or isinstance(dimensions, bool)
            or not 1 <= dimensions <= MAX_EMBEDDING_DIMENSIONS
        ):
            return await self._openai_error(call, 400, "'dimensions' must be a positive integer", param="dimensions")
        encoding = payload.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            return await self._openai_error(
                call, 400, "'encoding_format' must be 'float' or 'base64'", param="encoding_format"
            )
        data = []
        for index, item in enumerate(inputs):
            vector = embedding_for(item, dimensions)
            embedding: list[float] | str = encode_embedding_base64(vector) if encoding == "base64" else vector
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = sum(count_words(item) if isinstance(item, str) else len(item) for item in inputs)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        body = {"object": "list", "data": data, "model": self._openai_model(call), "usage": usage}
        if call.script is not None and call.script.no_usage:
            del body["usage"]
        return await self._json(call, body, usage=usage, headers=self._openai_headers())

    def _model_ids(self) -> list[str]:
        ids = [STANDIN_MODEL]
        with self._lock:
            records = list(self.received)
        for record in records:
            model = record.json.get("model") if isinstance(record.json, dict) else None
            if isinstance(model, str) and model and model not in ids:
                ids.append(model)
        return ids

    @staticmethod
    def _model_object(model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": 1700000000, "owned_by": "standin"}

    async def _models(self, call: _Call) -> web.StreamResponse:
        if (error := await self._openai_guard(call, needs_body=False)) is not None:
            return error
        body = {"object": "list", "data": [self._model_object(model_id) for model_id in self._model_ids()]}
        return await self._json(call, body, headers=self._openai_headers())

    async def _model(self, call: _Call) -> web.StreamResponse:
        if (error := await self._openai_guard(call, needs_body=False)) is not None:
            return error
        model_id = call.request.match_info["model"]
        return await self._json(call, self._model_object(model_id), headers=self._openai_headers())

    async def _not_found(self, call: _Call) -> web.StreamResponse:
        message = f"The stand-in has no route for {call.request.method} {call.request.path}"
        if call.request.path.startswith("/anthropic"):
            return await self._anthropic_error(call, 404, "not_found_error", message)
        return await self._openai_error(call, 404, message, code="unknown_url")

    # ---- Anthropic ---------------------------------------------------------------------------------

    async def _anthropic_error(self, call: _Call, status: int, error_type: str, message: str) -> web.StreamResponse:
        body = {"type": "error", "error": {"type": error_type, "message": message}}
        return await self._json(call, body, status=status, headers={"request-id": self._request_id()})

    async def _anthropic_guard(self, call: _Call) -> web.StreamResponse | None:
        headers = call.record.headers
        # Anthropic keys arrive as `x-api-key`; recent `anthropic` SDKs send them as `Authorization: Bearer`.
        if not headers.get("x-api-key") and not _has_bearer(headers):
            return await self._anthropic_error(call, 401, "authentication_error", "x-api-key header is required")
        if not headers.get("anthropic-version"):
            return await self._anthropic_error(
                call, 400, "invalid_request_error", "anthropic-version: header is required"
            )
        if call.json_error is not None or not call.record.body:
            detail = call.json_error or "empty body"
            return await self._anthropic_error(call, 400, "invalid_request_error", f"invalid JSON body: {detail}")
        payload = call.payload
        if not isinstance(payload.get("model"), str) or not payload["model"]:
            return await self._anthropic_error(call, 400, "invalid_request_error", "model: Field required")
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages:
            return await self._anthropic_error(call, 400, "invalid_request_error", "messages: Field required")
        return None

    @staticmethod
    def _anthropic_input_tokens(payload: dict[str, Any]) -> int:
        messages = [message for message in payload.get("messages", []) if isinstance(message, dict)]
        system_tokens = count_words(_anthropic_text(payload.get("system")))
        return system_tokens + sum(
            count_words(_anthropic_text(message.get("content"))) + PER_MESSAGE_TOKENS for message in messages
        )

    async def _count_tokens(self, call: _Call) -> web.StreamResponse:
        if (error := await self._anthropic_guard(call)) is not None:
            return error
        body = {"input_tokens": self._anthropic_input_tokens(call.payload)}
        return await self._json(call, body, headers={"request-id": self._request_id()})

    async def _messages(self, call: _Call) -> web.StreamResponse:
        if (error := await self._anthropic_guard(call)) is not None:
            return error
        return await self._messages_answer(call)

    async def _messages_answer(self, call: _Call) -> web.StreamResponse:
        """A Messages answer once the request passed its guard (Anthropic's here, Vertex's there)."""
        payload = call.payload
        max_tokens = payload.get("max_tokens")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
            return await self._anthropic_error(call, 400, "invalid_request_error", "max_tokens: Field required")
        if (refusal := _thinking_refusal(payload, max_tokens)) is not None:
            return await self._anthropic_error(call, 400, "invalid_request_error", refusal)
        output_schema, refusal = _output_format(payload, call.record.headers)
        if refusal is not None:
            return await self._anthropic_error(call, 400, "invalid_request_error", refusal)
        model = payload["model"]
        messages = [message for message in payload["messages"] if isinstance(message, dict)]
        input_tokens = self._anthropic_input_tokens(payload)
        cached = _has_cache_control(payload.get("system")) or _has_cache_control(payload.get("messages"))
        cache_read = CACHE_READ_TOKENS if cached else 0
        tool = _pick_anthropic_tool(payload)
        block: dict[str, Any]
        if tool is not None:
            name, arguments = tool
            arguments_json = jsonlib.dumps(arguments)
            block = {"type": "tool_use", "id": TOOL_USE_ID, "name": name, "input": arguments}
            output_tokens = count_words(name) + count_words(arguments_json)
            stop_reason = "tool_use"
        else:
            if output_schema is not None:
                text = jsonlib.dumps(structured_answer(output_schema))
            else:
                text = reply_for(_last_user_text(messages, _anthropic_text))
            block = {"type": "text", "text": text}
            output_tokens = count_words(text)
            stop_reason = "end_turn"
        usage = {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_read_input_tokens": cache_read,
            "cache_creation_input_tokens": 0,
        }
        message_id = f"msg_standin_{next(self._ids)}"
        headers = {"request-id": self._request_id()}

        if payload.get("stream") is True:
            start_message = {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {**usage, "output_tokens": 1},
            }
            if tool is not None:
                start_block: dict[str, Any] = {**block, "input": {}}
                deltas = [{"type": "input_json_delta", "partial_json": part} for part in _halves(arguments_json)]
            else:
                start_block = {"type": "text", "text": ""}
                deltas = [{"type": "text_delta", "text": piece} for piece in _pieces(block["text"])]
            events: list[dict[str, Any]] = [
                {"type": "message_start", "message": start_message},
                {"type": "content_block_start", "index": 0, "content_block": start_block},
                {"type": "ping"},
                *({"type": "content_block_delta", "index": 0, "delta": delta} for delta in deltas),
                {"type": "content_block_stop", "index": 0},
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                    "usage": {"output_tokens": output_tokens},
                },
                {"type": "message_stop"},
            ]
            if call.script is not None and call.script.no_usage:
                del start_message["usage"], events[-2]["usage"]
            return await self._sse(call, [(event["type"], event) for event in events], usage=usage, headers=headers)

        body = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [block],
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage,
        }
        if call.script is not None and call.script.no_usage:
            del body["usage"]
        return await self._json(call, body, usage=usage, headers=headers)


class ChatOnlyStandIn(StandIn):
    """An OpenAI-compatible server that speaks chat but not the Responses API (vLLM, most local
    servers): `/v1/responses` is a 404, as theirs is."""

    speaks_responses = False
