"""Key management with LiteLLM's paths and payloads (`/key/generate`, `/key/info`, …), so scripts
written against the LiteLLM proxy keep working. Not on the request path: plain and simple.

Who may call what is decided in `authorize`, with LiteLLM's role names.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import msgspec
import orjson

from meterway import bounds
from meterway.admin import Admin
from meterway.api.asgi import Incoming, Receive, Responder, Scope, Send, read_body, request_id
from meterway.api.params import Reply, decode_body, query_int
from meterway.auth import Principal, bearer_token
from meterway.auth.keys import PREFIX, derive_key, new_key, reference
from meterway.bounds import Budget, ChosenKey, Duration, KeyRef, KeyRefs, Limit, Name, Names
from meterway.config.durations import parse_duration
from meterway.errors import BadRequest, MeterwayError, PermissionDenied, RouteNotFound, ServiceUnavailable

if TYPE_CHECKING:
    from sqlalchemy.exc import IntegrityError

    from meterway.services import Services
    from meterway.store.keys import KeyRecord
    from meterway.store.runtime import Store


class KeyFields(msgspec.Struct):
    """Bounded as the columns are (`meterway.bounds`); the bounds also appear in /openapi.json."""

    key_alias: Name | None = None
    duration: Duration | None = None
    models: Names | None = None
    max_budget: Budget | None = None
    soft_budget: Budget | None = None  # LiteLLM's: a spend to be warned at, never refused at
    budget_duration: Duration | None = None
    user_id: Name | None = None
    team_id: Name | None = None
    metadata: dict[str, Any] | None = None  # checked by bounds.metadata
    rpm_limit: Limit | None = None
    tpm_limit: Limit | None = None
    max_parallel_requests: Limit | None = None
    blocked: bool | None = None
    billing_external_customer_id: Name | None = None
    billing_external_subscription_id: Name | None = None
    customer_id: Name | None = None  # the customer its requests are charged to whatever `user` says; "" unbinds


class KeyGenerateRequest(KeyFields):
    key: ChosenKey | None = None  # a key chosen by the caller instead of a generated one


class KeyUpdateRequest(KeyFields):
    key: KeyRef = ""


class KeyRefRequest(msgspec.Struct):
    key: KeyRef


class KeyRegenerateRequest(msgspec.Struct):
    key: KeyRef
    grace_period: Duration | None = None  # how long the old key keeps working, e.g. 24h; default: not at all


class KeyDeleteRequest(msgspec.Struct):
    keys: KeyRefs


def _values(fields: KeyFields, *, only_set: bool) -> dict[str, Any]:
    """The store's column values from a request, checked: names the field on any bad value."""
    out: dict[str, Any] = {}
    for name in (
        "key_alias",
        "models",
        "user_id",
        "team_id",
        "metadata",
        "blocked",
        "budget_duration",
        "billing_external_customer_id",
        "billing_external_subscription_id",
        "customer_id",
    ):
        value = getattr(fields, name)
        if value is not None or not only_set:
            out[name] = value
    if out.get("customer_id") == "":
        out["customer_id"] = None  # unbound: its requests' `user` is their customer again
    for name in ("rpm_limit", "tpm_limit", "max_parallel_requests"):  # bounded by their type (0..2^31-1)
        value = getattr(fields, name)
        if value is not None or not only_set:
            out[name] = value
    for name in ("max_budget", "soft_budget"):  # bounded by their type (0..1e8 USD)
        amount = getattr(fields, name)
        if amount is not None:
            out[name] = Decimal(repr(amount))
    if fields.budget_duration is not None:
        parse_duration(fields.budget_duration, "budget_duration")
    if fields.duration is not None:
        out["expires"] = datetime.now(UTC) + parse_duration(fields.duration, "duration")
    if not only_set:
        out["models"] = out.get("models") or []
        out["metadata"] = out.get("metadata") or {}
        out["blocked"] = bool(out.get("blocked"))
    return out


def _utc(moment: datetime | None) -> str | None:
    """ISO 8601 with its offset: SQLite hands times back without one, and they are UTC."""
    if moment is None:
        return None
    return (moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)).isoformat()


def key_info(record: KeyRecord) -> dict[str, Any]:
    expires = record.expires
    if expires is not None and expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    return {
        "token": record.token,
        "key_name": record.key_name,
        "key_alias": record.key_alias,
        "models": list(record.models),
        "expires": expires.isoformat() if expires else None,
        "blocked": record.blocked,
        "user_id": record.user_id,
        "team_id": record.team_id,
        "metadata": dict(record.metadata),
        "max_budget": float(record.max_budget) if record.max_budget is not None else None,
        "soft_budget": float(record.soft_budget) if record.soft_budget is not None else None,
        "budget_duration": record.budget_duration,
        "budget_reset_at": _utc(record.budget_reset_at),
        "spend": float(record.spend),
        "rpm_limit": record.rpm_limit,
        "tpm_limit": record.tpm_limit,
        "max_parallel_requests": record.max_parallel_requests,
        "billing_external_customer_id": record.billing_external_customer_id,
        "billing_external_subscription_id": record.billing_external_subscription_id,
        "customer_id": record.customer_id,
        "created_at": record.created_at.isoformat() if record.created_at else None,
        "updated_at": record.updated_at.isoformat() if record.updated_at else None,
    }


async def check_customer(store: Store, customer_id: str | None) -> None:
    """A key or team is bound only to a customer that exists: its budget and limits then apply,
    and a typo does not bill a customer nobody set up."""
    if customer_id is not None and await store.customers.get(customer_id) is None:
        raise BadRequest(
            f"customer_id '{customer_id}' does not exist; create it with /customer/new first.",
            param="customer_id",
            code="unknown_customer",
        )


# The role of a user made because a key names it (`KeyStore.create_with_user`): LiteLLM's least one.
# A key whose user did not exist had no management rights at all; with this role it may read its
# own keys and its own usage, and nothing more (docs/api.md, "Keys for users that do not exist").
IMPLICIT_USER_ROLE = "internal_user_viewer"


async def check_team(store: Store, team_id: str | None) -> None:
    """A key joins only a team that exists (checked before anything is written for the key)."""
    if team_id is not None and await store.teams.get(team_id) is None:
        raise BadRequest(f"team_id '{team_id}' does not exist.", param="team_id", code="unknown_team")


def _team_error(e: IntegrityError, team_id: str | None) -> MeterwayError:
    if team_id is not None and "foreign" in str(e.orig).lower():
        return BadRequest(f"team_id '{team_id}' does not exist.", param="team_id", code="unknown_team")
    return BadRequest("A key with this value already exists.", param="key", code="duplicate_key")


async def regenerate(admin: Admin, body: bytes, query: dict[str, str]) -> dict[str, Any]:
    """A new key with the old key's settings; the old one keeps working for `grace_period`.
    Idempotent: the new key is derived from the old key's digest and the server's secret, so a
    retried call (after a lost answer) returns the same new key instead of a second one."""
    req: KeyRegenerateRequest = decode_body(body, KeyRegenerateRequest)
    if admin.secret is None:
        raise ServiceUnavailable("Regenerating keys needs a master key (or METERWAY_SALT_KEY) to derive them.")
    old = await _get(admin, req.key)
    grace = parse_duration(req.grace_period, "grace_period") if req.grace_period else None
    new = derive_key(admin.secret, old.token)
    existing = await admin.store.keys.get(new)
    if existing is not None:
        return {"key": new, **key_info(existing), "token_id": existing.token, "regenerated_from": old.token}
    # the old key's settings carry over; it is unblocked, and its metadata loses the old link
    settings = {name: getattr(old, name) for name in admin.store.keys.fields if name not in ("blocked", "metadata")}
    settings["metadata"] = {k: v for k, v in old.metadata.items() if k != "regenerated_to"}
    record = await admin.store.keys.create(new, **settings, blocked=False)
    retire = datetime.now(UTC) + grace if grace else datetime.now(UTC)
    if old.expires is not None:  # a grace period never lengthens the old key's life
        retire = min(retire, old.expires if old.expires.tzinfo else old.expires.replace(tzinfo=UTC))
    await admin.store.keys.update(
        old.token,
        expires=retire,
        metadata={**old.metadata, "regenerated_to": record.token},
    )
    await admin.changes.changed("key", old.token)
    return {"key": new, **key_info(record), "token_id": record.token, "regenerated_from": old.token}


async def generate(admin: Admin, body: bytes, query: dict[str, str]) -> dict[str, Any]:
    req: KeyGenerateRequest = decode_body(body, KeyGenerateRequest)
    key = req.key or new_key()
    if not key.startswith(PREFIX) or len(key) < 20:
        raise BadRequest("A chosen 'key' must start with 'sk-' and be at least 20 characters.", param="key")
    values = _values(req, only_set=False)
    await check_customer(admin.store, values.get("customer_id"))
    await check_team(admin.store, req.team_id)
    from sqlalchemy.exc import IntegrityError  # the store is open, so SQLAlchemy is loaded already

    try:  # the user is made with the key, or not at all (a refused key leaves no user behind)
        record, made = await admin.store.keys.create_with_user(key, IMPLICIT_USER_ROLE, **values)
    except IntegrityError as e:
        raise _team_error(e, req.team_id) from None
    if made:
        await admin.changes.changed("user", record.user_id or "")
    await admin.changes.changed("key", record.token)
    return {"key": key, **key_info(record), "token_id": record.token}


async def info(admin: Admin, body: bytes, query: dict[str, str]) -> dict[str, Any]:
    ref = query.get("key")
    if not ref:
        raise BadRequest("Pass the key (or its token) as ?key=.", param="key")
    record = await _get(admin, ref)
    prepaid = None
    if admin.prepaid is not None:
        entity = {
            "customer": record.customer_id,
            "user": record.user_id,
            "team": record.team_id,
            "key": record.token,
        }[admin.prepaid.billing.charge_by]
        prepaid = await admin.prepaid.status(entity) if entity else None
    return {"key": ref, "info": {**key_info(record), "prepaid": prepaid}}


async def update(admin: Admin, body: bytes, query: dict[str, str]) -> dict[str, Any]:
    req: KeyUpdateRequest = decode_body(body, KeyUpdateRequest)
    if not req.key:
        raise BadRequest("Missing required parameter: 'key'.", param="key")
    from sqlalchemy.exc import IntegrityError

    values = _values(req, only_set=True)
    await check_customer(admin.store, values.get("customer_id"))
    try:  # a `user_id` naming no user makes one, as /key/generate does
        record, made = await admin.store.keys.update_with_user(req.key, IMPLICIT_USER_ROLE, **values)
    except IntegrityError as e:
        raise _team_error(e, req.team_id) from None
    if record is None:
        raise RouteNotFound(f"Key {_shown(req.key)} not found.")
    if made:
        await admin.changes.changed("user", record.user_id or "")
    await admin.changes.changed("key", record.token)
    return key_info(record)


async def block(admin: Admin, body: bytes, query: dict[str, str]) -> dict[str, Any]:
    return await _set_blocked(admin, body, True)


async def unblock(admin: Admin, body: bytes, query: dict[str, str]) -> dict[str, Any]:
    return await _set_blocked(admin, body, False)


async def _set_blocked(admin: Admin, body: bytes, blocked: bool) -> dict[str, Any]:
    ref: KeyRefRequest = decode_body(body, KeyRefRequest)
    record = await admin.store.keys.update(ref.key, blocked=blocked)
    if record is None:
        raise RouteNotFound(f"Key {_shown(ref.key)} not found.")
    await admin.changes.changed("key", record.token)
    return key_info(record)


async def delete(admin: Admin, body: bytes, query: dict[str, str]) -> dict[str, Any]:
    req: KeyDeleteRequest = decode_body(body, KeyDeleteRequest)
    missing = [k for k in req.keys if await admin.store.keys.get(k) is None]
    if missing:
        raise RouteNotFound(f"Key(s) not found: {', '.join(_shown(k) for k in missing)}")
    for k in req.keys:
        await admin.store.keys.delete(k)
        await admin.changes.changed("key", reference(k))
    return {"deleted_keys": req.keys}


async def list_keys(admin: Admin, body: bytes, query: dict[str, str]) -> dict[str, Any]:
    page = query_int(query, "page", 1, 1)
    size = query_int(query, "size", 10, 1, 100)
    records = await admin.store.keys.list(
        user_id=query.get("user_id"), team_id=query.get("team_id"), limit=size, offset=(page - 1) * size
    )
    full = query.get("return_full_object", "false").lower() == "true"
    total = await admin.store.keys.count(user_id=query.get("user_id"), team_id=query.get("team_id"))
    return {
        "keys": [key_info(r) if full else r.token for r in records],
        "total_count": total,
        "current_page": page,
        "total_pages": max(1, -(-total // size)),
    }


async def _get(admin: Admin, ref: str) -> KeyRecord:
    record = await admin.store.keys.get(ref)
    if record is None:
        raise RouteNotFound(f"Key {_shown(ref)} not found.")
    return record


def _shown(ref: str) -> str:
    return f"{ref[:3]}...{ref[-4:]}" if ref.startswith(PREFIX) else ref[:12]


Handler = Callable[[Admin, bytes, dict[str, str]], Awaitable[Any]]  # -> a JSON-able dict or list, or a Reply

ROUTES: dict[tuple[str, str], Handler] = {
    ("POST", "/key/generate"): generate,
    ("GET", "/key/info"): info,
    ("POST", "/key/update"): update,
    ("POST", "/key/delete"): delete,
    ("POST", "/key/block"): block,
    ("POST", "/key/unblock"): unblock,
    ("GET", "/key/list"): list_keys,
    ("POST", "/key/regenerate"): regenerate,
}


_OWN_USAGE = frozenset({"/spend/logs", "/usage", "/global/spend/report"})  # an internal user sees its own
_OWN_KEY_CALLS = {
    # what a user's own key may do, by role: internal users manage their own keys, viewers read them
    "internal_user": frozenset({"/key/generate", "/key/list", "/key/info", "/key/delete"}),
    "internal_user_viewer": frozenset({"/key/list", "/key/info"}),
}


async def authorize(
    principal: Principal, method: str, path: str, body: bytes, query: dict[str, str], admin: Admin
) -> tuple[bytes, dict[str, str]]:
    """Who may call what, with LiteLLM's role names. Returns the body and query to use: an internal
    user's calls are narrowed to its own keys rather than trusted to name them."""
    role = principal.role
    if role == "proxy_admin" or (role == "proxy_admin_viewer" and method == "GET"):
        return body, query
    if path in _OWN_USAGE and role in _OWN_KEY_CALLS and principal.user_id is not None and method == "GET":
        return body, {**query, "user_id": principal.user_id}
    allowed = _OWN_KEY_CALLS.get(role, frozenset())
    if path not in allowed or principal.user_id is None:
        raise PermissionDenied(f"A key with role '{role}' may not call {method} {path}.")
    own = principal.user_id
    if path == "/key/list":
        return body, {**query, "user_id": own}
    if path == "/key/generate":
        decode_body(body, KeyGenerateRequest)  # every field checked before any is looked at here
        req: dict[str, Any] = orjson.loads(body or b"{}") if body else {}
        if not isinstance(req, dict) or req.get("user_id") not in (None, own):
            raise PermissionDenied("You may create keys only for yourself.", param="user_id")
        if req.get("customer_id") is not None:  # a binding decides whom a key charges: admins only
            raise PermissionDenied("Only an admin may bind a key to a customer.", param="customer_id")
        # A key made by a key may not reach further than the key that made it.
        models = req.get("models") or []
        if principal.models and "all-proxy-models" not in principal.models:
            if not isinstance(models, list) or any(m not in principal.models for m in models):
                raise PermissionDenied("A new key may use only models your own key may use.", param="models")
            models = models or list(principal.models)
        team_id = req.get("team_id")
        if team_id is not None and own not in {m["user_id"] for m in await admin.store.teams.members(str(team_id))}:
            raise PermissionDenied(f"You are not a member of team '{team_id}'.", param="team_id")
        return orjson.dumps({**req, "user_id": own, "models": models}), query
    refs = [query.get("key", "")] if path == "/key/info" else decode_body(body, KeyDeleteRequest).keys
    for ref in refs:
        record = await admin.store.keys.get(ref) if ref else None
        if record is not None and record.user_id != own:
            raise PermissionDenied("That key is not yours.", param="key")
    return body, query


async def handle(services: Services, handler: Handler, scope: Scope, receive: Receive, send: Send) -> None:
    """One admin call over HTTP: authenticated, its body and query read and bounded, narrowed to
    what the caller's role may do, then handed to `handler` with the one admin service. Errors
    are raised to the boundary (`api.errors.boundary`), which answers them with this request's id."""
    incoming = Incoming(scope["headers"])
    responder = Responder(send, request_id(scope))
    principal = await services.auth.authenticate(
        bearer_token(incoming.authorization, incoming.x_api_key, incoming.api_key)
    )
    body = await read_body(receive, incoming, services.settings.max_body_bytes)
    try:
        raw_query = scope.get("query_string", b"").decode()
    except UnicodeDecodeError:
        raise BadRequest("The query string is not valid UTF-8.") from None
    query = {k: v[-1] for k, v in parse_qs(raw_query).items()}
    bounds.query(query)
    if "format" not in query:  # reports answer CSV or HTML when asked in the Accept header
        accept = next((v for n, v in scope["headers"] if n == b"accept"), b"")
        if b"text/csv" in accept:
            query["format"] = "csv"
        elif b"text/html" in accept and b"application/json" not in accept:
            query["format"] = "html"
    admin = services.admin
    body, query = await authorize(principal, scope["method"], scope["path"].removeprefix("/v1"), body, query, admin)
    result = await handler(admin, body, query)
    if isinstance(result, Reply):
        await responder.whole(200, result.body, result.content_type)
    else:
        await responder.whole(200, bounds.dumps(result))
