"""`meterway keys|users|teams|customers …`: the management calls, run against the database
directly (no server needed). Each command builds the same JSON body the HTTP API takes and calls
the same handler, so the CLI and the API cannot disagree."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import orjson

from meterway.cli import output
from meterway.cli import prepaid as credits
from meterway.config.load import config_path_from_env, load_settings
from meterway.config.settings import DEFAULT_DATABASE_URL

if TYPE_CHECKING:
    from meterway.admin import Admin
    from meterway.config.billing import Billing

Body = dict[str, Any]
_KEY_HELP = "the key, its digest or its alias"
_KEY_ACTIONS = ("info", "update", "block", "unblock", "revoke")  # the commands that name one key
_LIMIT_FLAGS = (
    ("--max-budget", "max_budget", float),
    ("--budget-duration", "budget_duration", str),
    ("--rpm", "rpm_limit", int),
    ("--tpm", "tpm_limit", int),
    ("--parallel", "max_parallel_requests", int),
)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = _group(sub, "keys", "virtual keys")
    create = _command(keys, "create", "make a key (shown once)", limits=True)
    _key_fields(create)
    _command(keys, "list", "list keys (their digests and names)", paged=True)
    key_info = _command(keys, "info", "one key's settings")
    key_info.add_argument("key", help=_KEY_HELP)
    _refresh_flag(key_info)
    update = _command(keys, "update", "change a key's settings", limits=True)
    update.add_argument("key", help=_KEY_HELP)
    _key_fields(update)
    for name, text in (
        ("block", "refuse the key until unblocked"),
        ("unblock", "accept the key again"),
        ("revoke", "delete the key for good"),
    ):
        _command(keys, name, text).add_argument("key", help=_KEY_HELP)

    for group, what, id_flag in (
        ("users", "users", "user_id"),
        ("teams", "teams", "team_id"),
        ("customers", "customers (the request's user field)", "user_id"),
    ):
        g = _group(sub, group, what)
        new = _command(g, "create", f"create one of the {group}", limits=True)
        new.add_argument("id", nargs="?" if group != "customers" else None, help=id_flag)
        new.add_argument("--models", help="comma-separated model names")
        if group == "users":
            new.add_argument("--email")
            new.add_argument(
                "--role", choices=["proxy_admin", "proxy_admin_viewer", "internal_user", "internal_user_viewer"]
            )
        if group == "teams":
            new.add_argument("--alias")
            new.add_argument("--customer-id", help="bind the team's keys to this customer")
        if group == "customers":
            new.add_argument("--alias")
        _command(g, "list", f"list {group}")
        info = _command(g, "info", f"one of the {group}")
        info.add_argument("id")
        if group == "customers":
            _refresh_flag(info)
        _command(g, "delete", f"delete one of the {group}").add_argument("id")


def _refresh_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--refresh",
        action="store_true",
        help="with prepaid credits on: read the wallets from Lago first (at most 10 s); "
        "without it, or when Lago does not answer, the last stored reading is shown",
    )


def _group(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, what: str) -> Any:
    p = sub.add_parser(name, help=f"manage {what} in the database (no server needed)")
    return p.add_subparsers(dest="action", required=True)


def _command(group: Any, name: str, text: str, *, limits: bool = False, paged: bool = False) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = group.add_parser(name, help=text)
    p.add_argument("--config", help="config file whose database_url to use")
    p.add_argument("--database-url", help="overrides the config and DATABASE_URL")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    if limits:
        for flag, _, kind in _LIMIT_FLAGS:
            p.add_argument(flag, type=kind)
        p.add_argument("--metadata", help="a JSON object")
    if paged:
        p.add_argument("--user-id")
        p.add_argument("--team-id")
        p.add_argument("--page", type=int, default=1)
        p.add_argument("--size", type=int, default=50)
    return p


def _key_fields(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", help="comma-separated model names (default: all)")
    p.add_argument("--duration", help="lifetime, e.g. 30d; the key expires after it")
    p.add_argument("--alias")
    p.add_argument("--user-id")
    p.add_argument("--team-id")
    p.add_argument("--customer-id", help="bind the key to this customer, whatever its requests' user says")


def _limits(args: argparse.Namespace) -> Body:
    body: Body = {field: getattr(args, flag[2:].replace("-", "_")) for flag, field, _ in _LIMIT_FLAGS}
    if getattr(args, "metadata", None):
        try:
            body["metadata"] = orjson.loads(args.metadata)
        except orjson.JSONDecodeError:
            from meterway.errors import BadRequest

            raise BadRequest("--metadata must be a JSON object", param="metadata") from None
    if getattr(args, "models", None):
        body["models"] = [m.strip() for m in args.models.split(",") if m.strip()]
    return {k: v for k, v in body.items() if v is not None}


def run(args: argparse.Namespace) -> int:
    notes: list[str] = []  # what the prepaid figures could not include, said under them
    result = asyncio.run(_run(args, notes))
    shown = credits.of(result, args.command) if args.action == "info" else None
    if shown is None or not (shown.get("wallets") or shown.get("last_error")):
        notes.clear()  # nothing the notes would qualify
    if args.json:
        print(output.dumps(result))
        for note in notes:  # stdout stays the API's JSON
            print(f"meterway: note: {note}", file=sys.stderr)
        return 0
    _table(result)
    if shown is not None:
        credits.show(shown, notes)
    return 0


async def _run(args: argparse.Namespace, notes: list[str]) -> Any:
    from meterway.api import management, tenancy

    with_prepaid = args.action == "info" and args.command in ("keys", "customers")
    async with open_admin(args, prepaid_notes=notes if with_prepaid else None) as admin:
        if args.command == "keys" and args.action in _KEY_ACTIONS:
            args.key = await resolve_key(admin, args.key)
        handler, body, query = _call(args, management, tenancy)
        result = await handler(admin, orjson.dumps(body), query)
        prepaid = admin.prepaid
        if prepaid is not None and getattr(args, "refresh", False):
            entity = credits.charged_entity(result, args.command, prepaid.billing.charge_by)
            if entity:
                await credits.refresh(prepaid, entity, notes)
                result = await handler(admin, orjson.dumps(body), query)
        return result


async def resolve_key(admin: Admin, ref: str, *, unknown_ok: bool = False) -> str:
    """The key named by `ref`: the key itself or its digest as the API takes them, else the one key
    whose alias it is (people remember `search-prod`, not a 64-character digest). An alias two keys
    share names neither: the error lists their digests to choose from. `unknown_ok`: a name no key
    has is given back as it is (usage of a revoked key is still found by its digest)."""
    from meterway.errors import BadRequest, RouteNotFound

    if ref.startswith("sk-") or await admin.store.keys.get(ref) is not None:
        return ref  # a key (found or not, the handler says) is never taken for an alias
    tokens = await admin.store.keys.with_alias(ref, limit=6)
    if len(tokens) == 1:
        return tokens[0]
    if not tokens:
        if unknown_ok:
            return ref
        raise RouteNotFound(f"No key has the digest or the alias {ref!r}.")
    shown = ", ".join(tokens[:5]) + (", …" if len(tokens) > 5 else "")
    raise BadRequest(
        f"{'More than 5' if len(tokens) > 5 else len(tokens)} keys have the alias {ref!r}; "
        f"name one by its digest: {shown}."
    )


@contextlib.asynccontextmanager
async def open_admin(
    args: argparse.Namespace,
    *,
    export: bool = False,
    billing: Billing | None = None,
    models: tuple[str, ...] = (),
    prepaid_notes: list[str] | None = None,
) -> AsyncIterator[Admin]:
    """The one admin service, as the gateway builds it (`services.open_services`), over the store
    named by --database-url, the config or DATABASE_URL. `export`: rows written now enqueue
    their export to Lago; `billing`: the commands that talk to Lago get a session and its link;
    `prepaid_notes` (the info commands): with the config's `billing.prepaid` on, the prepaid
    reader, whose figures leave out what `prepaid_notes` then says."""
    import aiohttp

    from meterway.admin import Admin
    from meterway.auth.changes import Changes
    from meterway.billing.setup import BillingLink
    from meterway.store.runtime import Store

    config = args.config or config_path_from_env()
    settings = load_settings(config) if config else None
    url = args.database_url or (settings.database_url.reveal() if settings is not None else _env_url())
    redis_url = settings.redis_url.reveal() if settings is not None and settings.redis_url else _env_redis()
    prefix = settings.redis_prefix if settings is not None else "meterway:"
    async with contextlib.AsyncExitStack() as stack:
        # Never migrates, reading or writing: a schema changes only by `meterway migrate` (or `serve`).
        store = await Store.open(url, wait_s=10, run_migrations=False, export=export)
        stack.push_async_callback(store.close)
        client = None
        if redis_url:  # running gateways hear of the change at once, not when their caches expire
            import redis.asyncio

            # bounded: a Redis that accepts and never answers does not hang the command
            client = redis.asyncio.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=5)
            stack.push_async_callback(client.aclose)
        link = None
        if billing is not None:
            session = await stack.enter_async_context(aiohttp.ClientSession())
            link = BillingLink(billing, session, models)
        prepaid = None
        wanted = settings.billing if settings is not None else None
        if wanted is not None and wanted.prepaid.on and prepaid_notes is not None:
            from meterway.billing.prepaid import Prepaid

            session = await stack.enter_async_context(aiohttp.ClientSession())
            budget = credits.redis_budget(client, prefix, prepaid_notes) if client is not None else None
            if budget is None:
                prepaid_notes.append(
                    "no Redis: the gateway counts requests since the reading in its own process, not shown here."
                )
            prepaid = Prepaid(wanted, store, session, budget=budget)
        secret = settings.salt_key or settings.master_key if settings is not None else None
        changes = Changes(redis=client, channel=prefix + "changes")
        yield Admin(store, changes, secret=secret, billing=link, prepaid=prepaid)


def _env_redis() -> str | None:
    import os

    return os.environ.get("REDIS_URL") or None


def _env_url() -> str:
    import os

    return os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL


def _call(args: argparse.Namespace, management: Any, tenancy: Any) -> tuple[Callable[..., Any], Body, dict[str, str]]:
    group, action = args.command, args.action
    if group == "keys":
        k = management
        fields = {
            "key_alias": getattr(args, "alias", None),
            "duration": getattr(args, "duration", None),
            "user_id": getattr(args, "user_id", None),
            "team_id": getattr(args, "team_id", None),
            "customer_id": getattr(args, "customer_id", None),
        }
        fields = {n: v for n, v in fields.items() if v is not None}
        if action == "create":
            return k.generate, {**fields, **_limits(args)}, {}
        if action == "update":
            return k.update, {"key": args.key, **fields, **_limits(args)}, {}
        if action == "list":
            query = {"page": str(args.page), "size": str(args.size), "return_full_object": "true"}
            query.update({n: v for n, v in (("user_id", args.user_id), ("team_id", args.team_id)) if v})
            return k.list_keys, {}, query
        if action == "info":
            return k.info, {}, {"key": args.key}
        if action in ("block", "unblock"):
            return getattr(k, action), {"key": args.key}, {}
        return k.delete, {"keys": [args.key]}, {}
    prefix = {"users": "user", "teams": "team", "customers": "customer"}[group]
    routes = tenancy.ROUTES
    id_field = "team_id" if group == "teams" else "user_id"
    if action == "create":
        body: Body = {**_limits(args)}
        if args.id:
            body[id_field] = args.id
        for flag, field in (
            ("email", "user_email"),
            ("role", "user_role"),
            ("alias", "team_alias" if group == "teams" else "alias"),
            ("customer_id", "customer_id"),
        ):
            if getattr(args, flag, None):
                body[field] = getattr(args, flag)
        return routes[("POST", f"/{prefix}/new")], body, {}
    if action == "list":
        return routes[("GET", f"/{prefix}/list")], {}, {}
    if action == "info":
        query_field = "end_user_id" if group == "customers" else id_field
        return routes[("GET", f"/{prefix}/info")], {}, {query_field: args.id}
    return routes[("POST", f"/{prefix}/delete")], {f"{prefix if group != 'customers' else 'user'}_ids": [args.id]}, {}


_COLUMNS = (  # a key's alias and name first: people know a key by them, not by its digest
    "key_alias",
    "key_name",
    "key",
    "token",
    "user_id",
    "team_id",
    "customer_id",
    "team_alias",
    "user_email",
    "user_role",
    "alias",
    "models",
    "max_budget",
    "spend",
    "expires",
    "blocked",
    "rpm_limit",
    "tpm_limit",
)


_NUMERIC = ("max_budget", "spend", "rpm_limit", "tpm_limit")


def _table(result: Any) -> None:
    """Prints a table of the result's rows (a list, `keys`/`users` of a page, or one object)."""
    if isinstance(result, dict):
        for name in ("keys", "users"):
            if isinstance(result.get(name), list):
                result = result[name]
                break
        else:
            inner = result.get("info") or result.get("user_info") or result.get("team_info")
            result = [{**result, **inner} if isinstance(inner, dict) else result]
    rows = [r for r in result if isinstance(r, dict)] if isinstance(result, list) else []
    if not rows:
        print("(none)" if isinstance(result, list) else str(result))
        return
    cols = [c for c in _COLUMNS if any(r.get(c) not in (None, [], "") for r in rows)]
    output.table(cols, [[_cell(r.get(c)) for c in cols] for r in rows], numeric=_NUMERIC)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(map(output.plain, value)) or "(all)"
    return output.plain(value)
