"""A stand-in alert receiver: an aiohttp server on a loopback port, in its own thread, that records
every POST it takes. It can answer the next posts with an error (503) or stop listening for a
while (connections refused), as a receiver in an outage does."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.gateway import free_socket


@dataclass
class Receiver:
    port: int
    posts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (path, body) taken
    refused: int = 0  # posts answered with an error
    _fail: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None
    _site: web.TCPSite | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [body for p, body in list(self.posts) if p == path]

    def fail_next(self, n: int) -> None:
        """The next `n` posts are answered 503 (and not recorded as taken)."""
        self._fail = n

    def down(self) -> None:
        """Stops listening: connections are refused until `up`."""
        self._call(self._stop_site())

    def up(self) -> None:
        self._call(self._start_site())

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self._fail > 0:
            self._fail -= 1
            self.refused += 1
            return web.Response(status=503, text="receiver unavailable")
        self.posts.append((request.path, body))
        return web.json_response({"ok": True})

    async def _start_site(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await self._site.start()

    async def _stop_site(self) -> None:
        if self._site is not None:
            await self._site.stop()
            self._site = None

    def _call(self, coro: Any) -> None:
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)


@contextmanager
def running_receiver() -> Iterator[Receiver]:
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    receiver = Receiver(port)
    loop = asyncio.new_event_loop()
    receiver._loop = loop
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", receiver._handle)
        receiver._runner = web.AppRunner(app, access_log=None)
        await receiver._runner.setup()
        await receiver._start_site()

    receiver._call(start())
    try:
        yield receiver
    finally:
        if receiver._runner is not None:
            receiver._call(receiver._runner.cleanup())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
