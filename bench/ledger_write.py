"""The ledger writer's cost per row, on SQLite and PostgreSQL, by group size.

`LedgerStore.write` is the one write on every model request's path: the recorder hands it the rows
of the requests that finished together (a group commit), and one transaction inserts them, adds
them to the daily rollup, adds their cost to spend and enqueues their exports. This times it
alone, with no gateway around it: `--rows` rows (ordinary ones, as `tests.support.rows` makes
them, 50 customers, billing export on) written in groups of each `--sizes` size, one group after
the other, into a database of its own that is dropped afterwards (a temporary SQLite file; a
scratch PostgreSQL database on 127.0.0.1:5432). Per row it prints the wall time, the CPU time of
this process (the Python work: building the parameters, the driver's encoding, the event loop; on
SQLite also the writer thread and SQLite itself) and, on PostgreSQL, the CPU time of the server
processes serving the scratch database (read from /proc: the server must run on this machine),
since on one machine what the server spends is taken from the gateway too. The rows are built
before the timing: `--shapes` times building one (as a msgspec Struct, a frozen dataclass, a
dict) apart. Wall times move with whatever else runs; the CPU times much less.

With `--base CHECKOUT` the same script is run on another checkout's `src` and `tests` (e.g. the
commit before a change, from `git archive REV | tar -x -C DIR`) and both are printed.

    python bench/ledger_write.py [--rows 20000] [--sizes 1,16,64,256] [--base DIR] [--only sqlite] [--shapes]
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


def _entries(n: int) -> list[Any]:
    """`n` ordinary entries of the checkout being timed."""
    from tests.support.rows import ledger_entry

    return [
        ledger_entry(customer_id=f"c{i % CUSTOMERS}", request_id=f"bench-{i}", prompt_tokens=40 + i % 200)
        for i in range(n)
    ]


def _shapes(number: int) -> dict[str, float]:
    """µs to build a row by keyword and to take its values as a tuple, for the shapes a row could
    have: LedgerRow (a msgspec Struct), a frozen slots dataclass of the same fields, a dict."""
    import dataclasses
    import timeit
    from operator import attrgetter

    from tests.support.rows import ledger_entry

    from meterway.ledger.row import FIELDS, LedgerRow, values

    given = {name: getattr(ledger_entry().row, name) for name in FIELDS}
    frozen = dataclasses.make_dataclass("Frozen", [(n, Any) for n in FIELDS], frozen=True, slots=True)
    getter = attrgetter(*FIELDS)
    struct, dataclass_, mapping = LedgerRow(**given), frozen(**given), dict(given)

    def us(call: Any) -> float:
        return min(timeit.repeat(call, number=number, repeat=5)) / number * 1e6

    return {
        "LedgerRow (msgspec Struct): build": us(lambda: LedgerRow(**given)),
        "LedgerRow (msgspec Struct): values": us(lambda: values(struct)),
        "frozen slots dataclass: build": us(lambda: frozen(**given)),
        "frozen slots dataclass: values": us(lambda: getter(dataclass_)),
        "dict: build": us(lambda: dict(**given)),
        "dict: values": us(lambda: tuple([mapping[n] for n in FIELDS])),
    }


def _cpu_ticks(pids: list[int]) -> dict[int, int]:
    """User and system CPU of these processes so far, in clock ticks (those still running)."""
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = int(fields[11]) + int(fields[12])
    return out


async def _admin(*statements: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


async def _time(url: str, rows: int, sizes: list[int]) -> dict[str, list[float]]:
    """Per row for each group size, on the database at `url`: wall µs, this process's CPU µs,
    and (PostgreSQL on this machine) the CPU µs of the server processes serving this database."""
    import sqlalchemy as sa

    from meterway.store.runtime import Store

    store = await Store.open(url, wait_s=10, run_migrations=True)
    backends = sa.text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
    try:
        async with store.engine.begin() as conn:
            for c in range(CUSTOMERS):
                await conn.execute(
                    sa.text("INSERT INTO mw_customers (customer_id, metadata) VALUES (:c, '{}')"), {"c": f"c{c}"}
                )
        store.ledger.export = True  # the outbox rows too, as with billing on
        out: dict[str, list[float]] = {}
        for size in sizes:
            entries = _entries(rows + WARMUP)
            for i in range(0, WARMUP, min(size, WARMUP)):
                await store.ledger.write(entries[i : min(i + size, WARMUP)])
            timed = entries[WARMUP:]
            pids: list[int] = []
            if store.engine.dialect.name == "postgresql":
                async with store.engine.connect() as conn:
                    pids = [int(p) for p in (await conn.execute(backends)).scalars()]
            gc.collect()
            server = _cpu_ticks(pids)
            wall, cpu = time.perf_counter(), time.process_time()
            for i in range(0, len(timed), size):
                await store.ledger.write(timed[i : i + size])
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            after = _cpu_ticks(pids)
            ticks = sum(after[p] - server[p] for p in after if p in server)
            server_us = ticks / os.sysconf("SC_CLK_TCK") * 1e6 if pids else float("nan")
            out[str(size)] = [wall / len(timed) * 1e6, cpu / len(timed) * 1e6, server_us / len(timed)]
        return out
    finally:
        await store.close()


async def _measure(rows: int, sizes: list[int], only: str | None) -> dict[str, Any]:
    result: dict[str, Any] = {}
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
    parser.add_argument("--shapes", action="store_true", help="also time building a row as a Struct, dataclass, dict")
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
    print(f"{args.rows} rows per case, µs per row" + ("; before -> now" if before else ""))
    print(f"{'':<24}{'wall':>18}{'this process, CPU':>22}{'PostgreSQL, CPU':>20}")
    for backend in ("sqlite", "postgresql"):
        for size in sizes if backend in now else ():
            cells = []
            for i in range(3):
                cell = f"{now[backend][str(size)][i]:.1f}"
                if before:
                    cell = f"{before[backend][str(size)][i]:.1f} -> {cell}"
                cells.append(cell)
            print(f"{backend:<11} group {size:>4}:{cells[0]:>20}{cells[1]:>22}{cells[2]:>20}")
    if args.shapes:
        print("row shapes, µs (the best of 5 timings):")
        for name, us in _shapes(100_000).items():
            print(f"  {name:<40}{us:6.2f}")


if __name__ == "__main__":
    main()
