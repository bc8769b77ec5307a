"""A stand-in for OpenAI's image generation (`POST /v1/images/generations`) that checks what OpenAI
checks: the bearer key (`IMAGES_KEY`, else OpenAI's 401; Azure's `api-key` header and
`api-version` on `/openai/deployments/{deployment}/images/generations`, whose deployment names the model) and the request's shape (a prompt, `n`
from 1 to 10). It answers as OpenAI does: DALL·E models with `url`s (or `b64_json` when asked) and,
for dall-e-3, a `revised_prompt`, and no usage; gpt-image models always with `b64_json`, the
`size`, `quality` and `output_format` they used, and token usage as gpt-image-1 reports it
(`input_tokens`, `output_tokens`, `total_tokens`, `input_tokens_details`). `Script(no_usage=True)`
leaves the usage out; the scripts of `StandIn` (a 500, a cut answer) apply as everywhere.
"""

from __future__ import annotations

import base64
import itertools
import struct
import zlib
from typing import Any

from aiohttp import web

from tests.upstreams.standin import StandIn, _Call, count_words

IMAGES_KEY = "img-key"
# gpt-image-1's output tokens per image by quality, at 1024x1024 (OpenAI's published figures)
OUTPUT_TOKENS = {"low": 272, "medium": 1056, "high": 4160}


def png() -> bytes:
    """A valid 1x1 PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\x10\x20\x30")) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


PNG_B64 = base64.b64encode(png()).decode()


def _error(message: str, param: str | None, code: str | None, kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class ImageStandIn(StandIn):
    """OpenAI's images API on 127.0.0.1:<free port>, beside `StandIn`'s other routes."""

    def __init__(self) -> None:
        super().__init__()
        self._ids = itertools.count(1)

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/images/generations", self._route(self._generate))
        router.add_post("/openai/deployments/{deployment}/images/generations", self._route(self._generate))
        super()._add_routes(router)

    async def _generate(self, call: _Call) -> web.StreamResponse:
        azure = (
            call.record.deployment is not None
        )  # Azure: its `api-key` header, an api-version, the deployment's model
        key = call.record.headers.get("api-key") if azure else call.record.headers.get("authorization")
        if key != (IMAGES_KEY if azure else f"Bearer {IMAGES_KEY}") or (azure and not call.record.api_version):
            body = _error("Incorrect API key provided.", None, "invalid_api_key")
            return await self._json(call, body, status=401)
        p = call.payload
        prompt, n = p.get("prompt"), p.get("n", 1)
        model = str(call.record.deployment if azure else p.get("model") or "dall-e-2")
        if not isinstance(prompt, str) or not prompt:
            return await self._json(call, _error("'prompt' is required.", "prompt", None), status=400)
        if not isinstance(n, int) or not 1 <= n <= 10:
            return await self._json(call, _error("'n' must be from 1 to 10.", "n", None), status=400)
        answer: dict[str, Any] = {"created": 1_700_000_000 + next(self._ids)}
        usage = None
        if model.startswith("gpt-image"):
            quality = p.get("quality") if p.get("quality") in OUTPUT_TOKENS else "medium"
            size = p.get("size") if p.get("size") not in (None, "auto") else "1024x1024"
            answer["data"] = [{"b64_json": PNG_B64} for _ in range(n)]
            answer |= {"size": size, "quality": quality, "output_format": p.get("output_format") or "png"}
            text = count_words(prompt)
            output = OUTPUT_TOKENS[quality] * n
            usage = {
                "input_tokens": text,
                "output_tokens": output,
                "total_tokens": text + output,
                "input_tokens_details": {"text_tokens": text, "image_tokens": 0},
            }
            if not (call.script is not None and call.script.no_usage):
                answer["usage"] = usage
        else:
            b64 = p.get("response_format") == "b64_json"
            item = {"b64_json": PNG_B64} if b64 else {"url": f"https://images.standin.example/{next(self._ids)}.png"}
            if model == "dall-e-3":
                item["revised_prompt"] = f"A detailed picture: {prompt}"
            answer["data"] = [dict(item) for _ in range(n)]
        return await self._json(call, answer, usage=usage)
