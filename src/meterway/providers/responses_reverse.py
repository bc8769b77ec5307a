"""The reverse bridge: chat completions served by a model that speaks only OpenAI's Responses API
(a deployment marked `model_info.mode: responses`, as LiteLLM marks one). Pure, no I/O.

A chat request becomes a Responses request (`chat_to_responses`); the Response, or each of its
stream events, becomes a chat completion or chunk (`response_to_chat`, `ResponsesToChatStream`).
Chat's sampling knobs that the Responses API has no place for (`stop`, `n` > 1, `logit_bias`,
penalties, `seed`, audio) are refused with a 400 naming them rather than dropped: a client that
set them expects them honoured. `store` is false unless the client asked: chat completions are
not stored by default, Responses are.
"""

from __future__ import annotations

from typing import Any

from meterway.providers.responses_format import Event, Json, fail

# ---------------------------------------------------------------- reverse: chat request -> Responses request

_CHAT_SAME = (
    "temperature",
    "top_p",
    "user",
    "parallel_tool_calls",
    "service_tier",
    "safety_identifier",
    "prompt_cache_key",
    "top_logprobs",
    "metadata",
)
_CHAT_REFUSED = ("stop", "logit_bias", "audio", "presence_penalty", "frequency_penalty", "seed", "functions")


def _chat_parts(content: Any, where: str) -> str | list[Json]:
    if isinstance(content, str) or content is None:
        return content or ""
    if not isinstance(content, list):
        raise fail(where, "expected a string or an array of content parts")
    parts: list[Json] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            parts.append({"type": "input_text", "text": part.get("text", "")})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            item: Json = {"type": "input_image", "image_url": url, "detail": "auto"}
            if isinstance(image, dict) and image.get("detail"):
                item["detail"] = image["detail"]
            parts.append(item)
        elif kind == "file" and isinstance(part.get("file"), dict):
            parts.append({"type": "input_file", **part["file"]})
        else:
            raise fail(f"{where}[{j}]", f"content part type {kind!r} cannot be sent to this Responses-only model")
    return parts


def _chat_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def chat_to_responses(chat_request: Json, upstream_model: str) -> Json:
    """A chat completions request as a Responses request, for a Responses-only model. Chat's
    sampling knobs that the Responses API has no place for are refused, not dropped."""
    for key in _CHAT_REFUSED:
        if chat_request.get(key) is not None:
            raise fail(key, "the Responses API this model speaks has no such parameter")
    n = chat_request.get("n")
    if n is not None and n != 1:
        raise fail("n", "a Responses-only model gives one answer per request")
    messages = chat_request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise fail("messages", "expected a non-empty array")
    items: list[Json] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise fail(where, "expected an object")
        role = message.get("role")
        if role in ("system", "developer", "user"):
            items.append({"type": "message", "role": role, "content": _chat_parts(message.get("content"), where)})
        elif role == "assistant":
            text = _chat_text(message.get("content"))
            if text:
                items.append({"type": "message", "role": "assistant", "content": text})
            for call in message.get("tool_calls") or []:
                function = call.get("function") if isinstance(call, dict) else None
                if not isinstance(function, dict):
                    raise fail(f"{where}.tool_calls", "expected function calls")
                items.append(
                    {
                        "type": "function_call",
                        "call_id": call.get("id"),
                        "name": function.get("name"),
                        "arguments": function.get("arguments") or "{}",
                    }
                )
        elif role == "tool":
            items.append(
                {
                    "type": "function_call_output",
                    "call_id": message.get("tool_call_id"),
                    "output": _chat_text(message.get("content")),
                }
            )
        else:
            raise fail(f"{where}.role", "expected one of system, developer, user, assistant, tool")
    request: Json = {"model": upstream_model, "input": items, "store": bool(chat_request.get("store", False))}
    for key in _CHAT_SAME:
        if chat_request.get(key) is not None:
            request[key] = chat_request[key]
    tools = chat_request.get("tools")
    if tools:
        request["tools"] = [_flat_tool(t, f"tools[{i}]") for i, t in enumerate(tools)]
    choice = chat_request.get("tool_choice")
    if choice is not None:
        request["tool_choice"] = _flat_choice(choice)
    config: Json = {}
    response_format = chat_request.get("response_format")
    if isinstance(response_format, dict):
        kind = response_format.get("type")
        if kind == "json_schema" and isinstance(response_format.get("json_schema"), dict):
            config["format"] = {"type": "json_schema", **response_format["json_schema"]}
        elif kind in ("json_object", "text"):
            config["format"] = {"type": kind}
    if chat_request.get("verbosity") is not None:
        config["verbosity"] = chat_request["verbosity"]
    if config:
        request["text"] = config
    cap = chat_request.get("max_completion_tokens", chat_request.get("max_tokens"))
    if cap is not None:
        request["max_output_tokens"] = cap
    if chat_request.get("reasoning_effort") is not None:
        request["reasoning"] = {"effort": chat_request["reasoning_effort"]}
    if chat_request.get("stream"):
        request["stream"] = True
    return request


def _flat_tool(tool: Any, where: str) -> Json:
    function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
    if not isinstance(function, dict):
        raise fail(where, "only function tools can be sent to this Responses-only model")
    return {"type": "function", **function}


def _flat_choice(choice: Any) -> Any:
    if isinstance(choice, str):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        return {"type": "function", "name": choice["function"].get("name")}
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        allowed = choice.get("allowed_tools") if isinstance(choice.get("allowed_tools"), dict) else {}
        assert isinstance(allowed, dict)
        return {
            "type": "allowed_tools",
            "mode": allowed.get("mode", "auto"),
            "tools": [_flat_tool(t, "tool_choice.allowed_tools") for t in allowed.get("tools") or []],
        }
    raise fail("tool_choice", "expected auto, none, required or a function")


# ---------------------------------------------------------------- reverse: Response -> chat answer


def usage_to_chat(usage: Any) -> Json | None:
    """Responses usage in chat's form, figures copied as reported."""
    if not isinstance(usage, dict):
        return None
    input_details = usage.get("input_tokens_details")
    output_details = usage.get("output_tokens_details")
    return {
        "prompt_tokens": usage.get("input_tokens", 0),
        "completion_tokens": usage.get("output_tokens", 0),
        "total_tokens": usage.get("total_tokens", 0),
        "prompt_tokens_details": {
            "cached_tokens": input_details.get("cached_tokens", 0) if isinstance(input_details, dict) else 0
        },
        "completion_tokens_details": {
            "reasoning_tokens": output_details.get("reasoning_tokens", 0) if isinstance(output_details, dict) else 0
        },
    }


def _finish_reason(response: Json, called: bool) -> str:
    details = response.get("incomplete_details")
    reason = details.get("reason") if isinstance(details, dict) else None
    if response.get("status") == "incomplete":
        return "content_filter" if reason == "content_filter" else "length"
    return "tool_calls" if called else "stop"


def _chat_id(response: Json) -> str:
    return "chatcmpl-" + str(response.get("id") or "").removeprefix("resp_")


def response_to_chat(response: Json, model: str) -> Json:
    """A Response as a chat completion: its output text joined, its function calls as tool calls."""
    texts: list[str] = []
    refusal: str | None = None
    calls: list[Json] = []
    for item in response.get("output") or []:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "message":
            for part in item.get("content") or []:
                if isinstance(part, dict) and part.get("type") == "output_text":
                    texts.append(str(part.get("text", "")))
                elif isinstance(part, dict) and part.get("type") == "refusal":
                    refusal = str(part.get("refusal", ""))
        elif item.get("type") == "function_call":
            calls.append(
                {
                    "id": item.get("call_id"),
                    "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments", "")},
                }
            )
    message: Json = {"role": "assistant", "content": "".join(texts) if texts else None, "refusal": refusal}
    if calls:
        message["tool_calls"] = calls
    chat: Json = {
        "id": _chat_id(response),
        "object": "chat.completion",
        "created": int(response.get("created_at") or 0),
        "model": model,
        "choices": [
            {"index": 0, "message": message, "finish_reason": _finish_reason(response, bool(calls)), "logprobs": None}
        ],
    }
    usage = usage_to_chat(response.get("usage"))
    if usage is not None:
        chat["usage"] = usage
    return chat


class ResponsesToChatStream:
    """Responses events in, chat chunks out; a usage chunk at the end when the client asked for it
    (`usage` keeps the chat-form usage either way, for metering)."""

    def __init__(self, model: str, include_usage: bool) -> None:
        self.model = model
        self.include_usage = include_usage
        self.usage: Json | None = None
        self._id = "chatcmpl-"
        self._created = 0
        self._calls: dict[str, int] = {}  # function_call item id -> its chat tool-call index
        self._started = False
        self._ended = False

    def _chunk(self, delta: Json, finish_reason: str | None = None) -> Json:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
        }

    def _first(self) -> list[Json]:
        if self._started:
            return []
        self._started = True
        return [self._chunk({"role": "assistant", "content": ""})]

    def feed(self, event: Event) -> list[Json]:
        kind = event.get("type")
        response = event.get("response") if isinstance(event.get("response"), dict) else None
        if kind == "response.created" and response is not None:
            self._id = _chat_id(response)
            self._created = int(response.get("created_at") or 0)
            return self._first()
        if kind == "response.output_text.delta":
            return [*self._first(), self._chunk({"content": event.get("delta", "")})]
        if kind == "response.refusal.delta":
            return [*self._first(), self._chunk({"refusal": event.get("delta", "")})]
        item = event.get("item") if isinstance(event.get("item"), dict) else None
        if kind == "response.output_item.added" and item is not None and item.get("type") == "function_call":
            index = self._calls[str(item.get("id"))] = len(self._calls)
            call = {
                "index": index,
                "id": item.get("call_id"),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": ""},
            }
            return [*self._first(), self._chunk({"tool_calls": [call]})]
        if kind == "response.function_call_arguments.delta" and str(event.get("item_id")) in self._calls:
            call = {"index": self._calls[str(event.get("item_id"))], "function": {"arguments": event.get("delta", "")}}
            return [self._chunk({"tool_calls": [call]})]
        if kind in ("response.completed", "response.incomplete") and response is not None:
            return self._end(response)
        if kind == "response.failed" or kind == "error":
            self._ended = True
            error = response.get("error") if response is not None else event
            self.usage = usage_to_chat(response.get("usage")) if response is not None else None
            message = error.get("message") if isinstance(error, dict) else None
            code = error.get("code") if isinstance(error, dict) else None
            return [
                {"error": {"message": message or "The upstream response failed.", "type": "api_error", "code": code}}
            ]
        return []

    def _end(self, response: Json) -> list[Json]:
        self._ended = True
        chunks = [*self._first(), self._chunk({}, _finish_reason(response, bool(self._calls)))]
        self.usage = usage_to_chat(response.get("usage"))
        if self.include_usage and self.usage is not None:
            chunks.append(
                {
                    "id": self._id,
                    "object": "chat.completion.chunk",
                    "created": self._created,
                    "model": self.model,
                    "choices": [],
                    "usage": self.usage,
                }
            )
        return chunks

    def finish(self) -> list[Json]:
        """Closing chunks when the stream ended without a terminal event: a plain stop."""
        if self._ended:
            return []
        self._ended = True
        return [*self._first(), self._chunk({}, "stop")]
