"""`meterway usage`, `meterway invoice` and `meterway billing status|reprocess`: read from (and
written to) the database directly, through the same handlers as the HTTP API."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import orjson

from meterway.cli import admin


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    usage = sub.add_parser("usage", help="usage totals grouped by customer, key, user, team, model, day, …")
    usage.add_argument("--by", default="model", help="comma-separated: customer,key,user,team,model and hour|day|month")
    usage.add_argument("--since", help="first day, YYYY-MM-DD (default: 30 days ago)")
    usage.add_argument("--until", help="last day, YYYY-MM-DD (default: today)")
    for flag in ("--customer", "--key", "--user", "--team", "--model"):
        usage.add_argument(flag, help=f"only this {flag[2:]}")
    usage.add_argument("--format", choices=["table", "json", "csv"], default="table")
    invoice = sub.add_parser("invoice", help="a customer's invoice preview for one month")
    invoice.add_argument("customer")
    invoice.add_argument("--period", help="YYYY-MM (default: this month)")
    invoice.add_argument("--format", choices=["table", "json", "csv", "html"], default="table")
    billing = sub.add_parser("billing", help="billing export to Lago: status, reprocess")
    actions = billing.add_subparsers(dest="action", required=True)
    status = actions.add_parser("status", help="exports pending, sent and parked (with reasons)")
    reprocess = actions.add_parser("reprocess", help="send parked exports again, after fixing their mapping")
    reprocess.add_argument("--reason", help="only those whose reason contains this")
    reprocess.add_argument("--since", help="only those recorded from this day, YYYY-MM-DD")
    rec = actions.add_parser("reconcile", help="the month's ledger against Lago; exit 0 only when they match")
    rec.add_argument("--period", help="YYYY-MM (default: this month)")
    rec.add_argument("--customer", help="only this customer")
    for p in (usage, invoice, status, reprocess, rec):
        p.add_argument("--config", help="config file whose database_url to use")
        p.add_argument("--database-url", help="overrides the config and DATABASE_URL")
    for p in (status, reprocess, rec):
        p.add_argument("--format", choices=["table", "json"], default="table")


def run(args: argparse.Namespace) -> int:
    result = asyncio.run(_run(args))
    if args.command == "billing" and args.action == "reconcile":
        print(
            orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() if args.format == "json" else _differences(result)
        )
        return 0 if result["match"] else 1
    if isinstance(result, bytes):
        print(result.decode(), end="")
    elif args.format == "json":
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    else:
        print(_table(args.command, result))
    return 0


async def _run(args: argparse.Namespace) -> Any:
    from meterway.api import billing, reports

    fmt = "json" if args.format == "table" else args.format
    async with admin.open_routes(args) as routes:
        if args.command == "billing":
            if args.action == "status":
                return await billing.status(routes, b"", {})
            if args.action == "reconcile":
                return await _reconcile(args, routes)
            body = {k: v for k, v in (("reason", args.reason), ("since", args.since)) if v}
            return await billing.reprocess(routes, orjson.dumps(body), {})
        if args.command == "usage":
            query = {"group_by": args.by, "format": fmt}
            for name, value in (
                ("start", args.since),
                ("end", args.until),
                ("customer_id", args.customer),
                ("key", args.key),
                ("user_id", args.user),
                ("team_id", args.team),
                ("model", args.model),
            ):
                if value:
                    query[name] = value
            result = await reports.usage(routes, b"", query)
        else:
            query = {"format": fmt, **({"period": args.period} if args.period else {})}
            result = await reports.invoice_preview(routes, args.customer, query)
    return result.body if isinstance(result, reports.Reply) else result


def _table(command: str, result: dict[str, Any]) -> str:
    if command == "billing":
        lines = [f"{k}: {v}" for k, v in result.items() if not isinstance(v, dict)]
        for reason, n in (result.get("parked_by_reason") or {}).items():
            lines.append(f"  parked {n}: {reason}")
        return "\n".join(lines)
    if command == "usage":
        rows = [*result["rows"], {**{g: "total" for g in result["group_by"][:1]}, **result["totals"]}]
        cols = [*result["group_by"], "requests", "prompt_tokens", "completion_tokens", "total_tokens", "cost"]
    else:
        rows = [*result["lines"], {"model": "total", "amount": result["total"]}]
        cols = ["model", "token_type", "quantity", "unit_price", "amount"]
    cells = [["-" if r.get(c) is None else str(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


async def _reconcile(args: argparse.Namespace, routes: Any) -> Any:
    import os
    from datetime import UTC, datetime

    import aiohttp

    from meterway.billing.reconcile import reconcile
    from meterway.config.billing import parse_billing
    from meterway.config.load import config_path_from_env, load_settings
    from meterway.errors import BadRequest

    config = args.config or config_path_from_env()
    billing = load_settings(config).billing if config else parse_billing({}, os.environ)
    if billing is None:
        raise BadRequest("Billing export is not configured: set a billing section or LAGO_API_BASE and LAGO_API_KEY.")
    period = args.period or datetime.now(UTC).strftime("%Y-%m")
    async with aiohttp.ClientSession() as session:
        try:
            return await reconcile(billing, routes.store.outbox, session, period, args.customer)
        except ValueError:
            raise BadRequest(f"--period must be a month, YYYY-MM; got {period!r}.", param="period") from None


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
