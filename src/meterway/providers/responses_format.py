"""Translation between OpenAI's Responses API and chat completions, both ways: pure, no I/O.

A deployment whose upstream speaks only chat (vLLM, Anthropic and Gemini through their own chat
translation, the demo model) serves `/v1/responses` through `responses_to_chat` and
`chat_to_response` / `ChatToResponsesStream`; a Responses-only model serves chat through the
reverse bridge (`chat_to_responses`, `response_to_chat`, `ResponsesToChatStream`). The shapes are
OpenAI's, as its SDK's types (`openai.types.responses`) and its OpenAPI spec define them.
"""

from __future__ import annotations

from typing import Any

import orjson

from meterway.providers.base import Usage

Event = dict[str, Any]  # one Responses stream event: `type`, `sequence_number` and its fields


class TranslationError(Exception):
    """A request the bridge cannot carry faithfully: the caller answers 400 naming `param`."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def sse(event: Event) -> bytes:
    """One Responses stream event as SSE: OpenAI names each event by its type."""
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


def responses_to_chat(request: dict[str, Any], upstream_model: str) -> dict[str, Any]:
    """A self-contained Responses request as a chat completions request."""
    raise NotImplementedError


def chat_to_response(
    chat: dict[str, Any], request: dict[str, Any], response_id: str, created_at: int
) -> dict[str, Any]:
    """A chat completion as the Response object the Responses request asked for."""
    raise NotImplementedError


class ChatToResponsesStream:
    """Chat chunks in, Responses events out, numbered; `.response` and `.usage` after `finish`."""

    def __init__(self, request: dict[str, Any], response_id: str, created_at: int) -> None:
        self.request = request
        self.response_id = response_id
        self.created_at = created_at
        self.sequence_number = 0  # the number the next event gets
        self.response: dict[str, Any] | None = None
        self.usage: dict[str, Any] | None = None

    def start(self) -> list[Event]:
        raise NotImplementedError

    def feed(self, chunk: dict[str, Any]) -> list[Event]:
        raise NotImplementedError

    def finish(self) -> list[Event]:
        raise NotImplementedError

    def failed(self, error: dict[str, Any]) -> list[Event]:
        raise NotImplementedError


def input_items(request: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's input as stored items with ids, as `GET /v1/responses/{id}/input_items` lists them."""
    raise NotImplementedError


def output_as_input(response: dict[str, Any]) -> list[dict[str, Any]]:
    """A stored response's output as input items for the next turn."""
    raise NotImplementedError


def usage_of(response: dict[str, Any]) -> Usage:
    """A Response's usage as the ledger counts it."""
    raise NotImplementedError


def chat_to_responses(chat_request: dict[str, Any], upstream_model: str) -> dict[str, Any]:
    """A chat completions request as a Responses request (for a Responses-only model)."""
    raise NotImplementedError


def response_to_chat(response: dict[str, Any], model: str) -> dict[str, Any]:
    """A Response as a chat completion."""
    raise NotImplementedError


class ResponsesToChatStream:
    """Responses events in, chat chunks out; a usage chunk at the end when the client asked for it."""

    def __init__(self, model: str, include_usage: bool) -> None:
        self.model = model
        self.include_usage = include_usage
        self.usage: dict[str, Any] | None = None

    def feed(self, event: Event) -> list[dict[str, Any]]:
        raise NotImplementedError

    def finish(self) -> list[dict[str, Any]]:
        raise NotImplementedError
