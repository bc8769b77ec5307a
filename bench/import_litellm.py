"""`meterway import litellm` at scale: spend rows per second from a LiteLLM database into PostgreSQL.

    python bench/import_litellm.py [--rows 100000] [--autovacuum off|on] [--max-seconds 900]
                                   [--admin-dsn postgresql://postgres@127.0.0.1:5432/test]

Builds a LiteLLM proxy's database from the migrations LiteLLM ships (`tests/support/litellm_db.py`,
the installed `litellm-proxy-extras`), fills it inside PostgreSQL (generate_series: 50 keys by
digest, 2 teams, --rows spend logs over 30 days), then runs `meterway import litellm` (the
command, in this process) into a fresh meterway database and prints rows per second for the
whole command (connecting, migrating, keys and all), then the same for a rerun (which must import
nothing).

`--autovacuum off` (the default) is the hard case: meterway's database is migrated first, its
ledger analyzed while empty and autovacuum turned off for it, so the planner knows it only as
empty for the whole import unless the import refreshes its statistics itself. `on` leaves the
server's autovacuum to do as it does.

Both scratch databases are dropped at the end. Bounded: --rows, and --max-seconds for the import
(past it the run stops and says so).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import sys
import time
import uuid
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.litellm_db import create_litellm_database, litellm_version  # noqa: E402

FILL_KEYS = """
INSERT INTO "LiteLLM_TeamTable" (team_id, team_alias, admins, members, members_with_roles, metadata, models, spend)
VALUES ('team-a', 'A', '{}', '{}', '[]', '{}', '{}', 0), ('team-b', 'B', '{}', '{}', '[]', '{}', '{}', 0);
INSERT INTO "LiteLLM_VerificationToken" (token, key_alias, spend, models, team_id, metadata)
SELECT encode(sha256(('sk-bench-' || g)::bytea), 'hex'), 'bench-' || g, 0, '{}',
       CASE WHEN g % 2 = 0 THEN 'team-a' ELSE 'team-b' END, '{}'
FROM generate_series(1, 50) AS g;
"""

FILL_LOGS = """
INSERT INTO "LiteLLM_SpendLogs" (request_id, call_type, api_key, spend, total_tokens, prompt_tokens,
    completion_tokens, "startTime", "endTime", model, model_group, "user", team_id, end_user, status, metadata,
    request_tags)
SELECT 'chatcmpl-bench-' || g, 'acompletion', encode(sha256(('sk-bench-' || (1 + g % 50))::bytea), 'hex'),
       (100 + g % 400) * 0.0000025 + (20 + g % 200) * 0.00001, 120 + g % 400 + g % 200, 100 + g % 400,
       20 + g % 200,
       now()::timestamp - interval '30 days' + ((g * 7919) % (30 * 86400)) * interval '1 second',
       now()::timestamp - interval '30 days' + ((g * 7919) % (30 * 86400)) * interval '1 second'
           + interval '800 milliseconds',
       'gpt-4o-mini', 'model-' || (g % 5), 'user-' || (g % 100), CASE WHEN g % 2 = 0 THEN 'team-a' ELSE 'team-b' END,
       'customer-' || (g % 1000), CASE WHEN g % 97 = 0 THEN 'failure' ELSE 'success' END,
       '{"user_api_key_alias": "bench"}', '["bench"]'
FROM generate_series(1, $1::bigint) AS g
"""


async def admin(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def build_source(url: str, rows: int) -> float:
    await create_litellm_database(url)
    started = time.perf_counter()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(FILL_KEYS)
        await conn.execute(FILL_LOGS, rows)
        await conn.execute('ANALYZE "LiteLLM_SpendLogs"')
    finally:
        await conn.close()
    return time.perf_counter() - started


async def stale_target(url: str) -> None:
    """meterway's schema with an empty, analyzed ledger that autovacuum will not touch."""
    from meterway.cli.main import main

    with contextlib.redirect_stdout(io.StringIO()):
        assert await asyncio.to_thread(main, ["migrate", "--database-url", url]) == 0
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("ANALYZE mw_ledger")
        await conn.execute("ALTER TABLE mw_ledger SET (autovacuum_enabled = false)")
    finally:
        await conn.close()


def timed_import(source: str, target: str, max_s: float) -> tuple[float, str]:
    """The command as a user runs it; returns its wall time and its report."""
    from meterway.cli.main import main

    out = io.StringIO()
    started = time.perf_counter()

    async def bounded() -> int:
        return await asyncio.wait_for(
            asyncio.to_thread(main, ["import", "litellm", "--from", source, "--database-url", target]), max_s
        )

    with contextlib.redirect_stdout(out):
        code = asyncio.run(bounded())
    elapsed = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"the import failed (exit {code}):\n{out.getvalue()}")
    return elapsed, out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--autovacuum", choices=("off", "on"), default="off")
    parser.add_argument("--max-seconds", type=float, default=900.0)
    parser.add_argument("--admin-dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()

    base = args.admin_dsn.rsplit("/", 1)[0]
    names = [f"mw_bench_import_{kind}_{uuid.uuid4().hex[:8]}" for kind in ("litellm", "meterway")]
    source, target = (f"{base}/{n}" for n in names)
    for n in names:
        asyncio.run(admin(args.admin_dsn, f'CREATE DATABASE "{n}"'))
    try:
        filled = asyncio.run(build_source(source, args.rows))
        print(f"LiteLLM database from litellm-proxy-extras {litellm_version()}'s migrations; ", end="")
        print(f"{args.rows:,} spend logs filled in {filled:.1f} s")
        if args.autovacuum == "off":
            asyncio.run(stale_target(target))
            print("meterway database migrated, ledger analyzed empty, autovacuum off for it")
        elapsed, report = timed_import(source, target, args.max_seconds)
        line = next(x for x in report.splitlines() if "spend logs:" in x)
        print(f"import: {elapsed:.1f} s, {args.rows / elapsed:,.0f} spend rows/s ({line.strip()})")
        elapsed, report = timed_import(source, target, args.max_seconds)
        assert report.endswith("nothing new: meterway already has everything\n"), report
        print(f"rerun (nothing new): {elapsed:.1f} s, {args.rows / elapsed:,.0f} spend rows/s checked")
    except TimeoutError:
        raise SystemExit(f"the import took longer than {args.max_seconds:g} s") from None
    finally:
        for n in names:
            asyncio.run(admin(args.admin_dsn, f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
