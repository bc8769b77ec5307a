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
    for p in (usage, invoice, status, reprocess):
        p.add_argument("--config", help="config file whose database_url to use")
        p.add_argument("--database-url", help="overrides the config and DATABASE_URL")
    for p in (status, reprocess):
        p.add_argument("--format", choices=["table", "json"], default="table")


def run(args: argparse.Namespace) -> int:
    result = asyncio.run(_run(args))
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
