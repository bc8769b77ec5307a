"""Probes. Liveness does no I/O and no allocation beyond its reply: a probe that waits behind work
gets a healthy pod restarted. Readiness says whether the services are open."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from meterway.api.asgi import Receive, Scope, Send

if TYPE_CHECKING:
    from meterway.app import Services

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


async def ready(services: Services | None, store: str, scope: Scope, receive: Receive, send: Send) -> None:
    if services is None:
        status, body = 503, orjson.dumps({"status": "starting"})
    elif store != "open":
        status, body = (
            503,
            orjson.dumps({"status": "starting" if store == "opening" else "unavailable", "store": store}),
        )
    else:
        status = 200
        ledger = services.ledger
        details: dict[str, object] = {
            "status": "ready",
            "models": len(services.router.model_names),
            "store": store,
            "ledger": {
                "writing": ledger.healthy,
                "waiting": ledger.waiting,
                "capacity": ledger.capacity,
                "estimated_rows": ledger.estimated_rows,
            },
        }
        if services.settings.unpriced_models:  # their requests are recorded with cost NULL
            details["unpriced_models"] = list(services.settings.unpriced_models)
        body = orjson.dumps(details)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})
