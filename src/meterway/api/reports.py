"""Usage reports over HTTP: request logs, totals by any grouping, a customer's invoice preview.

Admins (the master key, `proxy_admin`, `proxy_admin_viewer`) see everything; an internal user's
key sees only its own user's usage (the filter is forced, not trusted). Amounts are exact decimal
strings of USD. `/usage` and the invoice answer CSV (`format=csv` or `Accept: text/csv`) and the
invoice also a printable HTML page (`format=html`).
"""

from __future__ import annotations

import csv
import html
import io
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from meterway import bounds
from meterway.api.params import Reply, query_int
from meterway.auth.keys import reference
from meterway.errors import BadRequest, RouteNotFound
from meterway.ledger import DIMENSIONS, TAG, TIMES, Filters
from meterway.ledger.pricing import MONEY_UNIT, usd
from meterway.ledger.row import UNITS

if TYPE_CHECKING:
    from meterway.admin import Admin


def _day(value: str | None, name: str, default: date) -> date:
    if not value:
        return default
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        raise BadRequest(f"'{name}' must be a date, YYYY-MM-DD; got {value!r}.", param=name) from None


def _filters(query: dict[str, str], *, start: str = "start", end: str = "end") -> Filters:
    today = datetime.now(UTC).date()
    # a request looked up by its id is found whenever it was made; other reports cover 30 days
    since = date(1970, 1, 1) if query.get("request_id") else today - timedelta(days=30)
    first = _day(query.get(start) or query.get("start_date"), start, since)
    last = _day(query.get(end) or query.get("end_date"), end, today)
    if last < first:
        raise BadRequest(f"'{end}' ({last}) is before '{start}' ({first}).", param=end)
    key = query.get("api_key") or query.get("key")
    return Filters(
        first,
        last,
        customer_id=query.get("customer_id") or query.get("end_user_id") or query.get("customer"),
        key_id=reference(key) if key and key != "master" else key,
        user_id=query.get("user_id"),
        team_id=query.get("team_id"),
        model=query.get("model"),
        request_id=query.get("request_id"),
    )


def _format(query: dict[str, str]) -> str:
    fmt = query.get("format", "json").lower()
    if fmt not in ("json", "csv", "html"):
        raise BadRequest(f"'format' must be json, csv or html; got {fmt!r}.", param="format")
    return fmt


def _money(units: int | None) -> str | None:
    return None if units is None else format(usd(units), "f")


def _csv(columns: list[str], rows: list[dict[str, Any]]) -> Reply:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return Reply(out.getvalue().encode(), b"text/csv; charset=utf-8")


async def spend_logs(r: Admin, body: bytes, query: dict[str, str]) -> Any:
    """LiteLLM's `/spend/logs`: one object per request, newest first, paged."""
    page = query_int(query, "page", 1, 1)
    size = query_int(query, "page_size", 100, 1, 1000)
    filters = replace(_filters(query), status=query.get("status") or None)  # totals have no status: logs only
    total, rows = await r.store.reports.logs(filters, limit=size, offset=(page - 1) * size)
    return {
        "data": [_log(row) for row in rows],
        "total": total,
        "page": page,
        "page_size": size,
        "total_pages": max(1, -(-total // size)),
    }


def _log(row: dict[str, Any]) -> dict[str, Any]:
    cost = row["cost"]
    return {
        "request_id": row["request_id"],
        "call_type": row["endpoint"],
        "api_key": row["key_id"],
        "key_alias": row["key_alias"],
        "user": row["user_id"],
        "team_id": row["team_id"],
        "end_user": row.get("end_user") or row["customer_id"],  # the request's `user`, as LiteLLM means it
        "customer_id": row["customer_id"],  # who was charged: the key's binding, else that `user`
        "model": row["model_group"],
        "model_id": row["deployment_id"],
        "upstream_model": row["upstream_model"],
        "stream": row["stream"],
        "prompt_tokens": row["prompt_tokens"],
        "completion_tokens": row["completion_tokens"],
        "total_tokens": row["total_tokens"],
        "cached_tokens": row["cached_tokens"],
        "cache_write_tokens": row["cache_write_tokens"],
        "reasoning_tokens": row["reasoning_tokens"],
        "tokens_estimated": row["tokens_estimated"],
        "flags": row["flags"].split(",") if row.get("flags") else [],  # usage_invalid, usage_absurd, cut, ...
        "spend": float(cost) if cost is not None else None,
        "cost": format(cost, "f") if cost is not None else None,
        "status": row["status"],
        "http_status": row["http_status"],
        "error_type": row["error_type"],
        "startTime": _iso(row["started_at"]),
        "endTime": _iso(row["ended_at"]),
        "latency_ms": row["latency_ms"],
        "ttft_ms": row["ttft_ms"],
        "request_tags": row["tags"],
        "metadata": row["metadata"],
        "source": row["source"],  # gateway, or webhook: reported by another proxy
        "attempts": row["attempts"],  # upstream attempts: retries and fallbacks add to 1; 0 for a cache hit
        "cache_hit": bool(row["cache_hit"]),
        **{u: row.get(u) or 0 for u in UNITS},  # units beside tokens: rerank queries, images, audio ms, characters
    }


def _iso(value: datetime) -> str:
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


async def usage(r: Admin, body: bytes, query: dict[str, str]) -> Any:
    group_by = [g.strip() for g in query.get("group_by", "").split(",") if g.strip()]
    unknown = [g for g in group_by if g not in DIMENSIONS and g not in TIMES and g != TAG]
    if unknown or len([g for g in group_by if g in TIMES]) > 1:
        raise BadRequest(
            "'group_by' takes customer, key, user, team, model, tag and one of hour, day, month; "
            f"got {query.get('group_by')!r}.",
            param="group_by",
        )
    filters = _filters(query)
    rows = await r.store.reports.usage(group_by, filters)
    out = [_usage_row(row, group_by) for row in rows]
    if _format(query) == "csv":
        return _csv([*group_by, *_USAGE_COLUMNS], out)
    if TAG in group_by:  # a row with several tags is in several groups: the totals count it once
        rows = await r.store.reports.usage([], filters)
    totals = _usage_row(
        {m: sum(row[m] or 0 for row in rows) for m in ("requests", "errors", "unpriced", *_TOKENS, "cost", *UNITS)}, []
    )
    return {
        "group_by": group_by,
        "start": filters.start.isoformat(),
        "end": filters.end.isoformat(),
        "rows": out,
        "totals": totals,
    }


_TOKENS = ("prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens", "reasoning_tokens")
_USAGE_COLUMNS = ["requests", "errors", "unpriced", *_TOKENS, "total_tokens", "cost", *UNITS]


def _usage_row(row: dict[str, Any], group_by: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {g: row[g] for g in group_by}
    for m in ("requests", "errors", "unpriced", *_TOKENS):
        out[m] = row[m] or 0
    out["total_tokens"] = out["prompt_tokens"] + out["completion_tokens"]
    out["cost"] = _money(row["cost"] or 0)
    for u in UNITS:  # units beside tokens: rerank queries, images, audio milliseconds, speech characters
        out[u] = row.get(u) or 0
    return out


async def global_spend_report(r: Admin, body: bytes, query: dict[str, str]) -> Any:
    """LiteLLM's `/global/spend/report`: per day, the spend of each team, customer or key, with
    its models."""
    by = query.get("group_by", "team")
    dimension = {"team": "team", "customer": "customer", "api_key": "key"}.get(by)
    if dimension is None:
        raise BadRequest(f"'group_by' must be team, customer or api_key; got {by!r}.", param="group_by")
    rows = await r.store.reports.usage(["day", dimension, "model"], _filters(query, start="start_date", end="end_date"))
    days: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        groups = days.setdefault(row["day"], {})
        name = row[dimension] or None
        g = groups.setdefault(name or "", {"total_spend": 0, "metadata": []})
        g["total_spend"] += row["cost"] or 0
        g["metadata"].append(
            {
                "model": row["model"],
                "spend": float(usd(row["cost"] or 0)),
                "total_tokens": (row["prompt_tokens"] or 0) + (row["completion_tokens"] or 0),
            }
        )
    label = {"team": "team_name", "customer": "customer", "key": "api_key"}[dimension]
    plural = {"team": "teams", "customer": "customers", "key": "api_keys"}[dimension]
    return [
        {
            "group_by_day": day,
            plural: [
                {label: name or None, "total_spend": float(usd(g["total_spend"])), "metadata": g["metadata"]}
                for name, g in groups.items()
            ],
        }
        for day, groups in sorted(days.items())
    ]


async def invoice_preview(r: Admin, customer_id: str, query: dict[str, str]) -> Any:
    bounds.text(customer_id, "customer_id")  # from the path: looked up as any id is
    period = query.get("period") or datetime.now(UTC).strftime("%Y-%m")
    try:
        first = date.fromisoformat(period + "-01")
    except ValueError:
        raise BadRequest(f"'period' must be a month, YYYY-MM; got {period!r}.", param="period") from None
    last = (first.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)
    customer = await r.store.customers.get(customer_id)
    groups = await r.store.reports.invoice_groups(customer_id, first, last)
    if customer is None and not groups:
        raise RouteNotFound(f"Customer '{customer_id}' not found.")
    lines = invoice_lines(groups)
    total = sum(line["amount_units"] for line in lines if line["amount_units"] is not None)
    unpriced = [line["model"] for line in lines if line["unit_price"] is None]
    shown = [{k: v for k, v in line.items() if k != "amount_units"} for line in lines]
    doc: dict[str, Any] = {
        "customer_id": customer_id,
        "period": period,
        "start": first.isoformat(),
        "end": last.isoformat(),
        "currency": "USD",
        "lines": shown,
        "total": _money(total),
        "unpriced_models": sorted(set(unpriced)),
    }
    fmt = _format(query)
    if fmt == "csv":
        return _csv(["model", "token_type", "quantity", "unit_price", "amount"], shown)
    if fmt == "html":
        return Reply(_invoice_html(doc).encode(), b"text/html; charset=utf-8")
    return doc


def invoice_lines(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per model, token type and unit price; amount = quantity x unit price, exactly.
    Units (a rerank's queries, images, audio, characters) come after the tokens: the rollup keeps
    their cost, not their price, so their line's amount is the group's cost beyond its tokens' lines
    (its unit price that divided by the quantity). A token type with no price in a group that used
    units is not billed (a reranker priced per query that reports tokens too) and has no line."""
    lines: list[dict[str, Any]] = []
    for g in groups:
        p_in, p_out, p_read, p_write = (
            None if g[p] is None or g[p] < 0 else g[p]
            for p in ("price_input", "price_output", "price_cache_read", "price_cache_write")
        )
        used = {u: g.get(u) or 0 for u in UNITS if g.get(u)}
        cached = g["cached_tokens"] if p_read is not None else 0
        written = g["cache_write_tokens"] if p_write is not None else 0
        tokens_amount = 0
        for token_type, quantity, price in (
            ("input", max(g["prompt_tokens"] - cached - written, 0), p_in),
            ("cached_input", cached, p_read),
            ("cache_write", written, p_write),
            ("output", g["completion_tokens"], p_out),
        ):
            if not quantity or (price is None and used):
                continue
            amount = quantity * price if price is not None else None
            tokens_amount += amount or 0
            lines.append(_line(g["model_group"], token_type, quantity, price, amount))
        if used:
            amount = max((g.get("cost") or 0) - tokens_amount, 0)
            names, quantity = "+".join(used), sum(used.values()) if len(used) == 1 else None
            each = Decimal(amount) / quantity if quantity else None
            lines.append(_line(g["model_group"], names, quantity, each, amount))
    return lines


def _line(
    model: str, kind: str, quantity: int | None, price: Decimal | int | None, amount: int | None
) -> dict[str, Any]:
    return {
        "model": model,
        "token_type": kind,
        "quantity": quantity,
        "unit_price": format((Decimal(price) * MONEY_UNIT).normalize(), "f") if price is not None else None,
        "amount": _money(amount),
        "amount_units": amount,
    }


def _invoice_html(doc: dict[str, Any]) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(str(x['model']))}</td><td>{e(x['token_type'])}</td><td class=n>{x['quantity']:,}</td>"
        f"<td class=n>{e(x['unit_price'] or 'no price')}</td><td class=n>{e(x['amount'] or '-')}</td></tr>"
        for x in doc["lines"]
    )
    return (
        "<!doctype html><html><head><meta charset=utf-8>"
        f"<title>Invoice preview {e(doc['customer_id'])} {e(doc['period'])}</title>"
        "<style>body{font:14px system-ui,sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{padding:4px 10px;border-bottom:1px solid #ddd}.n{text-align:right}"
        "@media print{body{margin:0}}</style></head><body>"
        f"<h1>Invoice preview</h1><p>Customer <b>{e(doc['customer_id'])}</b>, {e(doc['start'])} to {e(doc['end'])}"
        " (UTC). Amounts in USD. A preview: the invoice itself is issued by the billing system.</p>"
        "<table><tr><th>model</th><th>tokens</th><th class=n>quantity</th><th class=n>unit price</th>"
        f"<th class=n>amount</th></tr>{rows}<tr><th colspan=4 class=n>total</th>"
        f"<th class=n>{e(doc['total'])}</th></tr></table></body></html>"
    )


ROUTES = {
    ("GET", "/spend/logs"): spend_logs,
    ("GET", "/usage"): usage,
    ("GET", "/global/spend/report"): global_spend_report,
}
