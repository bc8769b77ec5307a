"""Stand-ins for Cohere's v2 API and Google's Gemini API, in their own wire formats, beside the
OpenAI and Anthropic ones of `StandIn` (same recording, scripting and deterministic answers).

Cohere (`/v2/chat`, `/v2/embed`, bearer key): answers `message.content[].text` or
`message.tool_calls`, usage in `usage.billed_units` and `usage.tokens`; streams `message-start`,
`content-start`/`-delta`/`-end` (or `tool-plan-delta`, `tool-call-start`/`-delta`/`-end`) and
`message-end`, each as `event: <type>` with the same `type` in its data. Embed requires
`input_type`, as Cohere's embed v3+ models do.

Gemini (`/v1beta/models/{model}:generateContent`, `:streamGenerateContent?alt=sse`, `:embedContent`,
`:batchEmbedContents`, `x-goog-api-key` or `?key=`): `candidates[].content.parts` with `text` or
`functionCall`, `usageMetadata` with prompt/candidates/total counts, on every streamed chunk.

Prompt tokens: words of every message's (content's) text + 3 each; output tokens: words of the
reply, or of the tool name plus its arguments JSON.
"""

from __future__ import annotations

import json as jsonlib
from typing import Any

from aiohttp import web

from tests.upstreams.standin import (
    PER_MESSAGE_TOKENS,
    Frame,
    StandIn,
    _Call,
    _pieces,
    count_words,
    embedding_for,
    json_answer,
    reply_for,
    tool_arguments,
)

COHERE_TOOL_CALL_ID = "standin_tool_1"
COHERE_KEY = "co-key"  # the only key the rerank route takes, as Cohere checks its keys


def rerank_results(query: str, documents: list[str], top_n: Any) -> list[dict[str, Any]]:
    """Documents by the share of their words that are the query's, best first (ties by index)."""
    words = set(query.lower().split())
    scores = [(sum(w in words for w in d.lower().split()) / (len(d.split()) or 1), i) for i, d in enumerate(documents)]
    ranked = sorted(scores, key=lambda s: (-s[0], s[1]))
    if isinstance(top_n, int):
        ranked = ranked[:top_n]
    return [{"index": i, "relevance_score": round(score, 6)} for score, i in ranked]


def _cohere_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _gemini_text(parts: Any) -> str:
    return " ".join(p["text"] for p in parts or [] if isinstance(p, dict) and isinstance(p.get("text"), str))


def _gemini_text_only(parts: Any) -> bool:
    """Whether embedding content is text, as Gemini's embedding models require."""
    return (
        isinstance(parts, list)
        and bool(parts)
        and all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in parts)
    )


class ProviderStandIn(StandIn):
    """Cohere and Gemini on one port, beside `StandIn`'s OpenAI, Azure and Anthropic routes (so one
    stand-in serves every provider family); `received` records them all."""

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v2/chat", self._route(self._cohere_chat))
        router.add_post("/v2/embed", self._route(self._cohere_embed))
        router.add_post("/v2/rerank", self._route(self._cohere_rerank))
        router.add_post("/v1/rerank", self._route(self._compatible_rerank))  # vLLM / Jina
        router.add_post("/v1/moderations", self._route(self._moderations))  # OpenAI
        router.add_post("/v1beta/models/{target}", self._route(self._gemini))
        super()._add_routes(router)

    # ---- Cohere ----------------------------------------------------------------------------------

    async def _cohere_guard(self, call: _Call) -> web.StreamResponse | None:
        if not call.record.headers.get("authorization", "").startswith("Bearer "):
            return await self._plain_json(call, 401, {"message": "no api key supplied"})
        if call.json_error is not None:
            return await self._plain_json(call, 400, {"message": f"invalid request: {call.json_error}"})
        return None

    async def _plain_json(self, call: _Call, status: int, body: dict[str, Any]) -> web.StreamResponse:
        call.record.status, call.record.response, call.record.completed = status, body, True
        return web.json_response(body, status=status)

    async def _cohere_chat(self, call: _Call) -> web.StreamResponse:
        if (error := await self._cohere_guard(call)) is not None:
            return error
        p = call.payload
        messages = p.get("messages")
        if not isinstance(messages, list) or not messages or not p.get("model"):
            return await self._plain_json(call, 400, {"message": "invalid request: messages and model are required"})
        prompt = sum(count_words(_cohere_text(m.get("content"))) + PER_MESSAGE_TOKENS for m in messages)
        tools = [t["function"] for t in p.get("tools") or [] if isinstance(t, dict) and "function" in t]
        last = messages[-1]
        call_tool = bool(tools) and last.get("role") == "user" and p.get("tool_choice") != "NONE"
        mid = f"cohere-standin-{next(self._ids)}"
        if call_tool:
            name, args = tools[0]["name"], jsonlib.dumps(tool_arguments(tools[0].get("parameters")))
            output = count_words(name) + count_words(args)
            finish = "TOOL_CALL"
        else:
            user: dict[str, Any] = next((m for m in reversed(messages) if m.get("role") == "user"), {})
            text = reply_for(_cohere_text(user.get("content")))
            wanted = p.get("response_format")
            if isinstance(wanted, dict) and wanted.get("type") == "json_object":  # JSON, to its schema if it has one
                text = jsonlib.dumps(json_answer(wanted.get("json_schema"), text))
            output, finish = count_words(text), "COMPLETE"
        usage = {
            "billed_units": {"input_tokens": prompt, "output_tokens": output},
            "tokens": {"input_tokens": prompt + 5, "output_tokens": output},  # the template's tokens are not billed
        }
        call.record.usage = {"prompt_tokens": prompt, "completion_tokens": output}
        no_usage = call.script is not None and call.script.no_usage
        if not p.get("stream"):
            message: dict[str, Any] = {"role": "assistant"}
            if call_tool:
                message["tool_plan"] = f"I will call {name}."
                message["tool_calls"] = [
                    {"id": COHERE_TOOL_CALL_ID, "type": "function", "function": {"name": name, "arguments": args}}
                ]
            else:
                message["content"] = [{"type": "text", "text": text}]
            answer = {"id": mid, "finish_reason": finish, "message": message, **({} if no_usage else {"usage": usage})}
            return await self._json(call, answer, usage=call.record.usage)
        frames: list[Frame] = [
            ("message-start", {"id": mid, "type": "message-start", "delta": {"message": {"role": "assistant"}}})
        ]
        if call_tool:
            frames.append(
                ("tool-plan-delta", {"type": "tool-plan-delta", "delta": {"message": {"tool_plan": "Calling."}}})
            )
            start = {"id": COHERE_TOOL_CALL_ID, "type": "function", "function": {"name": name, "arguments": ""}}
            frames.append(
                (
                    "tool-call-start",
                    {"type": "tool-call-start", "index": 0, "delta": {"message": {"tool_calls": start}}},
                )
            )
            for piece in (args[: len(args) // 2], args[len(args) // 2 :]):
                delta: dict[str, Any] = {"message": {"tool_calls": {"function": {"arguments": piece}}}}
                frames.append(("tool-call-delta", {"type": "tool-call-delta", "index": 0, "delta": delta}))
            frames.append(("tool-call-end", {"type": "tool-call-end", "index": 0}))
        else:
            content: dict[str, Any] = {"message": {"content": {"type": "text", "text": ""}}}
            frames.append(("content-start", {"type": "content-start", "index": 0, "delta": content}))
            for piece in _pieces(text):
                delta = {"message": {"content": {"text": piece}}}
                frames.append(("content-delta", {"type": "content-delta", "index": 0, "delta": delta}))
            frames.append(("content-end", {"type": "content-end", "index": 0}))
        end = {"type": "message-end", "delta": {"finish_reason": finish, **({} if no_usage else {"usage": usage})}}
        frames.append(("message-end", end))
        return await self._sse(call, frames, usage=call.record.usage)

    async def _cohere_embed(self, call: _Call) -> web.StreamResponse:
        if (error := await self._cohere_guard(call)) is not None:
            return error
        p = call.payload
        texts = p.get("texts")
        if not isinstance(texts, list) or not p.get("input_type"):
            return await self._plain_json(call, 400, {"message": "invalid request: texts and input_type are required"})
        if not all(isinstance(t, str) for t in texts):
            return await self._plain_json(call, 400, {"message": "invalid request: texts must be strings"})
        tokens = sum(count_words(t) for t in texts)
        meta: dict[str, Any] = {"api_version": {"version": "2"}, "billed_units": {"input_tokens": tokens}}
        if call.script is not None and call.script.no_usage:
            del meta["billed_units"]
        body = {
            "id": f"embed-standin-{next(self._ids)}",
            "embeddings": {"float": [embedding_for(t, p.get("output_dimension") or 8) for t in texts]},
            "texts": texts,
            "meta": meta,
            "response_type": "embeddings_by_type",
        }
        return await self._json(call, body, usage={"prompt_tokens": tokens})

    async def _cohere_rerank(self, call: _Call) -> web.StreamResponse:
        """Cohere's `/v2/rerank`: the key must be COHERE_KEY; documents strings; one search unit
        per 100 documents (Cohere's rule for short documents)."""
        if call.record.headers.get("authorization") != f"Bearer {COHERE_KEY}":
            return await self._plain_json(call, 401, {"message": "invalid api token"})
        if (error := await self._cohere_guard(call)) is not None:
            return error
        p = call.payload
        docs = p.get("documents")
        if (
            not isinstance(p.get("query"), str)
            or not isinstance(docs, list)
            or not all(isinstance(d, str) for d in docs)
        ):
            return await self._plain_json(call, 400, {"message": "invalid request: query and documents (strings)"})
        body = {
            "id": f"rerank-standin-{next(self._ids)}",
            "results": rerank_results(p["query"], docs, p.get("top_n")),
            "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": -(-len(docs) // 100)}},
        }
        return await self._json(call, body)

    async def _compatible_rerank(self, call: _Call) -> web.StreamResponse:
        """Jina's shape, as vLLM serves it: `usage.total_tokens`, documents back unless refused."""
        p = call.payload
        docs = p.get("documents")
        if (
            not isinstance(p.get("query"), str)
            or not isinstance(docs, list)
            or not all(isinstance(d, str) for d in docs)
        ):
            return await self._json(call, {"error": {"message": "query and documents required"}}, status=400)
        results = rerank_results(p["query"], docs, p.get("top_n"))
        if p.get("return_documents", True):
            for r in results:
                r["document"] = {"text": docs[r["index"]]}
        tokens = count_words(p["query"]) * len(docs) + sum(count_words(d) for d in docs)
        body = {"id": f"rerank-{next(self._ids)}", "model": p.get("model"), "results": results}
        body["usage"] = {"total_tokens": tokens}
        return await self._json(call, body)

    async def _moderations(self, call: _Call) -> web.StreamResponse:
        """OpenAI's moderations: flagged when the input says "attack"; no usage, as OpenAI's has none."""
        given = call.payload.get("input")
        texts = [given] if isinstance(given, str) else [t for t in given or [] if isinstance(t, str)]
        results = []
        for text in texts:
            flagged = "attack" in text
            results.append(
                {
                    "flagged": flagged,
                    "categories": {"violence": flagged, "harassment": False},
                    "category_scores": {"violence": 0.9 if flagged else 0.01, "harassment": 0.001},
                    "category_applied_input_types": {"violence": ["text"], "harassment": ["text"]},
                }
            )
        body = {"id": f"modr-{next(self._ids)}", "model": call.payload.get("model"), "results": results}
        return await self._json(call, body)

    # ---- Gemini ----------------------------------------------------------------------------------

    async def _gemini_error(self, call: _Call, code: int, status: str, message: str) -> web.StreamResponse:
        return await self._plain_json(call, code, {"error": {"code": code, "message": message, "status": status}})

    async def _gemini(self, call: _Call) -> web.StreamResponse:
        request = call.request
        if not (call.record.headers.get("x-goog-api-key") or request.query.get("key")):
            return await self._gemini_error(
                call, 403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers."
            )
        model, _, method = request.match_info["target"].partition(":")
        return await self._gemini_answer(call, model, method)

    async def _gemini_answer(self, call: _Call, model: str, method: str) -> web.StreamResponse:
        """A Gemini method's answer once the caller is authorized (by key here, by token on Vertex)."""
        request = call.request
        if call.json_error is not None:
            return await self._gemini_error(call, 400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        if method == "embedContent":
            if not _gemini_text_only(call.payload.get("content", {}).get("parts")):
                return await self._gemini_error(call, 400, "INVALID_ARGUMENT", "content.parts must be text.")
            values = embedding_for(_gemini_text(call.payload.get("content", {}).get("parts")))
            return await self._json(call, {"embedding": {"values": values}})
        if method == "batchEmbedContents":
            requests = call.payload.get("requests") or []
            if any(r.get("model") != f"models/{model}" for r in requests):
                return await self._gemini_error(call, 400, "INVALID_ARGUMENT", "Each request's model must match.")
            if not all(_gemini_text_only((r.get("content") or {}).get("parts")) for r in requests):
                return await self._gemini_error(call, 400, "INVALID_ARGUMENT", "content.parts must be text.")
            return await self._json(
                call, {"embeddings": [{"values": embedding_for(_gemini_text(r["content"]["parts"]))} for r in requests]}
            )
        if method not in ("generateContent", "streamGenerateContent"):
            return await self._gemini_error(call, 404, "NOT_FOUND", f"Method {method} not found.")
        contents = call.payload.get("contents")
        if not isinstance(contents, list) or not contents:
            return await self._gemini_error(
                call, 400, "INVALID_ARGUMENT", "* GenerateContentRequest.contents: contents is not specified"
            )
        system = _gemini_text((call.payload.get("systemInstruction") or {}).get("parts"))
        prompt = (count_words(system) + PER_MESSAGE_TOKENS if system else 0) + sum(
            count_words(_gemini_text(c.get("parts"))) + PER_MESSAGE_TOKENS for c in contents
        )
        functions = [f for t in call.payload.get("tools") or [] for f in t.get("functionDeclarations") or []]
        answered = any("functionResponse" in part for part in contents[-1].get("parts") or [])
        mode = ((call.payload.get("toolConfig") or {}).get("functionCallingConfig") or {}).get("mode")
        if functions and not answered and mode != "NONE":
            fn = functions[0]
            args = tool_arguments(fn.get("parameters"))
            parts: list[dict[str, Any]] = [{"functionCall": {"name": fn["name"], "args": args}}]
            output = count_words(fn["name"]) + count_words(jsonlib.dumps(args))
        else:
            user: dict[str, Any] = next((c for c in reversed(contents) if c.get("role") == "user"), {})
            text = reply_for(_gemini_text(user.get("parts")))
            config = call.payload.get("generationConfig") or {}
            if config.get("responseMimeType") == "application/json":  # JSON, to its schema if it has one
                schema = config.get("responseJsonSchema") or config.get("responseSchema")
                text = jsonlib.dumps(json_answer(schema, text))
            parts = [{"text": text}]
            output = count_words(text)
        usage = {"promptTokenCount": prompt, "candidatesTokenCount": output, "totalTokenCount": prompt + output}
        call.record.usage = {"prompt_tokens": prompt, "completion_tokens": output}
        no_usage = call.script is not None and call.script.no_usage
        rid = f"gemini-standin-{next(self._ids)}"
        if method == "generateContent":
            body = {
                "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
                "modelVersion": model,
                "responseId": rid,
                **({} if no_usage else {"usageMetadata": usage}),
            }
            return await self._json(call, body, usage=call.record.usage)
        if request.query.get("alt") != "sse":
            return await self._gemini_error(call, 400, "INVALID_ARGUMENT", "this stand-in streams only with alt=sse")
        pieces = [{"text": piece} for piece in _pieces(parts[0]["text"])] if "text" in parts[0] else parts
        frames: list[Frame] = []
        for i, piece in enumerate(pieces):
            candidate: dict[str, Any] = {"content": {"role": "model", "parts": [piece]}, "index": 0}
            last = i == len(pieces) - 1
            if last:
                candidate["finishReason"] = "STOP"
            meta = usage if last else {"promptTokenCount": prompt, "totalTokenCount": prompt}
            frame = {"candidates": [candidate], "usageMetadata": meta, "modelVersion": model, "responseId": rid}
            if no_usage:
                del frame["usageMetadata"]
            frames.append((None, frame))
        return await self._sse(call, frames, usage=call.record.usage)
