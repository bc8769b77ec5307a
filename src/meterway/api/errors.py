"""The one place where exceptions become HTTP: a status and a body in the client's API format, or,
once a stream has started and its status is sent, an error event in that stream's own format.

OpenAI routes answer `{"error": {"message", "type", "param", "code"}}`; the Anthropic route answers
`{"type": "error", "error": {"type", "message"}}`. Messages name deployments, never keys.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import orjson

from meterway.api.asgi import RESPONDER, Message, Receive, Responder, Scope, Send, request_id
from meterway.errors import MeterwayError, MethodNotAllowed, RateLimited, UpstreamError
from meterway.providers.base import Api

log = logging.getLogger("meterway.api")

# Anthropic's error types by status (its API reference lists these).
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def as_meterway_error(exc: BaseException, request_id: str) -> MeterwayError:
    """Any exception as one of ours; an unexpected one is logged once, with its traceback, and
    reaches the client as a 500 that carries the request id and nothing internal."""
    if isinstance(exc, MeterwayError):
        return exc
    log.error("unexpected error in request %s", request_id, exc_info=exc)
    return MeterwayError(f"Internal error; quote request id {request_id} when reporting it.")


def _openai_type(err: MeterwayError) -> str:
    if isinstance(err, UpstreamError) and err.upstream_type and err.http_status() < 500:
        return err.upstream_type
    return err.error_type


def body_for(err: MeterwayError, api: Api | None) -> bytes:
    status = err.http_status()
    if api is Api.MESSAGES:
        kind = _ANTHROPIC_TYPES.get(status, "api_error")
        return orjson.dumps({"type": "error", "error": {"type": kind, "message": err.message}})
    return orjson.dumps(
        {"error": {"message": err.message, "type": _openai_type(err), "param": err.param, "code": err.code}}
    )


def render(err: MeterwayError, api: Api | None) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, extra headers and body for an error raised before the response started."""
    headers: list[tuple[bytes, bytes]] = []
    if err.retry_after is not None:
        headers.append((b"retry-after", str(max(1, round(err.retry_after))).encode()))
    if isinstance(err, MethodNotAllowed):
        headers.append((b"allow", ", ".join(err.allowed).encode()))
    if isinstance(err, RateLimited):
        headers.extend((name.encode(), value.encode()) for name, value in err.headers)
    return err.http_status(), headers, body_for(err, api)


def stream_error_event(err: MeterwayError, api: Api, sequence_number: int = 0) -> bytes:
    """The last event of a stream that failed after its first byte: clients' SDKs raise on it.
    A Responses stream numbers its events: `sequence_number` is the one this event takes (the
    relay's `sequence_number`, where it has one)."""
    if api is Api.RESPONSES:
        event = {
            "type": "error",
            "code": err.code or _openai_type(err),
            "message": err.message,
            "param": err.param,
            "sequence_number": sequence_number,
        }
        return b"event: error\ndata: " + orjson.dumps(event) + b"\n\n"
    body = body_for(err, api)
    if api is Api.MESSAGES:
        return b"event: error\ndata: " + body + b"\n\n"
    return b"data: " + body + b"\n\n"


Endpoint = Callable[[Scope, Receive, Send], Awaitable[None]]


def boundary(endpoint: Endpoint, api: Api | None = None, *, watch: bool = True) -> Endpoint:
    """`endpoint` with every exception it raises answered in the one error shape (OpenAI's, or
    Anthropic's for `api` MESSAGES) and the request's id, as Starlette's exception-handler
    wrapper does. Every route goes through it, so no handler builds an error reply of its own.

    An exception after the response started can no longer become a response: once the body is
    complete it is only logged; before that it is raised on, so the server drops the connection
    and the client sees a broken response rather than a whole wrong one. To know which, the
    boundary watches what the endpoint sends (about 0.5 µs a message). `watch=False` is for the
    model routes, whose handler raises only before its response starts (a stream ends its own
    failures in-stream, see `stream_error_event`) and which are the hot path; should one raise
    after the start anyway, the server refuses the second start and drops the connection, as
    raising on would."""

    async def unwatched(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await endpoint(scope, receive, send)
        except Exception as exc:
            await _answer(scope, send, exc, api)

    async def watched(scope: Scope, receive: Receive, send: Send) -> None:
        started = finished = False

        def sending(message: Message) -> Awaitable[None]:
            # a plain function handing back `send`'s awaitable: no coroutine of its own per message
            nonlocal started, finished
            if message["type"] == "http.response.start":
                started = True
            elif not message.get("more_body"):
                finished = True
            return send(message)

        try:
            await endpoint(scope, receive, sending)
        except Exception as exc:
            if not started:
                return await _answer(scope, send, exc, api)
            rid = request_id(scope)
            err = as_meterway_error(exc, rid)
            log.error("request %s failed after its response started: %s", rid, err.message)
            if not finished:
                raise

    return watched if watch else unwatched


async def _answer(scope: Scope, send: Send, exc: Exception, api: Api | None) -> None:
    """Through the handler's own Responder when it left one in the scope (`asgi.RESPONDER`)."""
    rid = request_id(scope)
    err = as_meterway_error(exc, rid)
    responder: Responder = scope.get(RESPONDER) or Responder(send, rid)
    if responder.started:
        log.error("request %s failed after its response started: %s", rid, err.message)
        return
    status, extra, payload = render(err, api)
    await responder.whole(status, payload, extra=extra)
