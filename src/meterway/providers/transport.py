"""The shared upstream transport's failures, translated once, at the boundary, into ours.

aiohttp raises its own exception tree; callers of the request path only ever see UpstreamTimeout
(504), UpstreamUnreachable (502, naming the deployment and its host) or UpstreamUnavailable (502):
each an UpstreamTransient, so routing retries it.
"""

from __future__ import annotations

import aiohttp

from meterway.errors import UpstreamTimeout, UpstreamTransient, UpstreamUnavailable, UpstreamUnreachable


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
