"""What Lago knows of an entity's prepaid credits: its subscription (and so its plan and current
billing period), the plan's charges and metrics (cached: they change rarely), and its customer's
wallets, read whole (every page) each time. The contract is `shared/lago/wallets/`.

Amounts come from Lago in cents and are kept in money units (1e-10 of the currency): cents x 1e8.
A wallet is usable when it is active, not expired, in the plan's currency and, when it names the
fee types or metrics it applies to, covers charges on meterway's metric; usable wallets are
ordered as Lago consumes them (priority, then age).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import aiohttp

from meterway.billing.setup import Lago
from meterway.config.billing import Billing
from meterway.store.prepaid import WalletView

CENT_UNITS = 10**8  # money units (1e-10) in a cent
PLAN_TTL_S = 300.0  # a plan and its metrics are read again after this long
PER_PAGE = 100
MAX_PAGES = 50  # every loop bounded: 5,000 wallets is far beyond any customer


class LagoUnavailable(Exception):
    """Lago did not answer, or answered what cannot be used: the reading fails and says why."""


@dataclass(frozen=True, slots=True)
class Subscription:
    external_id: str
    external_customer_id: str
    plan_code: str
    status: str
    period_start: datetime
    period_end: datetime | None


@dataclass(frozen=True, slots=True)
class Plan:
    code: str
    currency: str
    body: dict[str, Any]  # the plan as Lago sent it (its charges), for the price model
    metrics: dict[str, dict[str, Any]]  # billable metric code -> the metric as Lago sent it


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _cents(value: Any) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int | float | str):
        try:
            return int(Decimal(str(value)) * CENT_UNITS)
        except ArithmeticError:
            return 0
    return 0


def wallet_view(raw: dict[str, Any], currency: str, metric_code: str, now: datetime) -> WalletView:
    """A wallet as Lago sent it, with whether it pays for meterway's usage and why not."""
    status = str(raw.get("status") or "")
    expires = _time(raw.get("expiration_at"))
    wallet_currency = str(raw.get("currency") or "")
    applies = raw.get("applies_to") or {}
    fee_types = applies.get("fee_types") or [] if isinstance(applies, dict) else []
    metric_codes = applies.get("billable_metric_codes") or [] if isinstance(applies, dict) else []
    why = None
    if status != "active":
        why = f"status {status or 'unknown'}"
    elif expires is not None and expires <= now:
        why = f"expired at {expires.isoformat()}"
    elif wallet_currency != currency:
        why = f"currency {wallet_currency}, the plan's is {currency}"
    elif fee_types and "charge" not in fee_types:
        why = f"applies to {', '.join(map(str, fee_types))} fees only"
    elif metric_codes and metric_code not in metric_codes:
        why = f"applies to metrics {', '.join(map(str, metric_codes))} only"
    priority = raw.get("priority")
    return WalletView(
        lago_id=str(raw.get("lago_id") or ""),
        code=raw.get("code") if isinstance(raw.get("code"), str) else None,
        name=raw.get("name") if isinstance(raw.get("name"), str) else None,
        priority=priority if isinstance(priority, int) and not isinstance(priority, bool) else 50,
        status=status,
        currency=wallet_currency,
        rate_amount=str(raw.get("rate_amount") or ""),
        balance=_cents(raw.get("balance_cents")),
        ongoing_balance=_cents(raw.get("ongoing_balance_cents")),
        ongoing_usage=_cents(raw.get("ongoing_usage_balance_cents")),
        expiration_at=expires.isoformat() if expires is not None else None,
        created_at=str(raw.get("created_at") or ""),
        usable=why is None,
        why_not=why,
    )


class Wallets:
    """Lago's subscriptions, plans and wallets, over the gateway's one HTTP session."""

    def __init__(self, billing: Billing, session: aiohttp.ClientSession) -> None:
        self.billing = billing
        self.lago = Lago(billing, session)
        self._plans: dict[str, tuple[float, Plan]] = {}  # plan code -> (read at, plan)

    async def _get(self, path: str, within: aiohttp.ClientTimeout) -> Any:
        status, body = await self.lago.call("GET", path, within=within)
        if status == 404:
            return None
        if status != 200 or not isinstance(body, dict):
            what = "did not answer" if status == 0 else f"answered {status}"
            raise LagoUnavailable(f"Lago {what} to GET {path}" + (f": {body}" if isinstance(body, str) else ""))
        return body

    async def subscription(self, external_id: str, within: aiohttp.ClientTimeout) -> Subscription | None:
        body = await self._get(f"/subscriptions/{quote(external_id, safe='')}", within)
        sub = body.get("subscription") if body is not None else None
        if not isinstance(sub, dict):
            return None
        start = _time(sub.get("current_billing_period_started_at")) or _time(sub.get("started_at"))
        if start is None:
            start = _time(sub.get("subscription_at")) or datetime.now(UTC)
        return Subscription(
            external_id=str(sub.get("external_id") or external_id),
            external_customer_id=str(sub.get("external_customer_id") or ""),
            plan_code=str(sub.get("plan_code") or ""),
            status=str(sub.get("status") or ""),
            period_start=start,
            period_end=_time(sub.get("current_billing_period_ending_at")),
        )

    async def plan(self, code: str, within: aiohttp.ClientTimeout) -> Plan:
        cached = self._plans.get(code)
        if cached is not None and time.monotonic() - cached[0] < PLAN_TTL_S:
            return cached[1]
        body = await self._get(f"/plans/{quote(code, safe='')}", within)
        raw = body.get("plan") if body is not None else None
        if not isinstance(raw, dict):
            raise LagoUnavailable(f"Lago has no plan '{code}'")
        metrics: dict[str, dict[str, Any]] = {}
        for charge in raw.get("charges") or []:
            metric_code = charge.get("billable_metric_code") if isinstance(charge, dict) else None
            if isinstance(metric_code, str) and metric_code not in metrics:
                found = await self._get(f"/billable_metrics/{quote(metric_code, safe='')}", within)
                metric = found.get("billable_metric") if found is not None else None
                if isinstance(metric, dict):
                    metrics[metric_code] = metric
        plan = Plan(code, str(raw.get("amount_currency") or "USD"), raw, metrics)
        self._plans[code] = (time.monotonic(), plan)
        return plan

    def known_plan(self, code: str) -> tuple[Plan | None, bool]:
        """The plan as last read, however old (no Lago call: the request path), and whether it is
        due to be read again (older than PLAN_TTL_S, or never read)."""
        cached = self._plans.get(code)
        if cached is None:
            return None, True
        return cached[1], time.monotonic() - cached[0] >= PLAN_TTL_S

    def forget_plans(self) -> None:
        self._plans.clear()

    async def wallets(self, external_customer_id: str, within: aiohttp.ClientTimeout) -> list[dict[str, Any]]:
        """Every wallet of the customer, all pages."""
        out: list[dict[str, Any]] = []
        customer = quote(external_customer_id, safe="")
        page = 1
        for _ in range(MAX_PAGES):
            body = await self._get(f"/wallets?external_customer_id={customer}&page={page}&per_page={PER_PAGE}", within)
            if body is None:
                return out
            out += [w for w in body.get("wallets") or [] if isinstance(w, dict)]
            following = (body.get("meta") or {}).get("next_page")
            if not isinstance(following, int) or following <= page:
                break
            page = following
        return out

    async def wallet(self, lago_id: str, within: aiohttp.ClientTimeout) -> dict[str, Any] | None:
        body = await self._get(f"/wallets/{quote(lago_id, safe='')}", within)
        wallet = body.get("wallet") if body is not None else None
        return wallet if isinstance(wallet, dict) else None

    async def public_key(self, within: aiohttp.ClientTimeout) -> str:
        """Lago's webhook public key (base64 of a PEM), for `jwt` signatures."""
        body = await self._get("/webhooks/json_public_key", within)
        key = (body or {}).get("webhook", {}).get("public_key") if isinstance(body, dict) else None
        if not isinstance(key, str) or not key:
            raise LagoUnavailable("Lago sent no webhook public key")
        return key


def usable_sorted(views: list[WalletView]) -> list[WalletView]:
    """Usable wallets first, in Lago's order of consumption (priority 1 first, then the oldest)."""
    return sorted(views, key=lambda w: (not w.usable, w.priority, w.created_at))
