"""The UI's values: form fields read and checked (named in a 400 when wrong, as the API names
them), and numbers shaped for display and for the charts."""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from meterway.errors import BadRequest
from meterway.ledger import DIMENSIONS, TIMES
from meterway.ui.web import Request

USAGE_FILTERS = ("customer_id", "user_id", "team_id", "model", "key")  # the usage explorer's narrowing fields


def money(value: Any) -> str:
    if value is None:
        return "—"
    amount = Decimal(str(value))
    return f"${amount:,.6f}".rstrip("0").rstrip(".") if amount else "$0"


def count(value: Any) -> str:
    return f"{int(value or 0):,}"


def when(value: Any) -> str:
    if not value:
        return "—"
    return str(value).replace("T", " ")[:19]


def per_million(price: Decimal | None) -> str | None:
    return None if price is None else format((price * 1_000_000).normalize(), "f")


def page_number(raw: str | None, default: int) -> int:
    try:
        return max(1, int(raw)) if raw else default
    except ValueError:
        return default


def number(raw: str | None, name: str) -> float | None:
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise BadRequest(f"'{name}' must be a number.", param=name) from None


def whole_number(raw: str | None, name: str) -> int | None:
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"'{name}' must be a whole number.", param=name) from None


def json_object(raw: str | None, name: str) -> dict[str, Any] | None:
    if not raw or not raw.strip():
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest(f"'{name}' must be a JSON object.", param=name) from None
    if not isinstance(value, dict):
        raise BadRequest(f"'{name}' must be a JSON object.", param=name)
    return value


def limit_fields(form: dict[str, str]) -> dict[str, Any]:
    return {
        "max_budget": number(form.get("max_budget"), "max_budget"),
        "budget_duration": form.get("budget_duration") or None,
        "rpm_limit": whole_number(form.get("rpm_limit"), "rpm_limit"),
        "tpm_limit": whole_number(form.get("tpm_limit"), "tpm_limit"),
        "max_parallel_requests": whole_number(form.get("max_parallel_requests"), "max_parallel_requests"),
        "billing_external_subscription_id": form.get("billing_external_subscription_id") or None,
    }


def given(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


def key_matches(key: dict[str, Any], q: str) -> bool:
    return any(q in str(key.get(f) or "").lower() for f in ("key_alias", "key_name", "token", "user_id", "team_id"))


def top(rows: list[dict[str, Any]], n: int = 5) -> list[dict[str, Any]]:
    """The `n` groups that cost most (then: made most requests)."""
    return sorted(rows, key=lambda r: (Decimal(r["cost"]), r["requests"]), reverse=True)[:n]


def usage_chart(rows: list[dict[str, Any]], group_by: list[str]) -> dict[str, Any]:
    """Cost per time bucket, one series per group; or cost per group when no time bucket is chosen."""
    bucket = next((g for g in group_by if g in TIMES), None)
    dims = [g for g in group_by if g in DIMENSIONS]

    def label(row: dict[str, Any]) -> str:
        return " / ".join(str(row[d] or "(none)") for d in dims) or "all"

    if bucket is None:
        return {
            "kind": "bar",
            "labels": [label(r) for r in rows],
            "series": [{"label": "spend (USD)", "data": [float(r["cost"]) for r in rows]}],
        }
    labels = sorted({str(r[bucket]) for r in rows})
    series: dict[str, dict[str, float]] = {}
    for r in rows:
        series.setdefault(label(r), {})[str(r[bucket])] = float(r["cost"])
    return {
        "kind": "line" if len(labels) > 1 else "bar",
        "labels": labels,
        "series": [{"label": name, "data": [points.get(x, 0.0) for x in labels]} for name, points in series.items()],
    }


def dimensions(request: Request) -> list[str]:
    """The dimensions asked for: checkboxes (`dim=a&dim=b`) or one list (`dims=a,b`, in links)."""
    asked = [*request.query_lists.get("dim", []), *request.query.get("dims", "").split(",")]
    return [d for d in dict.fromkeys(asked) if d in DIMENSIONS]


def usage_link(request: Request) -> dict[str, str | None]:
    q = request.query
    out: dict[str, str | None] = {k: q.get(k) for k in ("time", "start", "end", *USAGE_FILTERS)}
    out["dims"] = ",".join(dimensions(request))
    return out


def without_credentials(url: str | None) -> str | None:
    """A deployment's base URL as shown: any user and password in it left out."""
    if not url:
        return url
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
