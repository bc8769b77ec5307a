"""The admin UI at `/ui`, beside the API and never on the model request path: who is logged in,
the login itself, static files, and the one way pages reach data (`AdminUI.call`).

Pages (`ui.pages`) call the management, report and billing handlers in-process, through the same
role check (`management.authorize`) the HTTP API applies, so the UI shows the API's numbers and
can do no more than the logged-in principal could with curl. A page never shows a key except
once, on the page that answers its creation or regeneration.
"""

from __future__ import annotations

import asyncio
import hmac
import importlib.resources
import logging
import math
import mimetypes
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import orjson

from meterway import bounds
from meterway.api import errors, management
from meterway.api.admin_routes import ROUTES
from meterway.api.asgi import Incoming, Receive, Scope, Send, read_body, request_id
from meterway.auth import MASTER, Principal
from meterway.auth.keys import digest
from meterway.errors import AuthenticationFailed, MeterwayError, RouteNotFound
from meterway.ui import prepaid, values
from meterway.ui.session import COOKIE, CsrfFailed, Session, SessionInvalid, Sessions
from meterway.ui.throttle import Attempt, LoginThrottle
from meterway.ui.web import Request, cookie_header, parse_request, redirect, respond, with_query

if TYPE_CHECKING:
    from meterway.admin import Admin
    from meterway.config.settings import Settings
    from meterway.services import Services

log = logging.getLogger("meterway.ui")

LOGIN_COOKIE = "meterway_ui_login"  # a nonce the login form's CSRF token is bound to
STATIC_MAX_AGE = 3600  # our own CSS and JS: revalidated hourly (they change with the gateway's version)
VENDOR_MAX_AGE = 7 * 86400  # pinned third-party files: the version is fixed at install time
FAILED_LOGIN_DELAY_S = 0.5
VENDOR_FILES = ("htmx.min.js", "chart.umd.min.js")  # fetched by setup.py at install
ADMIN_ROLES = frozenset({"proxy_admin", "proxy_admin_viewer"})


class UnknownPage(RouteNotFound):
    """No UI page at this path."""


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
    routes: Admin  # the one admin service, as the API's handlers are given it
    send: Send


class AdminUI:
    """Built once per gateway (on the first UI request): the templates, the session signer and
    the page table (`ui.pages.PAGES`, passed in: the pages call back into this class, so this
    module does not import them). Holds no per-request state."""

    def __init__(self, settings: Settings, page_table: Mapping[tuple[str, str], Page]) -> None:
        self.settings = settings
        self.sessions = Sessions(settings.salt_key or settings.master_key, settings.ui_session_s)
        self.logins = LoginThrottle(
            settings.ui_login_failures, settings.ui_login_failures_total, settings.ui_login_window_s
        )
        root = importlib.resources.files("meterway.ui")
        self.static_dir = Path(str(root / "static"))
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(root / "templates")),
            autoescape=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["money"] = values.money
        self.env.filters["num"] = values.count
        self.env.filters["when"] = values.when
        self.env.filters["amount"] = prepaid.amount
        vendor = self.static_dir / "vendor"
        self.scripts_missing = [n for n in VENDOR_FILES if not (vendor / n).is_file()]  # installed offline
        if self.scripts_missing:
            log.warning("admin UI scripts not installed (%s): no charts", ", ".join(self.scripts_missing))
        self.handlers = ROUTES
        self.pages = page_table

    # ------------------------------------------------------------------ entry

    async def handle(self, services: Services, scope: Scope, receive: Receive, send: Send) -> None:
        """Pages answer their errors as an error page (a browser shows it); the JSON endpoints,
        htmx fragments and form posts raise theirs to the boundary (`api.errors.boundary`), which
        answers in the API's one error shape with the request's id."""
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
            await page(self, request, viewer, Context(services, services.admin, send))
        except SessionInvalid:
            if path.startswith("/api/") or request.wants_fragment or request.method == "POST":
                raise
            return await redirect(send, with_query("/ui/login", next=scope["path"]))
        except CsrfFailed:
            raise
        except Exception as exc:
            if path.startswith("/api/"):
                raise
            rid = request_id(scope)
            await self._error_page(request, send, errors.as_meterway_error(exc, rid), rid)

    async def _viewer(self, services: Services, request: Request) -> Viewer:
        session = self.sessions.read(request.cookies.get(COOKIE))
        if session.kind == "admin":
            principal = MASTER
        else:
            found = await services.auth.keys.get(session.key_digest)
            if found is None:
                raise SessionInvalid("The key this session logged in with no longer exists.")
            try:
                found.check_usable()
            except AuthenticationFailed as e:
                raise SessionInvalid(e.message) from None
            principal = found
        return Viewer(session, principal, self.sessions.csrf(session))

    # ------------------------------------------------------------------ login

    async def _login_page(
        self, request: Request, send: Send, error: str | None, status: int = 200, retry_after: float | None = None
    ) -> None:
        nonce = request.cookies.get(LOGIN_COOKIE) or os.urandom(16).hex()
        body = self.render(
            "login.html",
            None,
            error=error,
            csrf=self.sessions.csrf(_login_session(nonce)),
            next=_safe_next(request.query.get("next") or request.form.get("next")),
            password_login=self.settings.ui_username is not None and self.settings.ui_password is not None,
        )
        extra = [cookie_header(LOGIN_COOKIE, nonce, max_age=3600, secure=request.tls)]
        if retry_after is not None:
            extra.append((b"retry-after", b"%d" % max(1, math.ceil(retry_after))))
        await respond(send, status, body, extra=extra)

    async def _login(self, services: Services, request: Request, send: Send) -> None:
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        if not nonce:
            return await self._login_page(request, send, "Your browser did not keep the login cookie; try again.", 403)
        try:
            self.sessions.check_csrf(_login_session(nonce), request.form.get("csrf"))
        except CsrfFailed:
            raise  # to the boundary: a 403 in the one error shape
        attempt = self.logins.start(request.client)
        if not isinstance(attempt, Attempt):
            log.info("ui login refused: too many failed logins (from %s, or overall)", request.client or "?")
            wait = math.ceil(attempt)
            message = f"Too many failed logins; try again in {wait} second{'s' if wait != 1 else ''}."
            return await self._login_page(request, send, message, 429, retry_after=attempt)
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
            await asyncio.sleep(FAILED_LOGIN_DELAY_S)  # each guess of a password costs the guesser time
            return await self._login_page(request, send, "Those credentials are not valid for the UI.", 401)
        self.logins.succeeded(attempt)
        cookie = cookie_header(COOKIE, session[1], max_age=self.sessions.lifetime_s, secure=request.tls)
        done = cookie_header(LOGIN_COOKIE, "", max_age=0, secure=request.tls)
        await redirect(send, _safe_next(form.get("next")), [cookie, done])

    # ------------------------------------------------------------------ helpers

    def render(self, template: str, viewer: Viewer | None, **values: Any) -> bytes:
        values.setdefault("notice", None)
        values.setdefault("scripts_missing", self.scripts_missing)
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
        handler: management.Handler | None = None,
    ) -> Any:
        """One management/report/billing handler, in-process, under the viewer's role check.
        `handler` is for the API's paths with a parameter in them (an invoice's customer)."""
        handler = handler or self.handlers[(method, path)]
        bounds.query(query or {})  # as the API checks its query: the pages pass theirs on
        raw = orjson.dumps(body) if body is not None else b""
        raw, checked = await management.authorize(viewer.principal, method, path, raw, dict(query or {}), ctx.routes)
        return await handler(ctx.routes, raw, checked)

    async def _static(self, name: str, send: Send) -> None:
        """A file under static/, or 404 for anything else: outside it, missing, or no possible file
        name at all (NUL, too long), which the file system refuses with an error of its own."""
        try:
            file = (self.static_dir / name).resolve()
            found = self.static_dir.resolve() in file.parents and file.is_file() and not name.endswith(".integrity")
        except (OSError, ValueError):
            found = False
        if not found:
            return await respond(send, 404, b"not found", b"text/plain")
        kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        if file.suffix == ".js":
            kind = "text/javascript"
        content_type = f"{kind}; charset=utf-8" if kind.startswith("text/") else kind
        age = VENDOR_MAX_AGE if name.startswith("vendor/") else STATIC_MAX_AGE
        await respond(send, 200, file.read_bytes(), content_type.encode(), cache=f"public, max-age={age}".encode())

    async def _error_page(self, request: Request, send: Send, err: MeterwayError, rid: str) -> None:
        try:
            viewer = await self._viewer_or_none(request)
        except MeterwayError:
            viewer = None
        status = err.http_status()
        body = self.render("error.html", viewer, status=status, message=err.message)
        await respond(send, status, body, extra=[(b"x-request-id", rid.encode())])

    async def _viewer_or_none(self, request: Request) -> Viewer | None:
        try:
            session = self.sessions.read(request.cookies.get(COOKIE))
        except SessionInvalid:
            return None
        return Viewer(session, MASTER if session.kind == "admin" else _KEY_VIEWER, self.sessions.csrf(session))


_KEY_VIEWER = Principal(key_id="", role="internal_user_viewer")  # error pages of key sessions: the smallest nav


def _login_session(nonce: str) -> Session:
    return Session(sid="login:" + nonce, kind="admin", key_digest="", expires=0.0, name="")


def _same(a: str, b: str) -> bool:
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
