"""`GET /webhooks/stats`, `GET /webhooks/validate` and `POST /webhooks/reprocess`: the admin side
of the usage webhooks (`api.webhooks`), called with the one admin service like every admin route."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from meterway.admin import Admin
from meterway.api.params import decode_body, parse_since
from meterway.bounds import Name
from meterway.ledger import reported


class WebhookReprocessRequest(msgspec.Struct):
    reason: Name | None = None  # only parked rows whose reason contains this
    since: Name | None = None  # only rows recorded from this day (YYYY-MM-DD) or time (ISO 8601)
    all: bool = False  # every parked export, not only those of reported usage


async def stats(admin: Admin, body: bytes, query: dict[str, str]) -> dict[str, Any]:
    hooks = admin.ingest()
    c = hooks.counts
    return {
        "since": datetime.fromtimestamp(c.since, UTC).isoformat(),
        "requests": c.requests,
        "received": c.received,
        "accepted": c.accepted,
        "duplicates": c.duplicates,
        "rejected": c.rejected,
        "unauthorized": c.unauthorized,
        "ledger": await hooks.store.outbox.source_counts(reported.SOURCE),
    }


async def validate(admin: Admin, body: bytes, query: dict[str, str]) -> dict[str, Any]:
    return await admin.ingest().validate()


async def reprocess(admin: Admin, body: bytes, query: dict[str, str]) -> dict[str, Any]:
    """Parked exports of reported usage (or, with `all`, every parked export) back to pending."""
    req: WebhookReprocessRequest = decode_body(body, WebhookReprocessRequest)
    count = await admin.store.outbox.reprocess(
        reason=req.reason, since=parse_since(req.since), source=None if req.all else reported.SOURCE
    )
    if admin.sender is not None:
        admin.sender.forget_subscriptions()
    return {"reprocessed": count}


ROUTES = {
    ("GET", "/webhooks/stats"): stats,
    ("GET", "/webhooks/validate"): validate,
    ("POST", "/webhooks/reprocess"): reprocess,
}
