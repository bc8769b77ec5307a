"""The response out: a whole answer, or a stream relayed chunk by chunk, its last bytes only once
the request's ledger row is committed.

A stream's relay (`providers.base.StreamRelay`) holds its final event (`[DONE]`,
`message_stop`) until `finish`; the row is recorded between the two. A failure once the stream
has started ends it with an error event in its own format; one before may still be retried.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import orjson

from meterway.api import errors
from meterway.errors import MeterwayError
from meterway.ledger import usage_checks
from meterway.ledger.tokens import DeliveredStream
from meterway.providers import bedrock, billed, sse
from meterway.providers.base import Api, Usage
from meterway.providers.transport import UPSTREAM_TOO_LARGE, too_large

if TYPE_CHECKING:
    from meterway.api.asgi import Message, Receive, Responder
    from meterway.context import RequestContext
    from meterway.providers.base import Call, Parsed, Provider, StreamRelay
    from meterway.providers.transport import UpstreamResponse
    from meterway.services import Services

log = logging.getLogger("meterway.proxy")

BYTE_STREAMS = frozenset({Api.SPEECH})  # answers of bytes, not events: relayed by `pipe`


def flag(ctx: RequestContext, err: MeterwayError) -> None:
    """Marks the row of a request that ended on an upstream answer past its bound."""
    if err.code == UPSTREAM_TOO_LARGE and UPSTREAM_TOO_LARGE not in ctx.flags:
        ctx.flags.append(UPSTREAM_TOO_LARGE)


async def answer(services: Services, ctx: RequestContext, parsed: Parsed, responder: Responder) -> None:
    """Sends a whole answer once its row is committed. When the ledger counted the tokens itself,
    the body's usage is replaced by the figures billed, and a header says they are estimated."""
    ctx.usage, ctx.answer, ctx.status_code = parsed.usage, parsed.body, 200
    await services.ledger.record(ctx)
    extra: list[tuple[bytes, bytes]] | None = None
    if ctx.estimated and ctx.counted is not None:
        ctx.answer = billed.body_with_usage(ctx.api, parsed.body, ctx.counted)
        extra = [billed.HEADER]
    await responder.whole(200, ctx.answer, parsed.content_type.encode(), extra)


def deliver(ctx: RequestContext, delivered: DeliveredStream, out: bytes) -> None:
    if ctx.first_byte_ns is None:
        ctx.first_byte_ns = time.perf_counter_ns()
    delivered.add(out)  # kept while short, counted as it passes once long (bounded either way)


async def end_stream(
    services: Services,
    ctx: RequestContext,
    usage: Usage | None,
    final: bytes,
    responder: Responder,
    stream: StreamRelay | None = None,
) -> None:
    """Commits the row, then sends the stream's closing bytes; when the ledger counted the tokens
    itself, the relay puts the billed figures in them for a client that asked (`StreamRelay.settle`)."""
    ctx.usage, ctx.status_code = usage, 200
    await services.ledger.record(ctx)
    if stream is not None and ctx.estimated and ctx.counted is not None:
        final = stream.settle(ctx.counted, final)
    ctx.closing = final
    if not responder.started:  # an upstream stream that produced nothing before its end
        await responder.start_stream()
    await responder.end(final)


class _Watch:
    """Watches for the client leaving mid-stream and then stops reading the upstream at once."""

    __slots__ = ("finished", "left", "resp", "task")

    def __init__(self, resp: UpstreamResponse, receive: Receive) -> None:
        self.resp = resp
        self.finished = False
        self.left = False
        self.task = asyncio.ensure_future(receive())
        self.task.add_done_callback(self._on_message)

    def _on_message(self, task: asyncio.Task[Message]) -> None:
        if self.finished or task.cancelled():
            return
        self.left = True
        self.resp.close()

    def stop(self) -> None:
        self.finished = True
        if not self.task.done():
            self.task.cancel()


async def relay(
    services: Services,
    ctx: RequestContext,
    call: Call,
    provider: Provider,
    resp: UpstreamResponse,
    responder: Responder,
    receive: Receive,
) -> None:
    """Relays one upstream stream. What was delivered is kept (`ctx.delivered`) only while
    something may need it: the cache, captured trace content, or the ledger while no believable
    usage has come; once it has, the bytes are let go."""
    stream = provider.open_stream(call)
    bound = services.settings.max_upstream_event_bytes
    # an event that never ends is cut here, not buffered by a relay; AWS's binary frames by their declared length
    framed = resp.content_type.startswith(bedrock.EVENT_STREAM)
    events = bedrock.FrameBound(bound) if framed else sse.EventBound(bound)
    delivered = ctx.delivered = DeliveredStream(services.ledger.counter)
    forget = not ctx.keep_delivered
    # The watcher costs a task; a stream the upstream has already delivered whole (a short answer,
    # the demo model) ends before a departed client could matter, so only a stream still arriving gets one.
    watch: _Watch | None = None
    try:
        async for data in resp:
            if stream.done:  # bytes after the final event: not for the client, and no more are read
                resp.close()
                break
            if events.over(data):
                resp.close()
                raise too_large(provider.label, "an event", bound)
            out = stream.feed(data)
            if out:
                if not responder.started:  # the status goes out with the first bytes: until then a retry may
                    await responder.start_stream()
                deliver(ctx, delivered, out)
                await responder.chunk(out)
            if forget and stream.usage is not None and usage_checks.believable(stream.usage):
                delivered.forget()
                forget = False
            if watch is None and resp.pending():
                watch = _Watch(resp, receive)
        if watch is not None:
            if watch.left:
                ctx.client_aborted = True
                ctx.usage = stream.usage
                return
            watch.finished = True
        final = stream.finish()  # sets the usage of a relay that reads it at the end
        await end_stream(services, ctx, stream.usage, final, responder, stream)
    except MeterwayError as e:
        if watch is not None and watch.left:
            ctx.client_aborted = True
            ctx.usage = stream.usage
            return
        if not responder.started:  # nothing reached the client: a status error, which may be retried
            raise
        await fail_stream(services, ctx, call, stream, e, responder)
    finally:
        if watch is not None:
            watch.stop()


async def fail_stream(
    services: Services, ctx: RequestContext, call: Call, stream: StreamRelay, err: MeterwayError, responder: Responder
) -> None:
    ctx.error = err
    flag(ctx, err)
    ctx.usage = stream.usage
    ctx.status_code = responder.status
    log.warning("stream %s ended by an upstream failure: %s", ctx.request_id, err.message)
    await services.ledger.record(ctx)
    await responder.end(errors.stream_error_event(err, call.api))


async def speech_usage(services: Services, ctx: RequestContext, call: Call) -> Usage:
    """What a speech request is billed: its input's characters, and, for a deployment priced per
    token with no price per character (gpt-4o-mini-tts), its input's tokens as prompt tokens,
    counted here (the upstream reports none), else a token-priced model would be free."""
    usage = Usage(characters=call.head.units.characters)
    dep = ctx.deployment
    if dep is None or dep.prices.input_per_token is None or dep.prices.input_per_character is not None:
        return usage
    try:
        text = orjson.loads(call.body).get("input")
    except (orjson.JSONDecodeError, AttributeError):
        text = None
    if isinstance(text, str):
        usage.prompt_tokens = usage.total_tokens = await asyncio.to_thread(services.ledger.counter.count, text)
    return usage


async def pipe(
    services: Services, ctx: RequestContext, call: Call, resp: UpstreamResponse, responder: Responder, receive: Receive
) -> None:
    """Relays an answer of bytes (speech's audio) as it arrives, in the upstream's content type,
    nothing of it kept. It is billed by what the request asked (its characters, known from its
    head), so the row is the same whether the client stays to the end or leaves; it is committed
    before the last bytes go out. A failure once bytes went out can only end the body short."""
    usage = await speech_usage(services, ctx, call)
    watch: _Watch | None = None
    try:
        async for data in resp:
            if not data:
                continue
            if not responder.started:
                await responder.start_stream(200, (resp.content_type or "application/octet-stream").encode())
                ctx.first_byte_ns = time.perf_counter_ns()
            await responder.chunk(data)
            if watch is None and resp.pending():
                watch = _Watch(resp, receive)
        if watch is not None:
            if watch.left:
                ctx.client_aborted, ctx.usage = True, usage
                return
            watch.finished = True
        await end_stream(services, ctx, usage, b"", responder)
    except MeterwayError as e:
        ctx.usage = usage
        if watch is not None and watch.left:
            ctx.client_aborted = True
            return
        if not responder.started:
            raise
        ctx.error, ctx.status_code = e, responder.status
        flag(ctx, e)
        log.warning("audio %s ended by an upstream failure: %s", ctx.request_id, e.message)
        await services.ledger.record(ctx)
        await responder.end()
    finally:
        if watch is not None:
            watch.stop()
