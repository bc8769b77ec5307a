"""What the request path costs in CPU: requests driven through the gateway's ASGI callable in
process (no HTTP server, no client), timed with the process's CPU clock.

    python bench/path_cpu.py [--requests 3000] [--concurrency 16]

Four cases, each with the master key and the ledger on SQLite: chat whole and streamed on the
built-in mock (`mock/...`), and the same on a stand-in upstream (the shared harness's
`mock_upstream.py` in `SHARED_BENCH`, default `../shared/bench`, run in a subprocess so its CPU
is not counted). Prints µs of this process's CPU per request (every thread: the
ledger's commits are part of a request's cost), the best of 3 runs as the machine is shared.
Compare two checkouts by running the script with each one's `src` on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import orjson

MASTER = "sk-bench-cpu"
HARNESS = Path(os.environ.get("SHARED_BENCH") or Path(__file__).resolve().parents[2] / "shared" / "bench")
HARNESS_MOCK = HARNESS / "mock_upstream.py"
CHAT = {"model": "", "messages": [{"role": "user", "content": "Say hello to the benchmark, briefly."}]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _start_upstream() -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = {**os.environ, "MOCK_PORT": str(port), "MOCK_HOST": "127.0.0.1"}
    proc = subprocess.Popen([sys.executable, str(HARNESS_MOCK)], env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the stand-in upstream did not start")


def _config(base: str, db: str) -> dict[str, Any]:
    prices = {"input_cost_per_token": 0.0000005, "output_cost_per_token": 0.0000015}
    return {
        "model_list": [
            {"model_name": "demo", "litellm_params": {"model": "mock/demo", **prices}},
            {
                "model_name": "bench-model",
                "litellm_params": {"model": "openai/bench-model", "api_base": base, "api_key": "sk-x", **prices},
            },
        ],
        "general_settings": {"master_key": MASTER, "database_url": f"sqlite:///{db}"},
    }


class _Lifespan:
    def __init__(self) -> None:
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def receive(self) -> dict[str, Any]:
        return await self.inbox.get()

    async def send(self, message: MutableMapping[str, Any]) -> None:
        await self.outbox.put(dict(message))


async def _request(app: Any, body: bytes) -> tuple[int, bytes]:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [
            (b"authorization", b"Bearer " + MASTER.encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "query_string": b"",
        "client": ("127.0.0.1", 1),
    }
    sent = False
    never: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    status = 0
    parts: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await never  # the client never leaves

    async def send(message: MutableMapping[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            parts.append(message.get("body", b""))

    await app(scope, receive, send)
    never.cancel()
    return status, b"".join(parts)


async def _ready(app: Any) -> None:
    """Waits for the store to open: until then a model request waits for it, or gets 503."""
    body = orjson.dumps({**CHAT, "model": "demo"})
    for _ in range(100):
        status, _out = await _request(app, body)
        if status == 200:
            return
    raise RuntimeError(f"the gateway did not get ready (status {status})")


async def _run(app: Any, body: bytes, n: int, concurrency: int) -> float:
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            status, out = await _request(app, body)
            if status != 200:
                raise RuntimeError(f"status {status}: {out[:200]!r}")

    start = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (time.process_time() - start) / n * 1e6


async def main_async(requests: int, concurrency: int) -> None:
    from meterway.app import create_app
    from meterway.config.load import parse_config

    upstream, base = _start_upstream()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            app = create_app(parse_config(_config(base, f"{tmp}/ledger.db"), source=None, env={}))
            life = _Lifespan()
            running = asyncio.ensure_future(app({"type": "lifespan"}, life.receive, life.send))
            await life.inbox.put({"type": "lifespan.startup"})
            started = await life.outbox.get()
            assert started["type"] == "lifespan.startup.complete", started
            await _ready(app)
            cases = [
                ("mock, chat", "demo", False),
                ("mock, stream", "demo", True),
                ("stand-in, chat", "bench-model", False),
                ("stand-in, stream", "bench-model", True),
            ]
            print(f"{'case':<20}{'µs CPU/request':>16}   ({requests} requests, concurrency {concurrency}, best of 3)")
            for name, model, stream in cases:
                body = orjson.dumps({**CHAT, "model": model, "stream": stream})
                await _run(app, body, min(requests, 300), concurrency)  # warm: caches, pools, the encoder
                best = min([await _run(app, body, requests, concurrency) for _ in range(3)])
                print(f"{name:<20}{best:>16.1f}")
            await life.inbox.put({"type": "lifespan.shutdown"})
            await life.outbox.get()
            await running
    finally:
        upstream.terminate()
        upstream.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(main_async(args.requests, args.concurrency))
    except ImportError:
        asyncio.run(main_async(args.requests, args.concurrency))


if __name__ == "__main__":
    main()
