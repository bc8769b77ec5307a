"""The admin UI's pages, served under `/ui` beside the API and never on the model request path.

Each page calls the management, report and billing handlers in-process, through the same role
check (`management.authorize`) the HTTP API applies, so the UI shows the API's numbers and can do
no more than the logged-in principal could with curl. A page never shows a key except once, on
the page that answers its creation or regeneration.
"""

from __future__ import annotations

import importlib.resources
import logging
import mimetypes
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import orjson

from meterway.api import management, reports
from meterway.api.asgi import Incoming, Receive, Scope, Send, read_body
from meterway.auth import MASTER, Principal
from meterway.auth.keys import digest
from meterway.errors import (
    AuthenticationFailed,
    BadRequest,
    MeterwayError,
    PermissionDenied,
    RouteNotFound,
    ServiceUnavailable,
)
from meterway.ledger import DIMENSIONS, TIMES
from meterway.ui.session import COOKIE, CsrfFailed, Session, SessionInvalid, Sessions
from meterway.ui.web import Request, cookie_header, parse_request, redirect, respond, with_query

if TYPE_CHECKING:
    from meterway.api.management import KeyRoutes
    from meterway.app import Services
    from meterway.config.settings import Settings

log = logging.getLogger("meterway.ui")

LOGIN_COOKIE = "meterway_ui_login"  # a nonce the login form's CSRF token is bound to
STATIC_MAX_AGE = 3600  # our own CSS and JS: revalidated hourly (they change with the gateway's version)
VENDOR_MAX_AGE = 7 * 86400  # pinned third-party files: the version is fixed at install time
ADMIN_ROLES = frozenset({"proxy_admin", "proxy_admin_viewer"})
KEY_PAGE_SIZE = 25
USAGE_FILTERS = ("customer_id", "user_id", "team_id", "model", "key")  # the usage explorer's narrowing fields
SEARCH_PAGES = 20  # a key search reads at most this many pages of 100 keys


class UnknownPage(RouteNotFound):
    """No UI page at this path."""


class UiFailure(MeterwayError):
    """A page failed for a reason of ours (a bug or the database), logged with its traceback."""


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who is looking, and what the page may offer them."""

    session: Session
    principal: Principal
    csrf: str

    @property
    def role(self) -> str:
        return self.principal.role

    @property
    def admin_view(self) -> bool:
        """Sees every tenant (admins and admin viewers)."""
        return self.role in ADMIN_ROLES

    @property
    def can_write(self) -> bool:
        return self.role == "proxy_admin"

    @property
    def can_make_keys(self) -> bool:
        return self.role in ("proxy_admin", "internal_user")


Page = Callable[["AdminUI", Request, Viewer, "Context"], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Context:
    services: Services
    routes: KeyRoutes
    send: Send


class AdminUI:
    """Built once per gateway (on the first UI request): the templates, the session signer and
    the page table. Holds no per-request state."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sessions = Sessions(settings.salt_key or settings.master_key, settings.ui_session_s)
        root = importlib.resources.files("meterway.ui")
        self.static_dir = Path(str(root / "static"))
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(root / "templates")),
            autoescape=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["money"] = _money
        self.env.filters["num"] = _num
        self.env.filters["when"] = _when
        self.handlers = management.all_routes()
        self.pages: dict[tuple[str, str], Page] = {
            ("GET", "/overview"): AdminUI.overview,
            ("GET", "/keys"): AdminUI.keys,
            ("POST", "/keys/new"): AdminUI.key_new,
            ("POST", "/keys/action"): AdminUI.key_action,
            ("GET", "/teams"): AdminUI.teams,
            ("POST", "/teams/save"): AdminUI.team_save,
            ("POST", "/teams/delete"): AdminUI.team_delete,
            ("POST", "/teams/member"): AdminUI.team_member,
            ("GET", "/users"): AdminUI.users,
            ("POST", "/users/save"): AdminUI.user_save,
            ("POST", "/users/delete"): AdminUI.user_delete,
            ("GET", "/customers"): AdminUI.customers,
            ("POST", "/customers/save"): AdminUI.customer_save,
            ("POST", "/customers/delete"): AdminUI.customer_delete,
            ("GET", "/usage"): AdminUI.usage,
            ("GET", "/usage.csv"): AdminUI.usage_csv,
            ("GET", "/api/usage"): AdminUI.usage_json,
            ("GET", "/logs"): AdminUI.logs,
            ("GET", "/logs/detail"): AdminUI.log_detail,
            ("GET", "/billing"): AdminUI.billing,
            ("POST", "/billing/reprocess"): AdminUI.billing_reprocess,
            ("GET", "/billing/invoice"): AdminUI.invoice,
            ("GET", "/models"): AdminUI.models,
        }

    # ------------------------------------------------------------------ entry

    async def handle(
        self, services: Services, routes: KeyRoutes | None, scope: Scope, receive: Receive, send: Send
    ) -> None:
        body = b""
        if scope["method"] == "POST":
            body = await read_body(receive, Incoming(scope["headers"]), 1024 * 1024)
        request = parse_request(scope, body)
        path = request.path
        if path.startswith("/static/") and request.method == "GET":
            return await self._static(path.removeprefix("/static/"), send)
        if path == "/login":
            if request.method == "POST":
                return await self._login(services, request, send)
            return await self._login_page(request, send, None)
        if path in ("/", "") and request.method == "GET":
            return await redirect(send, "/ui/overview")
        page = self.pages.get((request.method, path))
        try:
            viewer = await self._viewer(services, request)
            if path == "/logout" and request.method == "POST":
                self.sessions.check_csrf(viewer.session, request.form.get("csrf") or request.header(b"x-csrf-token"))
                clear = cookie_header(COOKIE, "", max_age=0, secure=request.tls)
                return await redirect(send, "/ui/login", [clear])
            if page is None:
                raise UnknownPage(f"No page at /ui{path}.")
            if request.method == "POST":
                self.sessions.check_csrf(viewer.session, request.form.get("csrf") or request.header(b"x-csrf-token"))
            if routes is None:
                raise ServiceUnavailable("The store is still opening; reload in a moment.")
            await page(self, request, viewer, Context(services, routes, send))
        except SessionInvalid as e:
            if path.startswith("/api/") or request.wants_fragment or request.method == "POST":
                return await respond(send, 401, _error_json(e), b"application/json")
            return await redirect(send, with_query("/ui/login", next=scope["path"]))
        except CsrfFailed as e:
            await respond(send, 403, _error_json(e), b"application/json")
        except MeterwayError as e:
            if path.startswith("/api/"):
                return await respond(send, e.status, _error_json(e), b"application/json")
            await self._error_page(request, send, e)
        except Exception:
            log.exception("ui page %s %s failed", request.method, path)
            await self._error_page(request, send, UiFailure("This page failed; the gateway's log has the details."))

    async def _viewer(self, services: Services, request: Request) -> Viewer:
        session = self.sessions.read(request.cookies.get(COOKIE))
        if session.kind == "admin":
            principal = MASTER
        else:
            keys = services.auth.keys
            if keys is None:
                raise ServiceUnavailable("The key store is still opening; reload in a moment.")
            found = await keys.get(session.key_digest)
            if found is None:
                raise SessionInvalid("The key this session logged in with no longer exists.")
            try:
                found.check_usable()
            except AuthenticationFailed as e:
                raise SessionInvalid(e.message) from None
            principal = found
        return Viewer(session, principal, self.sessions.csrf(session))

    # ------------------------------------------------------------------ login

    async def _login_page(self, request: Request, send: Send, error: str | None, status: int = 200) -> None:
        nonce = request.cookies.get(LOGIN_COOKIE) or os.urandom(16).hex()
        body = self.render(
            "login.html",
            None,
            error=error,
            csrf=self.sessions.csrf(_login_session(nonce)),
            next=_safe_next(request.query.get("next") or request.form.get("next")),
            password_login=self.settings.ui_username is not None and self.settings.ui_password is not None,
        )
        await respond(send, status, body, extra=[cookie_header(LOGIN_COOKIE, nonce, max_age=3600, secure=request.tls)])

    async def _login(self, services: Services, request: Request, send: Send) -> None:
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        if not nonce:
            return await self._login_page(request, send, "Your browser did not keep the login cookie; try again.", 403)
        try:
            self.sessions.check_csrf(_login_session(nonce), request.form.get("csrf"))
        except CsrfFailed as e:
            return await respond(send, 403, _error_json(e), b"application/json")
        form = request.form
        secret = form.get("key", "").strip()
        username, password = form.get("username", ""), form.get("password", "")
        settings = self.settings
        session: tuple[Session, str] | None = None
        if username and settings.ui_username is not None and settings.ui_password is not None:
            # both compared in full, whatever the first one gave, so the time taken tells nothing
            user_ok = _same(username, settings.ui_username)
            if settings.ui_password.matches(password) and user_ok:
                session = self.sessions.issue("admin", "", username)
        elif secret:
            if settings.master_key is not None and settings.master_key.matches(secret):
                session = self.sessions.issue("admin", "", "master key")
            else:
                try:
                    principal = await services.auth.authenticate(secret.encode())
                except MeterwayError:
                    principal = None
                if principal is not None and principal.user_id is not None:
                    name = principal.key_alias or principal.user_id
                    session = self.sessions.issue("key", digest(secret), name)
        if session is None:
            log.info("ui login refused")
            return await self._login_page(request, send, "Those credentials are not valid for the UI.", 401)
        cookie = cookie_header(COOKIE, session[1], max_age=self.sessions.lifetime_s, secure=request.tls)
        done = cookie_header(LOGIN_COOKIE, "", max_age=0, secure=request.tls)
        await redirect(send, _safe_next(form.get("next")), [cookie, done])

    # ------------------------------------------------------------------ helpers

    def render(self, template: str, viewer: Viewer | None, **values: Any) -> bytes:
        values.setdefault("notice", None)
        values.setdefault("active", template.split(".")[0].split("_")[0])
        page = self.env.get_template(template)
        return page.render(viewer=viewer, nav=_nav(viewer), **values).encode()

    async def page(self, ctx: Context, template: str, viewer: Viewer, **values: Any) -> None:
        await respond(ctx.send, 200, self.render(template, viewer, **values))

    async def call(
        self,
        ctx: Context,
        viewer: Viewer,
        method: str,
        path: str,
        query: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> Any:
        """One management/report/billing handler, in-process, under the viewer's role check."""
        handler = self.handlers[(method, path)]
        raw = orjson.dumps(body) if body is not None else b""
        raw, checked = await management.authorize(viewer.principal, method, path, raw, dict(query or {}), ctx.routes)
        return await handler(ctx.routes, raw, checked)

    async def _static(self, name: str, send: Send) -> None:
        file = (self.static_dir / name).resolve()
        if self.static_dir.resolve() not in file.parents or not file.is_file() or name.endswith(".integrity"):
            return await respond(send, 404, b"not found", b"text/plain")
        kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        if file.suffix == ".js":
            kind = "text/javascript"
        content_type = f"{kind}; charset=utf-8" if kind.startswith("text/") else kind
        age = VENDOR_MAX_AGE if name.startswith("vendor/") else STATIC_MAX_AGE
        await respond(send, 200, file.read_bytes(), content_type.encode(), cache=f"public, max-age={age}".encode())

    async def _error_page(self, request: Request, send: Send, err: MeterwayError) -> None:
        try:
            viewer = await self._viewer_or_none(request)
        except MeterwayError:
            viewer = None
        body = self.render("error.html", viewer, status=err.status, message=err.message)
        await respond(send, err.status, body)

    async def _viewer_or_none(self, request: Request) -> Viewer | None:
        try:
            session = self.sessions.read(request.cookies.get(COOKIE))
        except SessionInvalid:
            return None
        return Viewer(session, MASTER if session.kind == "admin" else _KEY_VIEWER, self.sessions.csrf(session))

    # ------------------------------------------------------------------ overview

    async def overview(self, request: Request, viewer: Viewer, ctx: Context) -> None:
        today = datetime.now(UTC).date()
        month_start = today.replace(day=1)
        span = {"start": (today - timedelta(days=29)).isoformat(), "end": today.isoformat()}
        day = await self.call(ctx, viewer, "GET", "/usage", {"start": today.isoformat(), "end": today.isoformat()})
        month = await self.call(
            ctx, viewer, "GET", "/usage", {"start": month_start.isoformat(), "end": today.isoformat()}
        )
        daily = await self.call(ctx, viewer, "GET", "/usage", {**span, "group_by": "day"})
        this_month = {"start": month_start.isoformat(), "end": today.isoformat()}
        models = await self.call(ctx, viewer, "GET", "/usage", {**this_month, "group_by": "model"})
        customers = await self.call(ctx, viewer, "GET", "/usage", {**this_month, "group_by": "customer"})
        errors = await self.call(
            ctx, viewer, "GET", "/spend/logs", {**this_month, "status": "upstream_error", "page_size": "1"}
        )
        rejected = await self.call(
            ctx, viewer, "GET", "/spend/logs", {**this_month, "status": "rejected", "page_size": "1"}
        )
        health = await self._health(ctx, viewer) if viewer.admin_view else None
        spent = {str(r["day"]): float(r["cost"]) for r in daily["rows"]}
        days = [(today - timedelta(days=n)).isoformat() for n in range(29, -1, -1)]  # every day, spent or not
        series = [{"label": "spend (USD)", "data": [spent.get(d, 0.0) for d in days]}]
        chart = {"kind": "line", "labels": days, "series": series}
        await self.page(
            ctx,
            "overview.html",
            viewer,
            day=day["totals"],
            month=month["totals"],
            chart=chart,
            top_models=_top(models["rows"], "model"),
            top_customers=_top(customers["rows"], "customer"),
            errors=errors["total"],
            rejected=rejected["total"],
            rejections=_rejections(ctx.services) if viewer.admin_view else {},
            health=health,
        )

    async def _health(self, ctx: Context, viewer: Viewer) -> dict[str, Any]:
        services = ctx.services
        out: dict[str, Any] = {
            "ledger_waiting": services.ledger.waiting,
            "ledger_healthy": services.ledger.healthy,
            "billing": None,
        }
        if self.settings.billing is not None:
            out["billing"] = await self.call(ctx, viewer, "GET", "/billing/status")
        return out

    # ------------------------------------------------------------------ keys

    async def keys(self, request: Request, viewer: Viewer, ctx: Context) -> None:
        q = request.query.get("q", "").strip().lower()
        page = _int(request.query.get("page"), 1)
        base = {"return_full_object": "true"}
        if q:
            found: list[dict[str, Any]] = []
            for n in range(1, SEARCH_PAGES + 1):
                listing = await self.call(ctx, viewer, "GET", "/key/list", {**base, "page": str(n), "size": "100"})
                found += [k for k in listing["keys"] if _matches(k, q)]
                if n >= listing["total_pages"]:
                    break
            total = len(found)
            shown = found[(page - 1) * KEY_PAGE_SIZE : page * KEY_PAGE_SIZE]
        else:
            listing = await self.call(
                ctx, viewer, "GET", "/key/list", {**base, "page": str(page), "size": str(KEY_PAGE_SIZE)}
            )
            total, shown = listing["total_count"], listing["keys"]
        teams = await self._teams(ctx, viewer) if viewer.can_write else []
        await self.page(
            ctx,
            "keys.html",
            viewer,
            keys=shown,
            q=request.query.get("q", ""),
            page=page,
            pages=max(1, -(-total // KEY_PAGE_SIZE)),
            total=total,
            teams=teams,
            models=self.settings.model_names(),
            notice=request.query.get("notice"),
            fragment=request.wants_fragment,
        )

    async def _teams(self, ctx: Context, viewer: Viewer) -> list[dict[str, Any]]:
        teams: list[dict[str, Any]] = await self.call(ctx, viewer, "GET", "/team/list")
        return teams

    async def key_new(self, request: Request, viewer: Viewer, ctx: Context) -> None:
        f = request.form
        body: dict[str, Any] = {
            "key_alias": f.get("key_alias") or None,
            "models": [m for m in request.form_lists.get("models", []) if m] or None,
            "max_budget": _float(f.get("max_budget"), "max_budget"),
            "budget_duration": f.get("budget_duration") or None,
            "duration": f.get("duration") or None,
            "rpm_limit": _opt_int(f.get("rpm_limit"), "rpm_limit"),
            "tpm_limit": _opt_int(f.get("tpm_limit"), "tpm_limit"),
            "team_id": f.get("team_id") or None,
            "user_id": f.get("user_id") or None,
            "metadata": _json_object(f.get("metadata"), "metadata"),
        }
        made = await self.call(ctx, viewer, "POST", "/key/generate", body={k: v for k, v in body.items() if v})
        await self.page(ctx, "key_shown.html", viewer, key=made["key"], info=made, regenerated=False)

    async def key_action(self, request: Request, viewer: Viewer, ctx: Context) -> None:
        action, token = request.form.get("action", ""), request.form.get("token", "")
        if action in ("block", "unblock"):
            await self.call(ctx, viewer, "POST", f"/key/{action}", body={"key": token})
            notice = f"Key {action}ed."
        elif action == "delete":
            await self.call(ctx, viewer, "POST", "/key/delete", body={"keys": [token]})
            notice = "Key deleted."
        elif action == "regenerate":
            made = await self.call(ctx, viewer, "POST", "/key/regenerate", body={"key": token})
            return await self.page(ctx, "key_shown.html", viewer, key=made["key"], info=made, regenerated=True)
        else:
            raise UnknownPage(f"No key action {action!r}.")
        await redirect(ctx.send, with_query("/ui/keys", notice=notice, q=request.form.get("q")))

    # ------------------------------------------------------------------ teams, users, customers

    async def teams(self, request: Request, viewer: Viewer, ctx: Context) -> None:
        self._admins_only(viewer)
        teams = await self._teams(ctx, viewer)
        spend = await self._spend_by(ctx, viewer, "team")
        await self.page(
            ctx, "teams.html", viewer, teams=teams, spend=spend, notice=request.query.get("notice"), limits=_LIMITS
        )

    async def team_save(self, request: Request, viewer: Viewer, ctx: Context) -> None:
        f = request.form
        body = {**_limits(f), "team_id": f.get("team_id") or None, "team_alias": f.get("team_alias") or None}
        body["blocked"] = f.get("blocked") == "on"
        path = "/team/update" if f.get("existing") else "/team/new"
        await self.call(ctx, viewer, "POST", path, body=_set(body))
        await redirect(ctx.send, with_query("/ui/teams", notice="Team saved."))

    async def team_delete(self, request: Request, viewer: Viewer, ctx: Context) -> None:
        await self.call(ctx, viewer, "POST", "/team/delete", body={"team_ids": [request.form.get("team_id", "")]})
        await redirect(ctx.send, with_query("/ui/teams", notice="Team deleted."))

    async def team_member(self, request: Request, viewer: Viewer, ctx: Context) -> None:
        f = request.form
        team_id, user_id = f.get("team_id", ""), f.get("user_id", "")
        if f.get("remove"):
            await self.call(ctx, viewer, "POST", "/team/member_delete", body={"team_id": team_id, "user_id": user_id})
        else:
            member = {"user_id": user_id, "role": f.get("role") or "user"}
            await self.call(ctx, viewer, "POST", "/team/member_add", body={"team_id": team_id, "member": member})
        await redirect(ctx.send, with_query("/ui/teams", notice="Members updated."))

    async def users(self, request: Request, viewer: Viewer, ctx: Context) -> None:
        self._admins_only(viewer)
        page = _int(request.query.get("page"), 1)
        listing = await self.call(ctx, viewer, "GET", "/user/list", {"page": str(page), "page_size": "50"})
        spend = await self._spend_by(ctx, viewer, "user")
        await self.page(
            ctx,
            "users.html",
            viewer,
            users=listing["users"],
            page=page,
            spend=spend,
            notice=request.query.get("notice"),
            limits=_LIMITS,
        )

    async def user_save(self, request: Request, viewer: Viewer, ctx: Context) -> None:
        f = request.form
        body = {
            **_limits(f),
            "user_id": f.get("user_id") or None,
            "user_email": f.get("user_email") or None,
            "user_role": f.get("user_role") or None,
        }
        if f.get("existing"):
            await self.call(ctx, viewer, "POST", "/user/update", body=_set(body))
        else:
            # the UI makes keys on the keys page, where they are shown once
            await self.call(ctx, viewer, "POST", "/user/new", body={**_set(body), "auto_create_key": False})
        await redirect(ctx.send, with_query("/ui/users", notice="User saved."))

    async def user_delete(self, request: Request, viewer: Viewer, ctx: Context) -> None:
        await self.call(ctx, viewer, "POST", "/user/delete", body={"user_ids": [request.form.get("user_id", "")]})
        await redirect(ctx.send, with_query("/ui/users", notice="User deleted."))

    async def customers(self, request: Request, viewer: Viewer, ctx: Context) -> None:
        self._admins_only(viewer)
        rows = await self.call(ctx, viewer, "GET", "/customer/list")
        spend = await self._spend_by(ctx, viewer, "customer")
        await self.page(
            ctx,
            "customers.html",
            viewer,
            customers=rows,
            spend=spend,
            notice=request.query.get("notice"),
            limits=_LIMITS,
            period=datetime.now(UTC).strftime("%Y-%m"),
        )

    async def customer_save(self, request: Request, viewer: Viewer, ctx: Context) -> None:
        f = request.form
        body = {
            **_limits(f),
            "user_id": f.get("customer_id") or None,
            "alias": f.get("alias") or None,
            "billing_plan_code": f.get("billing_plan_code") or None,
        }
        body["blocked"] = f.get("blocked") == "on"
        body.pop("models", None)
        path = "/customer/update" if f.get("existing") else "/customer/new"
        await self.call(ctx, viewer, "POST", path, body=_set(body))
        await redirect(ctx.send, with_query("/ui/customers", notice="Customer saved."))

    async def customer_delete(self, request: Request, viewer: Viewer, ctx: Context) -> None:
        ids = [request.form.get("customer_id", "")]
        await self.call(ctx, viewer, "POST", "/customer/delete", body={"user_ids": ids})
        await redirect(ctx.send, with_query("/ui/customers", notice="Customer deleted."))

    async def _spend_by(self, ctx: Context, viewer: Viewer, dimension: str) -> dict[str, dict[str, Any]]:
        """This month's usage of each team, user or customer."""
        today = datetime.now(UTC).date()
        query = {"start": today.replace(day=1).isoformat(), "end": today.isoformat(), "group_by": dimension}
        result = await self.call(ctx, viewer, "GET", "/usage", query)
        return {str(r[dimension]): r for r in result["rows"] if r[dimension] is not None}

    @staticmethod
    def _admins_only(viewer: Viewer) -> None:
        if not viewer.admin_view:
            raise PermissionDenied(f"The role '{viewer.role}' does not see this page.")

    # ------------------------------------------------------------------ usage

    def _usage_query(self, request: Request) -> dict[str, str]:
        q = request.query
        dims = _dims(request)
        bucket = q.get("time", "day")
        group_by = [*dims, *([bucket] if bucket in TIMES else [])]
        today = datetime.now(UTC).date()
        query = {
            "group_by": ",".join(group_by),
            "start": q.get("start") or (today - timedelta(days=29)).isoformat(),
            "end": q.get("end") or today.isoformat(),
        }
        for name in USAGE_FILTERS:
            if q.get(name):
                query[name] = q[name]
        return query

    async def usage(self, request: Request, viewer: Viewer, ctx: Context) -> None:
        query = self._usage_query(request)
        result = await self.call(ctx, viewer, "GET", "/usage", query)
        group_by: list[str] = result["group_by"]
        await self.page(
            ctx,
            "usage.html",
            viewer,
            result=result,
            group_by=group_by,
            dims=[d for d in group_by if d in DIMENSIONS],
            bucket=next((g for g in group_by if g in TIMES), ""),
            all_dims=list(DIMENSIONS),
            times=TIMES,
            query=query,
            chart=_usage_chart(result["rows"], group_by),
            csv_url=with_query("/ui/usage.csv", **_usage_link(request)),
            api_url=with_query("/ui/api/usage", **_usage_link(request)),
            link_query=request.query_lists,
        )

    async def usage_csv(self, request: Request, viewer: Viewer, ctx: Context) -> None:
        query = {**self._usage_query(request), "format": "csv"}
        reply: reports.Reply = await self.call(ctx, viewer, "GET", "/usage", query)
        name = f"usage-{query['start']}-{query['end']}.csv"
        disposition = (b"content-disposition", f'attachment; filename="{name}"'.encode())
        await respond(ctx.send, 200, reply.body, reply.content_type, [disposition])

    async def usage_json(self, request: Request, viewer: Viewer, ctx: Context) -> None:
        result = await self.call(ctx, viewer, "GET", "/usage", self._usage_query(request))
        await respond(ctx.send, 200, orjson.dumps(result), b"application/json")

    # ------------------------------------------------------------------ request log

    async def logs(self, request: Request, viewer: Viewer, ctx: Context) -> None:
        q = request.query
        today = datetime.now(UTC).date()
        query = {
            "start": q.get("start") or (today - timedelta(days=6)).isoformat(),
            "end": q.get("end") or today.isoformat(),
            "page": str(_int(q.get("page"), 1)),
            "page_size": "50",
        }
        for name in ("status", "model", "key", "customer_id", "request_id"):
            if q.get(name):
                query[name] = q[name]
        result = await self.call(ctx, viewer, "GET", "/spend/logs", query)
        await self.page(
            ctx,
            "logs.html",
            viewer,
            result=result,
            query=query,
            models=self.settings.model_names(),
            statuses=("success", "rejected", "upstream_error", "client_aborted"),
        )

    async def log_detail(self, request: Request, viewer: Viewer, ctx: Context) -> None:
        request_id = request.query.get("request_id", "")
        result = await self.call(ctx, viewer, "GET", "/spend/logs", {"request_id": request_id, "page_size": "5"})
        if not result["data"]:
            raise RouteNotFound(f"No request {request_id!r} in the ledger.")
        row = result["data"][0]
        trace = row["metadata"].get("trace_id") if isinstance(row["metadata"], dict) else None
        template = "log_detail.html" if request.wants_fragment else "log_page.html"
        await self.page(ctx, template, viewer, row=row, rows=result["data"], trace_id=trace)

    # ------------------------------------------------------------------ billing

    async def billing(self, request: Request, viewer: Viewer, ctx: Context) -> None:
        self._admins_only(viewer)
        configured = self.settings.billing is not None
        status = await self.call(ctx, viewer, "GET", "/billing/status") if configured else None
        period = request.query.get("period") or datetime.now(UTC).strftime("%Y-%m")
        reconcile = None
        if configured and request.query.get("reconcile"):
            reconcile = await self.call(ctx, viewer, "GET", "/billing/reconcile", {"period": period})
        customers = await self.call(ctx, viewer, "GET", "/customer/list")
        await self.page(
            ctx,
            "billing.html",
            viewer,
            configured=configured,
            status=status,
            reconcile=reconcile,
            period=period,
            customers=customers,
            notice=request.query.get("notice"),
        )

    async def billing_reprocess(self, request: Request, viewer: Viewer, ctx: Context) -> None:
        body = {"reason": request.form.get("reason") or None}
        done = await self.call(ctx, viewer, "POST", "/billing/reprocess", body=_set(body))
        await redirect(
            ctx.send, with_query("/ui/billing", notice=f"{done['reprocessed']} parked event(s) queued again.")
        )

    async def invoice(self, request: Request, viewer: Viewer, ctx: Context) -> None:
        customer_id = request.query.get("customer", "")
        if not customer_id:
            raise RouteNotFound("Choose a customer for the invoice preview.")
        period = request.query.get("period") or datetime.now(UTC).strftime("%Y-%m")
        path = f"/customer/{customer_id}/invoice-preview"
        query, body = {"period": period}, b""
        _, query = await management.authorize(viewer.principal, "GET", path, body, query, ctx.routes)
        doc = await reports.invoice_preview(ctx.routes, customer_id, query)
        await self.page(ctx, "invoice.html", viewer, doc=doc)

    # ------------------------------------------------------------------ models

    async def models(self, request: Request, viewer: Viewer, ctx: Context) -> None:
        today = datetime.now(UTC).date().isoformat()
        usage = await self.call(ctx, viewer, "GET", "/usage", {"start": today, "end": today, "group_by": "model"})
        by_model = {r["model"]: r for r in usage["rows"]}
        visible = set(viewer.principal.visible(self.settings.model_names()))
        rows = [
            {
                "name": d.model_name,
                "id": d.id,
                "family": d.family,
                "upstream": d.upstream_model,
                "api_base": d.api_base,
                "input": _per_million(d.prices.input_per_token),
                "output": _per_million(d.prices.output_per_token),
                "cache_read": _per_million(d.prices.cache_read_per_token),
                "rpm": d.rpm,
                "tpm": d.tpm,
                "today": by_model.get(d.model_name),
            }
            for d in self.settings.deployments
            if d.model_name in visible
        ]
        await self.page(ctx, "models.html", viewer, rows=rows)


# ---------------------------------------------------------------------- pure helpers

_KEY_VIEWER = Principal(key_id="", role="internal_user_viewer")  # error pages of key sessions: the smallest nav

_LIMITS = ("max_budget", "budget_duration", "rpm_limit", "tpm_limit", "max_parallel_requests")


def _login_session(nonce: str) -> Session:
    return Session(sid="login:" + nonce, kind="admin", key_digest="", expires=0.0, name="")


def _same(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(a.encode(), b.encode())


def _safe_next(value: str | None) -> str:
    """Only a path of the UI itself: a login link cannot send the browser elsewhere."""
    if value and value.startswith("/ui/") and not value.startswith("/ui//") and "\\" not in value:
        return value
    return "/ui/overview"


def _nav(viewer: Viewer | None) -> list[tuple[str, str]]:
    if viewer is None:
        return []
    items = [("overview", "Overview"), ("keys", "Keys")]
    if viewer.admin_view:
        items += [("teams", "Teams"), ("users", "Users"), ("customers", "Customers")]
    items += [("usage", "Usage"), ("logs", "Request log")]
    if viewer.admin_view:
        items.append(("billing", "Billing"))
    items.append(("models", "Models"))
    return items


def _error_json(err: MeterwayError) -> bytes:
    return orjson.dumps({"error": {"message": err.message, "type": err.error_type}})


def _money(value: Any) -> str:
    if value is None:
        return "—"
    amount = Decimal(str(value))
    return f"${amount:,.6f}".rstrip("0").rstrip(".") if amount else "$0"


def _num(value: Any) -> str:
    return f"{int(value or 0):,}"


def _when(value: Any) -> str:
    if not value:
        return "—"
    return str(value).replace("T", " ")[:19]


def _per_million(price: Decimal | None) -> str | None:
    return None if price is None else format((price * 1_000_000).normalize(), "f")


def _int(raw: str | None, default: int) -> int:
    try:
        return max(1, int(raw)) if raw else default
    except ValueError:
        return default


def _float(raw: str | None, name: str) -> float | None:
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise BadRequest(f"'{name}' must be a number.", param=name) from None


def _opt_int(raw: str | None, name: str) -> int | None:
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"'{name}' must be a whole number.", param=name) from None


def _json_object(raw: str | None, name: str) -> dict[str, Any] | None:
    if not raw or not raw.strip():
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest(f"'{name}' must be a JSON object.", param=name) from None
    if not isinstance(value, dict):
        raise BadRequest(f"'{name}' must be a JSON object.", param=name)
    return value


def _limits(form: dict[str, str]) -> dict[str, Any]:
    return {
        "max_budget": _float(form.get("max_budget"), "max_budget"),
        "budget_duration": form.get("budget_duration") or None,
        "rpm_limit": _opt_int(form.get("rpm_limit"), "rpm_limit"),
        "tpm_limit": _opt_int(form.get("tpm_limit"), "tpm_limit"),
        "max_parallel_requests": _opt_int(form.get("max_parallel_requests"), "max_parallel_requests"),
        "billing_external_subscription_id": form.get("billing_external_subscription_id") or None,
    }


def _set(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


def _matches(key: dict[str, Any], q: str) -> bool:
    return any(q in str(key.get(f) or "").lower() for f in ("key_alias", "key_name", "token", "user_id", "team_id"))


def _top(rows: list[dict[str, Any]], dimension: str, n: int = 5) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (Decimal(r["cost"]), r["requests"]), reverse=True)[:n]


def _usage_chart(rows: list[dict[str, Any]], group_by: list[str]) -> dict[str, Any]:
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


def _dims(request: Request) -> list[str]:
    """The dimensions asked for: checkboxes (`dim=a&dim=b`) or one list (`dims=a,b`, in links)."""
    asked = [*request.query_lists.get("dim", []), *request.query.get("dims", "").split(",")]
    return [d for d in dict.fromkeys(asked) if d in DIMENSIONS]


def _usage_link(request: Request) -> dict[str, str | None]:
    q = request.query
    out: dict[str, str | None] = {k: q.get(k) for k in ("time", "start", "end", *USAGE_FILTERS)}
    out["dims"] = ",".join(_dims(request))
    return out


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
