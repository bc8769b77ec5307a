"""Metering a background response made on a native deployment: once, when it ends.

The upstream answers a background request at once, `queued`, with no usage: the request's own
ledger row carries none (the provider reports nothing yet). The generation's usage appears only
in the finished Response, which someone has to look at: the gateway polls the upstream (bounded in
number and time), and a client's retrieve is looked at too. Whichever sees the terminal state
first claims the metering in the store (`mark_metered`, one row flips), so the generation gets one
ledger row, with the usage the upstream reported, and every later sight of it adds nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import orjson

from meterway.auth import MASTER, MASTER_ID
from meterway.context import RequestContext
from meterway.providers import responses_format as fmt
from meterway.providers.base import Api
from meterway.store.response_record import TERMINAL

if TYPE_CHECKING:
    from meterway.auth import KeyCache
    from meterway.ledger.recorder import Ledger
    from meterway.providers.transport import Upstream
    from meterway.routing import Router
    from meterway.store.response_record import StoredResponse
    from meterway.store.responses import ResponseStore

log = logging.getLogger("meterway.responses")

POLL_S = 1.0  # how often a running native background response is asked about
WATCH_MAX_S = 3600.0  # and for how long at most (a client's retrieve still meters it later)


class NativeMeter:
    def __init__(
        self,
        store: ResponseStore,
        upstream: Upstream,
        router: Router,
        ledger: Ledger,
        keys: KeyCache,
        max_watched: int,
        body_max: int,
        poll_s: float = POLL_S,
    ) -> None:
        self.store = store
        self.upstream = upstream
        self.router = router
        self.ledger = ledger
        self.keys = keys
        self.max_watched = max_watched
        self.poll_s = poll_s
        self.body_max = body_max  # bytes of an upstream's Response read at most
        self.watched: dict[str, asyncio.Task[None]] = {}

    async def seen(self, row: StoredResponse, response: dict[str, Any]) -> None:
        """A sight of the response as the upstream has it: metered if it has ended and nobody
        metered it yet."""
        status = response.get("status")
        if row.metered or status not in TERMINAL:
            return
        if not await self.store.mark_metered(row.response_id):
            return
        await self.store.update(row.response_id, status=str(status))
        principal = MASTER if row.key_id == MASTER_ID else await self.keys.get(row.key_id or "")
        ctx = RequestContext.start(row.response_id, Api.RESPONSES)
        self.ledger.admit(ctx)
        ctx.principal = principal
        ctx.model_group = row.model_group
        ctx.deployment = self.router.deployment(row.deployment_id)
        ctx.usage = fmt.usage_of(response)
        ctx.status_code, ctx.forwarded = 200, True
        ctx.charged = principal.limits if principal is not None else ()
        await self.ledger.record(ctx)

    def watch(self, row: StoredResponse) -> None:
        """Polls the upstream for the response until it ends (bounded: beyond `max_watched` at
        once, a response waits for a client's retrieve to be metered)."""
        if row.response_id in self.watched or len(self.watched) >= self.max_watched:
            return
        task = asyncio.create_task(self._poll(row))
        self.watched[row.response_id] = task
        task.add_done_callback(lambda _: self.watched.pop(row.response_id, None))

    async def _poll(self, row: StoredResponse) -> None:
        deployment = self.router.deployment(row.deployment_id)
        if deployment is None:
            return
        provider = deployment.provider_for(Api.RESPONSES)
        resource = getattr(provider, "resource_request", None)
        if resource is None:
            return
        loop = asyncio.get_running_loop()
        until = loop.time() + WATCH_MAX_S
        while loop.time() < until:
            await asyncio.sleep(self.poll_s)
            try:
                request = resource("GET", f"/responses/{row.response_id}", "", b"")
                resp = await self.upstream.send(request, request.headers, deployment.timeout_for(False), provider.label)
                try:
                    data = await resp.read(self.body_max, None)
                finally:
                    resp.release()
                if resp.status == 404:
                    return
                if resp.status >= 400:
                    continue
                response = orjson.loads(data)
                if isinstance(response, dict) and response.get("status") in TERMINAL:
                    fresh = await self.store.get(row.response_id)
                    if fresh is not None:
                        await self.seen(fresh, response)
                    return
            except Exception as e:  # the upstream or the store away: asked again next round
                log.warning("background response %s not polled: %s", row.response_id, e.__class__.__name__)

    async def close(self) -> None:
        tasks = list(self.watched.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
