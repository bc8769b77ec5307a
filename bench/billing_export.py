"""Billing export throughput and lag: ledger rows in, Lago events out, measured end to end.

    python bench/billing_export.py [--rate 6000] [--seconds 20] [--database-url postgresql://…]

A producer writes ledger rows through meterway's own ledger store (rows, rollup and outbox in one
transaction each, as the gateway does) at --rate rows per second for --seconds; `meterway billing
worker` runs as its own process and sends their events to the Lago stand-in of the tests (a real
HTTP server on a loopback port, in this process). The export lag of an event is the time from its
row's commit to the stand-in storing it. Prints rows written, events stored, the sender's
throughput, lag p50/p99/max, and checks that every row reached Lago exactly once.

The database defaults to a scratch PostgreSQL database (`meterway_bench_export`, dropped at the
end); `--database-url sqlite:///…` measures SQLite instead. Every loop is bounded: the producer by
--seconds, the wait for the sender by --drain-seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.lago.standin import LagoStandIn, billing_ready
from tests.support.rows import ledger_entry

from meterway.ledger import Entry
from meterway.store.runtime import Store

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"
SCRATCH = "meterway_bench_export"
CUSTOMERS = 50
TICK_S = 0.02


def _entry(i: int, now: datetime) -> Entry:
    """A priced chat row of one of the customers; its cost is added to no spend (none exists here)."""
    prompt, completion = 40 + i % 200, 10 + i % 90
    entry = ledger_entry(
        request_id=f"bench-{i}",
        started_at=now,
        ended_at=now,
        key_id=None,
        customer_id=f"c{i % CUSTOMERS}",
        model_group="gpt-4o-mini",
        deployment_id="bench",
        upstream_model="gpt-4o-mini",
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        price_input=1500,
        price_output=6000,
        cost=prompt * 1500 + completion * 6000,
        latency_ms=1.0,
    )
    return replace(entry, cost_units=None, spend=())


async def _scratch_pg(admin_dsn: str) -> str:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {SCRATCH} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {SCRATCH}")
    finally:
        await conn.close()
    return admin_dsn.rsplit("/", 1)[0] + "/" + SCRATCH


async def _drop_pg(admin_dsn: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {SCRATCH} WITH (FORCE)")
    finally:
        await conn.close()


def _lago(stand_in: LagoStandIn) -> None:
    """One subscription per customer, on a plan pricing the metric (as `billing setup` leaves it)."""
    billing_ready(stand_in, [f"c{c}" for c in range(CUSTOMERS)], since="2020-01-01T00:00:00Z")


async def _produce(store: Store, rate: int, seconds: float) -> tuple[dict[str, float], float]:
    """Writes rows at `rate` per second; returns each row's commit time (wall clock) by uid."""
    committed: dict[str, float] = {}
    per_tick = max(1, round(rate * TICK_S))
    start = time.monotonic()
    i = 0
    tick = 0
    while time.monotonic() - start < seconds:
        now = datetime.now(UTC)
        entries = [_entry(i + n, now) for n in range(per_tick)]
        i += per_tick
        await store.ledger.write(entries)
        done = time.time()
        for e in entries:
            committed[e.row.uid] = done
        tick += 1
        ahead = start + tick * TICK_S - time.monotonic()
        if ahead > 0:
            await asyncio.sleep(ahead)
    return committed, time.monotonic() - start


def _worker(url: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    command = ["meterway", "billing", "worker", "--database-url", url, "--log-level", "warning"]
    return subprocess.Popen([sys.executable, "-m", *command], env=env)


async def _pending(store: Store) -> int:
    return int((await store.outbox.status())["pending"])


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def _serve_lago(ready: Any, stop: Any, results: Any) -> None:
    """The stand-in in a process of its own (the producer's CPU must not slow Lago's answers): it
    reports its URL and key, then, when told to stop, each stored transaction id with its time."""
    received: dict[str, float] = {}
    with LagoStandIn() as lago:
        lago.on_store = lambda tid: received.setdefault(tid, time.time())
        _lago(lago)
        ready.send((lago.url, lago.api_key))
        stop.wait()
        results.send((received, lago.transaction_ids()))


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=int, default=6000, help="ledger rows (events) per second")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--drain-seconds", type=float, default=60.0, help="bound on the wait for the last events")
    ap.add_argument("--database-url", help="default: a scratch PostgreSQL database")
    ap.add_argument("--admin-dsn", default=ADMIN_DSN)
    args = ap.parse_args()

    url = args.database_url or await _scratch_pg(args.admin_dsn)
    store = await Store.open(url, wait_s=10, run_migrations=True, export=True)
    ready_in, ready_out = multiprocessing.Pipe(duplex=False)
    results_in, results_out = multiprocessing.Pipe(duplex=False)
    stop = multiprocessing.Event()
    lago = multiprocessing.Process(target=_serve_lago, args=(ready_out, stop, results_out), daemon=True)
    lago.start()
    if not ready_in.poll(60):
        raise SystemExit("the Lago stand-in did not start")
    lago_url, lago_key = ready_in.recv()
    env = {**os.environ, "LAGO_API_BASE": lago_url, "LAGO_API_KEY": lago_key}
    env.pop("METERWAY_CONFIG", None)
    worker = _worker(url, env)
    try:
        committed, took = await _produce(store, args.rate, args.seconds)
        for _ in range(int(args.drain_seconds / 0.1)):  # bounded wait for the backlog to drain
            if not await _pending(store):
                break
            await asyncio.sleep(0.1)
    finally:
        worker.terminate()
        worker.wait(30)
        stop.set()
    received, ids = results_in.recv() if results_in.poll(60) else ({}, [])
    lago.join(10)
    await store.close()
    if not args.database_url:
        await _drop_pg(args.admin_dsn)

    lags = [received[uid] - at for uid, at in committed.items() if uid in received]
    times = sorted(received.values())
    span = times[-1] - times[0] if len(times) > 1 else float("nan")
    db = "SQLite" if url.startswith("sqlite") else "PostgreSQL"
    print(f"database              {db}")
    print(f"rows written          {len(committed):,} in {took:.1f} s ({len(committed) / took:,.0f}/s offered)")
    print(f"events in Lago        {len(set(ids)):,} distinct, {len(ids) - len(set(ids))} twice")
    print(f"sender throughput     {len(times) / span:,.0f} events/s (first to last stored)")
    if lags:
        print(
            f"export lag            p50 {statistics.median(lags) * 1000:,.0f} ms, "
            f"p99 {_pct(lags, 0.99) * 1000:,.0f} ms, max {max(lags) * 1000:,.0f} ms"
        )
    exact = set(ids) == set(committed) and len(ids) == len(set(ids))
    print(f"exactly once          {'yes' if exact else 'NO'}")
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
