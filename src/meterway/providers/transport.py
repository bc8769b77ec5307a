"""The upstream seam: one `send` that answers an `UpstreamRequest`, over the shared HTTP session or
in process (the demo `mock`), so the request path has one call path whatever answers it.

As in httpx, a transport is one method; the in-process one plays the part of httpx's
`MockTransport`. The HTTP transport's failures are translated once, here, at the boundary: callers
only ever see UpstreamTimeout (504), UpstreamUnreachable (502, naming the deployment and its host)
or UpstreamUnavailable (502), each an UpstreamTransient that routing retries, never aiohttp's
exception tree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import aiohttp

from meterway.errors import UpstreamTimeout, UpstreamTransient, UpstreamUnavailable, UpstreamUnreachable

if TYPE_CHECKING:
    from meterway.providers.base import UpstreamRequest

UPSTREAM_TOO_LARGE = "upstream_too_large"  # the error's code and the row's flag: an answer or event was cut


class UpstreamResponse(Protocol):
    """An upstream's answer: its status and content type, then either the whole body (`read`) or
    its bytes as they arrive (`async for`). Reading raises only our own errors."""

    status: int
    content_type: str

    def header(self, name: str) -> str | None: ...

    async def read(self, bound: int, keep: int | None) -> bytes:
        """The whole answer, at most `bound` bytes (past it: UpstreamUnavailable `upstream_too_large`);
        with `keep` (an error answer, summarised, not relayed) only that many are read."""
        ...

    def __aiter__(self) -> UpstreamResponse: ...

    async def __anext__(self) -> bytes: ...

    def pending(self) -> bool:
        """More bytes may still arrive: the stream is not all here yet."""
        ...

    def close(self) -> None:
        """Stop reading now: nothing more of this answer is wanted (its connection is not reused)."""
        ...

    def release(self) -> None:
        """Done with the answer; its connection goes back to the pool if it was read to the end."""
        ...


class Upstream(Protocol):
    """Answers one upstream request."""

    async def send(
        self, request: UpstreamRequest, headers: Mapping[str, str], limit: aiohttp.ClientTimeout, label: str
    ) -> UpstreamResponse:
        """`headers` are the request's own plus what the path adds (a trace context), `limit` its
        timeouts; `label` names the deployment in errors, never its key."""
        ...


@runtime_checkable
class InProcess(Protocol):
    """A provider whose deployment is answered by an in-process upstream (the demo `mock`) instead
    of over HTTP. Everything else about it is an ordinary provider: the request path is the same."""

    upstream: Upstream


class HttpUpstream:
    """Every real upstream, over the worker's one pooled aiohttp session."""

    __slots__ = ("session",)

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def send(
        self, request: UpstreamRequest, headers: Mapping[str, str], limit: aiohttp.ClientTimeout, label: str
    ) -> UpstreamResponse:
        try:
            resp = await self.session.request(
                request.method, request.url, data=request.body, headers=headers, timeout=limit
            )
        except (aiohttp.ClientError, TimeoutError) as e:
            raise map_client_error(e, label) from None
        return HttpResponse(resp, label)


class HttpResponse:
    """An aiohttp answer, its read errors translated. Iterating reads what has arrived
    (`readany`), as aiohttp's own `iter_any` does, with no wrapper of its own per chunk."""

    __slots__ = ("_label", "_read", "content_type", "resp", "status")

    def __init__(self, resp: aiohttp.ClientResponse, label: str) -> None:
        self.resp = resp
        self.status = resp.status
        self.content_type = resp.content_type
        self._label = label
        self._read = resp.content.readany

    def header(self, name: str) -> str | None:
        return self.resp.headers.get(name)

    async def read(self, bound: int, keep: int | None) -> bytes:
        resp = self.resp
        label = self._label
        length = resp.content_length
        if keep is None and length is not None and length > bound:
            resp.close()
            raise too_large(label, f"an answer of {length} bytes", bound)
        parts: list[bytes] = []
        size = 0
        try:
            async for data in resp.content.iter_any():
                size += len(data)
                parts.append(data)
                if keep is not None and size >= keep:
                    resp.close()
                    return b"".join(parts)[:keep]
                if size > bound:
                    resp.close()
                    raise too_large(label, "an answer", bound)
        except (aiohttp.ClientError, TimeoutError) as e:
            raise map_client_error(e, label) from None
        return b"".join(parts)

    def __aiter__(self) -> HttpResponse:
        return self

    async def __anext__(self) -> bytes:
        try:
            data = await self._read()
        except (aiohttp.ClientError, TimeoutError) as e:
            raise map_client_error(e, self._label) from None
        except aiohttp.EofStream:
            raise StopAsyncIteration from None
        if not data:
            raise StopAsyncIteration
        return data

    def pending(self) -> bool:
        return not self.resp.content.is_eof()

    def close(self) -> None:
        self.resp.close()

    def release(self) -> None:
        self.resp.release()


def too_large(label: str, what: str, bound: int) -> UpstreamUnavailable:
    """An answer or event past the gateway's bound: the upstream's failure, retried like a broken
    answer while nothing has reached the client."""
    return UpstreamUnavailable(
        f"Upstream deployment '{label}' sent {what} of more than {bound} bytes, the gateway's bound; "
        "the answer was cut.",
        deployment=label,
        code=UPSTREAM_TOO_LARGE,
    )


def map_client_error(exc: BaseException, deployment: str) -> UpstreamTransient:
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"Upstream deployment '{deployment}' did not answer in time.", deployment=deployment)
    if isinstance(exc, aiohttp.ClientConnectorError):
        where = f"{exc.host}:{exc.port}"
        reason = exc.strerror or exc.__class__.__name__
        return UpstreamUnreachable(
            f"Upstream deployment '{deployment}' is unreachable at {where}: {reason}", deployment=deployment
        )
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return UpstreamUnreachable(
            f"Upstream deployment '{deployment}' closed the connection without answering.", deployment=deployment
        )
    if isinstance(exc, aiohttp.ClientPayloadError):
        return UpstreamUnavailable(f"Upstream deployment '{deployment}' broke off its answer.", deployment=deployment)
    return UpstreamUnavailable(
        f"Upstream deployment '{deployment}' failed: {exc.__class__.__name__}", deployment=deployment
    )


def new_session(pool_size: int) -> aiohttp.ClientSession:
    """One pooled session per worker process, for every upstream: keep-alive, never a client per
    request. The gateway reads usage from every answer, so it asks for identity encoding and skips
    aiohttp's decompression machinery altogether."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=pool_size, keepalive_timeout=60, ttl_dns_cache=300),
        auto_decompress=False,
        skip_auto_headers=("Accept-Encoding", "User-Agent"),
        headers={"Accept-Encoding": "identity", "User-Agent": "meterway"},
    )
