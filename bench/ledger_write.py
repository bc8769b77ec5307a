"""The ledger writer's cost per row, on SQLite and PostgreSQL, by group size.

`LedgerStore.write` is the one write on every model request's path: the recorder hands it the rows
of the requests that finished together (a group commit), and one transaction inserts them, adds
them to the daily rollup, adds their cost to spend and enqueues their exports. This times it
alone, with no gateway around it: `--rows` rows (ordinary ones, as `tests.support.rows` makes
them, 50 customers, billing export on) written in groups of each `--sizes` size, one group after
the other, into a database of its own that is dropped afterwards (a temporary SQLite file; a
scratch PostgreSQL database on `--pg`). Per row it prints the wall time and the CPU time of this
process (the Python work: building the parameters, the driver's encoding, the event loop; on
SQLite also the writer thread and SQLite itself, on PostgreSQL not the server's). Building the
rows is timed apart (`build`), since it happens once per request whatever the store does.

With `--base CHECKOUT` the same script is run on another checkout's `src` and `tests` (e.g. the
commit before a change, from `git archive REV | tar -x -C DIR`) and both are printed.

    python bench/ledger_write.py [--rows 20000] [--sizes 1,16,64,256] [--base DIR] [--only sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"
SCRATCH = f"meterway_bench_ledger_{os.getpid()}"
CUSTOMERS = 50
WARMUP = 64  # rows written before timing: prepared statements, the writer thread, the pool


def _entries(n: int) -> tuple[list[Any], float]:
    """`n` ordinary entries, and the µs it took per row to build them."""
    from tests.support.rows import ledger_entry  # from the checkout being timed

    started = time.perf_counter()
    out = [
        ledger_entry(customer_id=f"c{i % CUSTOMERS}", request_id=f"bench-{i}", prompt_tokens=40 + i % 200)
        for i in range(n)
    ]
    return out, (time.perf_counter() - started) / n * 1e6


async def _admin(*statements: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


async def _time(url: str, rows: int, sizes: list[int]) -> dict[str, list[float]]:
    """(wall µs, CPU µs) per row for each group size, on the database at `url`."""
    import sqlalchemy as sa

    from meterway.store.runtime import Store

    store = await Store.open(url, wait_s=10, run_migrations=True)
    try:
        async with store.engine.begin() as conn:
            for c in range(CUSTOMERS):
                await conn.execute(
                    sa.text("INSERT INTO mw_customers (customer_id, metadata) VALUES (:c, '{}')"), {"c": f"c{c}"}
                )
        store.ledger.export = True  # the outbox rows too, as with billing on
        out: dict[str, list[float]] = {}
        for size in sizes:
            entries, _ = _entries(rows + WARMUP)
            for i in range(0, WARMUP, min(size, WARMUP)):
                await store.ledger.write(entries[i : min(i + size, WARMUP)])
            timed = entries[WARMUP:]
            gc.collect()
            wall, cpu = time.perf_counter(), time.process_time()
            for i in range(0, len(timed), size):
                await store.ledger.write(timed[i : i + size])
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            out[str(size)] = [wall / len(timed) * 1e6, cpu / len(timed) * 1e6]
        return out
    finally:
        await store.close()


async def _measure(rows: int, sizes: list[int], only: str | None) -> dict[str, Any]:
    result: dict[str, Any] = {"build": _entries(rows)[1]}
    if only in (None, "sqlite"):
        with tempfile.TemporaryDirectory() as tmp:
            result["sqlite"] = await _time(f"sqlite:///{Path(tmp) / 'ledger.db'}", rows, sizes)
    if only in (None, "postgresql"):
        drop = f"DROP DATABASE IF EXISTS {SCRATCH} WITH (FORCE)"
        await _admin(drop, f"CREATE DATABASE {SCRATCH}")
        try:
            result["postgresql"] = await _time(ADMIN_DSN.rsplit("/", 1)[0] + "/" + SCRATCH, rows, sizes)
        finally:
            await _admin(drop)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000, help="rows timed per group size")
    parser.add_argument("--sizes", default="1,16,64,256", help="group sizes, comma-separated")
    parser.add_argument("--only", choices=("sqlite", "postgresql"))
    parser.add_argument("--base", help="another checkout (its src and tests), timed the same way")
    parser.add_argument("--root", help=argparse.SUPPRESS)  # the checkout whose code this process times
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    root = Path(args.root or Path(__file__).resolve().parent.parent)
    sys.path[:0] = [str(root / "src"), str(root)]
    sizes = [int(s) for s in args.sizes.split(",")]
    now = asyncio.run(_measure(args.rows, sizes, args.only))
    if args.json:
        print(json.dumps(now))
        return
    before = None
    if args.base:
        cmd = [sys.executable, __file__, "--json", "--root", args.base, "--rows", str(args.rows), "--sizes", args.sizes]
        cmd += ["--only", args.only] if args.only else []
        before = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    print(f"{args.rows} rows per case, µs per row (wall / CPU of this process)" + ("; before -> now" if before else ""))
    print(
        f"build an entry: {before['build']:.2f} -> {now['build']:.2f}"
        if before
        else f"build an entry: {now['build']:.2f}"
    )
    for backend in ("sqlite", "postgresql"):
        if backend not in now:
            continue
        for size in sizes:
            wall, cpu = now[backend][str(size)]
            line = f"{backend:<11} group {size:>4}: wall {wall:8.1f}  cpu {cpu:8.1f}"
            if before:
                bwall, bcpu = before[backend][str(size)]
                line = f"{backend:<11} group {size:>4}: wall {bwall:8.1f} -> {wall:8.1f}  cpu {bcpu:8.1f} -> {cpu:8.1f}"
            print(line)


if __name__ == "__main__":
    main()
