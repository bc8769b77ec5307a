"""The admin UI's pages: each reads or changes through the API's handlers (`AdminUI.call`), under
the API's role check, and renders one template. A POST answers with a redirect to the page it
changed, except where a new key must be shown once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson

from meterway.api import reports
from meterway.api.params import Reply
from meterway.errors import PermissionDenied, RouteNotFound
from meterway.ledger import DIMENSIONS, TIMES
from meterway.ledger.row import UNITS
from meterway.ui import prepaid, values
from meterway.ui.routes import UnknownPage
from meterway.ui.web import Request, redirect, respond, with_query

if TYPE_CHECKING:
    from meterway.admin import Admin
    from meterway.services import Services
    from meterway.ui.routes import AdminUI, Context, Page, Viewer

KEY_PAGE_SIZE = 25
SEARCH_PAGES = 20  # a key search reads at most this many pages of 100 keys


# ------------------------------------------------------------------ overview


async def overview(ui: AdminUI, request: Request, viewer: Viewer, ctx: Context) -> None:
    today = datetime.now(UTC).date()
    this_day = {"start": today.isoformat(), "end": today.isoformat()}
    this_month = {"start": today.replace(day=1).isoformat(), "end": today.isoformat()}
    last_30 = {"start": (today - timedelta(days=29)).isoformat(), "end": today.isoformat()}

    def usage(query: dict[str, str]) -> Awaitable[Any]:
        return ui.call(ctx, viewer, "GET", "/usage", query)

    def count(status: str) -> Awaitable[Any]:
        return ui.call(ctx, viewer, "GET", "/spend/logs", {**this_month, "status": status, "page_size": "1"})

    day, month, daily, models, customers, errors, rejected = await asyncio.gather(
        usage(this_day),
        usage(this_month),
        usage({**last_30, "group_by": "day"}),
        usage({**this_month, "group_by": "model"}),
        usage({**this_month, "group_by": "customer"}),
        count("upstream_error"),
        count("rejected"),
    )
    health = await _health(ui, ctx, viewer) if viewer.admin_view else None
    spent = {str(r["day"]): float(r["cost"]) for r in daily["rows"]}
    days = [(today - timedelta(days=n)).isoformat() for n in range(29, -1, -1)]  # every day, spent or not
    series = [{"label": "spend (USD)", "data": [spent.get(d, 0.0) for d in days]}]
    chart = {"kind": "line", "labels": days, "series": series}
    await ui.page(
        ctx,
        "overview.html",
        viewer,
        day=day["totals"],
        month=month["totals"],
        chart=chart,
        top_models=values.top(models["rows"]),
        top_customers=values.top(customers["rows"]),
        errors=errors["total"],
        rejected=rejected["total"],
        rejections=_rejections(ctx.services) if viewer.admin_view else {},
        health=health,
    )


async def _health(ui: AdminUI, ctx: Context, viewer: Viewer) -> dict[str, Any]:
    services = ctx.services
    out: dict[str, Any] = {
        "ledger_waiting": services.ledger.waiting,
        "ledger_healthy": services.ledger.healthy,
        "billing": None,
    }
    if ui.settings.billing is not None:
        out["billing"] = await ui.call(ctx, viewer, "GET", "/billing/status")
    return out


# ------------------------------------------------------------------ keys


async def keys(ui: AdminUI, request: Request, viewer: Viewer, ctx: Context) -> None:
    q = request.query.get("q", "").strip().lower()
    page = values.page_number(request.query.get("page"), 1)
    base = {"return_full_object": "true"}
    if q:
        found: list[dict[str, Any]] = []
        for n in range(1, SEARCH_PAGES + 1):
            listing = await ui.call(ctx, viewer, "GET", "/key/list", {**base, "page": str(n), "size": "100"})
            found += [k for k in listing["keys"] if values.key_matches(k, q)]
            if n >= listing["total_pages"]:
                break
        total = len(found)
        shown = found[(page - 1) * KEY_PAGE_SIZE : page * KEY_PAGE_SIZE]
    else:
        listing = await ui.call(
            ctx, viewer, "GET", "/key/list", {**base, "page": str(page), "size": str(KEY_PAGE_SIZE)}
        )
        total, shown = listing["total_count"], listing["keys"]
    teams = await _teams(ui, ctx, viewer) if viewer.can_write else []
    await ui.page(
        ctx,
        "keys.html",
        viewer,
        keys=shown,
        q=request.query.get("q", ""),
        page=page,
        pages=max(1, -(-total // KEY_PAGE_SIZE)),
        total=total,
        teams=teams,
        models=ui.settings.model_names(),
        notice=request.query.get("notice"),
    )


async def _teams(ui: AdminUI, ctx: Context, viewer: Viewer) -> list[dict[str, Any]]:
    teams: list[dict[str, Any]] = await ui.call(ctx, viewer, "GET", "/team/list")
    return teams


async def key_new(ui: AdminUI, request: Request, viewer: Viewer, ctx: Context) -> None:
    f = request.form
    body: dict[str, Any] = {
        "key_alias": f.get("key_alias") or None,
        "models": [m for m in request.form_lists.get("models", []) if m] or None,
        "max_budget": values.number(f.get("max_budget"), "max_budget"),
        "budget_duration": f.get("budget_duration") or None,
        "duration": f.get("duration") or None,
        "rpm_limit": values.whole_number(f.get("rpm_limit"), "rpm_limit"),
        "tpm_limit": values.whole_number(f.get("tpm_limit"), "tpm_limit"),
        "team_id": f.get("team_id") or None,
        "user_id": f.get("user_id") or None,
        "customer_id": f.get("customer_id") or None,
        "metadata": values.json_object(f.get("metadata"), "metadata"),
    }
    made = await ui.call(ctx, viewer, "POST", "/key/generate", body=values.given(body))
    await ui.page(ctx, "key_shown.html", viewer, key=made["key"], info=made, regenerated=False)


async def key_action(ui: AdminUI, request: Request, viewer: Viewer, ctx: Context) -> None:
    action, token = request.form.get("action", ""), request.form.get("token", "")
    if action in ("block", "unblock"):
        await ui.call(ctx, viewer, "POST", f"/key/{action}", body={"key": token})
        notice = f"Key {action}ed."
    elif action == "delete":
        await ui.call(ctx, viewer, "POST", "/key/delete", body={"keys": [token]})
        notice = "Key deleted."
    elif action == "regenerate":
        made = await ui.call(ctx, viewer, "POST", "/key/regenerate", body={"key": token})
        return await ui.page(ctx, "key_shown.html", viewer, key=made["key"], info=made, regenerated=True)
    else:
        raise UnknownPage(f"No key action {action!r}.")
    await redirect(ctx.send, with_query("/ui/keys", notice=notice, q=request.form.get("q")))


# ------------------------------------------------------------------ teams, users, customers


async def teams(ui: AdminUI, request: Request, viewer: Viewer, ctx: Context) -> None:
    _admins_only(viewer)
    teams = await _teams(ui, ctx, viewer)
    spend = await _spend_by(ui, ctx, viewer, "team")
    await ui.page(ctx, "teams.html", viewer, teams=teams, spend=spend, notice=request.query.get("notice"))


async def team_save(ui: AdminUI, request: Request, viewer: Viewer, ctx: Context) -> None:
    f = request.form
    body = {**values.limit_fields(f), "team_id": f.get("team_id") or None, "team_alias": f.get("team_alias") or None}
    body["blocked"] = f.get("blocked") == "on"
    if "customer_id" in f:  # "" unbinds an existing team; a new team without one is just unbound
        body["customer_id"] = f["customer_id"].strip() or ("" if f.get("existing") else None)
    path = "/team/update" if f.get("existing") else "/team/new"
    await ui.call(ctx, viewer, "POST", path, body=values.given(body))
    await redirect(ctx.send, with_query("/ui/teams", notice="Team saved."))


async def team_delete(ui: AdminUI, request: Request, viewer: Viewer, ctx: Context) -> None:
    await ui.call(ctx, viewer, "POST", "/team/delete", body={"team_ids": [request.form.get("team_id", "")]})
    await redirect(ctx.send, with_query("/ui/teams", notice="Team deleted."))


async def team_member(ui: AdminUI, request: Request, viewer: Viewer, ctx: Context) -> None:
    f = request.form
    team_id, user_id = f.get("team_id", ""), f.get("user_id", "")
    if f.get("remove"):
        await ui.call(ctx, viewer, "POST", "/team/member_delete", body={"team_id": team_id, "user_id": user_id})
    else:
        member = {"user_id": user_id, "role": f.get("role") or "user"}
        await ui.call(ctx, viewer, "POST", "/team/member_add", body={"team_id": team_id, "member": member})
    await redirect(ctx.send, with_query("/ui/teams", notice="Members updated."))


async def users(ui: AdminUI, request: Request, viewer: Viewer, ctx: Context) -> None:
    _admins_only(viewer)
    page = values.page_number(request.query.get("page"), 1)
    listing = await ui.call(ctx, viewer, "GET", "/user/list", {"page": str(page), "page_size": "50"})
    spend = await _spend_by(ui, ctx, viewer, "user")
    await ui.page(
        ctx,
        "users.html",
        viewer,
        users=listing["users"],
        page=page,
        spend=spend,
        notice=request.query.get("notice"),
    )


async def user_save(ui: AdminUI, request: Request, viewer: Viewer, ctx: Context) -> None:
    f = request.form
    body = {
        **values.limit_fields(f),
        "user_id": f.get("user_id") or None,
        "user_email": f.get("user_email") or None,
        "user_role": f.get("user_role") or None,
    }
    if f.get("existing"):
        await ui.call(ctx, viewer, "POST", "/user/update", body=values.given(body))
    else:
        # the UI makes keys on the keys page, where they are shown once
        await ui.call(ctx, viewer, "POST", "/user/new", body={**values.given(body), "auto_create_key": False})
    await redirect(ctx.send, with_query("/ui/users", notice="User saved."))


async def user_delete(ui: AdminUI, request: Request, viewer: Viewer, ctx: Context) -> None:
    await ui.call(ctx, viewer, "POST", "/user/delete", body={"user_ids": [request.form.get("user_id", "")]})
    await redirect(ctx.send, with_query("/ui/users", notice="User deleted."))


async def customers(ui: AdminUI, request: Request, viewer: Viewer, ctx: Context) -> None:
    _admins_only(viewer)
    rows = await ui.call(ctx, viewer, "GET", "/customer/list")
    spend = await _spend_by(ui, ctx, viewer, "customer")
    known = {row["customer_id"] for row in rows}
    unrecorded = sorted((cid, r) for cid, r in spend.items() if cid not in known)  # named by requests only
    await ui.page(
        ctx,
        "customers.html",
        viewer,
        customers=rows,
        spend=spend,
        unrecorded=unrecorded,
        notice=request.query.get("notice"),
        period=datetime.now(UTC).strftime("%Y-%m"),
    )


async def customer_view(ui: AdminUI, request: Request, viewer: Viewer, ctx: Context) -> None:
    """One customer: its settings, this month's spend and, with prepaid credits on, its Lago
    wallets and balance as `/customer/info` gives them."""
    _admins_only(viewer)
    customer_id = request.query.get("customer_id", "")
    if not customer_id:
        raise RouteNotFound("Choose a customer.")
    row = await ui.call(ctx, viewer, "GET", "/customer/info", {"end_user_id": customer_id})
    today = datetime.now(UTC).date()
    month = {"start": today.replace(day=1).isoformat(), "end": today.isoformat(), "customer_id": customer_id}
    usage = await ui.call(ctx, viewer, "GET", "/usage", month)
    await ui.page(
        ctx,
        "customers_view.html",
        viewer,
        c=row,
        month=usage["totals"],
        prepaid=prepaid.panel(row.get("prepaid")),
        period=today.strftime("%Y-%m"),
    )


async def customer_save(ui: AdminUI, request: Request, viewer: Viewer, ctx: Context) -> None:
    f = request.form
    body = {
        **values.limit_fields(f),
        "user_id": f.get("customer_id") or None,
        "alias": f.get("alias") or None,
        "billing_plan_code": f.get("billing_plan_code") or None,
    }
    body["blocked"] = f.get("blocked") == "on"
    body.pop("models", None)
    path = "/customer/update" if f.get("existing") else "/customer/new"
    await ui.call(ctx, viewer, "POST", path, body=values.given(body))
    await redirect(ctx.send, with_query("/ui/customers", notice="Customer saved."))


async def customer_delete(ui: AdminUI, request: Request, viewer: Viewer, ctx: Context) -> None:
    ids = [request.form.get("customer_id", "")]
    await ui.call(ctx, viewer, "POST", "/customer/delete", body={"user_ids": ids})
    await redirect(ctx.send, with_query("/ui/customers", notice="Customer deleted."))


async def _spend_by(ui: AdminUI, ctx: Context, viewer: Viewer, dimension: str) -> dict[str, dict[str, Any]]:
    """This month's usage of each team, user or customer."""
    today = datetime.now(UTC).date()
    query = {"start": today.replace(day=1).isoformat(), "end": today.isoformat(), "group_by": dimension}
    result = await ui.call(ctx, viewer, "GET", "/usage", query)
    return {str(r[dimension]): r for r in result["rows"] if r[dimension] is not None}


def _admins_only(viewer: Viewer) -> None:
    if not viewer.admin_view:
        raise PermissionDenied(f"The role '{viewer.role}' does not see this page.")


# ------------------------------------------------------------------ usage


def _usage_query(request: Request) -> dict[str, str]:
    q = request.query
    dims = values.dimensions(request)
    bucket = q.get("time", "day")
    group_by = [*dims, *([bucket] if bucket in TIMES else [])]
    today = datetime.now(UTC).date()
    query = {
        "group_by": ",".join(group_by),
        "start": q.get("start") or (today - timedelta(days=29)).isoformat(),
        "end": q.get("end") or today.isoformat(),
    }
    for name in values.USAGE_FILTERS:
        if q.get(name):
            query[name] = q[name]
    return query


async def usage(ui: AdminUI, request: Request, viewer: Viewer, ctx: Context) -> None:
    query = _usage_query(request)
    result = await ui.call(ctx, viewer, "GET", "/usage", query)
    group_by: list[str] = result["group_by"]
    await ui.page(
        ctx,
        "usage.html",
        viewer,
        result=result,
        group_by=group_by,
        units=[u for u in UNITS if result["totals"].get(u)],  # the units used in the period, as columns
        dims=[d for d in group_by if d in DIMENSIONS],
        bucket=next((g for g in group_by if g in TIMES), ""),
        all_dims=list(DIMENSIONS),
        times=TIMES,
        query=query,
        chart=values.usage_chart(result["rows"], group_by),
        csv_url=with_query("/ui/usage.csv", **values.usage_link(request)),
        api_url=with_query("/ui/api/usage", **values.usage_link(request)),
        link_query=request.query_lists,
    )


async def usage_csv(ui: AdminUI, request: Request, viewer: Viewer, ctx: Context) -> None:
    query = {**_usage_query(request), "format": "csv"}
    reply: Reply = await ui.call(ctx, viewer, "GET", "/usage", query)
    name = f"usage-{query['start']}-{query['end']}.csv"
    disposition = (b"content-disposition", f'attachment; filename="{name}"'.encode())
    await respond(ctx.send, 200, reply.body, reply.content_type, [disposition])


async def usage_json(ui: AdminUI, request: Request, viewer: Viewer, ctx: Context) -> None:
    result = await ui.call(ctx, viewer, "GET", "/usage", _usage_query(request))
    await respond(ctx.send, 200, orjson.dumps(result), b"application/json")


# ------------------------------------------------------------------ request log


async def logs(ui: AdminUI, request: Request, viewer: Viewer, ctx: Context) -> None:
    q = request.query
    today = datetime.now(UTC).date()
    query = {
        "start": q.get("start") or (today - timedelta(days=6)).isoformat(),
        "end": q.get("end") or today.isoformat(),
        "page": str(values.page_number(q.get("page"), 1)),
        "page_size": "50",
    }
    for name in ("status", "model", "key", "customer_id", "request_id"):
        if q.get(name):
            query[name] = q[name]
    result = await ui.call(ctx, viewer, "GET", "/spend/logs", query)
    await ui.page(
        ctx,
        "logs.html",
        viewer,
        result=result,
        query=query,
        models=ui.settings.model_names(),
        statuses=("success", "rejected", "upstream_error", "client_aborted"),
    )


async def log_detail(ui: AdminUI, request: Request, viewer: Viewer, ctx: Context) -> None:
    request_id = request.query.get("request_id", "")
    result = await ui.call(ctx, viewer, "GET", "/spend/logs", {"request_id": request_id, "page_size": "5"})
    if not result["data"]:
        raise RouteNotFound(f"No request {request_id!r} in the ledger.")
    row = result["data"][0]
    trace = row["metadata"].get("trace_id") if isinstance(row["metadata"], dict) else None
    template = "log_detail.html" if request.wants_fragment else "log_page.html"
    await ui.page(ctx, template, viewer, row=row, rows=result["data"], trace_id=trace)


# ------------------------------------------------------------------ billing


async def billing(ui: AdminUI, request: Request, viewer: Viewer, ctx: Context) -> None:
    _admins_only(viewer)
    configured = ui.settings.billing is not None
    status = await ui.call(ctx, viewer, "GET", "/billing/status") if configured else None
    period = request.query.get("period") or datetime.now(UTC).strftime("%Y-%m")
    reconcile = None
    if configured and request.query.get("reconcile"):
        reconcile = await ui.call(ctx, viewer, "GET", "/billing/reconcile", {"period": period})
    customers = await ui.call(ctx, viewer, "GET", "/customer/list")
    quarantine = await ui.call(ctx, viewer, "GET", "/ledger/quarantine", {"limit": "20"})
    await ui.page(
        ctx,
        "billing.html",
        viewer,
        configured=configured,
        status=status,
        quarantine=quarantine,
        reconcile=reconcile,
        period=period,
        customers=customers,
        notice=request.query.get("notice"),
    )


async def ledger_reprocess(ui: AdminUI, request: Request, viewer: Viewer, ctx: Context) -> None:
    done = await ui.call(ctx, viewer, "POST", "/ledger/reprocess", body={})
    notice = f"{done['written'] + done['cut']} quarantined row(s) written, {done['refused']} refused again."
    await redirect(ctx.send, with_query("/ui/billing", notice=notice))


async def billing_reprocess(ui: AdminUI, request: Request, viewer: Viewer, ctx: Context) -> None:
    body = {"reason": request.form.get("reason") or None}
    done = await ui.call(ctx, viewer, "POST", "/billing/reprocess", body=values.given(body))
    notice = f"{done['reprocessed']} parked event(s) queued again."
    again = done.get("parks_again") or {}
    if again:  # Lago, asked just now, would still not bill them: say so before they park again
        notice += " " + parks_again_notice(again)
    await redirect(ctx.send, with_query("/ui/billing", notice=notice))


NOTICE_REASONS = 3  # reasons a notice names; the rest are on the billing status
NOTICE_REASON_CHARS = 160  # of each reason named


def parks_again_notice(again: dict[str, int]) -> str:
    """What would park again, short enough for a redirect's URL: there is a reason per missing
    subscription, so hundreds of them would make a Location header no proxy takes. The count,
    the most frequent reasons (each cut), and where the rest are."""
    total = sum(again.values())
    top = sorted(again.items(), key=lambda kv: (-kv[1], kv[0]))[:NOTICE_REASONS]
    named = " ".join(f"{n}: {_cut(reason)}." for reason, n in top)
    more = f" ({len(again) - len(top)} more reasons)" if len(again) > len(top) else ""
    return f"{total} will park again, for {len(again)} reason(s). {named}{more} See billing status."


def _cut(text: str) -> str:
    return text if len(text) <= NOTICE_REASON_CHARS else text[: NOTICE_REASON_CHARS - 1] + "…"


async def invoice(ui: AdminUI, request: Request, viewer: Viewer, ctx: Context) -> None:
    customer_id = request.query.get("customer", "")
    if not customer_id:
        raise RouteNotFound("Choose a customer for the invoice preview.")
    period = request.query.get("period") or datetime.now(UTC).strftime("%Y-%m")
    path = f"/customer/{customer_id}/invoice-preview"

    async def preview(routes: Admin, body: bytes, query: dict[str, str]) -> Any:
        return await reports.invoice_preview(routes, customer_id, query)

    doc = await ui.call(ctx, viewer, "GET", path, {"period": period}, handler=preview)
    await ui.page(ctx, "invoice.html", viewer, doc=doc)


# ------------------------------------------------------------------ models


async def models(ui: AdminUI, request: Request, viewer: Viewer, ctx: Context) -> None:
    today = datetime.now(UTC).date().isoformat()
    usage = await ui.call(ctx, viewer, "GET", "/usage", {"start": today, "end": today, "group_by": "model"})
    by_model = {r["model"]: r for r in usage["rows"]}
    visible = set(viewer.principal.visible(ui.settings.model_names()))
    rows = [
        {
            "name": d.model_name,
            "id": d.id,
            "family": d.family,
            "upstream": d.upstream_model,
            "api_base": values.without_credentials(d.api_base),
            "input": values.per_million(d.prices.input_per_token),
            "output": values.per_million(d.prices.output_per_token),
            "cache_read": values.per_million(d.prices.cache_read_per_token),
            "rpm": d.rpm,
            "tpm": d.tpm,
            "today": by_model.get(d.model_name),
        }
        for d in ui.settings.deployments
        if d.model_name in visible
    ]
    await ui.page(ctx, "models.html", viewer, rows=rows)


def _rejections(services: Services) -> dict[str, int]:
    """Limit rejections counted by this process since it started (by reason)."""
    registry = services.metrics.registry
    if registry is None:
        return {}
    counts: dict[str, int] = {}
    for metric in registry.collect():
        if metric.name == "meterway_limit_rejections":
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    counts[sample.labels.get("reason", "")] = int(sample.value)
    return counts


PAGES: dict[tuple[str, str], Page] = {
    ("GET", "/overview"): overview,
    ("GET", "/keys"): keys,
    ("POST", "/keys/new"): key_new,
    ("POST", "/keys/action"): key_action,
    ("GET", "/teams"): teams,
    ("POST", "/teams/save"): team_save,
    ("POST", "/teams/delete"): team_delete,
    ("POST", "/teams/member"): team_member,
    ("GET", "/users"): users,
    ("POST", "/users/save"): user_save,
    ("POST", "/users/delete"): user_delete,
    ("GET", "/customers"): customers,
    ("GET", "/customers/view"): customer_view,
    ("POST", "/customers/save"): customer_save,
    ("POST", "/customers/delete"): customer_delete,
    ("GET", "/usage"): usage,
    ("GET", "/usage.csv"): usage_csv,
    ("GET", "/api/usage"): usage_json,
    ("GET", "/logs"): logs,
    ("GET", "/logs/detail"): log_detail,
    ("GET", "/billing"): billing,
    ("POST", "/billing/reprocess"): billing_reprocess,
    ("POST", "/billing/ledger-reprocess"): ledger_reprocess,
    ("GET", "/billing/invoice"): invoice,
    ("GET", "/models"): models,
}
