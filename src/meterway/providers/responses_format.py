"""Translation between OpenAI's Responses API and chat completions: pure, no I/O.

A deployment whose upstream speaks only chat (vLLM, Anthropic and Gemini through their own chat
translation, the demo model) serves `/v1/responses` through `responses_to_chat` and
`chat_to_response` / `ChatToResponsesStream`; a Responses-only model serves chat through the
reverse bridge, `responses_reverse`. The shapes are
OpenAI's, as its SDK's types (`openai.types.responses`) and its OpenAPI spec define them.

What the bridge does not carry, and why:

* Built-in tools (web_search, file_search, computer use, code interpreter, MCP, image generation...)
  run inside OpenAI; a chat upstream has nothing to run them with, so they are refused (400), as
  are input items that only such tools produce, file inputs by id or URL (the file lives at OpenAI),
  `conversation` and stored `prompt` templates.
* Only the fields named here are sent; others (`include`, `truncation`, `max_tool_calls`,
  `stream_options`...) have no chat counterpart and are not.
* `metadata`, `store`, `background` and `previous_response_id` belong to the gateway (which stores
  the response, meters it and resolves earlier turns before the bridge sees the request): they
  are echoed in the Response, never sent upstream. Chat's own `metadata` is OpenAI's stored-
  completions tag, which other chat servers reject or ignore.
* `instructions` and `developer` messages become `system` messages: every chat server and the
  chat translations of the other families know that role; not all know `developer`.
* Reasoning items in the input are dropped: their content is the upstream's own, often encrypted.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from meterway.providers.base import Usage, not_counts, tokens

Event = dict[str, Any]  # one Responses stream event: `type`, `sequence_number` and its fields
Json = dict[str, Any]


class TranslationError(Exception):
    """A request the bridge cannot carry faithfully: the caller answers 400 naming `param`."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def sse(event: Event) -> bytes:
    """One Responses stream event as SSE: OpenAI names each event by its type."""
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


# ---------------------------------------------------------------- Responses request -> chat request

# Request fields the chat request takes under the same name and meaning.
_SAME = ("temperature", "top_p", "user", "parallel_tool_calls", "service_tier", "safety_identifier", "prompt_cache_key")
# Request fields the bridge refuses when set: they name things that live at OpenAI.
_REFUSED = {
    "conversation": "conversations are stored at OpenAI; this deployment cannot read them",
    "prompt": "stored prompt templates live at OpenAI; this deployment cannot read them",
}
_ROLES = {"user": "user", "system": "system", "developer": "system", "assistant": "assistant"}


def fail(param: str, message: str) -> TranslationError:
    """The error for a request the bridge refuses, naming the parameter (the caller answers 400)."""
    return TranslationError(f"Invalid '{param}': {message}.", param)


def items_of(value: Any, param: str = "input") -> list[Json]:
    """A request's `input` as a list of items: a string is one user message; an item without a
    `type` is a message (the SDK's EasyInputMessage)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if not isinstance(value, list):
        raise fail(param, "expected a string or an array of input items")
    items: list[Json] = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise fail(f"{param}[{i}]", "expected an object")
        items.append(item if "type" in item else {**item, "type": "message"})
    return items


def _image_part(part: Json, where: str) -> Json:
    url = part.get("image_url")
    if not isinstance(url, str) or not url:
        raise fail(where, "only images given by image_url (a URL or a data URL) can be sent to this deployment")
    image: Json = {"url": url}
    if part.get("detail") is not None:
        image["detail"] = part["detail"]
    return {"type": "image_url", "image_url": image}


def _file_part(part: Json, where: str) -> Json:
    data = part.get("file_data")
    if not isinstance(data, str) or not data:
        raise fail(where, "only files given inline (file_data) can be sent to this deployment")
    file: Json = {"file_data": data}
    if isinstance(part.get("filename"), str):
        file["filename"] = part["filename"]
    return {"type": "file", "file": file}


def _user_content(content: Any, where: str) -> str | list[Json]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise fail(where, "expected a string or an array of content parts")
    parts: list[Json] = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image":
            parts.append(_image_part(part, at))
        elif kind == "input_file":
            parts.append(_file_part(part, at))
        else:
            raise fail(at, f"content part type {kind!r} cannot be sent to this deployment")
    return parts


def _assistant_message(content: Any, where: str) -> Json:
    """An assistant turn: its text parts joined (chat takes assistant text as a string everywhere),
    a refusal as chat's `refusal`."""
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    if not isinstance(content, list):
        raise fail(where, "expected a string or an array of content parts")
    texts: list[str] = []
    refusal: str | None = None
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("output_text", "input_text", "text") and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            refusal = part["refusal"]
        else:
            raise fail(f"{where}[{j}]", f"content part type {kind!r} cannot be sent to this deployment")
    message: Json = {"role": "assistant", "content": "".join(texts) if texts or refusal is None else None}
    if refusal is not None:
        message["refusal"] = refusal
    return message


def _tool_output(output: Any, where: str) -> str | list[Json]:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        parts = _user_content(output, where)
        if isinstance(parts, list) and all(p["type"] == "text" for p in parts):
            return "".join(p["text"] for p in parts)  # a tool message's parts may only be text
        raise fail(where, "a function call output can carry only text to this deployment")
    raise fail(where, "expected a string or an array of content parts")


def _messages(items: list[Json], param: str) -> list[Json]:
    messages: list[Json] = []
    for i, item in enumerate(items):
        where = f"{param}[{i}]"
        kind = item.get("type")
        if kind == "message":
            role = _ROLES.get(str(item.get("role")))
            if role is None:
                raise fail(f"{where}.role", "expected one of user, assistant, system, developer")
            if role == "assistant":
                messages.append(_assistant_message(item.get("content"), f"{where}.content"))
            else:
                messages.append({"role": role, "content": _user_content(item.get("content"), f"{where}.content")})
        elif kind == "function_call":
            call_id, name = item.get("call_id"), item.get("name")
            if not isinstance(call_id, str) or not isinstance(name, str):
                raise fail(where, "a function_call needs call_id and name")
            arguments = item.get("arguments")
            call = {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": arguments if isinstance(arguments, str) else "{}"},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)  # one assistant turn: its text and its calls
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if not isinstance(call_id, str):
                raise fail(where, "a function_call_output needs call_id")
            output = _tool_output(item.get("output"), f"{where}.output")
            messages.append({"role": "tool", "tool_call_id": call_id, "content": output})
        elif kind == "reasoning":
            continue  # the upstream's own reasoning, often encrypted: nothing a chat upstream reads
        elif kind == "item_reference":
            raise fail(where, "item references cannot be resolved for this deployment; send the items themselves")
        else:
            raise fail(where, f"input item type {kind!r} cannot be sent to this deployment")
    return messages


def _tools(tools: Any) -> list[Json]:
    if not isinstance(tools, list):
        raise fail("tools", "expected an array")
    out: list[Json] = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise fail(f"tools[{i}]", f"tool type {kind!r} runs at OpenAI; this deployment supports function tools")
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise fail(f"tools[{i}].name", "a function tool needs a name")
        function: Json = {"name": name}
        for key in ("description", "parameters", "strict"):
            if tool.get(key) is not None:
                function[key] = tool[key]
        out.append({"type": "function", "function": function})
    return out


def _function_ref(tool: Any, param: str) -> Json:
    if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("name"), str):
        raise fail(param, "only function tools can be chosen on this deployment")
    return {"type": "function", "function": {"name": tool["name"]}}


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        tools = choice.get("tools")
        if not isinstance(tools, list):
            raise fail("tool_choice.tools", "expected an array")
        refs = [_function_ref(t, f"tool_choice.tools[{i}]") for i, t in enumerate(tools)]
        return {"type": "allowed_tools", "allowed_tools": {"mode": choice.get("mode", "auto"), "tools": refs}}
    return _function_ref(choice, "tool_choice")


def _response_format(text: Any) -> Json | None:
    if not isinstance(text, dict):
        raise fail("text", "expected an object")
    fmt = text.get("format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        assert isinstance(fmt, dict)
        if not isinstance(fmt.get("name"), str) or not isinstance(fmt.get("schema"), dict):
            raise fail("text.format", "a json_schema format needs name and schema")
        schema: Json = {"name": fmt["name"], "schema": fmt["schema"]}
        for key in ("description", "strict"):
            if fmt.get(key) is not None:
                schema[key] = fmt[key]
        return {"type": "json_schema", "json_schema": schema}
    raise fail("text.format.type", "expected one of text, json_object, json_schema")


def responses_to_chat(request: Json, upstream_model: str) -> Json:
    """A self-contained Responses request as a chat completions request (see the module's notes
    for what is not carried)."""
    for key, why in _REFUSED.items():
        if request.get(key) is not None:
            raise fail(key, why)
    messages: list[Json] = []
    instructions = request.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    elif isinstance(instructions, list):
        messages.extend(_messages(items_of(instructions, "instructions"), "instructions"))
    elif instructions is not None and not isinstance(instructions, str):
        raise fail("instructions", "expected a string")
    messages.extend(_messages(items_of(request.get("input")), "input"))
    if not messages:
        raise fail("input", "the request has no input")
    chat: Json = {"model": upstream_model, "messages": messages}
    for key in _SAME:
        if request.get(key) is not None:
            chat[key] = request[key]
    if request.get("tools"):
        chat["tools"] = _tools(request["tools"])
    if request.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(request["tool_choice"])
    text = request.get("text")
    if text is not None:
        response_format = _response_format(text)
        if response_format is not None:
            chat["response_format"] = response_format
        if isinstance(text, dict) and text.get("verbosity") is not None:
            chat["verbosity"] = text["verbosity"]
    if request.get("max_output_tokens") is not None:
        chat["max_completion_tokens"] = request["max_output_tokens"]
    reasoning = request.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort") is not None:
        chat["reasoning_effort"] = reasoning["effort"]
    if request.get("top_logprobs"):
        chat["logprobs"] = True
        chat["top_logprobs"] = request["top_logprobs"]
    if request.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


# ---------------------------------------------------------------- chat answer -> Response


def _suffix(response_id: str) -> str:
    return response_id.removeprefix("resp_")


def item_id(prefix: str, response_id: str, index: int) -> str:
    """The id of a response's output item: derived from the response's, so it is stable and unique."""
    return f"{prefix}_{_suffix(response_id)}_{index}"


def responses_usage(usage: Usage) -> Json:
    """A `Usage` (the figures the ledger recorded, counted where the upstream reported none) as a
    Response's usage object, for the gateway to show the client what it is billed."""
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": usage.cache_write_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens or usage.prompt_tokens + usage.completion_tokens,
    }


def usage_to_responses(usage: Any) -> Json | None:
    """Chat usage in the Responses form. Figures are copied as reported (the ledger judges them)."""
    if not isinstance(usage, dict):
        return None
    prompt_details = usage.get("prompt_tokens_details")
    completion_details = usage.get("completion_tokens_details")
    prompt_details = prompt_details if isinstance(prompt_details, dict) else {}  # an upstream's odd type: no details
    completion_details = completion_details if isinstance(completion_details, dict) else {}
    prompt = usage.get("prompt_tokens", 0)
    completion = usage.get("completion_tokens", 0)
    total = usage.get("total_tokens")
    if total is None and type(prompt) is int and type(completion) is int:
        total = prompt + completion
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": prompt_details.get("cached_tokens") or 0,
            "cache_write_tokens": 0,
        },
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": completion_details.get("reasoning_tokens") or 0},
        "total_tokens": total,
    }


def _echo(request: Json) -> Json:
    """The request's settings as a Response repeats them (OpenAI's defaults where unset)."""
    reasoning = request.get("reasoning")
    given = request.get("text")
    text: Json = given if isinstance(given, dict) else {}
    return {
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "max_tool_calls": request.get("max_tool_calls"),
        "metadata": request.get("metadata") or {},
        "model": str(request.get("model") or ""),
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "previous_response_id": request.get("previous_response_id"),
        "prompt_cache_key": request.get("prompt_cache_key"),
        "reasoning": {
            "effort": reasoning.get("effort") if isinstance(reasoning, dict) else None,
            "summary": reasoning.get("summary") if isinstance(reasoning, dict) else None,
        },
        "safety_identifier": request.get("safety_identifier"),
        "service_tier": request.get("service_tier") or "default",
        "store": request.get("store", True),
        "background": bool(request.get("background", False)),
        "temperature": request.get("temperature", 1.0),
        "text": {**text, "format": text.get("format") or {"type": "text"}},
        "tool_choice": request.get("tool_choice", "auto"),
        "tools": [{"strict": None, **t} for t in request.get("tools") or [] if isinstance(t, dict)],
        "top_logprobs": request.get("top_logprobs", 0),
        "top_p": request.get("top_p", 1.0),
        "truncation": request.get("truncation") or "disabled",
        "user": request.get("user"),
    }


def _status(finish_reason: Any) -> tuple[str, Json | None]:
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def response_object(
    request: Json,
    response_id: str,
    created_at: int,
    *,
    status: str,
    output: list[Json],
    usage: Json | None = None,
    incomplete_details: Json | None = None,
    error: Json | None = None,
) -> Json:
    """A Response object: the request's echo plus what was produced. An optional field that has
    no value is left out (OpenAI's spec types several, `user` for one, as strings, not nullable)."""
    response = {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "completed_at": created_at if status == "completed" else None,
        "error": error,
        "incomplete_details": incomplete_details,
        **_echo(request),
        "output": output,
        "usage": usage,
    }
    return {key: value for key, value in response.items() if value is not None or key in _REQUIRED}


# The fields OpenAI's spec requires of a Response (some of them nullable); the others are left out
# when they have no value.
_REQUIRED = frozenset(
    {
        "id",
        "object",
        "created_at",
        "error",
        "incomplete_details",
        "instructions",
        "model",
        "tools",
        "output",
        "parallel_tool_calls",
        "metadata",
        "tool_choice",
        "temperature",
        "top_p",
    }
)


def _text_part(text: str) -> Json:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _reasoning_of(message: Json) -> str | None:
    """Reasoning text a chat server returned beside the answer (vLLM and DeepSeek name it so)."""
    for key in ("reasoning_content", "reasoning"):
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def chat_to_response(chat: Json, request: Json, response_id: str, created_at: int, model: str | None = None) -> Json:
    """A chat completion as the Response the Responses request asked for: reasoning (when the
    server returned any), the message, then each tool call, as OpenAI orders its output. Its
    `model` names the model that answered, as every reply does (docs/api.md): the chat answer's
    own, else `model` (the deployment's upstream model), else the request's."""
    choices = chat.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    assert isinstance(message, dict)
    status, incomplete = _status(choice.get("finish_reason"))
    item_status = "incomplete" if status == "incomplete" else "completed"
    output: list[Json] = []
    reasoning = _reasoning_of(message)
    if reasoning is not None:
        output.append(
            {
                "id": item_id("rs", response_id, len(output)),
                "type": "reasoning",
                "summary": [],
                "content": [{"type": "reasoning_text", "text": reasoning}],
            }
        )
    content: list[Json] = []
    if isinstance(message.get("content"), str) and message["content"]:
        content.append(_text_part(message["content"]))
    if isinstance(message.get("refusal"), str) and message["refusal"]:
        content.append({"type": "refusal", "refusal": message["refusal"]})
    tool_calls = message.get("tool_calls") if isinstance(message.get("tool_calls"), list) else []
    if content or not tool_calls:
        output.append(
            {
                "id": item_id("msg", response_id, len(output)),
                "type": "message",
                "role": "assistant",
                "status": item_status,
                "content": content or [_text_part("")],
            }
        )
    for call in tool_calls or []:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        output.append(
            {
                "id": item_id("fc", response_id, len(output)),
                "type": "function_call",
                "call_id": call.get("id") or item_id("call", response_id, len(output)),
                "name": function.get("name") or "",
                "arguments": function.get("arguments") or "",
                "status": "completed",
            }
        )
    response = response_object(
        request,
        response_id,
        created_at,
        status=status,
        output=output,
        usage=usage_to_responses(chat.get("usage")),
        incomplete_details=incomplete,
    )
    answered = chat.get("model")
    if isinstance(answered, str) and answered:
        response["model"] = answered
    elif model:
        response["model"] = model
    return response


# ---------------------------------------------------------------- chat stream -> Responses events


class _Open:
    """One output item being streamed: its index, id and what it has accumulated."""

    __slots__ = ("argument_pieces", "arguments", "call_id", "id", "index", "kind", "name", "parts", "pieces")

    def __init__(self, kind: str, index: int, id_: str) -> None:
        self.kind = kind  # "message", "reasoning" or "function_call"
        self.index = index
        self.id = id_
        self.parts: list[Json] = []  # message: output_text / refusal parts, in order; reasoning: one text
        self.call_id = ""
        self.name = ""
        self.arguments = ""
        # deltas are kept as pieces and joined when the part or call closes: `+=` on a dict value or
        # an attribute copies the whole text each time (quadratic over a long answer)
        self.pieces: list[str] = []  # the last part's text since it was last joined
        self.argument_pieces: list[str] = []


class ChatToResponsesStream:
    """Chat chunks in, Responses events out, numbered from 0 as OpenAI numbers them; `response`
    (the final Response) and `usage` (the chat usage seen) after `finish`.

    Items are opened as their first delta comes and closed (their `.done` events) when the next
    kind of item starts or the stream ends, so each item's events come together, as OpenAI sends
    them. Tool calls are closed at the end: chat may interleave the deltas of parallel calls."""

    def __init__(self, request: Json, response_id: str, created_at: int, model: str | None = None) -> None:
        self.request = request
        self.model = model  # the model that answers, when known (else the request's): set before `start`
        self.response_id = response_id
        self.created_at = created_at
        self.sequence_number = 0  # the number the next event gets
        self.response: Json | None = None
        self.usage: Json | None = None
        self._output: list[Json | None] = []  # finished items by output index (None: still open)
        self._open: list[_Open] = []  # open message/reasoning item (at most one) and tool calls
        self._calls: dict[int, _Open] = {}  # chat tool-call index -> its item
        self._finish_reason: Any = None

    def _event(self, kind: str, **fields: Any) -> Event:
        event = {"type": kind, "sequence_number": self.sequence_number, **fields}
        self.sequence_number += 1
        return event

    def _snapshot(self, status: str, **extra: Any) -> Json:
        done = [item for item in self._output if item is not None]
        response = response_object(self.request, self.response_id, self.created_at, status=status, output=done, **extra)
        if self.model:
            response["model"] = self.model
        return response

    def start(self) -> list[Event]:
        snapshot = self._snapshot("in_progress")
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
        ]

    # -- items

    def _new(self, kind: str, prefix: str) -> _Open:
        item = _Open(kind, len(self._output), item_id(prefix, self.response_id, len(self._output)))
        self._output.append(None)
        self._open.append(item)
        return item

    def _text_item(self, kind: str) -> tuple[_Open, list[Event]]:
        """The open message (or reasoning) item, opened now if need be; any other open text item closes."""
        events: list[Event] = []
        for item in list(self._open):
            if item.kind == kind:
                return item, events
            if item.kind != "function_call":
                events.extend(self._close(item))
        item = self._new(kind, "msg" if kind == "message" else "rs")
        events.append(self._event("response.output_item.added", output_index=item.index, item=self._item(item, True)))
        return item, events

    def _part(self, item: _Open, kind: str) -> tuple[int, list[Event]]:
        """The index of the item's open part of `kind` (output_text, refusal, reasoning_text)."""
        if item.parts and item.parts[-1]["type"] == kind:
            return len(item.parts) - 1, []
        events = self._close_part(item) if item.parts else []
        part: Json = {"type": kind, kind if kind == "refusal" else "text": ""}
        if kind == "output_text":
            part.update(annotations=[], logprobs=[])
        item.parts.append(part)
        index = len(item.parts) - 1
        if item.kind == "message":
            events.append(
                self._event(
                    "response.content_part.added",
                    item_id=item.id,
                    output_index=item.index,
                    content_index=index,
                    part=dict(part),
                )
            )
        return index, events

    def _close_part(self, item: _Open) -> list[Event]:
        part = item.parts[-1]
        if item.pieces:
            part["refusal" if part["type"] == "refusal" else "text"] += "".join(item.pieces)
            item.pieces.clear()
        if part.get("closed"):
            return []
        part["closed"] = True
        where = {"item_id": item.id, "output_index": item.index, "content_index": len(item.parts) - 1}
        if part["type"] == "reasoning_text":
            return [self._event("response.reasoning_text.done", **where, text=part["text"])]
        if part["type"] == "refusal":
            done = self._event("response.refusal.done", **where, refusal=part["refusal"])
        else:
            done = self._event("response.output_text.done", **where, text=part["text"], logprobs=[])
        return [done, self._event("response.content_part.done", **where, part=_clean(part))]

    def _item(self, item: _Open, in_progress: bool) -> Json:
        status = "in_progress" if in_progress else self._item_status()
        if item.kind == "function_call":
            return {
                "id": item.id,
                "type": "function_call",
                "call_id": item.call_id,
                "name": item.name,
                "arguments": "" if in_progress else item.arguments,
                # a call is whole once its arguments are (as chat_to_response has it): clients such
                # as the Vercel AI SDK accept only `completed` on a finished call
                "status": "in_progress" if in_progress else "completed",
            }
        if item.kind == "reasoning":
            content = [] if in_progress else [_clean(p) for p in item.parts]
            return {"id": item.id, "type": "reasoning", "summary": [], "content": content}
        content = [] if in_progress else [_clean(p) for p in item.parts]
        return {"id": item.id, "type": "message", "role": "assistant", "status": status, "content": content}

    def _item_status(self) -> str:
        return "incomplete" if _status(self._finish_reason)[0] == "incomplete" else "completed"

    def _close(self, item: _Open) -> list[Event]:
        events: list[Event] = []
        if item.kind == "function_call":
            item.arguments += "".join(item.argument_pieces)
            item.argument_pieces.clear()
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item.id,
                    output_index=item.index,
                    name=item.name,
                    arguments=item.arguments,
                )
            )
        elif item.parts:
            events.extend(self._close_part(item))
        elif item.kind == "message":  # an answer with no text at all still has its one (empty) part
            events.extend(self._part(item, "output_text")[1])
            events.extend(self._close_part(item))
        done = self._item(item, False)
        self._output[item.index] = done
        self._open.remove(item)
        events.append(self._event("response.output_item.done", output_index=item.index, item=done))
        return events

    # -- chunks

    def feed(self, chunk: Json) -> list[Event]:
        if self.response is not None:  # already ended (failed): nothing more is the client's
            return []
        events: list[Event] = []
        error = chunk.get("error")
        if isinstance(error, dict):  # a chat server's error in the stream: the Response failed
            message = error.get("message")
            return self.failed({"code": "server_error", "message": str(message or "The upstream failed.")})
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            return events
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # a Response has one answer
            delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
            assert isinstance(delta, dict)
            reasoning = _reasoning_of(delta)
            if reasoning:
                events.extend(self._text_delta("reasoning", "reasoning_text", reasoning))
            if isinstance(delta.get("content"), str) and delta["content"]:
                events.extend(self._text_delta("message", "output_text", delta["content"]))
            if isinstance(delta.get("refusal"), str) and delta["refusal"]:
                events.extend(self._text_delta("message", "refusal", delta["refusal"]))
            for call in delta.get("tool_calls") or []:
                if isinstance(call, dict):
                    events.extend(self._call_delta(call))
            if choice.get("finish_reason") is not None:
                self._finish_reason = choice["finish_reason"]
        return events

    def _text_delta(self, kind: str, part_kind: str, text: str) -> list[Event]:
        item, events = self._text_item(kind)
        index, opened = self._part(item, part_kind)
        events.extend(opened)
        item.pieces.append(text)
        where = {"item_id": item.id, "output_index": item.index, "content_index": index, "delta": text}
        if part_kind == "output_text":
            events.append(self._event("response.output_text.delta", **where, logprobs=[]))
        elif part_kind == "refusal":
            events.append(self._event("response.refusal.delta", **where))
        else:
            events.append(self._event("response.reasoning_text.delta", **where))
        return events

    def _call_delta(self, call: Json) -> list[Event]:
        events: list[Event] = []
        index = call.get("index", 0)
        item = self._calls.get(index)
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        assert isinstance(function, dict)
        if item is None:
            for other in list(self._open):  # the answer's text ends where its tool calls begin
                if other.kind != "function_call":
                    events.extend(self._close(other))
            item = self._new("function_call", "fc")
            item.call_id = call.get("id") or item_id("call", self.response_id, item.index)
            item.name = function.get("name") or ""
            self._calls[index] = item
            events.append(
                self._event("response.output_item.added", output_index=item.index, item=self._item(item, True))
            )
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            item.argument_pieces.append(arguments)
            events.append(
                self._event(
                    "response.function_call_arguments.delta", item_id=item.id, output_index=item.index, delta=arguments
                )
            )
        return events

    def _close_all(self) -> list[Event]:
        events: list[Event] = []
        if not self._output:  # nothing at all came: still one (empty) message, as chat_to_response gives
            events.extend(self._text_item("message")[1])
        for item in sorted(self._open, key=lambda i: i.index):
            events.extend(self._close(item))
        return events

    def finish(self) -> list[Event]:
        """The remaining `.done` events and, last, response.completed (or response.incomplete);
        nothing after `failed`."""
        if self.response is not None:
            return []
        events = self._close_all()
        status, incomplete = _status(self._finish_reason)
        self.response = self._snapshot(status, usage=usage_to_responses(self.usage), incomplete_details=incomplete)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        events.append(self._event(kind, response=self.response))
        return events

    def failed(self, error: Json) -> list[Event]:
        """The closing events of a stream that failed: response.failed with `error` ({code, message})."""
        events = self._close_all()
        self.response = self._snapshot("failed", usage=usage_to_responses(self.usage), error=error)
        events.append(self._event("response.failed", response=self.response))
        return events


def _clean(part: Json) -> Json:
    return {k: v for k, v in part.items() if k != "closed"}


# ---------------------------------------------------------------- stored items and usage


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _as_parts(content: Any, kind: str) -> list[Json]:
    """A message's content as stored parts; an answer's text parts with the `annotations` and
    `logprobs` lists OpenAI's spec requires of them."""
    parts: list[Json] = []
    if isinstance(content, str):
        parts = [{"type": kind, "text": content}]
    elif isinstance(content, list):
        parts = [dict(p) for p in content if isinstance(p, dict)]
    for part in parts:
        if part.get("type") == "output_text":
            part.setdefault("annotations", [])
            part.setdefault("logprobs", [])
    return parts


def input_items(request: Json) -> list[dict[str, Any]]:
    """The request's input as stored items with ids, as `GET /v1/responses/{id}/input_items` lists
    them: messages with their content as parts, function calls and their outputs; an item keeps an
    id it came with (an earlier turn's), else gets a new one."""
    stored: list[Json] = []
    for item in items_of(request.get("input")):
        kind = item.get("type")
        if kind == "message":
            role = item.get("role")
            is_assistant = role == "assistant"
            stored.append(
                {
                    "id": item.get("id") or _new_id("msg"),
                    "type": "message",
                    "role": role,
                    "status": item.get("status") or "completed",
                    "content": _as_parts(item.get("content"), "output_text" if is_assistant else "input_text"),
                }
            )
        elif kind == "function_call":
            stored.append({**item, "id": item.get("id") or _new_id("fc"), "status": item.get("status") or "completed"})
        elif kind == "function_call_output":
            stored.append({**item, "id": item.get("id") or _new_id("fco"), "status": item.get("status") or "completed"})
        else:
            stored.append({**item, "id": item.get("id") or _new_id("item")})
    return stored


def item_references(request: Json) -> list[str]:
    """The ids of the request's `item_reference` inputs. A client that stores responses (the
    Vercel AI SDK by default) sends an earlier answer back as a reference to its output items
    rather than the items themselves; the gateway looks them up before the bridge sees them."""
    value = request.get("input")
    if not isinstance(value, list):
        return []
    return [
        str(item["id"])
        for item in value
        if isinstance(item, dict) and item.get("type") == "item_reference" and isinstance(item.get("id"), str)
    ]


def response_id_for_item(item_id: str) -> str | None:
    """The Response an output item of this bridge belongs to (its ids are `<kind>_<response
    suffix>_<index>`, see `item_id`); None for an id the bridge did not make."""
    kind, _, rest = item_id.partition("_")
    suffix, _, index = rest.rpartition("_")
    if kind in ("msg", "fc", "rs") and suffix and index.isdigit():
        return "resp_" + suffix
    return None


def resolve_references(request: Json, items: Mapping[str, Json]) -> Json:
    """The request with each `item_reference` input replaced by the item it names (`items`, by
    id: what the gateway found); a reference to an item not found is the client's error."""
    value = request.get("input")
    if not isinstance(value, list):
        return request
    resolved: list[Any] = []
    for i, item in enumerate(value):
        if isinstance(item, dict) and item.get("type") == "item_reference":
            found = items.get(str(item.get("id")))
            if found is None:
                raise TranslationError(f"Item with id '{item.get('id')}' not found.", f"input[{i}]")
            resolved.append(found)
        else:
            resolved.append(item)
    return {**request, "input": resolved}


def output_as_input(response: Json) -> list[dict[str, Any]]:
    """A stored response's output as input items for the next turn (OpenAI takes its output items
    back as input unchanged)."""
    output = response.get("output")
    return [dict(item) for item in output if isinstance(item, dict)] if isinstance(output, list) else []


def usage_of(response: Json) -> Usage | None:
    """A Response's usage as the ledger counts it (see `base.tokens`): input includes cached,
    reasoning is part of output. None when the Response has none."""
    return usage_from_responses(response.get("usage"))


def usage_from_responses(u: Any) -> Usage | None:
    """The Responses usage object as reported; None when there is none."""
    if u is None:
        return None
    if not isinstance(u, dict):
        return not_counts()
    prompt = tokens(u.get("input_tokens"))
    completion = tokens(u.get("output_tokens"))
    total = tokens(u.get("total_tokens")) or prompt + completion
    input_details = u.get("input_tokens_details")
    output_details = u.get("output_tokens_details")
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=total,
        cached_tokens=tokens(input_details.get("cached_tokens")) if isinstance(input_details, dict) else 0,
        reasoning_tokens=tokens(output_details.get("reasoning_tokens")) if isinstance(output_details, dict) else 0,
    )
