"""`meterway usage`, `meterway invoice`, `meterway billing status|reprocess|reconcile|check|setup`
and `meterway ledger quarantine|reprocess`: read from (and written to) the database directly,
through the same handlers as the HTTP API; and `meterway billing worker`, the sender on its own.
`usage` warns (on stderr) when ledger rows wait in the quarantine: their usage is in no total."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import orjson

from meterway.cli import admin, output
from meterway.ledger.row import UNITS


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    usage = sub.add_parser("usage", help="usage totals grouped by customer, key, user, team, model, day, …")
    usage.add_argument(
        "--by", default="model", help="comma-separated: customer,key,user,team,model,tag and hour|day|month"
    )
    usage.add_argument("--since", help="first day, YYYY-MM-DD (default: 30 days ago)")
    usage.add_argument("--until", help="last day, YYYY-MM-DD (default: today)")
    for flag in ("--customer", "--key", "--user", "--team", "--model"):
        usage.add_argument(flag, help=f"only this {flag[2:]}")
    usage.add_argument("--format", choices=["table", "json", "csv"], default="table")
    invoice = sub.add_parser("invoice", help="a customer's invoice preview for one month")
    invoice.add_argument("customer")
    invoice.add_argument("--period", help="YYYY-MM (default: this month)")
    invoice.add_argument("--format", choices=["table", "json", "csv", "html"], default="table")
    billing = sub.add_parser(
        "billing", help="billing export to Lago: status, reprocess, reconcile, check, setup, worker"
    )
    actions = billing.add_subparsers(dest="action", required=True)
    status = actions.add_parser("status", help="exports pending, sent and parked (with reasons)")
    reprocess = actions.add_parser("reprocess", help="send parked exports again, after fixing their mapping")
    reprocess.add_argument("--reason", help="only those whose reason contains this")
    reprocess.add_argument("--since", help="only those recorded from this day, YYYY-MM-DD")
    rec = actions.add_parser("reconcile", help="the month's ledger against Lago; exit 0 only when they match")
    rec.add_argument("--period", help="YYYY-MM (default: this month)")
    rec.add_argument("--customer", help="only this customer")
    check = actions.add_parser("check", help="Lago's URL and key, and the billable metric; exit 0 only when all hold")
    setup = actions.add_parser("setup", help="create or complete the billable metric in Lago (idempotent)")
    setup.add_argument(
        "--customers", action="store_true", help="also subscribe customers that have a billing_plan_code"
    )
    worker = actions.add_parser("worker", help="send pending exports to Lago until stopped (SIGTERM or Ctrl-C)")
    worker.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="default: $METERWAY_LOG_LEVEL or info"
    )
    worker.add_argument("--log-format", choices=["text", "json"], default=None, help="default: text")
    ledger = sub.add_parser("ledger", help="ledger rows the database refused: list the quarantine, reprocess it")
    rows = ledger.add_subparsers(dest="action", required=True)
    kept = rows.add_parser("quarantine", help="rows kept in the quarantine, oldest first, with the database's reason")
    kept.add_argument("--all", action="store_true", help="also rows already reprocessed")
    kept.add_argument("--limit", type=int, default=100, help="at most this many rows (default 100)")
    again = rows.add_parser("reprocess", help="write quarantined rows again (as given, else cut to their columns)")
    again.add_argument("--id", type=int, action="append", dest="ids", help="only this row (repeatable)")
    for p in (usage, invoice, status, reprocess, rec, check, setup, worker, kept, again):
        p.add_argument("--config", help="config file whose database_url (and billing section) to use")
        p.add_argument("--database-url", help="overrides the config and DATABASE_URL")
    for p in (status, reprocess, rec, check, setup, kept, again):
        p.add_argument("--format", choices=["table", "json"], default="table")


def run(args: argparse.Namespace) -> int:
    if args.command == "billing" and args.action == "worker":
        return _worker(args)
    if args.command == "billing" and args.action == "status":
        _billing(args)  # off: say so and how to turn it on (a status of zeros would read as "all sent")
    result = asyncio.run(_run(args))
    if args.command == "billing" and args.action in ("reconcile", "check", "setup"):
        if args.format == "json":
            print(output.dumps(result))
        elif args.action == "reconcile":
            print(_differences(result))
        else:
            print(_steps(result))
        return 0 if result.get("match", result.get("ok")) else 1
    names: dict[str, str] = {}
    if args.command == "usage":
        result, waiting, names = result
        if waiting:
            print(
                f"warning: {waiting} ledger row(s) wait in the quarantine and are in none of these totals; "
                "see `meterway ledger quarantine`",
                file=sys.stderr,
            )
    if args.command == "ledger" and args.format == "table":
        print(_quarantine(args.action, result))
        return 0 if args.action == "quarantine" or not result["refused"] else 1
    if isinstance(result, bytes):
        print(result.decode(), end="")
    elif args.format == "json":
        print(output.dumps(result))
    else:
        _table(args.command, result, names)
    return 0


async def _run(args: argparse.Namespace) -> Any:
    from meterway.api import billing, reports
    from meterway.api.params import Reply

    fmt = "json" if args.format == "table" else args.format
    if args.command == "billing" and args.action in ("reconcile", "check", "setup"):
        return await _with_lago(args)
    # a ledger row written again now (reprocessed) is exported as any other, when billing is on
    export = args.command == "ledger" and args.action != "quarantine" and _billing_on(args)
    # a reprocess asks Lago at once what would park again (when billing is on for this config)
    reprocess = args.command == "billing" and args.action == "reprocess"
    billing_link = _billing(args)[0] if reprocess and _billing_on(args) else None
    async with admin.open_admin(args, export=export, billing=billing_link) as service:
        if args.command == "ledger":
            if args.action == "quarantine":
                query = {"limit": str(args.limit), **({"all": "true"} if args.all else {})}
                return await billing.quarantine(service, b"", query)
            return await billing.ledger_reprocess(service, orjson.dumps({"ids": args.ids or []}), {})
        if args.command == "billing":
            if args.action == "status":
                return await billing.status(service, b"", {})
            body = {k: v for k, v in (("reason", args.reason), ("since", args.since)) if v}
            return await billing.reprocess(service, orjson.dumps(body), {})
        if args.command == "usage":
            query = {"group_by": args.by, "format": fmt}
            for name, value in (
                ("start", args.since),
                ("end", args.until),
                ("customer_id", args.customer),
                ("key", args.key and await admin.resolve_key(service, args.key, unknown_ok=True)),
                ("user_id", args.user),
                ("team_id", args.team),
                ("model", args.model),
            ):
                if value:
                    query[name] = value
            result = await reports.usage(service, b"", query)
            waiting, _ = await service.store.ledger.quarantine_status()
            shown = result.body if isinstance(result, Reply) else result
            names = await _key_names(service, shown) if isinstance(shown, dict) and args.format == "table" else {}
            return shown, waiting, names
        else:
            query = {"format": fmt, **({"period": args.period} if args.period else {})}
            result = await reports.invoice_preview(service, args.customer, query)
    return result.body if isinstance(result, Reply) else result


async def _key_names(service: Any, result: dict[str, Any]) -> dict[str, str]:
    """Each key digest in a usage table's rows by the name people know it by: its alias, else its
    `sk-...abcd` name (a key since revoked keeps its digest)."""
    if "key" not in result.get("group_by", ()):
        return {}
    names: dict[str, str] = {}
    for digest in {row["key"] for row in result["rows"] if row.get("key")}:
        record = await service.store.keys.get(digest)
        if record is not None:
            names[digest] = record.key_alias or record.key_name
    return names


_USAGE_NUMBERS = ("requests", "prompt_tokens", "completion_tokens", "total_tokens", "cost")
_NUMBERS = (*_USAGE_NUMBERS, *UNITS, "quantity", "unit_price", "amount")


def _table(command: str, result: dict[str, Any], names: dict[str, str]) -> None:
    if command == "billing":
        lines = [f"{k}: {output.plain(v)}" for k, v in result.items() if not isinstance(v, dict) and k != "parks_again"]
        if "parks_again" in result and result["parks_again"] is None:
            lines.append("not checked against Lago (billing export is off here, or Lago did not answer)")
        for reason, n in (result.get("parked_by_reason") or {}).items():
            lines.append(f"  parked {n}: {reason}")
        for reason, n in (result.get("parks_again") or {}).items():
            lines.append(f"  would park again {n}: {reason}")
        print("\n".join(lines))
        return
    if command == "usage":
        rows = [*result["rows"], {**{g: "total" for g in result["group_by"][:1]}, **result["totals"]}]
        rows = [{**r, "key": names.get(r["key"], r["key"])} if r.get("key") else r for r in rows]
        cols = [*result["group_by"], "requests", "prompt_tokens", "completion_tokens", "total_tokens", "cost"]
        cols += [u for u in UNITS if result["totals"].get(u)]  # units beside tokens, where any were used
    else:
        rows = [*result["lines"], {"model": "total", "amount": result["total"]}]
        cols = ["model", "token_type", "quantity", "unit_price", "amount"]
    cells = [["-" if r.get(c) is None else output.plain(r.get(c)) for c in cols] for r in rows]
    output.table(cols, cells, numeric=_NUMBERS)


def _quarantine(action: str, result: dict[str, Any]) -> str:
    if action == "reprocess":
        lines = [f"written {result['written']}, written cut {result['cut']}, refused again {result['refused']}"]
        lines += [f"  #{r['id']} refused again: {r['reason']}" for r in result["rows"] if r["outcome"] == "refused"]
        return "\n".join(lines)
    lines = [f"{result['waiting']} row(s) wait in the ledger quarantine"]
    for r in result["rows"]:
        done = f", reprocessed {r['reprocessed_at']}" if r["reprocessed_at"] else ""
        lines.append(f"  #{r['id']} {r['created_at']} request {r['request_id']}{done}: {r['reason']}")
    return "\n".join(lines)


def _billing(args: argparse.Namespace) -> tuple[Any, list[str]]:
    """The billing settings (the config's section, else the `LAGO_*` variables) and the
    configured model names."""
    import os

    from meterway.config.billing import parse_billing
    from meterway.config.load import config_path_from_env, load_settings
    from meterway.errors import BadRequest

    config = args.config or config_path_from_env()
    settings = load_settings(config) if config else None
    billing = settings.billing if settings is not None else parse_billing({}, os.environ)
    if billing is None:
        raise BadRequest(
            "Billing export is off: to turn it on, set a `billing` section in the config (--config or "
            "METERWAY_CONFIG), or LAGO_API_BASE and LAGO_API_KEY in the environment."
        )
    return billing, settings.model_names() if settings is not None else []


def _billing_on(args: argparse.Namespace) -> bool:
    from meterway.errors import BadRequest

    try:
        _billing(args)
    except BadRequest:
        return False
    return True


async def _with_lago(args: argparse.Namespace) -> Any:
    from meterway.api import billing as handlers

    billing, models = _billing(args)
    async with admin.open_admin(args, billing=billing, models=tuple(models)) as service:
        if args.action == "check":
            return await handlers.check(service, b"", {})
        if args.action == "setup":
            return await handlers.setup(service, orjson.dumps({"customers": args.customers}), {})
        query = {k: v for k, v in (("period", args.period), ("customer", args.customer)) if v}
        return await handlers.reconcile(service, b"", query)


def _worker(args: argparse.Namespace) -> int:
    """The sender alone, for deployments that run `billing.run_sender: false` on their gateways
    (several workers may run at once: rows are claimed, never sent twice)."""
    import contextlib
    import logging
    import signal

    import aiohttp

    from meterway.billing.sender import Sender

    billing, _ = _billing(args)
    log = logging.getLogger("meterway.billing")

    async def work() -> None:
        async with admin.open_admin(args) as service, aiohttp.ClientSession() as session:
            sender = Sender(billing, service.store.outbox, session)
            task = asyncio.create_task(sender.run())
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):  # the round in flight finishes, then the worker stops
                loop.add_signal_handler(sig, sender.stop)
            log.info("billing worker sending to %s as event code '%s'", billing.api_base, billing.event_code)
            with contextlib.suppress(asyncio.CancelledError):
                await task
            log.info("billing worker stopped: %d events delivered, %d rows parked", sender.delivered, sender.parked)

    asyncio.run(work())
    return 0


def _steps(result: dict[str, Any]) -> str:
    lines = [f"{'ok ' if s['ok'] else 'FAIL'} {s['name']}: {s['detail']}" for s in result["steps"]]
    lines.append("everything is ready" if result["ok"] else "not ready: see FAIL above")
    return "\n".join(lines)


def _differences(result: dict[str, Any]) -> str:
    lines = [f"period {result['period']}: {'everything matches' if result['match'] else 'DIFFERENCES'}"]
    for s in result["subscriptions"]:
        lines.append(
            f"  {s['external_subscription_id']} ({s['code']}): ledger {s['ledger_events']} events / "
            f"{s['ledger_tokens']} tokens, Lago {s['lago_events']} events / {s['lago_tokens']} tokens"
        )
        if s["missing_count"]:
            lines.append(f"    missing in Lago ({s['missing_count']}): {', '.join(s['missing_in_lago'])}")
        if s["unexpected_count"]:
            lines.append(f"    unexpected in Lago ({s['unexpected_count']}): {', '.join(s['unexpected_in_lago'])}")
    if result["parked_rows"]:
        lines.append(f"  parked (not billed, see billing status): {result['parked_rows']}")
    return "\n".join(lines)
