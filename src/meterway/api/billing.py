"""`GET /billing/status`, `POST /billing/reprocess`, `GET /billing/reconcile`: what waits, what
was sent, what is parked and why; parked exports sent again once their mapping is fixed (same
transaction ids); and the month's ledger compared with what Lago holds."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from meterway.api.management import decode_body
from meterway.errors import BadRequest

if TYPE_CHECKING:
    from meterway.api.management import KeyRoutes


class ReprocessRequest(msgspec.Struct):
    reason: str | None = None  # only parked rows whose reason contains this
    since: str | None = None  # only rows recorded from this day (YYYY-MM-DD) or time (ISO 8601)


async def status(r: KeyRoutes, body: bytes, query: dict[str, str]) -> dict[str, Any]:
    out = await r.store.outbox.status()
    sender = r.sender
    if sender is not None:
        out["sender"] = {"delivered": sender.delivered, "parked": sender.parked, "failed_batches": sender.failures}
    return out


def parse_since(text: str | None) -> datetime | None:
    """A reprocess request's `since`: a day or an ISO 8601 time, UTC unless it says otherwise."""
    if not text:
        return None
    try:
        since = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"'since' must be a date or an ISO 8601 time; got {text!r}.", param="since") from None
    return since if since.tzinfo is not None else since.replace(tzinfo=UTC)


async def reprocess(r: KeyRoutes, body: bytes, query: dict[str, str]) -> dict[str, Any]:
    req: ReprocessRequest = decode_body(body, ReprocessRequest)
    count = await r.store.outbox.reprocess(reason=req.reason, since=parse_since(req.since))
    if r.sender is not None:
        r.sender.forget_subscriptions()
    return {"reprocessed": count}


async def reconcile(r: KeyRoutes, body: bytes, query: dict[str, str]) -> dict[str, Any]:
    """The month's ledger against Lago, per subscription (see billing.reconcile)."""
    from meterway.billing.reconcile import reconcile as compare

    sender = r.sender
    if sender is None:
        raise BadRequest("Billing export is not configured on this gateway (see docs/billing.md).")
    period = query.get("period") or datetime.now(UTC).strftime("%Y-%m")
    try:
        return await compare(sender.billing, r.store.outbox, sender.session, period, query.get("customer"))
    except ValueError:
        raise BadRequest(f"'period' must be a month, YYYY-MM; got {period!r}.", param="period") from None


ROUTES = {
    ("GET", "/billing/status"): status,
    ("POST", "/billing/reprocess"): reprocess,
    ("GET", "/billing/reconcile"): reconcile,
}
