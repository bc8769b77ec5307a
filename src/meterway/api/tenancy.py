"""Users, teams and customers with LiteLLM's paths and payloads (`/user/new`, `/team/member_add`,
`/customer/info`, … and `/end_user/*` as another name for `/customer/*`). Master key only for now."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec

from meterway.admin import Admin
from meterway.api.management import Handler, check_customer, key_info
from meterway.api.params import decode_body, query_int
from meterway.auth.keys import new_key
from meterway.bounds import LIST_MAX, Budget, Duration, Email, Limit, Name, Names
from meterway.config.durations import parse_duration
from meterway.errors import BadRequest, RouteNotFound

if TYPE_CHECKING:
    from meterway.store.entities import EntityStore, Row

Role = Literal["proxy_admin", "proxy_admin_viewer", "internal_user", "internal_user_viewer"]


class LimitFields(msgspec.Struct):
    """Bounded as the columns are (`meterway.bounds`); the bounds also appear in /openapi.json."""

    models: Names | None = None
    max_budget: Budget | None = None
    soft_budget: Budget | None = None  # a spend to be warned at, never refused at (no alerts yet)
    budget_duration: Duration | None = None
    rpm_limit: Limit | None = None
    tpm_limit: Limit | None = None
    max_parallel_requests: Limit | None = None
    metadata: dict[str, Any] | None = None  # checked by bounds.metadata
    # the Lago customer and subscription this entity is billed under (default: its own id)
    billing_external_customer_id: Name | None = None
    billing_external_subscription_id: Name | None = None


class TeamMember(msgspec.Struct):
    user_id: Name
    role: Literal["admin", "user"] = "user"


class TeamRequest(LimitFields):
    team_id: Name | None = None
    team_alias: Name | None = None
    blocked: bool | None = None
    members_with_roles: Annotated[list[TeamMember], msgspec.Meta(max_length=LIST_MAX)] | None = None
    customer_id: Name | None = None  # every key of the team without its own binding charges it; "" unbinds


class UserRequest(LimitFields):
    user_id: Name | None = None
    user_email: Email | None = None
    user_role: Role | None = None
    auto_create_key: bool = True


class CustomerRequest(LimitFields):
    user_id: Name | None = None  # LiteLLM's name for the customer's id (the request's `user`)
    alias: Name | None = None
    blocked: bool | None = None
    billing_plan_code: Name | None = None  # the Lago plan `meterway billing setup` subscribes it to


class MemberAddRequest(msgspec.Struct):
    team_id: Name
    member: TeamMember | Annotated[list[TeamMember], msgspec.Meta(max_length=LIST_MAX)]


class MemberDeleteRequest(msgspec.Struct):
    team_id: Name
    user_id: Name


class IdsRequest(msgspec.Struct):
    team_ids: Names | None = None
    user_ids: Names | None = None


_LIMIT_FIELDS = (
    "models",
    "budget_duration",
    "rpm_limit",
    "tpm_limit",
    "max_parallel_requests",
    "metadata",
    "billing_external_customer_id",
    "billing_external_subscription_id",
)


def _values(req: LimitFields, extra: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in (*_LIMIT_FIELDS, *extra):
        value = getattr(req, name)
        if value is None:
            continue
        out[name] = value  # numbers and strings are bounded by their types
    if req.budget_duration is not None:
        parse_duration(req.budget_duration, "budget_duration")
    for name in ("max_budget", "soft_budget"):
        amount = getattr(req, name)
        if amount is not None:
            out[name] = Decimal(repr(amount))
    return out


def _plain(row: Row) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in row.items():
        if isinstance(v, Decimal):
            out[k] = float(v)
        elif isinstance(v, datetime):
            out[k] = v.isoformat()
        else:
            out[k] = v
    return out


def _required(value: str | None, name: str) -> str:
    if not value:
        raise BadRequest(f"Missing required parameter: '{name}'.", param=name)
    return value


async def _delete_all(r: Admin, store: EntityStore, ids: list[str] | None, what: str) -> list[str]:
    """Deletes every id, or none: an unknown id fails the whole call, naming it."""
    ids = ids or []
    missing = [i for i in ids if await store.get(i) is None]
    if missing or not ids:
        raise RouteNotFound(f"{what}(s) not found: {', '.join(missing) or '(none given)'}")
    for i in ids:
        await store.delete(i)
        await r.changes.changed(what.lower(), i)
    return ids


# ---------------------------------------------------------------- teams


async def team_new(r: Admin, body: bytes, query: dict[str, str]) -> dict[str, Any]:
    req: TeamRequest = decode_body(body, TeamRequest)
    teams = r.store.teams
    team_id = req.team_id or str(uuid.uuid4())
    if await teams.get(team_id) is not None:
        raise BadRequest(f"Team '{team_id}' already exists.", param="team_id", code="duplicate_team")
    await teams.create(team_id, **await _team_values(r, req))
    if req.members_with_roles:
        await teams.add_members(team_id, [(m.user_id, m.role) for m in req.members_with_roles])
    await r.changes.changed("team", team_id)
    return await _team(r, team_id)


async def _team_values(r: Admin, req: TeamRequest) -> dict[str, Any]:
    values = _values(req, ("team_alias", "blocked", "customer_id"))
    if values.get("customer_id") == "":
        values["customer_id"] = None
    await check_customer(r.store, values.get("customer_id"))
    return values


async def _team(r: Admin, team_id: str) -> dict[str, Any]:
    row = await r.store.teams.get(team_id)
    if row is None:
        raise RouteNotFound(f"Team '{team_id}' not found.")
    return {**_plain(row), "members_with_roles": await r.store.teams.members(team_id)}


async def team_info(r: Admin, body: bytes, query: dict[str, str]) -> dict[str, Any]:
    team_id = _required(query.get("team_id"), "team_id")
    info = await _team(r, team_id)
    keys = await r.store.keys.list(team_id=team_id, limit=1000)
    return {"team_id": team_id, "team_info": info, "keys": [key_info(k) for k in keys]}


async def team_update(r: Admin, body: bytes, query: dict[str, str]) -> dict[str, Any]:
    req: TeamRequest = decode_body(body, TeamRequest)
    team_id = _required(req.team_id, "team_id")
    if await r.store.teams.update(team_id, **await _team_values(r, req)) is None:
        raise RouteNotFound(f"Team '{team_id}' not found.")
    await r.changes.changed("team", team_id)
    return await _team(r, team_id)


async def team_delete(r: Admin, body: bytes, query: dict[str, str]) -> dict[str, Any]:
    ids = await _delete_all(r, r.store.teams, decode_body(body, IdsRequest).team_ids, "Team")
    return {"deleted_teams": ids}


async def team_list(r: Admin, body: bytes, query: dict[str, str]) -> list[dict[str, Any]]:
    return [await _team(r, row["team_id"]) for row in await r.store.teams.list(limit=1000)]


async def team_member_add(r: Admin, body: bytes, query: dict[str, str]) -> dict[str, Any]:
    req: MemberAddRequest = decode_body(body, MemberAddRequest)
    await _team(r, req.team_id)
    members = req.member if isinstance(req.member, list) else [req.member]
    await r.store.teams.add_members(req.team_id, [(m.user_id, m.role) for m in members])
    await r.changes.changed("team", req.team_id)
    return await _team(r, req.team_id)


async def team_member_delete(r: Admin, body: bytes, query: dict[str, str]) -> dict[str, Any]:
    req: MemberDeleteRequest = decode_body(body, MemberDeleteRequest)
    await _team(r, req.team_id)
    if not await r.store.teams.remove_member(req.team_id, req.user_id):
        raise RouteNotFound(f"User '{req.user_id}' is not a member of team '{req.team_id}'.")
    await r.changes.changed("team", req.team_id)
    return await _team(r, req.team_id)


# ---------------------------------------------------------------- users


async def user_new(r: Admin, body: bytes, query: dict[str, str]) -> dict[str, Any]:
    req: UserRequest = decode_body(body, UserRequest)
    user_id = req.user_id or str(uuid.uuid4())
    if await r.store.users.get(user_id) is not None:
        raise BadRequest(f"User '{user_id}' already exists.", param="user_id", code="duplicate_user")
    values = _values(req, ("user_email", "user_role"))
    row = await r.store.users.create(user_id, **values)
    await r.changes.changed("user", user_id)  # its keys act with its role from now on
    out = _plain(row)
    if req.auto_create_key:
        # As LiteLLM does: a new user gets a key of its own, shown once, limited like the user.
        key = new_key()
        await r.store.keys.create(key, user_id=user_id, models=values.get("models") or [])
        out["key"] = key
    return out


async def user_info(r: Admin, body: bytes, query: dict[str, str]) -> dict[str, Any]:
    user_id = _required(query.get("user_id"), "user_id")
    row = await r.store.users.get(user_id)
    if row is None:
        raise RouteNotFound(f"User '{user_id}' not found.")
    keys = await r.store.keys.list(user_id=user_id, limit=1000)
    return {"user_id": user_id, "user_info": _plain(row), "keys": [key_info(k) for k in keys]}


async def user_update(r: Admin, body: bytes, query: dict[str, str]) -> dict[str, Any]:
    req: UserRequest = decode_body(body, UserRequest)
    user_id = _required(req.user_id, "user_id")
    row = await r.store.users.update(user_id, **_values(req, ("user_email", "user_role")))
    if row is None:
        raise RouteNotFound(f"User '{user_id}' not found.")
    await r.changes.changed("user", user_id)
    return _plain(row)


async def user_delete(r: Admin, body: bytes, query: dict[str, str]) -> dict[str, Any]:
    ids = await _delete_all(r, r.store.users, decode_body(body, IdsRequest).user_ids, "User")
    return {"deleted_users": ids}


async def user_list(r: Admin, body: bytes, query: dict[str, str]) -> dict[str, Any]:
    page = query_int(query, "page", 1, 1)
    size = query_int(query, "page_size", 25, 1, 100)
    rows = await r.store.users.list(limit=size, offset=(page - 1) * size)
    return {"users": [_plain(u) for u in rows], "page": page, "page_size": size}


# ---------------------------------------------------------------- customers (end users)

_CUSTOMER_EXTRA = ("alias", "blocked", "billing_plan_code")


async def customer_new(r: Admin, body: bytes, query: dict[str, str]) -> dict[str, Any]:
    req: CustomerRequest = decode_body(body, CustomerRequest)
    customer_id = _required(req.user_id, "user_id")
    if await r.store.customers.get(customer_id) is not None:
        raise BadRequest(f"Customer '{customer_id}' already exists.", param="user_id", code="duplicate_customer")
    row = await r.store.customers.create(customer_id, **_values(req, _CUSTOMER_EXTRA))
    await r.changes.changed("customer", customer_id)  # it may be cached as unknown
    return _customer(row)


def _customer(row: Row) -> dict[str, Any]:
    out = _plain(row)
    out["user_id"] = out["customer_id"]  # LiteLLM's field name for the same id
    return out


async def customer_info(r: Admin, body: bytes, query: dict[str, str]) -> dict[str, Any]:
    customer_id = _required(query.get("end_user_id") or query.get("user_id"), "end_user_id")
    row = await r.store.customers.get(customer_id)
    if row is None:
        raise RouteNotFound(f"Customer '{customer_id}' not found.")
    prepaid = None
    if r.prepaid is not None and r.prepaid.billing.charge_by == "customer":
        prepaid = await r.prepaid.status(customer_id)
    return {**_customer(row), "prepaid": prepaid}


async def customer_update(r: Admin, body: bytes, query: dict[str, str]) -> dict[str, Any]:
    req: CustomerRequest = decode_body(body, CustomerRequest)
    customer_id = _required(req.user_id, "user_id")
    row = await r.store.customers.update(customer_id, **_values(req, _CUSTOMER_EXTRA))
    if row is None:
        raise RouteNotFound(f"Customer '{customer_id}' not found.")
    await r.changes.changed("customer", customer_id)
    return _customer(row)


async def customer_delete(r: Admin, body: bytes, query: dict[str, str]) -> dict[str, Any]:
    req: IdsRequest = decode_body(body, IdsRequest)
    for customer_id in req.user_ids or []:
        # a key bound to a deleted customer would go on charging it, out of reach of its budget
        keys, teams = await r.store.keys.bound_to(customer_id), await r.store.teams.bound_to(customer_id)
        if keys or teams:
            named = [f"key {t[:12]}" for t in keys] + [f"team '{t}'" for t in teams]
            raise BadRequest(
                f"Customer '{customer_id}' is bound to {', '.join(named)}; unbind them (customer_id: \"\") first.",
                param="user_ids",
                code="customer_bound",
            )
    ids = await _delete_all(r, r.store.customers, req.user_ids, "Customer")
    return {"deleted_customers": ids}


async def customer_list(r: Admin, body: bytes, query: dict[str, str]) -> list[dict[str, Any]]:
    return [_customer(row) for row in await r.store.customers.list(limit=1000)]


ROUTES: dict[tuple[str, str], Handler] = {
    ("POST", "/team/new"): team_new,
    ("GET", "/team/info"): team_info,
    ("POST", "/team/update"): team_update,
    ("POST", "/team/delete"): team_delete,
    ("GET", "/team/list"): team_list,
    ("POST", "/team/member_add"): team_member_add,
    ("POST", "/team/member_delete"): team_member_delete,
    ("POST", "/user/new"): user_new,
    ("GET", "/user/info"): user_info,
    ("POST", "/user/update"): user_update,
    ("POST", "/user/delete"): user_delete,
    ("GET", "/user/list"): user_list,
}
for _prefix in ("/customer", "/end_user"):
    ROUTES.update(
        {
            ("POST", f"{_prefix}/new"): customer_new,
            ("GET", f"{_prefix}/info"): customer_info,
            ("POST", f"{_prefix}/update"): customer_update,
            ("POST", f"{_prefix}/delete"): customer_delete,
            ("GET", f"{_prefix}/list"): customer_list,
        }
    )
