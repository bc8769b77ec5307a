"""Ledger at scale: fills PostgreSQL with ledger rows and times the reports that read them.

    python bench/ledger_scale.py [--rows 10000000] [--admin-dsn postgresql://postgres@127.0.0.1:5432/test]

Creates a scratch database (`meterway_scale` unless --database), migrates it with meterway's own
migrations, fills `mw_ledger` with --rows rows (1,000 customers, 20 models, 30 days of the
current month's days, in 1M-row batches generated inside PostgreSQL), builds the daily rollup from
them, then times through meterway's own report code:

- the monthly invoice preview of one customer (target <= 100 ms), from the rollup;
- a per-model daily report over the whole month (target <= 1 s), from the rollup;
- the same per-model daily report from the raw rows, to show what the rollup buys.

Prints the figures; drops the scratch database at the end unless --keep. Every step is bounded:
the fill by --rows, each timing by --repeats.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from datetime import UTC, date, datetime

import asyncpg

BATCH = 1_000_000


async def admin(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


FILL = """
INSERT INTO mw_ledger (request_id, started_at, ended_at, endpoint, key_id, user_id, team_id, customer_id,
    model_group, deployment_id, upstream_model, stream, prompt_tokens, completion_tokens, cached_tokens,
    cache_write_tokens, reasoning_tokens, total_tokens, tokens_estimated, price_input, price_output,
    price_cache_read, price_cache_write, cost, status, http_status, latency_ms, tags, metadata)
SELECT 'scale-' || g,
       $1::timestamptz + ((g * 7919) % (30 * 86400)) * interval '1 second',
       $1::timestamptz + ((g * 7919) % (30 * 86400)) * interval '1 second' + interval '800 milliseconds',
       'chat', 'key-' || (g % 1000), 'user-' || (g % 1000), 'team-' || (g % 1000 % 50), 'customer-' || (g % 1000),
       'model-' || (g / 1000 % 20), 'model-' || (g / 1000 % 20), 'up-' || (g / 1000 % 20), g % 3 = 0,
       100 + g % 400, 20 + g % 200, 0, 0, 0, 120 + g % 400 + g % 200, false,
       25000 * (1 + g / 1000 % 20), 100000 * (1 + g / 1000 % 20), NULL, NULL,
       (100 + g % 400) * 25000 * (1 + g / 1000 % 20) + (20 + g % 200) * 100000 * (1 + g / 1000 % 20),
       'success', 200, 800, '[]', '{}'
FROM generate_series($2::bigint, $3::bigint) AS g
"""

ROLLUP = """
INSERT INTO mw_usage_daily (day, customer_id, key_id, user_id, team_id, model_group, price_input, price_output,
    price_cache_read, price_cache_write, requests, errors, unpriced, prompt_tokens, completion_tokens,
    cached_tokens, cache_write_tokens, reasoning_tokens, cost)
SELECT to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD'), coalesce(customer_id, ''), coalesce(key_id, ''),
       coalesce(user_id, ''), coalesce(team_id, ''), coalesce(model_group, ''),
       coalesce(price_input, -1), coalesce(price_output, -1), coalesce(price_cache_read, -1),
       coalesce(price_cache_write, -1), count(*), sum(CASE WHEN status <> 'success' THEN 1 ELSE 0 END),
       sum(CASE WHEN cost IS NULL THEN 1 ELSE 0 END), sum(prompt_tokens), sum(completion_tokens),
       sum(cached_tokens), sum(cache_write_tokens), sum(reasoning_tokens), sum(coalesce(cost, 0))
FROM mw_ledger GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10
"""


async def timed(label: str, repeats: int, call: object) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        await call()  # type: ignore[operator]
        times.append((time.perf_counter() - started) * 1000)
    median = statistics.median(times)
    print(f"{label}: median {median:.1f} ms (runs: {', '.join(f'{t:.1f}' for t in times)})", flush=True)
    return median


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--admin-dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--database", default="meterway_scale")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--keep", action="store_true", help="keep the filled database afterwards")
    ap.add_argument("--reuse", action="store_true", help="use an already filled database (from --keep)")
    a = ap.parse_args()

    from meterway.ledger import Filters
    from meterway.store.runtime import Store

    base = a.admin_dsn.rsplit("/", 1)[0]
    url = f"{base}/{a.database}"
    if not a.reuse:
        await admin(a.admin_dsn, f'DROP DATABASE IF EXISTS "{a.database}" WITH (FORCE)')
        await admin(a.admin_dsn, f'CREATE DATABASE "{a.database}"')
    store = await Store.open(url, wait_s=10, run_migrations=True)
    try:
        month = datetime.now(UTC).date().replace(day=1)
        start = datetime(month.year, month.month, 1, tzinfo=UTC)
        if not a.reuse:
            conn = await asyncpg.connect(url)
            try:
                began = time.perf_counter()
                for first in range(1, a.rows + 1, BATCH):
                    last = min(first + BATCH - 1, a.rows)
                    await conn.execute(FILL, start, first, last)
                    print(f"filled {last:,} rows ({time.perf_counter() - began:.0f} s)", flush=True)
                began = time.perf_counter()
                await conn.execute(ROLLUP)
                await conn.execute("ANALYZE mw_ledger; ANALYZE mw_usage_daily")
                print(f"rollup built in {time.perf_counter() - began:.1f} s", flush=True)
            finally:
                await conn.close()
        conn = await asyncpg.connect(url)
        try:
            n_rows = await conn.fetchval("SELECT count(*) FROM mw_ledger")
            n_rollup = await conn.fetchval("SELECT count(*) FROM mw_usage_daily")
            size = await conn.fetchval("SELECT pg_size_pretty(pg_database_size(current_database()))")
        finally:
            await conn.close()
        print(f"ledger rows: {n_rows:,}; rollup rows: {n_rollup:,}; database size: {size}", flush=True)

        last_day = date(month.year + month.month // 12, month.month % 12 + 1, 1).toordinal() - 1
        month_filters = Filters(month, date.fromordinal(last_day))
        reports = store.reports
        invoice = await timed(
            "invoice preview, one customer, one month (rollup)",
            a.repeats,
            lambda: reports.invoice_groups("customer-42", month_filters.start, month_filters.end),
        )
        daily = await timed(
            "per-model daily report, whole month (rollup)",
            a.repeats,
            lambda: reports.usage(["model", "day"], month_filters),
        )
        raw = await timed(
            "per-model hourly report, whole month (raw rows, for comparison)",
            1,
            lambda: reports.usage(["model", "hour"], month_filters),
        )
        print(
            f"\ntargets: invoice {invoice:.1f} ms (<= 100: {'met' if invoice <= 100 else 'NOT met'}), "
            f"daily report {daily:.1f} ms (<= 1000: {'met' if daily <= 1000 else 'NOT met'}); "
            f"the raw rows take {raw:.0f} ms for a report of the same month"
        )
    finally:
        await store.close()
        if not a.keep:
            await admin(a.admin_dsn, f'DROP DATABASE IF EXISTS "{a.database}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
