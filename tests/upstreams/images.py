"""A stand-in for OpenAI's image generation (`POST /v1/images/generations`) that checks what OpenAI
checks: the bearer key (`IMAGES_KEY`, else OpenAI's 401; Azure's `api-key` header and
`api-version` on `/openai/deployments/{deployment}/images/generations`, whose deployment names the model) and the request's shape (a prompt, `n`
from 1 to 10). It answers as OpenAI does: DALL·E models with `url`s (or `b64_json` when asked) and,
for dall-e-3, a `revised_prompt`, and no usage; gpt-image models always with `b64_json`, the
`size`, `quality` and `output_format` they used, and token usage as gpt-image-1 reports it
(`input_tokens`, `output_tokens`, `total_tokens`, `input_tokens_details`). `Script(no_usage=True)`
leaves the usage out; the scripts of `StandIn` (a 500, a cut answer) apply as everywhere.
Edits and variations (`/v1/images/edits`, `/variations`, Azure's deployment `/images/edits`) take
OpenAI's multipart form (`image` or `image[]`, an edit's `prompt`) and are answered the same way.
"""

from __future__ import annotations

import base64
import itertools
import struct
import zlib
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from aiohttp import web

from tests.upstreams.standin import StandIn, _Call, count_words

IMAGES_KEY = "img-key"
# gpt-image-1's output tokens per image by quality, at 1024x1024 (OpenAI's published figures)
OUTPUT_TOKENS = {"low": 272, "medium": 1056, "high": 4160}
IMAGE_TOKENS = 323  # an edit's input tokens for each uploaded image (gpt-image-1 reports them apart)


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
        self.uploads: list[tuple[str, dict[str, str], int]] = []  # edits and variations: (model, fields, images)

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/images/generations", self._route(self._generate))
        router.add_post("/openai/deployments/{deployment}/images/generations", self._route(self._generate))
        router.add_post("/v1/images/edits", self._route(self._upload))
        router.add_post("/v1/images/variations", self._route(self._upload))
        router.add_post("/openai/deployments/{deployment}/images/edits", self._route(self._upload))
        super()._add_routes(router)

    async def _generate(self, call: _Call) -> web.StreamResponse:
        refused = await self._refuse_key(call)
        if refused is not None:
            return refused
        p = call.payload
        model = str(call.record.deployment or p.get("model") or "dall-e-2")
        return await self._draw(call, model, p.get("prompt"), p.get("n", 1), p, 0)

    async def _upload(self, call: _Call) -> web.StreamResponse:
        """An edit or a variation: a multipart form with its image(s) (`image`, or `image[]` for
        several), an edit's `prompt`, and generation's options; answered as generation is, a
        gpt-image model's input tokens counting `IMAGE_TOKENS` for each image."""
        refused = await self._refuse_key(call)
        if refused is not None:
            return refused
        kind = call.record.headers.get("content-type", "")
        if not kind.startswith("multipart/form-data"):
            return await self._json(call, _error("expected multipart/form-data", None, None), status=400)
        parts = form_parts(kind, call.record.body)
        images = [data for name, data, filename in parts if name in ("image", "image[]") and filename is not None]
        if not images or not all(images):
            return await self._json(call, _error("'image' is required.", "image", None), status=400)
        fields = {name: data.decode() for name, data, filename in parts if filename is None}
        edit = call.request.path.endswith("/edits")
        if edit and "prompt" not in fields:
            return await self._json(call, _error("'prompt' is required.", "prompt", None), status=400)
        p: dict[str, Any] = {**fields, "n": int(fields.get("n", "1"))}
        model = str(call.record.deployment or fields.get("model") or "dall-e-2")
        self.uploads.append((model, fields, len(images)))
        return await self._draw(call, model, fields.get("prompt", "a variation"), p["n"], p, len(images))

    async def _refuse_key(self, call: _Call) -> web.StreamResponse | None:
        azure = call.record.deployment is not None  # Azure: its `api-key` header, an api-version
        key = call.record.headers.get("api-key") if azure else call.record.headers.get("authorization")
        if key != (IMAGES_KEY if azure else f"Bearer {IMAGES_KEY}") or (azure and not call.record.api_version):
            body = _error("Incorrect API key provided.", None, "invalid_api_key")
            return await self._json(call, body, status=401)
        return None

    async def _draw(
        self, call: _Call, model: str, prompt: object, n: object, p: dict[str, Any], images: int
    ) -> web.StreamResponse:
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
            pictures = IMAGE_TOKENS * images
            usage = {
                "input_tokens": text + pictures,
                "output_tokens": output,
                "total_tokens": text + pictures + output,
                "input_tokens_details": {"text_tokens": text, "image_tokens": pictures},
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


def form_parts(content_type: str, body: bytes) -> list[tuple[str, bytes, str | None]]:
    """A multipart/form-data body's parts in order (name, data, filename), read by the standard library."""
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    parts: list[tuple[str, bytes, str | None]] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            payload = part.get_payload(decode=True)
            parts.append((name, payload if isinstance(payload, bytes) else b"", part.get_filename()))
    return parts
