"""A thin layer over raw ASGI for the request path.

The model routes are served without a web framework: a framework's request and streaming classes
cost 38% more CPU per proxied chat and 87% more per stream on this kind of machine (see
docs/decisions/0001-server-and-http-stack.md). This module is all the HTTP plumbing they need: one
pass over the headers, the body read once with a size limit, and a responder that remembers
whether the response has started.
"""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from meterway.errors import BadRequest, BodyTooLarge

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON = b"application/json"
EVENT_STREAM = b"text/event-stream"
# 123: a bridged Response's id is "resp_" + the request id, and ids are kept in 128 characters
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,123}")


class Incoming:
    """The request headers the gateway reads, found in one pass over the ASGI header list."""

    __slots__ = (
        "anthropic_version",
        "api_key",
        "authorization",
        "cache_control",
        "content_length",
        "request_id",
        "traceparent",
        "tracestate",
        "x_api_key",
    )

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.authorization: bytes | None = None
        self.x_api_key: bytes | None = None
        self.api_key: bytes | None = None
        self.request_id: bytes | None = None
        self.content_length: bytes | None = None
        self.anthropic_version: bytes | None = None
        self.traceparent: bytes | None = None  # W3C trace context: the client's trace continues
        self.tracestate: bytes | None = None
        self.cache_control: bytes | None = None  # no-cache / no-store: the response cache is skipped
        for name, value in raw:
            if name == b"authorization":
                self.authorization = value
            elif name == b"content-length":
                self.content_length = value
            elif name == b"x-request-id":
                self.request_id = value
            elif name == b"x-api-key":
                self.x_api_key = value
            elif name == b"api-key":
                self.api_key = value
            elif name == b"anthropic-version":
                self.anthropic_version = value
            elif name == b"traceparent":
                self.traceparent = value
            elif name == b"tracestate":
                self.tracestate = value
            elif name == b"cache-control":
                self.cache_control = value


def request_id_for(incoming: Incoming) -> str:
    """The client's own `x-request-id` when it is a sane token, so it can find its request later;
    a fresh one otherwise."""
    rid = incoming.request_id
    if rid is not None and _REQUEST_ID.fullmatch(rid):
        return rid.decode()
    return os.urandom(16).hex()


REQUEST_ID = "meterway.request_id"  # the scope key a request's id is kept under, once chosen
# where a handler leaves its Responder for the error boundary to answer through it: with the
# headers it already chose (deployment, attempts, cache) and knowing whether it started
RESPONDER = "meterway.responder"


def request_id(scope: Scope, incoming: Incoming | None = None) -> str:
    """The request's id, chosen once per request and kept in its scope: the error boundary and
    the handler it wraps answer with the same id, whichever of them needs it first."""
    rid: str | None = scope.get(REQUEST_ID)
    if rid is None:
        rid = scope[REQUEST_ID] = request_id_for(incoming or Incoming(scope["headers"]))
    return rid


async def read_body(receive: Receive, incoming: Incoming, limit: int) -> bytes:
    """The whole body, refused early (from Content-Length) or as soon as it passes `limit`."""
    if incoming.content_length is not None:
        try:
            declared = int(incoming.content_length)
        except ValueError:
            raise BadRequest("Content-Length is not a number.") from None
        if declared > limit:
            raise BodyTooLarge(f"Request body is {declared} bytes; the limit is {limit} bytes.")
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        return body
    parts = [body]
    size = len(body)
    while message.get("more_body"):
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"Request body exceeds the limit of {limit} bytes.")
        parts.append(chunk)
    return b"".join(parts)


class Responder:
    """Sends one response. Every response carries `x-request-id`; `started` tells the error path
    whether a status can still be chosen or only an in-stream error event is left."""

    __slots__ = ("_rid", "_send", "cache", "extra", "started", "status")

    def __init__(self, send: Send, request_id: str) -> None:
        self._send = send
        self._rid = request_id.encode()
        self.started = False
        self.status = 0
        # sent with the response: which deployment answered, in how many attempts; cache hit or miss
        self.extra: tuple[tuple[bytes, bytes], ...] = ()
        self.cache: bytes | None = None

    async def whole(
        self, status: int, body: bytes, content_type: bytes = JSON, extra: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        headers = [
            (b"content-type", content_type),
            (b"content-length", b"%d" % len(body)),
            (b"x-request-id", self._rid),
        ]
        if extra:
            headers.extend(extra)
        if self.extra:
            headers.extend(self.extra)
        if self.cache is not None:
            headers.append((b"x-meterway-cache", self.cache))
        self.started = True
        self.status = status
        await self._send({"type": "http.response.start", "status": status, "headers": headers})
        await self._send({"type": "http.response.body", "body": body})

    async def start_stream(self, status: int = 200, content_type: bytes = EVENT_STREAM) -> None:
        self.started = True
        self.status = status
        headers = [(b"content-type", content_type), (b"cache-control", b"no-cache"), (b"x-request-id", self._rid)]
        if self.extra:
            headers.extend(self.extra)
        if self.cache is not None:
            headers.append((b"x-meterway-cache", self.cache))
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def chunk(self, data: bytes) -> None:
        await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self, data: bytes = b"") -> None:
        await self._send({"type": "http.response.body", "body": data})
