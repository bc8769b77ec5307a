"""Translation between OpenAI Chat Completions and Anthropic Messages, both directions, as plain JSON dicts.

The gateway speaks both APIs to clients and to upstreams, so a chat client can reach a Claude deployment
and an Anthropic-SDK client (Claude Code and friends) can reach any OpenAI-compatible model. Everything
here is pure: dicts in, dicts out, no I/O and no module state, so each direction can be tested offline and
a stream translator is just an object the caller keeps for the life of one response.

Where the two APIs disagree the choices are:

* Anthropic has no system role inside the conversation, so every system/developer message, wherever it
  sits, is hoisted into the top-level ``system`` in order.
* Anthropic demands alternating roles, so consecutive messages of the same role are merged into one turn
  (which is also how several OpenAI ``tool`` messages become one user turn of ``tool_result`` blocks).
* Anthropic rejects empty text blocks, so empty text is dropped, and a turn left with nothing is dropped.
* Anthropic requires ``max_tokens``; :data:`DEFAULT_MAX_TOKENS` fills it when the chat client gave none.
* Parameters one side has no use for are dropped rather than forwarded, because both APIs reject unknown
  fields (an allow-list, not a deny-list, so a new OpenAI parameter cannot break Anthropic requests).
* Thinking blocks and server-tool blocks have no Chat Completions equivalent and are not surfaced.
* ``response_format`` ``json_schema`` becomes Anthropic's structured output (``output_config.format``) on the
  models that take it, with the schema adapted as Anthropic documents (:mod:`anthropic_schema`): the answer is
  then plain text, which is the content. Otherwise (older models, ``json_object``, a schema it cannot express)
  it becomes one extra tool, :data:`JSON_TOOL_NAME`, that the model is made to call; its input is the answer,
  so the reply hands it back as the message content with finish reason ``stop``. The name is reserved, which
  lets the reply be translated without the request.
* ``reasoning_effort`` becomes extended thinking with the budget in :data:`THINKING_BUDGETS`; OpenAI counts
  reasoning inside ``max_completion_tokens`` but Anthropic demands ``max_tokens`` above the budget, so a
  limit at or under the budget is raised by the budget. Anthropic refuses thinking while a tool is forced,
  so when ``response_format`` or ``tool_choice`` forces a tool call, the effort is not sent.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import orjson

from meterway.providers.anthropic_schema import native_output_schema, supports_structured_output
from meterway.providers.base import tokens

JSON = dict[str, Any]

DEFAULT_MAX_TOKENS = 4096
"""Anthropic will not run without ``max_tokens``; chat clients usually omit it and expect "as much as
the model likes", so this is a generous default rather than a small one."""

JSON_TOOL_NAME = "meterway_json_response"
"""The tool a ``response_format`` becomes. Unlikely in a client's own tool list (one there is refused),
so a ``tool_use`` of this name in a reply is known to be the answer without looking at the request."""

THINKING_BUDGETS: Mapping[str, int] = MappingProxyType({"minimal": 1024, "low": 1024, "medium": 2048, "high": 4096})
"""``reasoning_effort`` -> ``thinking.budget_tokens``: the figures LiteLLM uses, so clients migrating from it
get the same spend per effort; 1024 is Anthropic's minimum budget, which is why minimal shares it."""

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "JSON",
    "JSON_TOOL_NAME",
    "THINKING_BUDGETS",
    "ChatToMessagesStream",
    "MessagesToChatStream",
    "TranslationError",
    "UpstreamStreamError",
    "chat_response_to_messages",
    "chat_to_messages_request",
    "messages_response_to_chat",
    "messages_to_chat_request",
    "messages_usage_to_chat",
    "to_anthropic_sse",
]


class TranslationError(ValueError):
    """A request that cannot be expressed in the other API. It is the client's fault (a 400), and the
    client needs to know which field, so the message starts with the field path and ``param`` holds it."""

    param: str | None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class UpstreamStreamError(Exception):
    """Anthropic reported an error inside a stream that had already started (e.g. ``overloaded_error``).
    Raised so the caller can end the client's stream with an error in the client's own format."""

    def __init__(self, message: str, error_type: str) -> None:
        super().__init__(f"{error_type}: {message}")
        self.message = message
        self.error_type = error_type


def _fail(param: str, detail: str) -> TranslationError:
    return TranslationError(f"{param}: {detail}", param=param)


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


# --------------------------------------------------------------------------------------------------------
# Shared mappings
# --------------------------------------------------------------------------------------------------------

# pause_turn means "a server tool loop paused; send the conversation back to continue": the turn ended
# without error, which chat clients only know as "stop". refusal is a safety stop, which is exactly what
# content_filter means to chat clients. A full context window is a length limit in all but name.
_FINISH_FROM_STOP: Mapping[str, str] = MappingProxyType(
    {
        "end_turn": "stop",
        "stop_sequence": "stop",
        "max_tokens": "length",
        "tool_use": "tool_calls",
        "pause_turn": "stop",
        "refusal": "content_filter",
        "model_context_window_exceeded": "length",
    }
)

_STOP_FROM_FINISH: Mapping[str, str] = MappingProxyType(
    {
        "stop": "end_turn",
        "length": "max_tokens",
        "tool_calls": "tool_use",
        "function_call": "tool_use",
        "content_filter": "refusal",
    }
)


def _finish_reason(stop_reason: str | None) -> str | None:
    if stop_reason is None:
        return None
    return _FINISH_FROM_STOP.get(stop_reason, "stop")


def _stop_reason(finish_reason: str | None) -> str:
    if finish_reason is None:
        return "end_turn"
    return _STOP_FROM_FINISH.get(finish_reason, "end_turn")


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def messages_usage_to_chat(usage: JSON) -> JSON:
    """Anthropic counts cache reads and writes apart from ``input_tokens``; OpenAI counts them inside
    ``prompt_tokens``. The raw cache figures ride along as extra keys because writes cost more than
    plain input and reads less, and the gateway prices them separately."""
    figures = [tokens(usage.get(k)) for k in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")]
    _, cache_read, cache_write = figures
    output_tokens = tokens(usage.get("output_tokens"))
    # a figure that is no count (negative, not a whole number) leaves the sums no count either
    prompt = sum(figures) if min(figures) >= 0 else min(figures)
    total = prompt + output_tokens if min(prompt, output_tokens) >= 0 else min(prompt, output_tokens)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": output_tokens,
        "total_tokens": total,
        "prompt_tokens_details": {"cached_tokens": cache_read},
        "cache_read_input_tokens": cache_read,
        "cache_creation_input_tokens": cache_write,
    }


def _chat_usage_to_messages(usage: JSON) -> JSON:
    """The inverse of :func:`messages_usage_to_chat` as far as OpenAI reports it: cached tokens are
    taken back out of the prompt so ``input_tokens`` means what Anthropic clients expect."""
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    result: JSON = {
        "input_tokens": max(_int(usage.get("prompt_tokens")) - _int(cached), 0),
        "output_tokens": _int(usage.get("completion_tokens")),
    }
    if isinstance(cached, int):
        result["cache_read_input_tokens"] = cached
    return result


def _data_url_parts(url: str, param: str) -> tuple[str, str]:
    """Splits ``data:<media>;base64,<payload>``; Anthropic only takes base64 payloads."""
    header, sep, payload = url[5:].partition(",")
    media_type, _, encoding = header.partition(";")
    if not sep or encoding != "base64" or not media_type:
        raise _fail(param, "data URL must be of the form data:<media-type>;base64,<data>")
    return media_type, payload


# --------------------------------------------------------------------------------------------------------
# OpenAI chat request -> Anthropic messages request
# --------------------------------------------------------------------------------------------------------


def _text_block(text: str, part: JSON | None = None) -> JSON:
    block: JSON = {"type": "text", "text": text}
    # OpenRouter-style clients mark cache breakpoints on chat parts; Anthropic understands them natively.
    if part is not None and "cache_control" in part:
        block["cache_control"] = part["cache_control"]
    return block


def _image_block(part: JSON, param: str) -> JSON:
    image_url = part.get("image_url")
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if not isinstance(url, str) or not url:
        raise _fail(f"{param}.image_url.url", "missing image URL")
    if url.startswith("data:"):
        media_type, data = _data_url_parts(url, f"{param}.image_url.url")
        source: JSON = {"type": "base64", "media_type": media_type, "data": data}
    elif url.startswith(("http://", "https://")):
        source = {"type": "url", "url": url}
    else:
        raise _fail(f"{param}.image_url.url", "only data: and http(s) image URLs are supported")
    block: JSON = {"type": "image", "source": source}
    if "cache_control" in part:
        block["cache_control"] = part["cache_control"]
    return block


def _file_block(part: JSON, param: str) -> JSON:
    file = part.get("file")
    file_data = file.get("file_data") if isinstance(file, dict) else None
    if not isinstance(file_data, str) or not file_data.startswith("data:"):
        raise _fail(f"{param}.file", "only inline file_data (a base64 data URL) can be sent to Anthropic")
    media_type, data = _data_url_parts(file_data, f"{param}.file.file_data")
    if media_type != "application/pdf":
        raise _fail(f"{param}.file.file_data", f"unsupported file type '{media_type}'")
    return {"type": "document", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _chat_content_blocks(content: Any, param: str, *, allow_images: bool) -> list[JSON]:
    """Chat content is a string or a list of parts; Anthropic content is always expressible as blocks."""
    if content is None:
        return []
    if isinstance(content, str):
        return [_text_block(content)] if content else []
    if not isinstance(content, list):
        raise _fail(param, "must be a string or a list of content parts")
    blocks: list[JSON] = []
    for i, part in enumerate(content):
        part_param = f"{param}[{i}]"
        if not isinstance(part, dict):
            raise _fail(part_param, "must be an object")
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise _fail(f"{part_param}.text", "must be a string")
            if text:
                blocks.append(_text_block(text, part))
        elif kind == "refusal":
            refusal = part.get("refusal")
            if isinstance(refusal, str) and refusal:
                blocks.append(_text_block(refusal))
        elif kind == "image_url" and allow_images:
            blocks.append(_image_block(part, part_param))
        elif kind == "file" and allow_images:
            blocks.append(_file_block(part, part_param))
        else:
            raise _fail(f"{part_param}.type", f"unsupported part {kind!r}")
    return blocks


def _text_of(content: Any, param: str) -> str:
    return "".join(block["text"] for block in _chat_content_blocks(content, param, allow_images=False))


def _tool_use_blocks(tool_calls: Any, param: str) -> list[JSON]:
    if not isinstance(tool_calls, list):
        raise _fail(param, "must be a list")
    blocks: list[JSON] = []
    for i, call in enumerate(tool_calls):
        call_param = f"{param}[{i}]"
        if not isinstance(call, dict) or call.get("type", "function") != "function":
            raise _fail(f"{call_param}.type", "only function tool calls are supported")
        function = call.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _fail(f"{call_param}.function.name", "missing function name")
        arguments = function.get("arguments")
        if arguments is None or arguments == "":
            parsed: Any = {}
        elif isinstance(arguments, str):
            try:
                parsed = orjson.loads(arguments)
            except orjson.JSONDecodeError:
                raise _fail(f"{call_param}.function.arguments", "is not valid JSON") from None
        else:
            raise _fail(f"{call_param}.function.arguments", "must be a JSON string")
        if not isinstance(parsed, dict):
            raise _fail(f"{call_param}.function.arguments", "must encode a JSON object")
        blocks.append({"type": "tool_use", "id": call.get("id") or "", "name": function["name"], "input": parsed})
    return blocks


def _tool_result_block(message: JSON, param: str) -> JSON:
    tool_call_id = message.get("tool_call_id")
    if not isinstance(tool_call_id, str):
        raise _fail(f"{param}.tool_call_id", "missing tool_call_id")
    content = message.get("content")
    result: Any
    if isinstance(content, list):
        result = _chat_content_blocks(content, f"{param}.content", allow_images=False)
    else:
        result = _text_of(content, f"{param}.content")
    return {"type": "tool_result", "tool_use_id": tool_call_id, "content": result}


def _collapse(blocks: list[JSON]) -> str | list[JSON]:
    """A lone plain text block goes out as a string, the form most Anthropic examples and caches use."""
    if len(blocks) == 1 and blocks[0].keys() == {"type", "text"}:
        text: str = blocks[0]["text"]
        return text
    return blocks


def _convert_tools(tools: Any) -> list[JSON]:
    if not isinstance(tools, list):
        raise _fail("tools", "must be a list")
    converted: list[JSON] = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise _fail(f"tools[{i}].type", "only function tools are supported")
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _fail(f"tools[{i}].function.name", "missing function name")
        entry: JSON = {"name": function["name"]}
        if function.get("description"):
            entry["description"] = function["description"]
        # Anthropic requires a schema even for argument-less tools; OpenAI allows leaving it out.
        entry["input_schema"] = function.get("parameters") or {"type": "object", "properties": {}}
        converted.append(entry)
    return converted


def _convert_tool_choice(choice: Any, parallel: Any) -> JSON | None:
    result: JSON
    if choice is None:
        if parallel is not False:
            return None
        result = {"type": "auto"}
    elif choice == "auto":
        result = {"type": "auto"}
    elif choice == "required":
        result = {"type": "any"}
    elif choice == "none":
        return {"type": "none"}  # takes no disable_parallel_tool_use
    elif isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str):
            raise _fail("tool_choice.function.name", "missing function name")
        result = {"type": "tool", "name": name}
    else:
        raise _fail("tool_choice", f"unsupported tool_choice {choice!r}")
    if parallel is False:
        result["disable_parallel_tool_use"] = True
    return result


def _json_tool(response_format: Any) -> JSON | None:
    """The tool a ``response_format`` becomes, or None for plain text."""
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    tool: JSON = {"name": JSON_TOOL_NAME, "description": "Give the final answer as this tool's input."}
    if kind == "json_object":
        tool["input_schema"] = {"type": "object"}
        return tool
    if kind != "json_schema":
        raise _fail("response_format.type", f"unsupported response_format {kind!r}")
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict):
        raise _fail("response_format.json_schema", "must be an object")
    schema = spec.get("schema")
    if schema is None:
        schema = {"type": "object"}
    # Anthropic tool input is always a JSON object; OpenAI's strict mode demands the same of a schema.
    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        raise _fail("response_format.json_schema.schema", "must describe a JSON object")
    description = spec.get("description")
    if isinstance(description, str) and description:
        tool["description"] = f"Give the final answer as this tool's input: {description}"
    tool["input_schema"] = schema
    return tool


def _native_format(response_format: Any, upstream_model: str) -> JSON | None:
    """Anthropic's own structured output for a ``json_schema`` format, where the model takes it and the
    schema can be expressed (:mod:`anthropic_schema`); None means the forced answer tool. A ``json_object``
    format always takes the tool: structured output needs a schema, and closes every object it is given."""
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return None
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict) or not supports_structured_output(upstream_model):
        return None
    converted = native_output_schema(schema)
    return None if converted is None else {"type": "json_schema", "schema": converted}


def _add_json_tool(request: JSON, tool: JSON) -> None:
    """Adds the answer tool and a tool_choice that makes the model use a tool. With client tools the
    model may still call one of those (``any``), as OpenAI allows tool calls beside a response_format;
    a client's own named or required choice is kept."""
    tools: list[JSON] = request.setdefault("tools", [])
    if any(t.get("name") == JSON_TOOL_NAME for t in tools):
        raise _fail("tools", f"the tool name {JSON_TOOL_NAME!r} is reserved for response_format")
    choice: JSON | None = request.get("tool_choice")
    kind = choice.get("type") if choice is not None else None
    tools.append(tool)
    if len(tools) == 1 or kind == "none":
        request["tool_choice"] = {"type": "tool", "name": JSON_TOOL_NAME}
    elif kind in (None, "auto"):
        forced: JSON = {"type": "any"}
        if choice is not None and "disable_parallel_tool_use" in choice:
            forced["disable_parallel_tool_use"] = choice["disable_parallel_tool_use"]
        request["tool_choice"] = forced


def _add_thinking(request: JSON, effort: Any) -> None:
    if effort == "none":
        return
    budget = THINKING_BUDGETS.get(effort) if isinstance(effort, str) else None
    if budget is None:
        raise _fail("reasoning_effort", f"must be one of none, {', '.join(THINKING_BUDGETS)}")
    request["thinking"] = {"type": "enabled", "budget_tokens": budget}
    max_tokens = request["max_tokens"]
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens <= budget:
        request["max_tokens"] = budget + max_tokens


def chat_to_messages_request(chat: JSON, upstream_model: str) -> JSON:
    """Builds an Anthropic Messages request body from an OpenAI chat request body."""
    messages = chat.get("messages")
    if not isinstance(messages, list):
        raise _fail("messages", "must be a list")

    system_parts: list[JSON] = []
    turns: list[JSON] = []  # {"role", "content": list of blocks}; merged later on equal roles

    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _fail(param, "must be an object")
        role = message.get("role")
        content_param = f"{param}.content"
        if role in ("system", "developer"):
            system_parts.extend(_chat_content_blocks(message.get("content"), content_param, allow_images=False))
            continue
        if role == "user":
            blocks = _chat_content_blocks(message.get("content"), content_param, allow_images=True)
        elif role == "assistant":
            blocks = _chat_content_blocks(message.get("content"), content_param, allow_images=False)
            if message.get("tool_calls"):
                blocks.extend(_tool_use_blocks(message["tool_calls"], f"{param}.tool_calls"))
        elif role == "tool":
            blocks = [_tool_result_block(message, param)]
            role = "user"
        else:
            raise _fail(f"{param}.role", f"unsupported role {role!r}")
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    request: JSON = {
        "model": upstream_model,
        "messages": [{"role": t["role"], "content": _collapse(t["content"])} for t in turns],
    }
    if system_parts:
        if any("cache_control" in part for part in system_parts):
            request["system"] = system_parts
        else:
            request["system"] = "\n\n".join(part["text"] for part in system_parts)

    max_tokens = chat.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = chat.get("max_tokens")
    request["max_tokens"] = max_tokens if max_tokens is not None else DEFAULT_MAX_TOKENS

    stop = chat.get("stop")
    if isinstance(stop, str):
        request["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        request["stop_sequences"] = stop

    for key in ("temperature", "top_p", "top_k", "stream", "thinking"):
        if chat.get(key) is not None:
            request[key] = chat[key]

    # OpenAI's `metadata` is free-form key/value for stored completions; Anthropic rejects every key but
    # user_id, so only that one survives.
    metadata = chat.get("metadata")
    user_id = metadata.get("user_id") if isinstance(metadata, dict) else None
    if user_id is None:
        user_id = chat.get("user")
    if user_id is None:
        user_id = chat.get("safety_identifier")  # OpenAI's successor to `user`, for the same purpose
    if user_id is not None:
        request["metadata"] = {"user_id": user_id}

    if chat.get("tools"):
        request["tools"] = _convert_tools(chat["tools"])
        # A tool_choice with no tools is an upstream 400 for no benefit, so it is only sent alongside tools.
        tool_choice = _convert_tool_choice(chat.get("tool_choice"), chat.get("parallel_tool_calls"))
        if tool_choice is not None:
            request["tool_choice"] = tool_choice
    response_format = chat.get("response_format")
    native = _native_format(response_format, upstream_model)
    if native is not None:
        request["output_config"] = {"format": native}
    elif response_format is not None and (json_tool := _json_tool(response_format)) is not None:
        _add_json_tool(request, json_tool)
    # An explicit `thinking` is the client's own Anthropic setting and wins over the effort; Anthropic
    # refuses thinking while a tool is forced, and the forced call is what the client asked for.
    effort = chat.get("reasoning_effort")
    forced = effort is not None and (request.get("tool_choice") or {}).get("type") in ("any", "tool")
    if effort is not None and "thinking" not in request and not forced:
        _add_thinking(request, effort)
    return request


# --------------------------------------------------------------------------------------------------------
# Anthropic messages response -> OpenAI chat response
# --------------------------------------------------------------------------------------------------------


def _tool_call(block: JSON) -> JSON:
    return {
        "id": block.get("id", ""),
        "type": "function",
        "function": {"name": block.get("name", ""), "arguments": _dumps(block.get("input") or {})},
    }


def messages_response_to_chat(msg: JSON, model: str) -> JSON:
    """Builds an OpenAI ``chat.completion`` from an Anthropic Message, reporting the client's model name.

    A call of :data:`JSON_TOOL_NAME` is the answer to a ``response_format``: its input becomes the whole
    content (any text beside it would stop the client parsing it), and a turn that ended only to make that
    call ended as ``stop``. ``logprobs`` and ``refusal`` are always present because OpenAI's spec requires
    them and strict clients validate the reply against it."""
    texts: list[str] = []
    answer: str | None = None
    tool_calls: list[JSON] = []
    for block in msg.get("content") or []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            texts.append(block.get("text") or "")
        elif block.get("type") == "tool_use" and block.get("name") == JSON_TOOL_NAME:
            answer = _dumps(block.get("input") or {})
        elif block.get("type") == "tool_use":
            tool_calls.append(_tool_call(block))
    content = answer if answer is not None else "".join(texts) if texts else None
    message: JSON = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    finish_reason = _finish_reason(msg.get("stop_reason")) or "stop"
    if finish_reason == "tool_calls" and answer is not None and not tool_calls:
        finish_reason = "stop"
    usage = msg.get("usage")
    return {
        "id": msg.get("id", ""),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
        "usage": messages_usage_to_chat(usage if isinstance(usage, dict) else {}),
    }


# --------------------------------------------------------------------------------------------------------
# Anthropic SSE events -> OpenAI chat chunks
# --------------------------------------------------------------------------------------------------------


class MessagesToChatStream:
    """One Anthropic stream's translation state. Anthropic numbers content blocks across text and tools
    while OpenAI numbers tool calls alone, so the block-to-tool-call mapping must live for the stream;
    usage arrives split between the first and last events, so it is accumulated here too."""

    def __init__(self, model: str, include_usage: bool, created: int) -> None:
        self.model = model
        self.include_usage = include_usage
        self.created = created
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.usage: JSON | None = None
        self.done = False
        self._anthropic_usage: JSON = {}
        self._tool_index: dict[int, int] = {}  # Anthropic block index -> OpenAI tool_calls index
        self._answer_blocks: set[int] = set()  # indices of JSON_TOOL_NAME blocks: their input is content

    def _chunk(self, delta: JSON, finish_reason: str | None = None) -> JSON:
        chunk: JSON = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if self.include_usage:
            # OpenAI puts "usage": null on every chunk but the last when the client asked for usage.
            chunk["usage"] = None
        return chunk

    def _merge_usage(self, usage: Any) -> None:
        # message_delta usage is cumulative, so later values replace earlier ones key by key.
        if isinstance(usage, dict):
            for key, value in usage.items():
                if value is not None:
                    self._anthropic_usage[key] = value
            self.usage = messages_usage_to_chat(self._anthropic_usage)

    def feed(self, event: str, data: JSON) -> list[JSON]:
        """Translates one SSE event. Unknown events are ignored: Anthropic reserves the right to add them."""
        if self.done:
            return []
        if event == "message_start":
            message = data.get("message") or {}
            if message.get("id"):
                self.id = message["id"]
            if isinstance(message.get("model"), str) and message["model"]:
                self.model = message["model"]  # the model that answered, as the upstream names it
            self._merge_usage(message.get("usage"))
            return [self._chunk({"role": "assistant", "content": ""})]
        if event == "content_block_start":
            block = data.get("content_block") or {}
            if block.get("type") == "tool_use" and block.get("name") == JSON_TOOL_NAME:
                self._answer_blocks.add(_int(data.get("index")))
                return []
            if block.get("type") == "tool_use":
                tool_index = len(self._tool_index)
                self._tool_index[_int(data.get("index"))] = tool_index
                call = {
                    "index": tool_index,
                    "id": block.get("id", ""),
                    "type": "function",
                    "function": {"name": block.get("name", ""), "arguments": ""},
                }
                return [self._chunk({"tool_calls": [call]})]
            if block.get("type") == "text" and block.get("text"):
                return [self._chunk({"content": block["text"]})]
            return []
        if event == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta" and delta.get("text"):
                return [self._chunk({"content": delta["text"]})]
            if delta.get("type") == "input_json_delta" and delta.get("partial_json"):
                if _int(data.get("index")) in self._answer_blocks:
                    return [self._chunk({"content": delta["partial_json"]})]
                known = self._tool_index.get(_int(data.get("index")))
                if known is None:
                    return []
                call = {"index": known, "function": {"arguments": delta["partial_json"]}}
                return [self._chunk({"tool_calls": [call]})]
            return []
        if event == "message_delta":
            self._merge_usage(data.get("usage"))
            stop_reason = (data.get("delta") or {}).get("stop_reason")
            finish = _finish_reason(stop_reason)
            if finish == "tool_calls" and self._answer_blocks and not self._tool_index:
                finish = "stop"  # the only call was the response_format answer, already sent as content
            return [self._chunk({}, finish)] if finish is not None else []
        if event == "message_stop":
            self.done = True
            if not self.include_usage or self.usage is None:
                return []  # none reported: the ledger counts it, and the relay's `settle` sends that
            return [
                {
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": self.usage if self.usage is not None else messages_usage_to_chat({}),
                }
            ]
        if event == "error":
            error = data.get("error") or {}
            raise UpstreamStreamError(str(error.get("message", "upstream error")), str(error.get("type", "api_error")))
        return []  # ping, content_block_stop, and anything new


# --------------------------------------------------------------------------------------------------------
# Anthropic messages request -> OpenAI chat request
# --------------------------------------------------------------------------------------------------------


def _image_part(block: JSON, param: str) -> JSON:
    source = block.get("source")
    if not isinstance(source, dict):
        raise _fail(f"{param}.source", "missing image source")
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type', '')};base64,{source.get('data', '')}"
    elif source.get("type") == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        raise _fail(f"{param}.source.type", f"unsupported image source {source.get('type')!r}")
    return {"type": "image_url", "image_url": {"url": url}}


def _document_part(block: JSON, param: str) -> JSON:
    source = block.get("source")
    if not isinstance(source, dict) or source.get("type") != "base64":
        raise _fail(f"{param}.source.type", "only base64 documents are supported")
    file: JSON = {"file_data": f"data:{source.get('media_type', '')};base64,{source.get('data', '')}"}
    if isinstance(block.get("title"), str):
        file["filename"] = block["title"]
    return {"type": "file", "file": file}


def _anthropic_blocks(content: Any, param: str) -> list[JSON]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise _fail(param, "must be a string or a list of content blocks")
    for i, block in enumerate(content):
        if not isinstance(block, dict):
            raise _fail(f"{param}[{i}]", "must be an object")
        if not isinstance(block.get("type"), str):
            raise _fail(f"{param}[{i}].type", "missing block type")
    return content


def _tool_result_messages(block: JSON, param: str) -> tuple[JSON, list[JSON]]:
    """A tool result becomes a ``tool`` message; chat tool messages carry text only, so any images in
    it are handed back to travel in the user message that follows."""
    tool_use_id = block.get("tool_use_id")
    if not isinstance(tool_use_id, str):
        raise _fail(f"{param}.tool_use_id", "missing tool_use_id")
    content = block.get("content", "")
    texts: list[str] = []
    images: list[JSON] = []
    if isinstance(content, str):
        texts.append(content)
    else:
        for j, inner in enumerate(_anthropic_blocks(content, f"{param}.content")):
            kind = inner["type"]
            if kind == "text":
                texts.append(inner.get("text") or "")
            elif kind == "image":
                images.append(_image_part(inner, f"{param}.content[{j}]"))
            else:
                raise _fail(f"{param}.content[{j}].type", f"unsupported tool result block {kind!r}")
    return {"role": "tool", "tool_call_id": tool_use_id, "content": "\n".join(texts)}, images


def _user_messages(content: Any, param: str) -> list[JSON]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    tool_messages: list[JSON] = []
    parts: list[JSON] = []
    for j, block in enumerate(_anthropic_blocks(content, param)):
        block_param = f"{param}[{j}]"
        kind = block["type"]
        if kind == "text":
            parts.append({"type": "text", "text": block.get("text") or ""})
        elif kind == "image":
            parts.append(_image_part(block, block_param))
        elif kind == "document":
            parts.append(_document_part(block, block_param))
        elif kind == "tool_result":
            tool_message, images = _tool_result_messages(block, block_param)
            tool_messages.append(tool_message)
            parts.extend(images)
        else:
            raise _fail(f"{block_param}.type", f"unsupported block {kind!r}")
    # Chat requires a tool message to follow its assistant tool call directly, so the results go first.
    result = tool_messages
    if len(parts) == 1 and parts[0]["type"] == "text":
        result.append({"role": "user", "content": parts[0]["text"]})
    elif parts:
        result.append({"role": "user", "content": parts})
    return result


def _assistant_message(content: Any, param: str) -> JSON:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    tool_calls: list[JSON] = []
    for j, block in enumerate(_anthropic_blocks(content, param)):
        kind = block["type"]
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "tool_use":
            if not isinstance(block.get("name"), str):
                raise _fail(f"{param}[{j}].name", "missing tool name")
            tool_calls.append(_tool_call(block))
        elif kind in ("thinking", "redacted_thinking"):
            continue  # signed reasoning only Anthropic can verify; meaningless to another model
        else:
            raise _fail(f"{param}[{j}].type", f"unsupported block {kind!r}")
    message: JSON = {"role": "assistant", "content": "".join(texts) if texts else None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    elif message["content"] is None:
        message["content"] = ""
    return message


def _system_text(system: Any) -> str:
    if isinstance(system, str):
        return system
    if not isinstance(system, list):
        raise _fail("system", "must be a string or a list of text blocks")
    texts: list[str] = []
    for i, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise _fail(f"system[{i}]", "must be a text block")
        texts.append(block["text"])
    return "\n\n".join(texts)


def _chat_tools(tools: Any) -> list[JSON]:
    if not isinstance(tools, list):
        raise _fail("tools", "must be a list")
    converted: list[JSON] = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise _fail(f"tools[{i}]", "must be an object")
        # Server tools (web_search_*, bash_*, ...) run inside Anthropic; no other upstream can run them.
        if tool.get("type", "custom") != "custom" or "input_schema" not in tool:
            raise _fail(f"tools[{i}].type", f"unsupported tool type {tool.get('type')!r}")
        if not isinstance(tool.get("name"), str):
            raise _fail(f"tools[{i}].name", "missing tool name")
        function: JSON = {"name": tool["name"]}
        if tool.get("description"):
            function["description"] = tool["description"]
        function["parameters"] = tool["input_schema"]
        converted.append({"type": "function", "function": function})
    return converted


def _chat_tool_choice(choice: Any) -> tuple[Any, bool]:
    """Returns the chat tool_choice and whether parallel tool calls were disabled."""
    if not isinstance(choice, dict):
        raise _fail("tool_choice", "must be an object")
    kind = choice.get("type")
    disabled = choice.get("disable_parallel_tool_use") is True
    if kind == "auto":
        return "auto", disabled
    if kind == "any":
        return "required", disabled
    if kind == "none":
        return "none", False
    if kind == "tool":
        if not isinstance(choice.get("name"), str):
            raise _fail("tool_choice.name", "missing tool name")
        return {"type": "function", "function": {"name": choice["name"]}}, disabled
    raise _fail("tool_choice.type", f"unsupported tool_choice {kind!r}")


def messages_to_chat_request(msg: JSON, upstream_model: str) -> JSON:
    """Builds an OpenAI chat request body from an Anthropic Messages request body."""
    messages = msg.get("messages")
    if not isinstance(messages, list):
        raise _fail("messages", "must be a list")

    chat_messages: list[JSON] = []
    if msg.get("system"):
        chat_messages.append({"role": "system", "content": _system_text(msg["system"])})
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _fail(param, "must be an object")
        role = message.get("role")
        if role == "user":
            chat_messages.extend(_user_messages(message.get("content"), f"{param}.content"))
        elif role == "assistant":
            chat_messages.append(_assistant_message(message.get("content"), f"{param}.content"))
        else:
            raise _fail(f"{param}.role", f"unsupported role {role!r}")

    request: JSON = {"model": upstream_model, "messages": chat_messages}
    if msg.get("max_tokens") is not None:
        request["max_tokens"] = msg["max_tokens"]
    for key in ("temperature", "top_p"):
        if msg.get(key) is not None:
            request[key] = msg[key]
    if msg.get("stop_sequences"):
        request["stop"] = msg["stop_sequences"]
    if msg.get("stream"):
        request["stream"] = True
        # Without this an OpenAI upstream reports no usage in a stream, and the gateway meters every token.
        request["stream_options"] = {"include_usage": True}
    metadata = msg.get("metadata")
    if isinstance(metadata, dict) and metadata.get("user_id") is not None:
        request["user"] = metadata["user_id"]
    if msg.get("tools"):
        request["tools"] = _chat_tools(msg["tools"])
        if msg.get("tool_choice") is not None:
            tool_choice, parallel_disabled = _chat_tool_choice(msg["tool_choice"])
            request["tool_choice"] = tool_choice
            if parallel_disabled:
                request["parallel_tool_calls"] = False
    response_format = _response_format(msg)
    if response_format is not None:
        request["response_format"] = response_format
    return request


def _response_format(msg: JSON) -> JSON | None:
    """Anthropic's structured output (``output_config.format``, or the beta's ``output_format``) as a chat
    ``response_format``, so an Anthropic-SDK client's ``messages.parse`` gets JSON from any deployment.
    Not ``strict``: Anthropic's schemas may leave properties optional, which OpenAI's strict mode refuses."""
    config = msg.get("output_config")
    found = config.get("format") if isinstance(config, dict) else None
    if found is None:
        found = msg.get("output_format")
    if found is None:
        return None
    schema = found.get("schema") if isinstance(found, dict) else None
    if not isinstance(found, dict) or found.get("type") != "json_schema" or not isinstance(schema, dict):
        raise _fail("output_config.format", "must be {type: json_schema, schema: {...}}")
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}


# --------------------------------------------------------------------------------------------------------
# OpenAI chat response -> Anthropic messages response
# --------------------------------------------------------------------------------------------------------


def _message_id(chat_id: Any) -> str:
    if isinstance(chat_id, str) and chat_id:
        return chat_id if chat_id.startswith("msg_") else f"msg_{chat_id}"
    return f"msg_{uuid.uuid4().hex}"


def chat_response_to_messages(chat: JSON, model: str) -> JSON:
    """Builds an Anthropic Message from an OpenAI ``chat.completion``, reporting the client's model name.

    Tool arguments the upstream model produced as invalid JSON raise :class:`TranslationError` (param
    names the field): Anthropic clients require ``input`` to be an object, and guessing would hand the
    client a tool call it never asked for."""
    choices = chat.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    content: list[JSON] = []
    text = message.get("content")
    if isinstance(text, list):  # a few compatible servers return content parts even here
        text = "".join(p.get("text") or "" for p in text if isinstance(p, dict) and p.get("type") == "text")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    if message.get("tool_calls"):
        for block in _tool_use_blocks(message["tool_calls"], "choices[0].message.tool_calls"):
            if not block["id"]:
                block["id"] = f"toolu_{uuid.uuid4().hex}"
            content.append(block)
    usage = chat.get("usage")
    return {
        "id": _message_id(chat.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _stop_reason(choice.get("finish_reason")),
        "stop_sequence": None,
        "usage": _chat_usage_to_messages(usage if isinstance(usage, dict) else {}),
    }


# --------------------------------------------------------------------------------------------------------
# OpenAI chat chunks -> Anthropic SSE events
# --------------------------------------------------------------------------------------------------------


class ChatToMessagesStream:
    """One OpenAI stream's translation state. Anthropic clients expect strictly nested, sequential
    blocks (start, deltas, stop) with increasing indices, while OpenAI interleaves text and tool call
    fragments freely in deltas, so this tracks which block is open and closes it before opening the next.
    Usage arrives in a trailing chunk after the finish reason, which is why ``message_delta`` waits for
    :meth:`finish`."""

    def __init__(self, model: str, message_id: str) -> None:
        self.model = model
        self.message_id = message_id
        self.usage: JSON | None = None
        self._started = False
        self._finished = False
        self._next_index = 0
        self._open: tuple[str, int] | None = None  # ("text", block index) or ("tool", openai tool index)
        self._tool_blocks: dict[int, int] = {}  # OpenAI tool_calls index -> Anthropic block index
        self._stop_reason: str | None = None

    def _start(self) -> list[tuple[str, JSON]]:
        if self._started:
            return []
        self._started = True
        message: JSON = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return [("message_start", {"type": "message_start", "message": message})]

    def _close(self) -> list[tuple[str, JSON]]:
        if self._open is None:
            return []
        kind, key = self._open
        index = key if kind == "text" else self._tool_blocks[key]
        self._open = None
        return [("content_block_stop", {"type": "content_block_stop", "index": index})]

    def _open_block(self, kind: str, key: int, block: JSON) -> list[tuple[str, JSON]]:
        events = self._close()
        index = self._next_index
        self._next_index += 1
        if kind == "tool":
            self._tool_blocks[key] = index
            self._open = ("tool", key)
        else:
            self._open = ("text", index)
        events.append(("content_block_start", {"type": "content_block_start", "index": index, "content_block": block}))
        return events

    def _text(self, text: str) -> list[tuple[str, JSON]]:
        events: list[tuple[str, JSON]] = []
        if self._open is None or self._open[0] != "text":
            events = self._open_block("text", 0, {"type": "text", "text": ""})
        assert self._open is not None
        delta = {"type": "text_delta", "text": text}
        events.append(("content_block_delta", {"type": "content_block_delta", "index": self._open[1], "delta": delta}))
        return events

    def _tool_call(self, call: JSON) -> list[tuple[str, JSON]]:
        events: list[tuple[str, JSON]] = []
        key = _int(call.get("index"))
        function = call.get("function") or {}
        if key not in self._tool_blocks:
            block: JSON = {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_{uuid.uuid4().hex}",
                "name": function.get("name") or "",
                "input": {},
            }
            events = self._open_block("tool", key, block)
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            delta = {"type": "input_json_delta", "partial_json": arguments}
            index = self._tool_blocks[key]
            events.append(("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}))
        return events

    def feed(self, chunk: JSON) -> list[tuple[str, JSON]]:
        """Translates one chunk. Only choice 0 is followed: Anthropic has no notion of ``n``."""
        if self._finished:
            return []
        error = chunk.get("error")
        if isinstance(error, dict) and not chunk.get("choices"):
            # Several OpenAI-compatible servers report mid-stream failures as an error object in a chunk.
            raise UpstreamStreamError(
                str(error.get("message", "upstream error")), str(error.get("type") or "api_error")
            )
        if not self._started and isinstance(chunk.get("model"), str) and chunk["model"]:
            self.model = chunk["model"]  # message_start names the model that answered, as the upstream does
        events = self._start()
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            for key in ("content", "refusal"):
                if isinstance(delta.get(key), str) and delta[key]:
                    events.extend(self._text(delta[key]))
            for call in delta.get("tool_calls") or []:
                if isinstance(call, dict):
                    events.extend(self._tool_call(call))
            if choice.get("finish_reason"):
                self._stop_reason = _stop_reason(choice["finish_reason"])
                events.extend(self._close())
        return events

    def finish(self) -> list[tuple[str, JSON]]:
        """Ends the Anthropic stream, whether the upstream ended cleanly or not; idempotent."""
        if self._finished:
            return []
        events = self._start()
        events.extend(self._close())
        self._finished = True
        usage = _chat_usage_to_messages(self.usage or {})
        delta_usage: JSON = {"output_tokens": usage["output_tokens"], "input_tokens": usage["input_tokens"]}
        if "cache_read_input_tokens" in usage:
            delta_usage["cache_read_input_tokens"] = usage["cache_read_input_tokens"]
        delta = {"stop_reason": self._stop_reason or "end_turn", "stop_sequence": None}
        events.append(("message_delta", {"type": "message_delta", "delta": delta, "usage": delta_usage}))
        events.append(("message_stop", {"type": "message_stop"}))
        return events


def to_anthropic_sse(event: str, data: JSON) -> bytes:
    """Anthropic clients dispatch on the ``event:`` line, so it is always written, never just ``data:``."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
