"""Ledger rows, their daily rollup and the spend they add, written in one transaction.

`meterway.ledger.Ledger` groups the rows of requests finishing together and hands each group
here; one transaction inserts the rows, adds them to `mw_usage_daily` (an upsert per distinct
group) and adds their cost to the key, user, team and customer rows, so reports, rollups and
budgets can never disagree with the ledger.

This is the one write on every request's critical path, so it goes to the driver directly with
prepared SQL and no ORM layer: on SQLite a dedicated writer thread with its own `sqlite3`
connection (one thread hop per commit, executemany), on PostgreSQL one statement per group on an
asyncpg connection held between groups (`_pg_group_sql`, `_execute_group`). Measured here, going
to the driver took a commit from about 2 ms of CPU to about 0.2 ms; the one statement then took
the Python work per row on PostgreSQL from 693 to 188 µs for a group of one and from 19 to 6 µs in
groups of 256 (bench/ledger_write.py, bench/RESULTS.md). Rows come as `LedgerRow`s, whose fields
are the table's columns; the SQL is generated from the table definitions in `store.tables`, so it
cannot drift from the schema.

A row whose budget has a duration carries the end of its current period in `budget_reset_at`. An
amount for a later period than the row's starts that period: the row's spend becomes the amount
and `budget_reset_at` moves to the new period's end. Every replica computes periods the same way
(`limits.Budget.period`), so this needs no coordination beyond the one UPDATE.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sqlite3
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from meterway.ledger import Entry, Kept, RowRefused
from meterway.ledger.row import FIELDS, UNITS, values
from meterway.store import refusals
from meterway.store.tables import customers, keys, ledger, ledger_quarantine, teams, usage_daily, users

_TABLES = {
    "key": ("mw_keys", "token"),
    "user": ("mw_users", "user_id"),
    "team": ("mw_teams", "team_id"),
    "customer": ("mw_customers", "customer_id"),
}
_ENTITIES = {"key": keys, "user": users, "team": teams, "customer": customers}
_DIMENSIONS = ("customer_id", "key_id", "user_id", "team_id", "model_group")
_PRICES = ("price_input", "price_output", "price_cache_read", "price_cache_write")
_TOKENS = ("prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens", "reasoning_tokens")
_MEASURES = ("requests", "errors", "unpriced", *_TOKENS, "cost", *UNITS)
_GROUP = ("day", *_DIMENSIONS, *_PRICES)
_ROW_COLUMNS = FIELDS  # the row's fields are the table's columns (checked below), in the row's order
_ROLLUP_COLUMNS = (*_GROUP, *_MEASURES)
assert set(_ROLLUP_COLUMNS) == {c.name for c in usage_daily.c}, "the rollup's SQL must name every column"
assert set(FIELDS) == {c.name for c in ledger.c if c.name != "id"}, "LedgerRow's fields must be mw_ledger's columns"


@dataclass(frozen=True, slots=True)
class Reprocessed:
    """A quarantined row written again: "written", "cut", "present" (its uid was in the ledger
    already: nothing added twice), or "refused" again (still quarantined)."""

    id: int
    outcome: str
    reason: str | None


SpendRow = tuple[str, str, float | None]  # scope, id, period end
Budgeted = tuple[str | None, datetime | None]  # an entity's budget_duration and budget_reset_at


def _spend_set(amount: str, end: str | None) -> str:
    """The SET clause adding `amount` to an entity's spend: plainly, or (`end` given: the end of
    the period the amount belongs to) starting that period when it is later than the row's."""
    if end is None:
        return f"spend = spend + {amount}"
    return (
        f"spend = CASE WHEN budget_reset_at IS NOT NULL AND budget_reset_at < {end} THEN {amount} "
        f"ELSE spend + {amount} END, budget_reset_at = CASE WHEN budget_reset_at IS NULL "
        f"OR budget_reset_at < {end} THEN {end} ELSE budget_reset_at END"
    )


def _sql(mark: Callable[[int], str]) -> dict[str, str]:
    """The statements, with the driver's numbered placeholders (`?n` or `$n`)."""
    rows = ", ".join(mark(i) for i in range(len(_ROW_COLUMNS)))
    out = {
        "rows": f"INSERT INTO mw_ledger ({', '.join(_ROW_COLUMNS)}) VALUES ({rows})",
        # reported rows: a uid already present (a resent request id) inserts nothing
        "rows_once": f"INSERT INTO mw_ledger ({', '.join(_ROW_COLUMNS)}) VALUES ({rows}) ON CONFLICT (uid) DO NOTHING",
        "rollup": f"INSERT INTO mw_usage_daily ({', '.join(_ROLLUP_COLUMNS)}) "
        f"VALUES ({', '.join(mark(i) for i in range(len(_ROLLUP_COLUMNS)))}) {_ROLLUP_CONFLICT}",
    }
    out["outbox"] = (
        f"INSERT INTO mw_billing_outbox (ledger_uid, status, attempts, created_at) VALUES ({mark(0)}, 'pending', 0, {mark(1)})"
    )
    for scope, (table, column) in _TABLES.items():
        # plain: (amount, id); periodic: (amount, end, id), `end` being the current period's end
        out[f"{scope}:plain"] = f"UPDATE {table} SET {_spend_set(mark(0), None)} WHERE {column} = {mark(1)}"
        out[f"{scope}:periodic"] = f"UPDATE {table} SET {_spend_set(mark(0), mark(1))} WHERE {column} = {mark(2)}"
    return out


_ROLLUP_CONFLICT = f"ON CONFLICT ({', '.join(_GROUP)}) DO UPDATE SET " + ", ".join(
    f"{m} = mw_usage_daily.{m} + excluded.{m}" for m in _MEASURES
)


_PG = postgresql.dialect()  # type: ignore[no-untyped-call]  # only compiles type names


def _pg_value(table: sa.Table, name: str, doc: str, i: int) -> str:
    """Element `i` of a JSON array `doc` as a value of `table`'s column `name`: cast to the
    column's type without its length, so that a value too long for the column is refused by the
    INSERT as it would be from a parameter, never truncated by a cast to `varchar(n)`."""
    kind = table.c[name].type.compile(dialect=_PG).split("(")[0]
    return f"({doc}->>{i})::{kind}"


def _pg_group_sql() -> str:
    """A whole group as ONE statement on PostgreSQL: the rows, their rollup, the spend they add and
    their exports, in data-modifying CTEs, from four JSON documents (`_pg_group_args`). A single
    statement is a transaction of its own, so a group costs one round trip where BEGIN, a
    statement per table and COMMIT were eight; and its values cost one `orjson.dumps` per document
    where the driver encoded each value of each row on its own (for arrays, asking several
    isinstance questions of each element). The JSON columns travel as JSON text inside the
    document, so they are stored as written, byte for byte, as before. Each spend target must
    occur once in the group: an UPDATE ... FROM applies one source row per target row."""
    rows = ", ".join(_pg_value(ledger, name, "r", i) for i, name in enumerate(_ROW_COLUMNS))
    rollup = ", ".join(_pg_value(usage_daily, name, "g", i) for i, name in enumerate(_ROLLUP_COLUMNS))
    parts = [
        f"ledger_rows AS (INSERT INTO mw_ledger ({', '.join(_ROW_COLUMNS)}) "
        f"SELECT {rows} FROM jsonb_array_elements($1::jsonb) AS r)",
        f"rollup AS (INSERT INTO mw_usage_daily ({', '.join(_ROLLUP_COLUMNS)}) "
        f"SELECT {rollup} FROM jsonb_array_elements($2::jsonb) AS g {_ROLLUP_CONFLICT})",
        # (scope, amount, period end or null, id); with no period end the periodic SET is the plain one
        "spend AS (SELECT s->>0 AS scope_, (s->>1)::bigint AS amount_, (s->>2)::timestamptz AS end_, "
        "s->>3 AS id_ FROM jsonb_array_elements($3::jsonb) AS s)",
    ]
    for scope, (table, column) in _TABLES.items():
        parts.append(
            f"{scope}_spend AS (UPDATE {table} SET {_spend_set('amount_', 'end_')} "
            f"FROM spend WHERE scope_ = '{scope}' AND {column} = id_)"
        )
    parts.append(
        "outbox AS (INSERT INTO mw_billing_outbox (ledger_uid, status, attempts, created_at) "
        "SELECT o->>0, 'pending', 0, (o->>1)::timestamptz FROM jsonb_array_elements($4::jsonb) AS o)"
    )
    return "WITH " + ", ".join(parts) + " SELECT 1"


def _pg_rows_once_sql() -> str:
    """Rows whose uid may be stored already, as ONE statement from a JSON document (as
    `_pg_group_sql`): inserted in the document's order (uid order, the lock order), those whose
    uid exists skipped, the inserted uids returned."""
    rows = ", ".join(_pg_value(ledger, name, "r", i) for i, name in enumerate(_ROW_COLUMNS))
    return (
        f"INSERT INTO mw_ledger ({', '.join(_ROW_COLUMNS)}) SELECT {rows} "
        "FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS e(r, n) ORDER BY n "
        "ON CONFLICT (uid) DO NOTHING RETURNING uid"
    )


def _pg_rollup_sql() -> str:
    """Rollup groups added to `mw_usage_daily` as one statement from a JSON document, in the
    document's order (key order, the lock order `_write_pg_group` takes too)."""
    rollup = ", ".join(_pg_value(usage_daily, name, "g", i) for i, name in enumerate(_ROLLUP_COLUMNS))
    return (
        f"INSERT INTO mw_usage_daily ({', '.join(_ROLLUP_COLUMNS)}) SELECT {rollup} "
        f"FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS e(g, n) ORDER BY n {_ROLLUP_CONFLICT}"
    )


class LedgerStore:
    def __init__(self, engine: AsyncEngine, *, export: bool = False) -> None:
        self._engine = engine
        self.export = export  # billing is on: each billable row enqueues its export
        self._sqlite = engine.dialect.name == "sqlite"
        if self._sqlite:
            self._path = str(engine.url.database)
            self._sql = _sql(lambda i: f"?{i + 1}")  # numbered: a parameter may be used twice
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="meterway-ledger")
            self._db: sqlite3.Connection | None = None
        else:
            self._sql = _sql(lambda i: f"${i + 1}")
            self._sql["group"] = _pg_group_sql()
            self._sql["rows_once_all"], self._sql["rollup_all"] = _pg_rows_once_sql(), _pg_rollup_sql()
            # the connection groups are written on, kept between groups (see `_execute_group`)
            self._held: tuple[AsyncConnection, Any] | None = None  # and its asyncpg connection
            self._holding = asyncio.Lock()

    async def write(self, entries: Sequence[Entry]) -> None:
        """One transaction for the group. A failure is raised as `DatabaseAway`, `RowRefused` or
        `WriteFailed` (see `store.refusals`), and nothing of the group is written."""
        try:
            await self._write(entries)
        except Exception as e:
            raise refusals.translate(e) from e

    async def _write(self, entries: Sequence[Entry]) -> None:
        rows, groups, spend = _prepare(entries)
        outbox = self._outbox(entries)
        if self._sqlite:
            await asyncio.get_running_loop().run_in_executor(
                self._executor, self._write_sqlite, rows, groups, spend, outbox
            )
            return
        if _finite(rows) and all(len(targets) == 1 for targets in _spend_targets(spend).values()):
            await self._write_pg_group(rows, groups, spend, outbox)
            return
        # a target twice (two budget periods), or a float JSON cannot carry: statement by statement
        async with self._engine.connect() as conn:
            pg = await _driver(conn)
            async with pg.transaction():
                await pg.executemany(self._sql["rows"], [_pg_row(r) for r in rows])
                await pg.executemany(self._sql["rollup"], sorted(groups))
                for (scope, periodic), params in spend.items():
                    await pg.executemany(self._sql[f"{scope}:{periodic}"], params)
                if outbox:
                    await pg.executemany(self._sql["outbox"], outbox)

    async def _write_pg_group(
        self, rows: list[tuple[Any, ...]], groups: list[tuple[Any, ...]], spend: _Spend, outbox: list[tuple[Any, ...]]
    ) -> None:
        """The group as one statement (`_pg_group_sql`)."""
        targets = [
            (scope, p[0], p[1] if periodic == "periodic" else None, p[-1])
            for (scope, periodic), ps in spend.items()
            for p in ps
        ]
        args = (
            orjson.dumps([_pg_row(r) for r in rows]).decode(),
            orjson.dumps(sorted(groups)).decode(),  # in key order: the lock order write_once takes
            orjson.dumps(targets).decode(),
            orjson.dumps(outbox).decode(),
        )
        await self._execute_group(args)

    async def _execute_group(self, args: Sequence[str]) -> None:
        """Runs the group's statement on a connection held from one group to the next. The
        recorder writes one group at a time, so checking a pooled connection out and in again for
        each (with the pool's pre-ping: BEGIN, a ping and ROLLBACK, three round trips) cost more
        than the group's own statement. When the held connection fails for any reason but a
        refused value (the server restarted or ended it, an idle timeout; asyncpg then raises
        anything from `InterfaceError` to `InternalClientError`), it is replaced and the group
        sent once more on a fresh one, as the pre-ping would have; a group whose commit went
        through before its answer was lost is not written twice by that, since its uids are then
        present (a unique violation: the recorder then writes the group row by row, `write_one`,
        and finds them). A second writer at the same time (not the recorder) takes a pooled
        connection instead of waiting."""
        if self._holding.locked():
            async with self._engine.connect() as conn:
                await (await _driver(conn)).execute(self._sql["group"], *args)
            return
        async with self._holding:
            while True:
                fresh = self._held is None
                if self._held is None:
                    conn = await self._engine.connect()
                    self._held = (conn, await _driver(conn))
                held, pg = self._held
                try:
                    await pg.execute(self._sql["group"], *args)
                    return
                except BaseException as e:
                    self._held = None
                    with contextlib.suppress(Exception):  # it failed already: the pool discards it
                        await held.invalidate()
                    with contextlib.suppress(Exception):
                        await held.close()
                    if fresh or not isinstance(e, Exception) or isinstance(refusals.translate(e), RowRefused):
                        raise

    async def release(self) -> None:
        """Gives the held connection back to the pool: at shutdown, before the engine is disposed."""
        if self._sqlite:
            return
        async with self._holding:
            held, self._held = self._held, None
            if held is not None:
                await held[0].close()

    async def write_one(self, entry: Entry) -> Kept:
        """One row of a group that failed, in a transaction of its own: as it is; else, when the
        database refused a value, cut to its columns' bounds and flagged `cut`; else kept whole in
        the quarantine. Its spend, rollup and export follow the row as written (none for a
        quarantined row). A uid already stored (a group whose commit succeeded though its answer
        was lost) is not written twice. Raises `DatabaseAway` or `WriteFailed` when the database
        cannot be written at all: the row then stays queued."""
        try:
            await self.write_once([entry])
            return Kept("written")
        except RowRefused as e:
            given = e.reason
        shortened = refusals.cut(entry)
        try:
            await self.write_once([shortened])
            return Kept("cut", given)
        except RowRefused as e:
            reason = f"as given: {given}; cut to its columns' bounds: {e.reason}"
        await self.quarantine(entry, reason)
        return Kept("quarantined", reason)

    async def quarantine(self, entry: Entry, reason: str) -> None:
        """Keeps a row the database refused, whole, with its reason; its cost is added nowhere
        until it is reprocessed."""
        row = entry.row
        kept = {
            "uid": refusals.cut_text(str(row.uid or ""), 32) or None,
            "request_id": refusals.cut_text(str(row.request_id or ""), 128) or None,
            "reason": refusals.clean(reason)[: refusals.REASON_CHARS],
            "row": refusals.to_json(entry),
            "created_at": datetime.now(UTC),
        }
        try:
            async with self._engine.begin() as conn:
                await conn.execute(ledger_quarantine.insert().values(**kept))
        except Exception as e:
            raise refusals.translate(e) from e

    async def quarantined(self, *, limit: int = 100, everything: bool = False) -> list[dict[str, Any]]:
        """Rows in the quarantine, oldest first: those not reprocessed (or every one)."""
        q = ledger_quarantine
        query = sa.select(q).order_by(q.c.id).limit(limit)
        if not everything:
            query = query.where(q.c.reprocessed_at.is_(None))
        async with self._engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(query)).mappings().all()]

    async def quarantine_status(self) -> tuple[int, datetime | None]:
        """How many rows wait in the quarantine, and when the oldest came."""
        q = ledger_quarantine
        waiting = q.c.reprocessed_at.is_(None)
        async with self._engine.connect() as conn:
            count = (await conn.execute(sa.select(sa.func.count()).select_from(q).where(waiting))).scalar_one()
            oldest = (await conn.execute(sa.select(sa.func.min(q.c.created_at)).where(waiting))).scalar()
        if oldest is not None and oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=UTC)  # SQLite keeps no zone; rows are stamped in UTC
        return int(count), oldest

    async def reprocess(self, ids: Collection[int] = (), *, limit: int = 1000) -> list[Reprocessed]:
        """Writes quarantined rows again (all waiting ones, or those of `ids`), each as it was
        given, else cut; a written row (or one whose uid is already stored) gets `reprocessed_at`.
        A row refused even so stays, with the new reason. Idempotent: the uid decides."""
        q = ledger_quarantine
        query = sa.select(q.c.id, q.c.row).where(q.c.reprocessed_at.is_(None)).order_by(q.c.id).limit(limit)
        if ids:
            query = query.where(q.c.id.in_(sorted(ids)))
        async with self._engine.connect() as conn:
            found = (await conn.execute(query)).all()
        done: list[Reprocessed] = []
        for ident, text in found:
            entry = refusals.from_json(text)
            reason: str | None = None
            try:
                outcome = "written" if await self.write_once([entry]) else "present"  # its uid: already stored
            except RowRefused as e:
                try:
                    await self.write_once([refusals.cut(entry)])
                    outcome, reason = "cut", e.reason
                except RowRefused as again:
                    outcome, reason = "refused", f"as given: {e.reason}; cut to its columns' bounds: {again.reason}"
            change: dict[str, Any] = (
                {"reprocessed_at": datetime.now(UTC)}
                if outcome != "refused"
                else {"reason": refusals.clean(reason or "")[: refusals.REASON_CHARS]}
            )
            async with self._engine.begin() as conn:
                await conn.execute(q.update().where(q.c.id == ident).values(**change))
            done.append(Reprocessed(int(ident), outcome, reason))
        return done

    def _connection(self) -> sqlite3.Connection:
        """The writer thread's own connection, opened on first use."""
        if self._db is None:
            db = sqlite3.connect(self._path, isolation_level=None, timeout=30, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._db = db
        return self._db

    def _write_sqlite(
        self, rows: list[tuple[Any, ...]], groups: list[tuple[Any, ...]], spend: _Spend, outbox: list[tuple[Any, ...]]
    ) -> None:
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(self._sql["rows"], [_sqlite_row(r) for r in rows])
            db.executemany(self._sql["rollup"], groups)
            for (scope, periodic), params in spend.items():
                db.executemany(self._sql[f"{scope}:{periodic}"], [_sqlite_times(p) for p in params])
            if outbox:
                db.executemany(self._sql["outbox"], [_sqlite_times(p) for p in outbox])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def write_once(self, entries: Sequence[Entry]) -> set[str]:
        """Rows whose `uid` may already be stored (usage reported again by another proxy): each is
        inserted unless its uid exists, and only the inserted ones add to the rollup, to spend and
        to the outbox, in the same single transaction. Returns the uids inserted. Two callers
        racing with the same uid get one row: the unique index decides, and the loser's
        transaction sees the winner's row once it commits (PostgreSQL) or waits for the one
        writer (SQLite). Rows go in uid order and rollup groups in key order, so two batches
        overlapping on PostgreSQL take their locks in the same order instead of deadlocking. On
        PostgreSQL the rows are one statement (`_pg_rows_once_sql`): an import writes its spend
        logs through here a page at a time, and a statement per row held it to a few hundred rows
        a second."""
        if not entries:
            return set()
        try:
            return await self._write_once(entries)
        except Exception as e:
            raise refusals.translate(e) from e

    async def _write_once(self, entries: Sequence[Entry]) -> set[str]:
        entries = sorted(entries, key=lambda e: str(e.row.uid))
        rows, groups, spend = _prepare(entries)
        if self._sqlite:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, self._write_once_sqlite, entries, rows
            )
        inserted: list[Entry] = []
        async with self._engine.connect() as conn:
            pg = await _driver(conn)
            async with pg.transaction():
                if len(rows) > 1 and _finite(rows):
                    # one statement for the lot (an import's page of a thousand): RETURNING names the
                    # uids it inserted; a uid present already is found by the unique index, not by a
                    # scan, however stale the table's statistics
                    document = orjson.dumps([_pg_row(r) for r in rows]).decode()
                    fresh = {r[0] for r in await pg.fetch(self._sql["rows_once_all"], document)}
                    inserted = [e for e in entries if e.row.uid in fresh]
                else:
                    for entry, row in zip(entries, rows, strict=True):
                        status = await pg.execute(self._sql["rows_once"], *_pg_row(row))
                        if status.endswith(" 1"):  # "INSERT 0 1": inserted; "INSERT 0 0": the uid exists
                            inserted.append(entry)
                if len(inserted) != len(entries):  # some were there: only the inserted ones add up
                    _, groups, spend = _prepare(inserted)
                if len(groups) > 1:
                    await pg.execute(self._sql["rollup_all"], orjson.dumps(sorted(groups)).decode())
                elif groups:
                    await pg.executemany(self._sql["rollup"], groups)
                for (scope, periodic), params in spend.items():
                    await pg.executemany(self._sql[f"{scope}:{periodic}"], params)
                outbox = self._outbox(inserted)
                if outbox:
                    await pg.executemany(self._sql["outbox"], outbox)
        return {e.row.uid for e in inserted}

    def _write_once_sqlite(self, entries: Sequence[Entry], rows: list[tuple[Any, ...]]) -> set[str]:
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            inserted = [
                entry
                for entry, row in zip(entries, rows, strict=True)
                if db.execute(self._sql["rows_once"], _sqlite_row(row)).rowcount == 1
            ]
            _, groups, spend = _prepare(inserted)
            db.executemany(self._sql["rollup"], groups)
            for (scope, periodic), params in spend.items():
                db.executemany(self._sql[f"{scope}:{periodic}"], [_sqlite_times(p) for p in params])
            db.executemany(self._sql["outbox"], [_sqlite_times(p) for p in self._outbox(inserted)])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return {e.row.uid for e in inserted}

    def _outbox(self, entries: Sequence[Entry]) -> list[tuple[Any, ...]]:
        """The exports to enqueue with `entries`: none while billing is off."""
        return [(e.row.uid, e.row.ended_at) for e in entries if self.export and e.row.billable]

    async def budget_periods(self, wanted: Mapping[str, Collection[str]]) -> dict[tuple[str, str], Budgeted]:
        """`budget_duration` and `budget_reset_at` of the named keys, users, teams and customers
        that exist (scope -> ids), so that spend reported for them lands in the right budget
        period, as the gateway's own rows do. Entities that do not exist are left out."""
        found: dict[tuple[str, str], Budgeted] = {}
        async with self._engine.connect() as conn:
            for scope, ids in wanted.items():
                if not ids:
                    continue
                table = _ENTITIES[scope]
                column = table.c[_TABLES[scope][1]]
                query = sa.select(column, table.c.budget_duration, table.c.budget_reset_at).where(
                    column.in_(sorted(ids))
                )
                for ident, duration, reset_at in await conn.execute(query):
                    if reset_at is not None and reset_at.tzinfo is None:
                        reset_at = reset_at.replace(tzinfo=UTC)  # SQLite keeps no zone; the store writes UTC
                    found[(scope, str(ident))] = (duration, reset_at)
        return found

    def close(self) -> None:
        if self._sqlite:
            self._executor.submit(self._close_sqlite).result(timeout=10)
            self._executor.shutdown()

    def _close_sqlite(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


_Spend = dict[tuple[str, str], list[tuple[Any, ...]]]
_DAY_OF = attrgetter("started_at")
_GROUP_OF = attrgetter(*_DIMENSIONS, *_PRICES)
_TOKENS_OF = attrgetter(*_TOKENS)
_UNITS_OF = attrgetter(*UNITS)
_COST = _MEASURES.index("cost")
_FIRST_UNIT = _COST + 1
_JSON = tuple(FIELDS.index(name) for name in ("tags", "metadata"))
_TIMES = tuple(FIELDS.index(name) for name in ("started_at", "ended_at"))
_FLOATS = tuple(FIELDS.index(name) for name in ("latency_ms", "ttft_ms"))


def _prepare(entries: Sequence[Entry]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], _Spend]:
    """The rows' values, their rollup groups and the spend they add, in one pass (per request)."""
    rows: list[tuple[Any, ...]] = []
    rollup: dict[tuple[Any, ...], list[int]] = {}
    amounts: dict[SpendRow, int] = {}
    dims = len(_DIMENSIONS)
    for e in entries:
        row = e.row
        rows.append(values(row))
        day = _DAY_OF(row).astimezone(UTC).date().isoformat()  # YYYY-MM-DD, UTC
        named = _GROUP_OF(row)
        group = (day, *(v or "" for v in named[:dims]), *(-1 if v is None else v for v in named[dims:]))
        sums = rollup.get(group)
        if sums is None:
            sums = rollup[group] = [0] * len(_MEASURES)
        sums[0] += 1
        sums[1] += row.status != "success"
        sums[2] += e.cost_units is None
        for i, t in enumerate(_TOKENS_OF(row), start=3):
            sums[i] += t
        sums[_COST] += e.cost_units or 0
        for i, u in enumerate(_UNITS_OF(row), start=_FIRST_UNIT):
            sums[i] += u
        if e.cost_units:
            for target in e.spend:
                key = (target.scope, target.ident, target.period_end)
                amounts[key] = amounts.get(key, 0) + e.cost_units
    spend: _Spend = {}
    for (scope, ident, period_end), amount in sorted(amounts.items(), key=lambda i: (i[0][0], i[0][1])):
        if period_end is None:
            spend.setdefault((scope, "plain"), []).append((amount, ident))
        else:
            spend.setdefault((scope, "periodic"), []).append((amount, datetime.fromtimestamp(period_end, UTC), ident))
    return rows, [(*group, *sums) for group, sums in rollup.items()], spend


async def _driver(conn: AsyncConnection) -> Any:
    """The asyncpg connection under a pooled SQLAlchemy one: the ledger's writes go to it directly."""
    raw = await conn.get_raw_connection()
    return raw.driver_connection


def _finite(rows: list[tuple[Any, ...]]) -> bool:
    """Whether every float of the rows survives JSON: NaN and infinity become null there, so a row
    holding one (the sources make none: their times are differences of clocks) is sent as a
    parameter, which keeps it as given, as before."""
    return all(r[i] is None or math.isfinite(r[i]) for r in rows for i in _FLOATS)


def _spend_targets(spend: _Spend) -> dict[tuple[str, str], list[Any]]:
    """Each entity the group adds spend to, with its amounts (more than one: two budget periods)."""
    out: dict[tuple[str, str], list[Any]] = {}
    for (scope, _), params in spend.items():
        for p in params:
            out.setdefault((scope, p[-1]), []).append(p)
    return out


def _pg_row(row: tuple[Any, ...]) -> list[Any]:
    out = list(row)
    for i in _JSON:
        out[i] = orjson.dumps(out[i]).decode()
    return out


def _sqlite_time(value: datetime) -> str:
    """As SQLAlchemy stores a DateTime in SQLite (UTC, no zone), so its reads parse it back."""
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _sqlite_row(row: tuple[Any, ...]) -> list[Any]:
    out = list(row)
    for i in _JSON:
        out[i] = orjson.dumps(out[i]).decode()
    for i in _TIMES:
        out[i] = _sqlite_time(out[i])
    return out  # booleans bind as 0 and 1 as they are


def _sqlite_times(params: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(_sqlite_time(p) if isinstance(p, datetime) else p for p in params)
