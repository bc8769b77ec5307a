"""HTTP plumbing of the admin UI: the parsed request, and the responses (pages, redirects, files).

Every UI response forbids framing and caching by others, and allows scripts and styles only from
the gateway itself (no CDN, no inline script): the page's data for charts rides in
`<script type="application/json">` blocks, which are data, not code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlencode

from meterway.api.asgi import Scope, Send

HTML = b"text/html; charset=utf-8"
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


@dataclass(slots=True)
class Request:
    method: str
    path: str  # without the `/ui` prefix: "/", "/keys", "/static/app.css"
    query: dict[str, str]
    query_lists: dict[str, list[str]]
    headers: dict[bytes, bytes]
    cookies: dict[str, str]
    form: dict[str, str] = field(default_factory=dict)
    form_lists: dict[str, list[str]] = field(default_factory=dict)
    scheme: str = "http"
    client: str = ""  # the client's address (the proxy's, unless the server trusts its forwarded headers)

    @property
    def tls(self) -> bool:
        """Whether the browser reached us over TLS: directly, or through a proxy that says so."""
        forwarded = self.headers.get(b"x-forwarded-proto", b"").split(b",")[0].strip().lower()
        return self.scheme == "https" or forwarded == b"https"

    @property
    def wants_fragment(self) -> bool:
        return b"hx-request" in self.headers

    def header(self, name: bytes) -> str | None:
        value = self.headers.get(name)
        return value.decode("latin-1") if value is not None else None


def parse_request(scope: Scope, body: bytes) -> Request:
    raw_headers: list[tuple[bytes, bytes]] = scope["headers"]
    headers = {name: value for name, value in raw_headers}
    cookies: dict[str, str] = {}
    if b"cookie" in headers:
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(headers[b"cookie"].decode("latin-1"))
        except Exception:  # a malformed Cookie header counts as no cookies
            jar = SimpleCookie()
        cookies = {k: m.value for k, m in jar.items()}
    qs: bytes = scope.get("query_string", b"")
    query_lists = parse_qs(qs.decode("latin-1"))
    path: str = scope["path"]
    request = Request(
        method=str(scope["method"]),
        path=path.removeprefix("/ui") or "/",
        query={k: v[-1] for k, v in query_lists.items()},
        query_lists=query_lists,
        headers=headers,
        cookies=cookies,
        scheme=str(scope.get("scheme", "http")),
        client=str(scope["client"][0]) if scope.get("client") else "",
    )
    if body and headers.get(b"content-type", b"").startswith(b"application/x-www-form-urlencoded"):
        request.form_lists = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        request.form = {k: v[-1] for k, v in request.form_lists.items()}
    return request


def cookie_header(name: str, value: str, *, max_age: int, secure: bool, path: str = "/ui") -> tuple[bytes, bytes]:
    """HttpOnly (no script reads it), SameSite=Lax (no other site's form or script call carries it;
    a link from elsewhere still opens the UI logged in), and Secure when the browser came over TLS."""
    attrs = f"{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax"
    if secure:
        attrs += "; Secure"
    return b"set-cookie", attrs.encode()


def with_query(path: str, **params: str | None) -> str:
    kept = {k: v for k, v in params.items() if v}
    return f"{path}?{urlencode(kept)}" if kept else path


async def respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = HTML,
    extra: list[tuple[bytes, bytes]] | None = None,
    *,
    cache: bytes = b"no-store",
) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", b"%d" % len(body)),
        (b"cache-control", cache),
        *SECURITY_HEADERS,
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def redirect(send: Send, location: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    """303 See Other: after a form's POST the browser GETs the page (reloading it repeats nothing)."""
    await respond(send, 303, b"", b"text/plain", [(b"location", location.encode()), *(extra or [])])
