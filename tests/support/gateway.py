"""Runs a real gateway (uvicorn, uvloop, httptools, as in production) on a free loopback port in a
background thread, built from a config dict, so tests talk to it over real HTTP."""

from __future__ import annotations

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
from tests.support.wait import eventually

MASTER_KEY = "sk-test-master-0123456789"


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
    server = uvicorn.Server(
        uvicorn.Config(app, loop="uvloop", http="httptools", lifespan="on", log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()

    def up() -> bool:
        if not thread.is_alive():
            raise RuntimeError(f"gateway did not start (store: {app.store_state})")
        return server.started and app.store_state != "opening"

    eventually(up, 20, "the gateway serving with its store opened", interval=0.005)
    try:
        key = settings.master_key.reveal() if settings.master_key else master_key
        yield RunningGateway(f"http://127.0.0.1:{port}", key, settings, app)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        scratch.cleanup()


def ledger_row(url: str, key: str, request_id: str) -> dict[str, Any]:
    """The one ledger row of a request, as `/spend/logs` shows it."""
    r = httpx.get(url + "/spend/logs", params={"request_id": request_id}, headers={"Authorization": f"Bearer {key}"})
    rows = r.json()["data"]
    assert len(rows) == 1, r.text
    return rows[0]  # type: ignore[no-any-return]
