"""`GET /billing/status`, `POST /billing/reprocess`, `GET /billing/reconcile`, `GET /billing/check`
and `POST /billing/setup`: what waits, what was sent, what is parked and why; parked exports sent
again once their mapping is fixed (same transaction ids); the month's ledger compared with what
Lago holds; and Lago made ready for the events (billing.setup). `GET /ledger/quarantine` and
`POST /ledger/reprocess`: ledger rows the database refused even cut, and their second chance
(docs/ledger.md). The quarantine is part of the status: a quarantined row is billed nowhere."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from meterway.api.params import decode_body, parse_since, query_int
from meterway.bounds import Name
from meterway.errors import BadRequest

if TYPE_CHECKING:
    from meterway.admin import Admin
    from meterway.billing.setup import BillingLink


class ReprocessRequest(msgspec.Struct):
    reason: Name | None = None  # only parked rows whose reason contains this
    since: Name | None = None  # only rows recorded from this day (YYYY-MM-DD) or time (ISO 8601)


async def status(r: Admin, body: bytes, query: dict[str, str]) -> dict[str, Any]:
    out = await r.store.outbox.status()
    count, oldest = await r.store.ledger.quarantine_status()
    out["ledger_quarantine"] = {  # rows the database refused even cut: billed nowhere until reprocessed
        "rows": count,
        "oldest": oldest.isoformat() if oldest is not None else None,
    }
    sender = r.sender
    if sender is not None:
        out["sender"] = {  # this process's sender since it started
            "delivered": sender.delivered,
            "duplicates": sender.duplicates,
            "parked": sender.parked,
            "failed_batches": sender.failures,
        }
    return out


async def reprocess(r: Admin, body: bytes, query: dict[str, str]) -> dict[str, Any]:
    req: ReprocessRequest = decode_body(body, ReprocessRequest)
    since = parse_since(req.since)
    from meterway.billing.events import CHARGED

    charged = CHARGED[r.billing.billing.charge_by] if r.billing is not None else "customer_id"
    count, groups = await r.store.outbox.reprocess_counted(
        charged=charged, reason=req.reason, since=since, limit=FORECAST_ENTITIES
    )
    if r.sender is not None:
        r.sender.forget_subscriptions()
    return {"reprocessed": count, "parks_again": await _parks_again(r, groups) if count else {}}


FORECAST_ENTITIES = 10_000  # charged entities of the reprocessed rows looked at to say what would park again


async def _parks_again(r: Admin, groups: dict[str | None, int]) -> dict[str, int] | None:
    """What of the rows just reprocessed Lago would still not bill, by reason, asked now (None:
    billing is not configured here or Lago did not answer; the sender decides then)."""
    from meterway.billing.sender import parks_again

    if r.billing is None:
        return None
    link = r.billing
    mapped = await r.store.outbox.mapped(link.billing.charge_by)
    return await parks_again(link.billing, link.session, groups, mapped)


def _link(r: Admin) -> BillingLink:
    if r.billing is None:
        raise BadRequest("Billing export is not configured on this gateway (see docs/billing.md).")
    return r.billing


async def reconcile(r: Admin, body: bytes, query: dict[str, str]) -> dict[str, Any]:
    """The month's ledger against Lago, per subscription (see billing.reconcile)."""
    from meterway.billing.reconcile import reconcile as compare

    link = _link(r)
    period = query.get("period") or datetime.now(UTC).strftime("%Y-%m")
    try:
        return await compare(link.billing, r.store.outbox, link.session, period, query.get("customer"))
    except ValueError:
        raise BadRequest(f"'period' must be a month, YYYY-MM; got {period!r}.", param="period") from None


async def _models(r: Admin, link: BillingLink) -> list[str]:
    """The models served (configured, and any the ledger has seen)."""
    return sorted({*link.models, *await r.store.outbox.models()})


async def check(r: Admin, body: bytes, query: dict[str, str]) -> dict[str, Any]:
    """Lago's URL and key, and that the billable metric counts every model served."""
    from meterway.billing import setup as steps

    link = _link(r)
    return (await steps.check(link.billing, link.session, await _models(r, link))).as_dict()


class SetupRequest(msgspec.Struct):
    customers: bool = False  # also create the Lago customer and subscription of customers with a plan


async def setup(r: Admin, body: bytes, query: dict[str, str]) -> dict[str, Any]:
    """Creates or completes the billable metric; optionally subscribes customers with a plan."""
    from meterway.billing import setup as steps

    req: SetupRequest = decode_body(body, SetupRequest)
    link = _link(r)
    customers = await r.store.outbox.planned_customers() if req.customers else []
    done = await steps.setup(link.billing, link.session, await _models(r, link), customers)
    if r.sender is not None:
        r.sender.forget_subscriptions()  # new subscriptions may now exist
    return done.as_dict()


class LedgerReprocessRequest(msgspec.Struct):
    # only these quarantined rows (default: every one not yet reprocessed)
    ids: list[Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]] = []


async def quarantine(r: Admin, body: bytes, query: dict[str, str]) -> dict[str, Any]:
    """Quarantined ledger rows, oldest first; `row` is the row as given, as ASCII JSON text."""
    limit = query_int(query, "limit", 100, 1, 1000)
    everything = query.get("all", "").lower() in ("1", "true", "yes")
    rows = await r.store.ledger.quarantined(limit=limit, everything=everything)
    count, _ = await r.store.ledger.quarantine_status()
    return {
        "waiting": count,
        "rows": [
            {
                "id": q["id"],
                "uid": q["uid"],
                "request_id": q["request_id"],
                "reason": q["reason"],
                "created_at": _iso(q["created_at"]),
                "reprocessed_at": _iso(q["reprocessed_at"]),
                "row": q["row"],
            }
            for q in rows
        ],
    }


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).isoformat()


async def ledger_reprocess(r: Admin, body: bytes, query: dict[str, str]) -> dict[str, Any]:
    """Quarantined rows written again through the ledger's writer (as given, else cut): those
    written get `reprocessed_at` and their cost is added as any row's; the others stay."""
    req: LedgerReprocessRequest = decode_body(body, LedgerReprocessRequest)
    done = await r.store.ledger.reprocess(req.ids)
    return {
        "written": sum(1 for d in done if d.outcome == "written"),
        "present": sum(1 for d in done if d.outcome == "present"),  # already in the ledger: marked, not added
        "cut": sum(1 for d in done if d.outcome == "cut"),
        "refused": sum(1 for d in done if d.outcome == "refused"),
        "rows": [{"id": d.id, "outcome": d.outcome, "reason": d.reason} for d in done],
    }


ROUTES = {
    ("GET", "/ledger/quarantine"): quarantine,
    ("POST", "/ledger/reprocess"): ledger_reprocess,
    ("GET", "/billing/status"): status,
    ("POST", "/billing/reprocess"): reprocess,
    ("GET", "/billing/reconcile"): reconcile,
    ("GET", "/billing/check"): check,
    ("POST", "/billing/setup"): setup,
}
