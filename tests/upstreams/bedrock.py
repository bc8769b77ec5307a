"""A stand-in for AWS Bedrock's runtime API that checks what Bedrock checks: the SigV4 signature.

Every request's `Authorization` header is recomputed with botocore's own `SigV4Auth` over what
arrived (method, raw path, query, the signed headers, the body) with the secret configured for
its access key, and compared. A wrong secret, another region or service in the credential scope,
a date more than five minutes off, or a session token that does not match, is refused with
Bedrock's 403 and `x-amzn-ErrorType: InvalidSignatureException` (an unknown key:
`UnrecognizedClientException`), as the real service does.

Routes: `POST /model/{id}/converse` (JSON), `/model/{id}/converse-stream` (AWS's binary event
stream, framed by `frame` below: botocore parses it but has no encoder), `/model/{id}/invoke`
(Titan `inputText` and Cohere `texts` embeddings). Answers are deterministic, as `StandIn`'s:
the reply is `reply_for(<text of the last user turn>)`; inputTokens: words of every text (system
too) + 3 per message; outputTokens: words of the reply, or of the tool name plus its input JSON.
With `toolConfig` and no toolResult in the last user turn, the first tool (or the one
`toolChoice` names) is called with `tool_arguments(<its schema>)`.

STS (`POST /`, `Action=AssumeRole`, signed for service `sts` with a configured key) issues
temporary credentials (`ASIA…` keys with a session token) that the Bedrock routes then accept,
valid for `role_minutes`; `assumed` records each AssumeRole's role ARN and session name.

Misbehaviour, one per queued `BedrockStandIn.misbehave(...)`: `cut` (the connection drops after
n frames), `bad_crc` (frame n's message CRC is wrong), `exception` (frame n is a
`throttlingException`), `endless` (a frame whose prelude promises more than is ever sent), and
`no_metadata` (the stream ends after messageStop, without usage), and `long` (`LONG_FRAMES` more
text frames before the block ends: a long stream of small frames).
"""

from __future__ import annotations

import asyncio
import itertools
import json as jsonlib
import re
import struct
import zlib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.upstreams.providers import ProviderStandIn
from tests.upstreams.standin import (
    PER_MESSAGE_TOKENS,
    _abort,
    _Call,
    _pieces,
    count_words,
    embedding_for,
    reply_for,
    tool_arguments,
)

ACCESS_KEY = "AKIASTANDIN000000001"
SECRET_KEY = "standin/secret+key0123456789abcdefghijkl"
REGION = "eu-west-3"
TOOL_USE_ID = "tooluse_standin_1"
LONG_FRAMES = 4000
LONG_TEXT = "lorem ipsum dolor sit amet, consectetur adipiscing elit " * 2
EVENT_STREAM = "application/vnd.amazon.eventstream"
MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your AWS Secret "
    "Access Key and signing method. Consult the service documentation for details."
)
_AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, ?SignedHeaders=([^,]+), ?Signature=([0-9a-f]+)"
)


def frame(event_type: str, payload: Any, *, message_type: str = "event", bad_crc: bool = False) -> bytes:
    """One AWS event-stream message: prelude (total length, headers length), prelude CRC32,
    headers (string-typed: name length, name, type 7, value length, value), payload, message CRC32."""
    kind = ":exception-type" if message_type == "exception" else ":event-type"
    headers = {kind: event_type, ":content-type": "application/json", ":message-type": message_type}
    head = b"".join(
        bytes([len(n)]) + n.encode() + b"\x07" + struct.pack(">H", len(v)) + v.encode() for n, v in headers.items()
    )
    body = jsonlib.dumps(payload).encode()
    prelude = struct.pack(">II", 12 + len(head) + len(body) + 4, len(head))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + head + body
    crc = zlib.crc32(message) ^ (0xFFFF if bad_crc else 0)
    return message + struct.pack(">I", crc)


@dataclass(frozen=True)
class Misbehaviour:
    kind: str  # cut, bad_crc, exception, endless, no_metadata
    at: int = 2  # the frame it happens at (0: messageStart)


def _texts(blocks: Any) -> list[str]:
    return [b["text"] for b in blocks or [] if isinstance(b, dict) and isinstance(b.get("text"), str)]


def input_tokens(payload: Mapping[str, Any]) -> int:
    """The stand-in's inputTokens for a Converse request."""
    messages = payload.get("messages") or []
    words = sum(count_words(t) for m in messages for t in _texts(m.get("content")))
    return words + sum(count_words(t) for t in _texts(payload.get("system"))) + PER_MESSAGE_TOKENS * len(messages)


class BedrockStandIn(ProviderStandIn):
    """Bedrock's runtime routes, signature-checked against `keys` (access key id -> secret, and
    an optional session token) in `region`, beside every other family's (so the provider contract
    runs on one stand-in)."""

    def __init__(self, keys: Mapping[str, tuple[str, str | None]] | None = None, region: str = REGION) -> None:
        super().__init__()
        self.keys = dict(keys or {ACCESS_KEY: (SECRET_KEY, None)})
        self.region = region
        self.refused: list[str] = []  # why each refused request was refused
        self._misbehaviours: deque[Misbehaviour] = deque()
        self.cache_read = 0  # cacheReadInputTokens reported (with the same count written, when set)
        self.assumed: list[tuple[str, str, str]] = []  # (role ARN, session name, access key issued)
        self.role_minutes = 60
        self._issued = itertools.count(1)

    def misbehave(self, kind: str, at: int = 2) -> None:
        self._misbehaviours.append(Misbehaviour(kind, at))

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/model/{model:.+}/converse", self._route(self._converse))
        router.add_post("/model/{model:.+}/converse-stream", self._route(self._converse))
        router.add_post("/model/{model:.+}/invoke", self._route(self._invoke))
        router.add_post("/", self._route(self._sts))
        super()._add_routes(router)

    # ---- SigV4 ---------------------------------------------------------------------------------

    def _signature_problem(self, call: _Call, signing_name: str = "bedrock") -> tuple[str, str] | None:
        """(error type, message) of a request Bedrock would refuse, or None."""
        request, headers = call.request, call.record.headers
        found = _AUTH.fullmatch(headers.get("authorization", ""))
        if found is None:
            return "MissingAuthenticationTokenException", "Missing Authentication Token"
        key, day, region, service, signed, signature = found.groups()
        if key not in self.keys:
            return "UnrecognizedClientException", "The security token included in the request is invalid."
        secret, token = self.keys[key]
        if region != self.region or service != signing_name:
            return (
                "InvalidSignatureException",
                f"Credential should be scoped to a valid region and service ({region}/{service}).",
            )
        stamp = headers.get("x-amz-date", "")
        try:
            when = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError:
            return "IncompleteSignatureException", "X-Amz-Date is missing or malformed."
        if abs((datetime.now(UTC) - when).total_seconds()) > 300 or not stamp.startswith(day):
            return "InvalidSignatureException", f"Signature expired: {stamp} is now earlier than the allowed window."
        if token is not None and headers.get("x-amz-security-token") != token:
            return "UnrecognizedClientException", "The security token included in the request is invalid."
        names = signed.split(";")
        if "host" not in names:
            return "InvalidSignatureException", "host must be a signed header."
        kept = {name: headers.get(name, "") for name in names}
        url = f"http://{headers.get('host', '')}{request.raw_path}"
        aws = AWSRequest(method=request.method, url=url, data=call.record.body, headers=kept)
        aws.context["timestamp"] = stamp
        auth = SigV4Auth(Credentials(key, secret, token), signing_name, self.region)
        expected = auth.signature(auth.string_to_sign(aws, auth.canonical_request(aws)), aws)
        if expected != signature:
            return "InvalidSignatureException", MISMATCH
        return None

    async def _guard(self, call: _Call) -> web.StreamResponse | None:
        problem = self._signature_problem(call)
        if problem is not None:
            kind, message = problem
            self.refused.append(kind)
            return await self._aws_error(call, 403, kind, message)
        if call.json_error is not None:
            return await self._aws_error(
                call, 400, "ValidationException", f"Malformed input request: {call.json_error}"
            )
        return None

    async def _aws_error(self, call: _Call, status: int, kind: str, message: str) -> web.StreamResponse:
        return await self._json(
            call,
            {"message": message},
            status=status,
            headers={"x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/"},
        )

    # ---- STS ---------------------------------------------------------------------------------------

    async def _sts(self, call: _Call) -> web.StreamResponse:
        problem = self._signature_problem(call, "sts")
        if problem is not None:
            self.refused.append(problem[0])
            return web.Response(
                status=403, text=f"<ErrorResponse><Error><Code>{problem[0]}</Code></Error></ErrorResponse>"
            )
        form = {k: v[0] for k, v in parse_qs(call.record.body.decode()).items()}
        if form.get("Action") != "AssumeRole" or not form.get("RoleArn") or not form.get("RoleSessionName"):
            return web.Response(
                status=400, text="<ErrorResponse><Error><Code>ValidationError</Code></Error></ErrorResponse>"
            )
        n = next(self._issued)
        key, secret, token = f"ASIASTANDIN{n:09d}", f"temporary-secret-{n}", f"session-token-{n}"
        self.keys[key] = (secret, token)
        self.assumed.append((form["RoleArn"], form["RoleSessionName"], key))
        expires = (datetime.now(UTC) + timedelta(minutes=self.role_minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")
        xml = (
            '<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult>'
            f"<Credentials><AccessKeyId>{key}</AccessKeyId><SecretAccessKey>{secret}</SecretAccessKey>"
            f"<SessionToken>{token}</SessionToken><Expiration>{expires}</Expiration></Credentials>"
            f"<AssumedRoleUser><AssumedRoleId>AROASTANDIN:{form['RoleSessionName']}</AssumedRoleId>"
            f"<Arn>arn:aws:sts::123456789012:assumed-role/standin/{form['RoleSessionName']}</Arn></AssumedRoleUser>"
            "</AssumeRoleResult><ResponseMetadata><RequestId>standin-1</RequestId></ResponseMetadata></AssumeRoleResponse>"
        )
        call.record.status = 200
        return web.Response(status=200, text=xml, content_type="text/xml")

    # ---- Converse ------------------------------------------------------------------------------

    def _answer(self, payload: dict[str, Any]) -> tuple[list[dict[str, Any]], str, dict[str, Any]]:
        """The answer's content blocks, stop reason and usage."""
        messages = payload.get("messages") or []
        last = next((m for m in reversed(messages) if m.get("role") == "user"), {})
        content = last.get("content") or []
        answered = any("toolResult" in b for b in content if isinstance(b, dict))
        tools = [t["toolSpec"] for t in (payload.get("toolConfig") or {}).get("tools") or [] if "toolSpec" in t]
        usage = {"inputTokens": input_tokens(payload)}
        if self.cache_read:
            usage.update(cacheReadInputTokens=self.cache_read, cacheWriteInputTokens=self.cache_read)
        if tools and not answered:
            chosen = tools[0]
            wanted = ((payload["toolConfig"].get("toolChoice") or {}).get("tool") or {}).get("name")
            chosen = next((t for t in tools if t["name"] == wanted), chosen)
            arguments = tool_arguments(chosen["inputSchema"]["json"])
            block = {"toolUse": {"toolUseId": TOOL_USE_ID, "name": chosen["name"], "input": arguments}}
            output = count_words(chosen["name"]) + count_words(jsonlib.dumps(arguments))
            blocks, stop = [block], "tool_use"
        else:
            text = reply_for(" ".join(_texts(content)))
            blocks, stop, output = [{"text": text}], "end_turn", count_words(text)
        usage["outputTokens"] = output
        usage["totalTokens"] = sum(usage.values())
        return blocks, stop, usage

    async def _converse(self, call: _Call) -> web.StreamResponse:
        refused = await self._guard(call)
        if refused is not None:
            return refused
        payload = call.payload
        if not isinstance(payload.get("messages"), list) or not payload["messages"]:
            return await self._aws_error(call, 400, "ValidationException", "messages must not be empty")
        for message in payload["messages"]:
            for block in message.get("content") or []:
                image = block.get("image") if isinstance(block, dict) else None
                if image is not None and image.get("format") not in ("png", "jpeg", "gif", "webp"):
                    return await self._aws_error(call, 400, "ValidationException", "invalid image format")
        blocks, stop, usage = self._answer(payload)
        if not call.request.path.endswith("/converse-stream"):
            answer = {
                "output": {"message": {"role": "assistant", "content": blocks}},
                "stopReason": stop,
                "usage": usage,
                "metrics": {"latencyMs": 12},
            }
            return await self._json(call, answer, usage=usage)
        return await self._stream(call, self._frames(blocks, stop, usage), usage)

    @staticmethod
    def _frames(blocks: list[dict[str, Any]], stop: str, usage: dict[str, Any]) -> list[tuple[str, Any]]:
        frames: list[tuple[str, Any]] = [("messageStart", {"role": "assistant"})]
        block = blocks[0]
        if "toolUse" in block:
            use = block["toolUse"]
            frames.append(
                (
                    "contentBlockStart",
                    {
                        "contentBlockIndex": 0,
                        "start": {"toolUse": {"toolUseId": use["toolUseId"], "name": use["name"]}},
                    },
                )
            )
            raw = jsonlib.dumps(use["input"])
            half = len(raw) // 2
            for piece in (raw[:half], raw[half:]):
                frames.append(("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"toolUse": {"input": piece}}}))
        else:
            for piece in _pieces(block["text"]):
                frames.append(("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": piece}}))
        frames.append(("contentBlockStop", {"contentBlockIndex": 0}))
        frames.append(("messageStop", {"stopReason": stop}))
        frames.append(("metadata", {"usage": usage, "metrics": {"latencyMs": 12}}))
        return frames

    async def _stream(self, call: _Call, frames: list[tuple[str, Any]], usage: dict[str, Any]) -> web.StreamResponse:
        record = call.record
        record.status, record.usage = 200, usage
        odd = self._misbehaviours.popleft() if self._misbehaviours else None
        if odd is None and call.script is not None and call.script.break_after is not None:
            odd = Misbehaviour(
                "cut", call.script.break_after
            )  # `StandIn.script_break_stream`, as every family takes it
        response = web.StreamResponse(status=200, headers={"Content-Type": EVENT_STREAM})
        try:
            await response.prepare(call.request)
            for index, (kind, payload) in enumerate(frames):
                if odd is not None and odd.kind == "no_metadata" and kind == "metadata":
                    break
                if odd is not None and odd.kind == "long" and kind == "contentBlockStop":
                    piece = frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": LONG_TEXT}})
                    for _ in range(LONG_FRAMES // 100):
                        await response.write(piece * 100)
                if odd is not None and index == odd.at:
                    if odd.kind == "cut":
                        _abort(call.request)
                        return response
                    if odd.kind == "exception":
                        message = {"message": "Too many requests, please wait before trying again."}
                        await response.write(frame("throttlingException", message, message_type="exception"))
                        await response.write_eof()
                        return response
                    if odd.kind == "endless":
                        prelude = struct.pack(">II", 16 * 1024 * 1024, 0)  # promises 16 MiB, never sent
                        await response.write(prelude + struct.pack(">I", zlib.crc32(prelude)))
                        while True:
                            await response.write(b"x" * 65536)
                            await asyncio.sleep(0)
                record.events.append({kind: payload})
                await response.write(
                    frame(kind, payload, bad_crc=odd is not None and odd.kind == "bad_crc" and index == odd.at)
                )
            record.completed = True
            await response.write_eof()
        except ConnectionError:
            record.completed = False
        return response

    # ---- InvokeModel (embeddings) ----------------------------------------------------------------

    async def _invoke(self, call: _Call) -> web.StreamResponse:
        refused = await self._guard(call)
        if refused is not None:
            return refused
        model = call.request.match_info["model"]
        payload = call.payload
        if "titan-embed" in model:
            text = payload.get("inputText")
            if not isinstance(text, str) or not text:
                return await self._aws_error(call, 400, "ValidationException", "inputText is required")
            dims = payload.get("dimensions", 8)
            body = {"embedding": embedding_for(text, dims), "inputTextTokenCount": count_words(text)}
            return await self._json(call, body, usage={"inputTextTokenCount": count_words(text)})
        if "cohere.embed" in model:
            texts = payload.get("texts")
            if not isinstance(texts, list) or payload.get("input_type") not in (
                "search_document",
                "search_query",
                "classification",
                "clustering",
            ):
                return await self._aws_error(call, 400, "ValidationException", "texts and input_type are required")
            body = {
                "id": "emb-1",
                "embeddings": [embedding_for(t) for t in texts],
                "response_type": "embeddings_floats",
                "texts": texts,
            }
            return await self._json(call, body)
        return await self._aws_error(
            call, 400, "ValidationException", f"The provided model identifier is invalid: {model}"
        )
