"""Probes. Liveness does no I/O and no allocation beyond its reply: a probe that waits behind work
gets a healthy pod restarted. Startup says whether the store is open (migrations done). Readiness
says whether the database and Redis answer now, within short timeouts, and whether the ledger
writes: rows waiting past its stall limit with nothing written make it 503, with the reason."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import orjson

from meterway.api.asgi import Receive, Scope, Send
from meterway.services import Lifecycle, Services, State

LIVE = b'{"status":"ok"}'
_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(LIVE))],
}
_BODY = {"type": "http.response.body", "body": LIVE}


async def live(scope: Scope, receive: Receive, send: Send) -> None:
    await send(_START)
    await send(_BODY)


async def startup(lifecycle: Lifecycle, send: Send) -> None:
    """Started: the store is open (migrated). No I/O: a startup probe may poll it often."""
    ok = lifecycle.state is State.OPEN
    body = orjson.dumps({"status": "started" if ok else "starting", "store": lifecycle.store_text})
    await _reply(send, 200 if ok else 503, body)


class Readiness:
    """Readiness checks the database and Redis with short timeouts, at most once per `ttl_s`:
    probes arriving meanwhile (several kubelets, a load balancer) share one check, and a database
    that stopped answering is reported within `timeout_s`, not after a driver's long connect."""

    def __init__(self, ttl_s: float = 1.0, timeout_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._clock = clock  # tests pass their own, to see the answer age without waiting
        self._at = float("-inf")
        self._answer: tuple[int, dict[str, object]] = (503, {"status": "starting"})
        self._checking: asyncio.Task[tuple[int, dict[str, object]]] | None = None

    async def answer(self, lifecycle: Lifecycle) -> tuple[int, bytes]:
        services = lifecycle.services
        if services is None:
            what = "starting" if lifecycle.state is State.OPENING else "unavailable"
            return 503, orjson.dumps({"status": what, "store": lifecycle.store_text})
        if self._clock() - self._at >= self.ttl_s:
            if self._checking is None:
                self._checking = asyncio.ensure_future(self._check(services))
            try:
                self._answer = await asyncio.shield(self._checking)
            finally:
                self._checking = None
            self._at = self._clock()
        status, details = self._answer
        stalled = services.ledger.stalled()
        if stalled is not None:  # the database may answer a ping and still not take the rows
            status, details = 503, {**details, "status": "unavailable"}
        return status, orjson.dumps({**details, **_ledger(services, stalled)})

    async def _check(self, services: Services) -> tuple[int, dict[str, object]]:
        database = await self._probe(services.store.ping())
        details: dict[str, object] = {"store": "open", "database": database}
        if services.redis is not None:
            details["redis"] = await self._probe(services.redis.ping())
        ok = all(details.get(k, "ok") == "ok" for k in ("database", "redis"))
        details = {"status": "ready" if ok else "unavailable", **details}
        return (200 if ok else 503), details

    async def _probe(self, check: Awaitable[object]) -> str:
        try:
            await asyncio.wait_for(check, self.timeout_s)
        except TimeoutError:
            return f"no answer within {self.timeout_s:g}s"
        except Exception as e:
            return f"unreachable ({e.__class__.__name__})"
        return "ok"


def _ledger(services: Services, stalled: str | None) -> dict[str, object]:
    ledger = services.ledger
    out: dict[str, object] = {
        "models": len(services.router.model_names),
        "ledger": {
            "writing": ledger.healthy,
            "waiting": ledger.waiting,
            "capacity": ledger.capacity,
            "estimated_rows": ledger.estimated_rows,
            "stall_seconds": round(ledger.stall_s(), 3),
            "stalled": stalled,  # why the ledger cannot write, past its stall limit; else null
            "cut_rows": ledger.cut_rows,
            "quarantined_rows": ledger.quarantined_rows,
        },
    }
    if services.settings.unpriced_models:  # their requests are recorded with cost NULL
        out["unpriced_models"] = list(services.settings.unpriced_models)
    return out


async def ready(readiness: Readiness, lifecycle: Lifecycle, send: Send) -> None:
    status, body = await readiness.answer(lifecycle)
    await _reply(send, status, body)


async def _reply(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})
