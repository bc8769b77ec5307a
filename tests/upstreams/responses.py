"""OpenAI's Responses API, as the stand-in speaks it (`StandIn` serves these routes beside chat).

Written from OpenAI's API reference and the `openai` SDK's types, independently of meterway's own
translation (a stand-in built from the code it tests would agree with any bug in it).

* `POST /v1/responses` (also `/openai/v1/responses`, Azure's v1 path): input as a string or items;
  the answer follows the stand-in's chat rules: a function tool is called (first one, or the one
  `tool_choice` names) unless `tool_choice` is "none"; else `reply_for(<last user text>)`, or for
  `text.format` json_schema a JSON object that conforms to the schema (`json_answer`).
  `max_output_tokens` below the answer's word count cuts it: status `incomplete`.
* Usage: input tokens = words of every message's text (instructions included) + 3 per item;
  output tokens = words of the answer (tool name + arguments JSON for a call). Reported in the
  Response and in `response.completed`.
* `store` (default true) keeps the response: `GET /v1/responses/{id}` (`?stream=true` replays its
  events, `starting_after=N`), `DELETE`, `GET .../input_items` (`limit`, `order`, `after`),
  `POST .../cancel` (background only). `previous_response_id` prepends the stored conversation.
* `background: true` answers `queued` at once; the response goes `in_progress` after
  `background_step_s`, and `completed` after another.
* `Script(no_usage=True)`: the Response (and its `response.completed`) carries no usage.
* Unknown ids: 404 in OpenAI's error shape. `POST /v1/responses/input_tokens` counts without answering.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.upstreams.standin import (
    PER_MESSAGE_TOKENS,
    TOOL_CALL_ID,
    StandIn,
    _Call,
    count_words,
    json_answer,
    reply_for,
    tool_arguments_json,
)

PREFIXES = ("/v1", "/openai/v1")
Json = Any


def _text(content: Json) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _items(value: Json) -> list[dict[str, Any]] | None:
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": value}]}]
    if not isinstance(value, list):
        return None
    items = []
    for item in value:
        if not isinstance(item, dict):
            return None
        item = dict(item)
        item.setdefault("type", "message")
        if item["type"] == "message" and isinstance(item.get("content"), str):
            kind = "output_text" if item.get("role") == "assistant" else "input_text"
            item["content"] = [{"type": kind, "text": item["content"]}]
        items.append(item)
    return items


# What OpenAI's spec requires of a Response (some nullable); any other field without a value is left
# out, as OpenAI's answers do (`user`, say, is a string or absent, never null).
REQUIRED = frozenset(
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


def _present(response: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in response.items() if value is not None or key in REQUIRED}


@dataclass
class Stored:
    response: dict[str, Any]
    input: list[dict[str, Any]]  # this request's input items, with ids
    conversation: list[dict[str, Any]]  # every item up to and including this response's output
    events: list[dict[str, Any]] = field(default_factory=list)
    background: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)


class ResponsesApi:
    """The stand-in's Responses API: its routes, its store (per stand-in, read by tests as
    `standin.responses.stored`), its background tasks."""

    def __init__(self, standin: StandIn) -> None:
        self.standin = standin
        self.stored: dict[str, Stored] = {}
        self.background_step_s = 0.05
        self._ids = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def add_routes(self, router: web.UrlDispatcher) -> None:
        route = self.standin._route
        for prefix in PREFIXES:
            router.add_post(f"{prefix}/responses", route(self._create))
            router.add_post(f"{prefix}/responses/input_tokens", route(self._input_tokens))
            router.add_get(f"{prefix}/responses/{{id}}", route(self._retrieve))
            router.add_delete(f"{prefix}/responses/{{id}}", route(self._delete))
            router.add_post(f"{prefix}/responses/{{id}}/cancel", route(self._cancel))
            router.add_get(f"{prefix}/responses/{{id}}/input_items", route(self._input_items))

    def _new_id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}_standin{self._ids:06d}"

    # ---- the answer ----------------------------------------------------------------------------

    def _conversation(self, call: _Call) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | str:
        """(earlier items, this input with ids), or the name of the parameter that is wrong."""
        payload = call.payload
        items = _items(payload.get("input"))
        if items is None:
            return "input"
        for item in items:
            item.setdefault("id", self._new_id("msg" if item["type"] == "message" else "item"))
            if item["type"] in ("message", "function_call", "function_call_output"):
                item.setdefault("status", "completed")
        earlier: list[dict[str, Any]] = []
        previous = payload.get("previous_response_id")
        if previous is not None:
            stored = self.stored.get(previous) if isinstance(previous, str) else None
            if stored is None:
                return "previous_response_id"
            earlier = stored.conversation
        return earlier, items

    @staticmethod
    def _input_tokens_of(payload: dict[str, Any], conversation: list[dict[str, Any]]) -> int:
        total = 0
        instructions = payload.get("instructions")
        if isinstance(instructions, str) and instructions:
            total += count_words(instructions) + PER_MESSAGE_TOKENS
        for item in conversation:
            if item.get("type") == "message":
                total += count_words(_text(item.get("content")))
            elif item.get("type") == "function_call_output":
                total += count_words(_text(item.get("output")))
            total += PER_MESSAGE_TOKENS
        return total

    @staticmethod
    def _tool(payload: dict[str, Any]) -> tuple[str, str] | None:
        tools = [t for t in payload.get("tools") or [] if isinstance(t, dict) and t.get("type") == "function"]
        choice = payload.get("tool_choice")
        if not tools or choice == "none":
            return None
        chosen = tools[0]
        if isinstance(choice, dict) and choice.get("type") == "function":
            chosen = next((t for t in tools if t.get("name") == choice.get("name")), chosen)
        return str(chosen.get("name", "")), tool_arguments_json(chosen.get("parameters"))

    def _answer(self, payload: dict[str, Any], conversation: list[dict[str, Any]], rid: str) -> dict[str, Any]:
        """The finished Response for this request."""
        tool = self._tool(payload)
        status, incomplete = "completed", None
        output: list[dict[str, Any]]
        if tool is not None:
            name, arguments = tool
            output_tokens = count_words(name) + count_words(arguments)
            output = [
                {
                    "id": self._new_id("fc"),
                    "type": "function_call",
                    "status": "completed",
                    "call_id": TOOL_CALL_ID,
                    "name": name,
                    "arguments": arguments,
                }
            ]
        else:
            last_user = next(
                (
                    _text(i.get("content"))
                    for i in reversed(conversation)
                    if i.get("type") == "message" and i.get("role") == "user"
                ),
                "",
            )
            text = reply_for(last_user)
            fmt = (payload.get("text") or {}).get("format") if isinstance(payload.get("text"), dict) else None
            if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
                text = jsonlib.dumps(json_answer(fmt.get("schema"), text))
            elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
                text = jsonlib.dumps({"answer": text})
            cap = payload.get("max_output_tokens")
            if isinstance(cap, int) and count_words(text) > cap:
                text = " ".join(text.split()[:cap])
                status, incomplete = "incomplete", {"reason": "max_output_tokens"}
            output_tokens = count_words(text)
            output = [
                {
                    "id": self._new_id("msg"),
                    "type": "message",
                    "status": "completed" if status == "completed" else "incomplete",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
                }
            ]
        input_tokens = self._input_tokens_of(payload, conversation)
        usage = {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        }
        return self._response(payload, rid, status, output, usage, incomplete)

    @staticmethod
    def _response(
        payload: dict[str, Any],
        rid: str,
        status: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None,
        incomplete: dict[str, Any] | None = None,
        created_at: int | None = None,
    ) -> dict[str, Any]:
        reasoning = payload.get("reasoning") if isinstance(payload.get("reasoning"), dict) else {}
        text = payload.get("text") if isinstance(payload.get("text"), dict) else {}
        response = {
            "id": rid,
            "object": "response",
            "created_at": created_at or int(time.time()),
            "status": status,
            "background": bool(payload.get("background", False)),
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": None,
            "incomplete_details": incomplete,
            "instructions": payload.get("instructions"),
            "max_output_tokens": payload.get("max_output_tokens"),
            "max_tool_calls": None,
            "model": payload.get("model"),
            "output": output,
            "parallel_tool_calls": payload.get("parallel_tool_calls", True),
            "previous_response_id": payload.get("previous_response_id"),
            "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
            "service_tier": "default",
            "store": payload.get("store", True),
            "temperature": payload.get("temperature", 1.0),
            "text": {"format": {"type": "text"}, **text},
            "tool_choice": payload.get("tool_choice", "auto"),
            "tools": [{"strict": True, **t} for t in payload.get("tools") or []],
            "top_logprobs": 0,
            "top_p": payload.get("top_p", 1.0),
            "truncation": "disabled",
            "usage": usage,
            "user": payload.get("user"),
            "metadata": payload.get("metadata") or {},
        }
        return _present(response)

    @staticmethod
    def _events(final: dict[str, Any]) -> list[dict[str, Any]]:
        """The stream of a finished Response, numbered from 0, as OpenAI sends it."""
        start = _present({**final, "status": "in_progress", "output": [], "usage": None, "completed_at": None})
        start["incomplete_details"] = None
        events: list[dict[str, Any]] = [
            {"type": "response.created", "response": start},
            {"type": "response.in_progress", "response": start},
        ]
        for index, item in enumerate(final["output"]):
            if item["type"] == "function_call":
                events.append(
                    {
                        "type": "response.output_item.added",
                        "output_index": index,
                        "item": {**item, "status": "in_progress", "arguments": ""},
                    }
                )
                arguments = item["arguments"]
                middle = len(arguments) // 2
                for piece in (arguments[:middle], arguments[middle:]):
                    events.append(
                        {
                            "type": "response.function_call_arguments.delta",
                            "item_id": item["id"],
                            "output_index": index,
                            "delta": piece,
                        }
                    )
                events.append(
                    {
                        "type": "response.function_call_arguments.done",
                        "item_id": item["id"],
                        "output_index": index,
                        "name": item["name"],
                        "arguments": arguments,
                    }
                )
            else:
                events.append(
                    {
                        "type": "response.output_item.added",
                        "output_index": index,
                        "item": {**item, "status": "in_progress", "content": []},
                    }
                )
                for part_index, part in enumerate(item["content"]):
                    where = {"item_id": item["id"], "output_index": index, "content_index": part_index}
                    events.append({"type": "response.content_part.added", **where, "part": {**part, "text": ""}})
                    words = part["text"].split(" ")
                    for n, word in enumerate(words):
                        piece = word if n == 0 else " " + word
                        events.append({"type": "response.output_text.delta", **where, "delta": piece, "logprobs": []})
                    events.append({"type": "response.output_text.done", **where, "text": part["text"], "logprobs": []})
                    events.append({"type": "response.content_part.done", **where, "part": part})
            events.append({"type": "response.output_item.done", "output_index": index, "item": item})
        kind = {"completed": "response.completed", "incomplete": "response.incomplete"}.get(
            final["status"], "response.failed"
        )
        events.append({"type": kind, "response": final})
        return [{**event, "sequence_number": n} for n, event in enumerate(events)]

    # ---- routes ---------------------------------------------------------------------------------

    async def _not_found(self, call: _Call, rid: str) -> web.StreamResponse:
        return await self.standin._openai_error(call, 404, f"Response with id '{rid}' not found.", param=None)

    async def _create(self, call: _Call) -> web.StreamResponse:
        standin = self.standin
        if (error := await standin._openai_guard(call)) is not None:
            return error
        payload = call.payload
        if not isinstance(payload.get("model"), str) or not payload["model"]:
            return await standin._openai_error(call, 400, "Missing required parameter: 'model'.", param="model")
        found = self._conversation(call)
        if found == "previous_response_id":
            rid = payload.get("previous_response_id")
            return await standin._openai_error(
                call,
                400,
                f"Previous response with id '{rid}' not found.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        if isinstance(found, str):
            return await standin._openai_error(call, 400, "Invalid type for 'input'.", param="input")
        earlier, items = found
        store = payload.get("store", True) is not False
        background = payload.get("background") is True
        if background and not store:
            return await standin._openai_error(
                call, 400, "Background responses require store=true.", param="background"
            )
        rid = self._new_id("resp")
        final = self._answer(payload, [*earlier, *items], rid)
        if call.script is not None and call.script.no_usage:  # an upstream that reports no usage at all
            final = {key: value for key, value in final.items() if key != "usage"}
        entry = Stored(final, items, [*earlier, *items, *final["output"]], background=background)
        if store:
            self.stored[rid] = entry
        headers = standin._openai_headers()
        if background:
            entry.response = _present({**final, "status": "queued", "output": [], "usage": None, "completed_at": None})
            task = asyncio.get_running_loop().create_task(self._run(entry, final))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            if payload.get("stream") is True:
                await entry.done.wait()
                return await self._stream(call, entry.events, final.get("usage"), headers)
            return await standin._json(call, entry.response, usage=None, headers=headers)
        entry.events = self._events(final)
        entry.done.set()
        if payload.get("stream") is True:
            return await self._stream(call, entry.events, final.get("usage"), headers)
        return await standin._json(call, final, usage=final.get("usage"), headers=headers)

    async def _run(self, entry: Stored, final: dict[str, Any]) -> None:
        await self.standin._pause(self.background_step_s)
        if entry.response["status"] != "queued":
            return
        entry.response = {**entry.response, "status": "in_progress"}
        await self.standin._pause(self.background_step_s)
        if entry.response["status"] != "in_progress":
            return
        entry.response = final
        entry.events = self._events(final)
        entry.done.set()

    async def _stream(
        self, call: _Call, events: list[dict[str, Any]], usage: dict[str, Any] | None, headers: dict[str, str]
    ) -> web.StreamResponse:
        frames = [(str(e["type"]), e) for e in events]
        return await self.standin._sse(call, frames, usage=usage, headers=headers)  # type: ignore[arg-type]

    async def _retrieve(self, call: _Call) -> web.StreamResponse:
        if (error := await self.standin._openai_guard(call, needs_body=False)) is not None:
            return error
        rid = call.request.match_info["id"]
        entry = self.stored.get(rid)
        if entry is None:
            return await self._not_found(call, rid)
        if call.request.query.get("stream") == "true":
            await entry.done.wait()
            after = call.request.query.get("starting_after")
            start = int(after) + 1 if after and after.isdigit() else 0
            return await self._stream(call, entry.events[start:], entry.response.get("usage"), {})
        return await self.standin._json(call, entry.response)

    async def _delete(self, call: _Call) -> web.StreamResponse:
        if (error := await self.standin._openai_guard(call, needs_body=False)) is not None:
            return error
        rid = call.request.match_info["id"]
        if self.stored.pop(rid, None) is None:
            return await self._not_found(call, rid)
        return await self.standin._json(call, {"id": rid, "object": "response", "deleted": True})

    async def _cancel(self, call: _Call) -> web.StreamResponse:
        if (error := await self.standin._openai_guard(call, needs_body=False)) is not None:
            return error
        rid = call.request.match_info["id"]
        entry = self.stored.get(rid)
        if entry is None:
            return await self._not_found(call, rid)
        if not entry.background:
            return await self.standin._openai_error(
                call, 400, "Only responses created with background=true can be cancelled.", param=None
            )
        status = entry.response["status"]
        if status not in ("queued", "in_progress", "cancelled"):
            return await self.standin._openai_error(
                call, 400, f"Cannot cancel a response with status '{status}'.", param=None
            )
        entry.response = {**entry.response, "status": "cancelled"}
        entry.events = [{"type": "response.failed", "response": entry.response, "sequence_number": 0}]
        entry.done.set()
        return await self.standin._json(call, entry.response)

    async def _input_items(self, call: _Call) -> web.StreamResponse:
        if (error := await self.standin._openai_guard(call, needs_body=False)) is not None:
            return error
        rid = call.request.match_info["id"]
        entry = self.stored.get(rid)
        if entry is None:
            return await self._not_found(call, rid)
        query = call.request.query
        items = list(entry.input)
        if query.get("order", "desc") == "desc":
            items.reverse()
        after = query.get("after")
        if after:
            ids = [i["id"] for i in items]
            items = items[ids.index(after) + 1 :] if after in ids else []
        limit = int(query["limit"]) if query.get("limit", "").isdigit() else 20
        page = items[:limit]
        body = {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }
        return await self.standin._json(call, body)

    async def _input_tokens(self, call: _Call) -> web.StreamResponse:
        if (error := await self.standin._openai_guard(call)) is not None:
            return error
        found = self._conversation(call)
        if isinstance(found, str):
            return await self.standin._openai_error(call, 400, f"Invalid '{found}'.", param=found)
        earlier, items = found
        tokens = self._input_tokens_of(call.payload, [*earlier, *items])
        return await self.standin._json(call, {"object": "response.input_tokens", "input_tokens": tokens})
