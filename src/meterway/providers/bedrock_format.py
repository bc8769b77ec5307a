"""AWS Bedrock's Converse API and its embedding models' bodies, as pure translation.

The Converse API is Anthropic's Messages API in another spelling: one list of turns that alternate,
content blocks (text, image, toolUse, toolResult), a system list, tools with a JSON schema. So an
OpenAI chat request is first made an Anthropic one by `anthropic_format` (its checks, its merging
of turns, its response_format tool), and that is respelled here; the answer and each stream event
go the same way back (Converse -> Anthropic -> `anthropic_format`'s chat translation). What is left
here is the respelling, and the embedding bodies of Titan and of Cohere on Bedrock.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from meterway.providers import anthropic_format as fmt
from meterway.providers.anthropic_format import JSON, TranslationError

# Converse's image formats, by the media type of a data URL
IMAGE_FORMATS: Mapping[str, str] = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
}
# Converse's stop reasons that Anthropic spells otherwise (the rest are spelled alike)
_STOP_REASONS: Mapping[str, str] = {"guardrail_intervened": "refusal", "content_filtered": "refusal"}
# Cohere's input types on Bedrock, as its embed models take them
COHERE_INPUT_TYPES = ("search_document", "search_query", "classification", "clustering")


def _fail(param: str, detail: str) -> TranslationError:
    return TranslationError(f"{param}: {detail}", param=param)


# ---------------------------------------------------------------- OpenAI chat -> Converse request


def _image(block: JSON, param: str) -> JSON:
    source = block.get("source") or {}
    if source.get("type") != "base64":
        raise _fail(param, "Bedrock takes images inline only: send a data URL (data:image/png;base64,...)")
    media = str(source.get("media_type", "")).lower()
    kind = IMAGE_FORMATS.get(media)
    if kind is None:
        raise _fail(param, f"image type '{media}' is not one Bedrock takes (png, jpeg, gif, webp)")
    try:
        base64.b64decode(source.get("data") or "", validate=True)
    except (binascii.Error, ValueError):
        raise _fail(param, "the image's data URL is not valid base64") from None
    return {"image": {"format": kind, "source": {"bytes": source.get("data") or ""}}}


def _blocks(content: Any, param: str) -> list[JSON]:
    """An Anthropic turn's content (a string or blocks) as Converse blocks; a block marked with
    `cache_control` is followed by Converse's cache point, where Bedrock caches the prompt up to."""
    if isinstance(content, str):
        return [{"text": content}]
    out: list[JSON] = []
    for i, block in enumerate(content or []):
        kind = block.get("type")
        where = f"{param}[{i}]"
        if kind == "text":
            out.append({"text": block.get("text", "")})
        elif kind == "image":
            out.append(_image(block, where))
        elif kind == "document":
            source = block.get("source") or {}
            out.append(
                {"document": {"format": "pdf", "name": f"document-{i}", "source": {"bytes": source.get("data")}}}
            )
        elif kind == "tool_use":
            out.append(
                {
                    "toolUse": {
                        "toolUseId": block.get("id", ""),
                        "name": block.get("name", ""),
                        "input": block.get("input") or {},
                    }
                }
            )
        elif kind == "tool_result":
            result = block.get("content")
            parts = _blocks(result, f"{where}.content") if result else [{"text": ""}]
            out.append({"toolResult": {"toolUseId": block.get("tool_use_id", ""), "content": parts}})
        else:
            raise _fail(where, f"content of type '{kind}' cannot be sent to Bedrock")
        if "cache_control" in block:
            out.append({"cachePoint": {"type": "default"}})
    return out


def _tool_choice(choice: JSON | None) -> JSON | None:
    """Converse has no "none": the tools stay (a conversation with tool calls needs them) and the
    model chooses."""
    kind = (choice or {}).get("type")
    if kind == "any":
        return {"any": {}}
    if kind == "tool":
        return {"tool": {"name": (choice or {}).get("name", "")}}
    if kind == "auto":
        return {"auto": {}}
    return None


def converse_request(chat: JSON) -> JSON:
    """The Converse body for an OpenAI chat request body (the model goes in the URL, not here)."""
    request = fmt.chat_to_messages_request(chat, "")  # no model: Anthropic's native structured output never applies
    body: JSON = {
        "messages": [
            {"role": turn["role"], "content": _blocks(turn["content"], f"messages[{n}].content")}
            for n, turn in enumerate(request["messages"])
        ]
    }
    system = request.get("system")
    if system:
        body["system"] = _blocks(system, "system")
    inference: JSON = {}
    max_tokens = chat.get("max_completion_tokens", chat.get("max_tokens"))
    if max_tokens is not None or "thinking" in request:
        inference["maxTokens"] = request["max_tokens"]
    for theirs, ours in (("temperature", "temperature"), ("top_p", "topP"), ("stop_sequences", "stopSequences")):
        if request.get(theirs) is not None:
            inference[ours] = request[theirs]
    if inference:
        body["inferenceConfig"] = inference
    extra: JSON = {}
    for name in ("top_k", "thinking"):  # Claude's own fields, passed through Converse as the model's
        if request.get(name) is not None:
            extra[name] = request[name]
    if extra:
        body["additionalModelRequestFields"] = extra
    if request.get("tools"):
        tools = [
            {
                "toolSpec": {
                    "name": t["name"],
                    **({"description": t["description"]} if t.get("description") else {}),
                    "inputSchema": {"json": t["input_schema"]},
                }
            }
            for t in request["tools"]
        ]
        config: JSON = {"tools": tools}
        choice = _tool_choice(request.get("tool_choice"))
        if choice is not None:
            config["toolChoice"] = choice
        body["toolConfig"] = config
    return body


# ---------------------------------------------------------------- Converse answer -> Anthropic message


def anthropic_usage(usage: Any) -> JSON:
    """Converse's usage in Anthropic's names: both count cache reads and writes apart from the input."""
    if not isinstance(usage, dict):
        return {}
    return {
        "input_tokens": usage.get("inputTokens"),
        "output_tokens": usage.get("outputTokens"),
        "cache_read_input_tokens": usage.get("cacheReadInputTokens"),
        "cache_creation_input_tokens": usage.get("cacheWriteInputTokens"),
    }


def stop_reason(reason: Any) -> str | None:
    if not isinstance(reason, str):
        return None
    return _STOP_REASONS.get(reason, reason)


def anthropic_message(answer: JSON, model: str) -> JSON:
    """A Converse answer as the Anthropic message it would be (`fmt.messages_response_to_chat` reads it)."""
    message = (answer.get("output") or {}).get("message") or {}
    content: list[JSON] = []
    for block in message.get("content") or []:
        if not isinstance(block, dict):
            continue
        if isinstance(block.get("text"), str):
            content.append({"type": "text", "text": block["text"]})
        elif isinstance(block.get("toolUse"), dict):
            use = block["toolUse"]
            content.append(
                {
                    "type": "tool_use",
                    "id": use.get("toolUseId", ""),
                    "name": use.get("name", ""),
                    "input": use.get("input") or {},
                }
            )
    out: JSON = {"id": "", "model": model, "content": content, "stop_reason": stop_reason(answer.get("stopReason"))}
    if isinstance(answer.get("usage"), dict):
        out["usage"] = anthropic_usage(answer["usage"])
    return out


class ConverseEvents:
    """Converse stream events as Anthropic ones, one state per stream. Converse sends the stop
    reason (`messageStop`) before the usage (`metadata`), Anthropic both in one `message_delta`:
    the stop reason waits for the usage, or for the stream's end."""

    __slots__ = ("_stop", "ended", "started")

    def __init__(self) -> None:
        self._stop: str | None = None
        self.started = False
        self.ended = False

    def translate(self, kind: str, event: JSON) -> list[tuple[str, JSON]]:
        index = event.get("contentBlockIndex", 0)
        if kind == "messageStart":
            self.started = True
            return [("message_start", {"type": "message_start", "message": {}})]  # its usage comes last
        if kind == "contentBlockStart":
            use = (event.get("start") or {}).get("toolUse")
            if isinstance(use, dict):
                block = {"type": "tool_use", "id": use.get("toolUseId", ""), "name": use.get("name", ""), "input": {}}
                return [
                    ("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})
                ]
            return []
        if kind == "contentBlockDelta":
            delta = event.get("delta") or {}
            if isinstance(delta.get("text"), str):
                out = {"type": "text_delta", "text": delta["text"]}
            elif isinstance(delta.get("toolUse"), dict):
                out = {"type": "input_json_delta", "partial_json": delta["toolUse"].get("input") or ""}
            else:
                return []  # reasoning and what Bedrock adds later
            return [("content_block_delta", {"type": "content_block_delta", "index": index, "delta": out})]
        if kind == "messageStop":
            self._stop = stop_reason(event.get("stopReason")) or "end_turn"
            return []
        if kind == "metadata":
            return self.end(event.get("usage"))
        return []

    @property
    def stopped(self) -> bool:
        """The message ended (`messageStop`), whether or not its usage followed."""
        return self._stop is not None

    def end(self, usage: Any = None) -> list[tuple[str, JSON]]:
        """The closing events: once, when the usage came or the stream ended (with no usage then)."""
        if self.ended or (self._stop is None and usage is None):
            return []
        self.ended = True
        delta: JSON = {"type": "message_delta", "delta": {"stop_reason": self._stop or "end_turn"}}
        if isinstance(usage, dict):
            delta["usage"] = anthropic_usage(usage)
        return [("message_delta", delta), ("message_stop", {"type": "message_stop"})]


# ---------------------------------------------------------------- embeddings


def embed_kind(model: str) -> str | None:
    """`titan` or `cohere` for a Bedrock embedding model id (a cross-region prefix such as `us.`
    allowed), else None: a chat model."""
    bare = model.rsplit("/", 1)[-1]
    for prefix in ("us.", "eu.", "apac.", "global."):
        bare = bare.removeprefix(prefix)
    if bare.startswith("amazon.titan-embed"):
        return "titan"
    if bare.startswith("cohere.embed"):
        return "cohere"
    return None


def titan_request(texts: list[str], request: Mapping[str, Any]) -> JSON:
    """Titan embeds one text per call; a list of several is the client's to split."""
    if len(texts) != 1:
        raise _fail("input", "Titan embedding models on Bedrock take one text per request")
    body: JSON = {"inputText": texts[0]}
    if request.get("dimensions"):
        body["dimensions"] = request["dimensions"]
    return body


def cohere_request(texts: list[str], request: Mapping[str, Any]) -> JSON:
    input_type = request.get("input_type") or "search_document"
    if input_type not in COHERE_INPUT_TYPES:
        raise _fail("input_type", f"must be one of {', '.join(COHERE_INPUT_TYPES)}")
    return {"texts": texts, "input_type": input_type}


def embed_vectors(kind: str, answer: JSON) -> tuple[list[list[float]], Any]:
    """The vectors of an embedding answer, and its input token count (Titan reports one in the
    body; Cohere on Bedrock none: None)."""
    if kind == "titan":
        return [answer.get("embedding") or []], answer.get("inputTextTokenCount")
    vectors = answer.get("embeddings") or []
    if isinstance(vectors, dict):
        vectors = vectors.get("float") or []
    return list(vectors), None
