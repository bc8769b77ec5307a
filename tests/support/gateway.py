"""Runs a real gateway (uvicorn, uvloop, httptools, as in production) on a free loopback port in a
background thread, built from a config dict, so tests talk to it over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn

from meterway.app import Gateway, create_app
from meterway.config.load import parse_config
from meterway.config.settings import Settings
from meterway.context import Hook
from meterway.services import State
from tests.support.wait import eventually

MASTER_KEY = "sk-test-master-0123456789"


class _Server(uvicorn.Server):
    """uvicorn's server, stopped as soon as a test is done with it. uvicorn looks at `should_exit`
    every 0.1 s and then pauses 0.1 s more for connections to close: fine for a process, but a
    fifth of a second of idling per gateway the suite starts (hundreds of them). Here `stop()` wakes
    the main loop, and shutdown polls for the connections to close; the rest is uvicorn's own."""

    _loop: asyncio.AbstractEventLoop | None = None
    _wake: asyncio.Event | None = None

    async def main_loop(self) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.1)
            should_exit = await self.on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        # idle keep-alive connections close on the loop's next turns; a busy one is waited for below
        for _ in range(20):
            if not self.server_state.connections:
                break
            await asyncio.sleep(0.005)
        await self._wait_tasks_to_complete()
        if not self.force_exit:
            await self.lifespan.shutdown()

    def stop(self) -> None:
        self.should_exit = True
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already ended
                loop.call_soon_threadsafe(wake.set)


@dataclass
class RunningGateway:
    url: str  # http://127.0.0.1:PORT
    key: str
    settings: Settings
    app: Gateway

    @property
    def v1(self) -> str:
        return self.url + "/v1"


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def settings_for(config: Mapping[str, Any], master_key: str = MASTER_KEY) -> Settings:
    data = dict(config)
    general = dict(data.get("general_settings") or {})
    general.setdefault("master_key", master_key)
    data["general_settings"] = general
    return parse_config(data, source=None)


@contextmanager
def run_gateway(
    config: Mapping[str, Any] | Settings, master_key: str = MASTER_KEY, hooks: tuple[Hook, ...] = ()
) -> Iterator[RunningGateway]:
    scratch = tempfile.TemporaryDirectory(prefix="meterway-test-")
    if not isinstance(config, Settings):
        general = dict(config.get("general_settings") or {})
        general.setdefault("database_url", f"sqlite:///{scratch.name}/meterway.db")
        config = {**config, "general_settings": general}
    settings = config if isinstance(config, Settings) else settings_for(config, master_key)
    app = create_app(settings, hooks)
    sock = free_socket()
    port = sock.getsockname()[1]
    server = _Server(
        uvicorn.Config(app, loop="uvloop", http="httptools", lifespan="on", log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()

    def up() -> bool:
        if not thread.is_alive():
            raise RuntimeError(f"gateway did not start (store: {app.lifecycle.store_text})")
        return server.started and app.lifecycle.state is not State.OPENING

    eventually(up, 20, "the gateway serving with its store opened", interval=0.005)
    try:
        key = settings.master_key.reveal() if settings.master_key else master_key
        yield RunningGateway(f"http://127.0.0.1:{port}", key, settings, app)
    finally:
        server.stop()
        thread.join(timeout=10)
        sock.close()
        scratch.cleanup()


def ledger_row(url: str, key: str, request_id: str) -> dict[str, Any]:
    """The one ledger row of a request, as `/spend/logs` shows it."""
    r = httpx.get(url + "/spend/logs", params={"request_id": request_id}, headers={"Authorization": f"Bearer {key}"})
    rows = r.json()["data"]
    assert len(rows) == 1, r.text
    return rows[0]  # type: ignore[no-any-return]
