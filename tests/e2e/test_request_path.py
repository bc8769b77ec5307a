"""The files a request is handed through, traced on a real one: a streamed chat with a virtual key
(budget, rpm, tpm and parallel limits in Redis, the ledger on PostgreSQL), over real HTTP to the
stand-in upstream.

A stage of the path is a function the request itself is handed to: an ASGI callable (its scope,
`receive` and `send`) before its context exists, a function given its `RequestContext` after.
Helpers a stage calls see only what they need (the body's bytes, a `Call`, the limits' asks, a
row, the request id), so they are not stages: the providers, the limiter, the SSE framing, the
store's writer. docs/architecture.md lists the stages' files; this
test keeps that list true, and the path short."""

from __future__ import annotations

import sys
import threading
import types
from pathlib import Path
from typing import Any

import httpx

import meterway
from meterway.context import RequestContext
from tests.support.gateway import run_gateway
from tests.support.models import priced
from tests.upstreams.standin import StandIn

PACKAGE = str(Path(meterway.__file__).parent) + "/"
DOCS = Path(__file__).parents[2] / "docs" / "architecture.md"
MAX_FILES = 8


class _Stages:
    """A profile function for the gateway's thread: records the file of every meterway function
    called with the traced request's scope (and its `receive` and `send`) or its context."""

    def __init__(self) -> None:
        self.files: list[str] = []
        self.on = False
        self.scope: dict[str, Any] | None = None

    def __call__(self, frame: types.FrameType, event: str, arg: object) -> None:
        if event != "call" or not self.on:
            return
        code = frame.f_code
        if not code.co_filename.startswith(PACKAGE):
            return
        args = frame.f_locals
        names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
        values = [args.get(name) for name in names if name != "self"]  # a context's own methods: not handed on
        handed = any(isinstance(v, RequestContext) for v in values)
        if not handed and any(self._is_scope(v) for v in values):
            handed = sum(callable(v) for v in values) >= 2  # an ASGI callable: scope, receive, send
        if handed:
            where = code.co_filename[len(PACKAGE) :]
            if where not in self.files:
                self.files.append(where)

    def _is_scope(self, value: object) -> bool:
        if not isinstance(value, dict) or value.get("type") != "http":
            return False
        if self.scope is None and value.get("path") == "/v1/chat/completions":
            headers = dict(value.get("headers") or ())
            if headers.get(b"x-request-id") == b"traced":
                self.scope = value
        return value is self.scope


def _documented() -> list[str]:
    """The files listed under "Stages of a streamed chat with a virtual key" in the docs."""
    text = DOCS.read_text()
    start = text.index("Stages of a streamed chat with a virtual key")
    block = text[start:].split("```text", 1)[1].split("```", 1)[0]
    return [line.split()[1] for line in block.strip().splitlines() if line.strip()[:1].isdigit()]


def test_a_streamed_chat_with_a_virtual_key_crosses_the_documented_files(
    tmp_path: Path, upstream: StandIn, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    config = {
        "model_list": [priced(upstream.base_url)],
        "general_settings": {"database_url": pg_url, "redis_url": redis_url, "redis_prefix": redis_prefix},
    }
    stages = _Stages()
    threading.setprofile(stages)  # the gateway's thread, started below, carries it
    try:
        with run_gateway(config) as gw:
            threading.setprofile(None)  # threads started from now on (the store's, uvicorn's) do not
            admin = {"Authorization": f"Bearer {gw.key}"}
            made = httpx.post(
                gw.url + "/key/generate",
                headers=admin,
                json={"max_budget": 10, "rpm_limit": 100, "tpm_limit": 1_000_000, "max_parallel_requests": 10},
            )
            assert made.status_code == 200, made.text
            body = {"model": "priced", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
            key = {"Authorization": f"Bearer {made.json()['key']}"}
            warm = httpx.post(gw.v1 + "/chat/completions", json=body, headers=key)  # caches filled, leases taken
            assert warm.status_code == 200, warm.text
            stages.on = True
            traced = httpx.post(gw.v1 + "/chat/completions", json=body, headers={**key, "x-request-id": "traced"})
            stages.on = False
            assert traced.status_code == 200 and traced.text.rstrip().endswith("data: [DONE]"), traced.text
    finally:
        threading.setprofile(None)
        sys.setprofile(None)
    assert stages.scope is not None, "the traced request never reached the gateway"
    assert sorted(stages.files) == sorted(_documented()), f"the path crosses {stages.files}"
    assert len(stages.files) <= MAX_FILES, f"{len(stages.files)} files: {stages.files}"
