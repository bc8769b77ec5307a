"""One import from a LiteLLM database into meterway's: read, map, write what is new, report.

Rows meterway already has are left as they are: after an import meterway owns them (their spend
moves on with its own traffic), so running again changes nothing, and a later run adds only the
keys, users, teams, members, customers and spend logs that appeared since. Entities are written
in one transaction; spend logs in pages, each page read by the unique index on uid (what is
there is left out, so a rerun writes nothing) and written by one `write_once` statement keyed
by uid, so an interrupted run is simply run again. What must hold for the import to finish (`preflight`) is checked before the
first write. The ledger's statistics are refreshed as the import grows it (`_Statistics`), so
the planner never works from those of an empty table, whatever autovacuum has got round to.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from meterway.config.secret import Secret
from meterway.importer import mapping
from meterway.importer.crypto import NotDecryptable, decrypt
from meterway.importer.mapping import Mapped, Skipped
from meterway.importer.preflight import check_models
from meterway.importer.source import LiteLLMSource, SourceRow
from meterway.ledger import Entry, pricing
from meterway.store.runtime import Store
from meterway.store.tables import customers, keys, ledger, models, team_members, teams, users

_CHUNK = 1000
_SOURCE_TABLES = {
    "mw_teams": "LiteLLM_TeamTable",
    "mw_users": "LiteLLM_UserTable",
    "mw_customers": "LiteLLM_EndUserTable",
    "mw_keys": "LiteLLM_VerificationToken",
}


@dataclass(frozen=True, slots=True)
class Options:
    dry_run: bool = False
    since: datetime | None = None  # spend logs from this time on (UTC)
    salt_key: Secret | None = None  # LiteLLM's LITELLM_SALT_KEY (or its master key, when it had none)
    export_to_billing: bool = False  # enqueue imported rows for Lago, as if served here
    seal_key: Secret | None = None  # meterway's: stored models' credentials are sealed under it
    page: int = 1000
    models: bool = True  # False: LiteLLM's stored models are left behind (listed as not imported)


class Progress(Protocol):
    """Told how many spend logs there are to read, then how many each page read."""

    def start(self, total: int) -> None: ...

    def advance(self, done: int) -> None: ...


class _Silent:
    def start(self, total: int) -> None:
        pass

    def advance(self, done: int) -> None:
        pass


@dataclass(slots=True)
class Tally:
    found: int = 0
    new: int = 0
    present: int = 0  # already in meterway: left as it is
    skipped: int = 0  # cannot be mapped: listed with the reason


@dataclass(frozen=True, slots=True)
class StoredModel:
    """A model the LiteLLM proxy kept in its database (added through its UI or API)."""

    model_id: str
    model_name: str
    model: str | None  # litellm_params.model, once decrypted
    api_base: str | None
    credentials: str  # what became of the encrypted values, readable
    params: Mapping[str, Any] | None = None  # litellm_params in clear, when every value decrypted
    model_info: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Report:
    dry_run: bool
    source: str
    tallies: dict[str, Tally] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[Skipped] = field(default_factory=list)
    models: list[StoredModel] = field(default_factory=list)
    new_cost: Decimal = Decimal(0)  # USD of the spend logs new to meterway

    def tally(self, name: str) -> Tally:
        return self.tallies.setdefault(name, Tally())

    @property
    def changed(self) -> bool:
        return any(t.new for t in self.tallies.values())


async def import_litellm(
    source: LiteLLMSource, store: Store | None, options: Options, progress: Progress | None = None
) -> Report:
    """`store` is None only for a dry run against a database meterway has not created yet:
    everything is then new. Raises `ImportRefused` before writing anything when stored models
    cannot be carried (see `preflight`)."""
    if store is None and not options.dry_run:
        raise ValueError("an import that writes needs meterway's store")
    report = Report(dry_run=options.dry_run, source=source.shown)
    src_models = await source.rows("LiteLLM_ProxyModelTable")
    if options.models:
        check_models(src_models, options.salt_key, options.seal_key)
    budgets = _by(await source.rows("LiteLLM_BudgetTable"), "budget_id")
    organizations = _by(await source.rows("LiteLLM_OrganizationTable"), "organization_id")
    src_teams = await source.rows("LiteLLM_TeamTable")
    src_users = await source.rows("LiteLLM_UserTable")
    src_keys = await source.rows("LiteLLM_VerificationToken")
    src_customers = await source.rows("LiteLLM_EndUserTable")
    memberships = await source.rows("LiteLLM_TeamMembership")

    mapped_teams = _collect(report, "teams", "LiteLLM_TeamTable", (mapping.team(t, organizations) for t in src_teams))
    mapped_users = _collect(report, "users", "LiteLLM_UserTable", (mapping.user(u) for u in src_users))
    mapped_customers = _collect(
        report, "customers", "LiteLLM_EndUserTable", (mapping.customer(c, budgets) for c in src_customers)
    )
    known_teams = {m.ident for m in mapped_teams}
    if store is not None:
        async with store.engine.connect() as conn:
            known_teams |= set((await conn.execute(sa.select(teams.c.team_id))).scalars().all())
    mapped_keys = _collect(
        report, "keys", "LiteLLM_VerificationToken", (mapping.key(k, budgets, known_teams) for k in src_keys)
    )
    found_members = mapping.members(src_teams, src_users, memberships, known_teams)
    report.tally("team members").found = len(found_members)

    entities = (
        ("teams", teams, "team_id", mapped_teams),
        ("users", users, "user_id", mapped_users),
        ("customers", customers, "customer_id", mapped_customers),
        ("keys", keys, "token", mapped_keys),
    )
    new: list[tuple[str, Mapped]] = []
    if store is None:
        for name, table, _, rows in entities:
            report.tally(name).new += len(rows)
            new += [(table.name, r) for r in rows]
        report.tally("team members").new += len(found_members)
    else:
        async with store.engine.connect() if options.dry_run else store.engine.begin() as conn:
            for name, table, column, rows in entities:
                added = await _insert_new(conn, report.tally(name), table, table.c[column], rows, options.dry_run)
                new += [(table.name, r) for r in added]
            await _insert_members(conn, report.tally("team members"), found_members, options.dry_run)
    # only rows imported now: a row imported earlier was reported then
    report.notes += [Skipped(_SOURCE_TABLES[t], r.label or r.ident, n) for t, r in new for n in r.notes]

    aliases = {str(k["token"]): str(k["key_alias"]) for k in src_keys if k.get("token") and k.get("key_alias")}
    await _spend_logs(source, store, options, aliases, report, progress or _Silent())
    if options.models:
        report.models = [_stored_model(m, options.salt_key) for m in src_models]
        await _models(store, options, report)
    elif src_models:
        report.tally("models").found = report.tally("models").skipped = len(src_models)
        report.skipped += [
            Skipped("LiteLLM_ProxyModelTable", str(m.get("model_id")), "left behind (--without-models)")
            for m in src_models
        ]
    return report


async def _models(store: Store | None, options: Options, report: Report) -> None:
    """Stored models whose credentials all decrypted become meterway's stored models (served with
    STORE_MODEL_IN_DB), sealed under meterway's key; those already there (by id) are kept."""
    if not report.models:
        return
    tally = report.tally("models")
    tally.found = len(report.models)
    readable = [m for m in report.models if m.params is not None]
    for m in report.models:
        if m.params is None:
            tally.skipped += 1
            report.skipped.append(Skipped("LiteLLM_ProxyModelTable", m.model_id, m.credentials))
    if options.seal_key is None:  # refused before anything was written (preflight); kept for safety
        tally.skipped += len(readable)
        report.skipped += [
            Skipped("LiteLLM_ProxyModelTable", m.model_id, "no METERWAY_SALT_KEY (nor master key) to seal it under")
            for m in readable
        ]
        return
    if store is None:
        tally.new += len(readable)
        return
    from meterway.store.models import ModelStore
    from meterway.store.models import StoredModel as Stored
    from meterway.store.sealing import Sealer

    target = ModelStore(store.engine, Sealer(options.seal_key))
    async with store.engine.connect() as conn:
        present = set((await conn.execute(sa.select(models.c.model_id))).scalars().all())
    for m in readable:
        if m.model_id in present:
            tally.present += 1
            continue
        if not options.dry_run and m.params is not None:
            await target.insert(Stored(m.model_id, m.model_name, dict(m.params), dict(m.model_info)))
        tally.new += 1


def _by(rows: Iterable[SourceRow], column: str) -> dict[str, SourceRow]:
    return {str(r[column]): r for r in rows if r.get(column)}


def _collect(report: Report, name: str, table: str, results: Iterable[Mapped | Skipped]) -> list[Mapped]:
    tally = report.tally(name)
    out: list[Mapped] = []
    seen: set[str] = set()
    for result in results:
        tally.found += 1
        if isinstance(result, Skipped):
            tally.skipped += 1
            report.skipped.append(result)
            continue
        if result.ident in seen:  # a primary key in LiteLLM: only a damaged database repeats one
            tally.skipped += 1
            report.skipped.append(Skipped(table, result.ident, "appears twice"))
            continue
        seen.add(result.ident)
        out.append(result)
    return out


async def _existing(conn: AsyncConnection, column: sa.ColumnElement[Any], idents: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for i in range(0, len(idents), _CHUNK):
        chunk = idents[i : i + _CHUNK]
        found.update(str(v) for v in (await conn.execute(sa.select(column).where(column.in_(chunk)))).scalars())
    return found


async def _insert_new(
    conn: AsyncConnection,
    tally: Tally,
    table: sa.Table,
    column: sa.ColumnElement[Any],
    rows: Sequence[Mapped],
    dry_run: bool,
) -> list[Mapped]:
    """Inserts the rows meterway does not have yet (or only counts them, in a dry run); returns them."""
    present = await _existing(conn, column, [r.ident for r in rows])
    new = [r for r in rows if r.ident not in present]
    tally.present += len(rows) - len(new)
    tally.new += len(new)
    if new and not dry_run:
        for i in range(0, len(new), _CHUNK):
            await conn.execute(table.insert(), [r.values for r in new[i : i + _CHUNK]])
    return new


async def _insert_members(
    conn: AsyncConnection, tally: Tally, found: Sequence[tuple[str, str, str]], dry_run: bool
) -> None:
    present = {
        (r.team_id, r.user_id) for r in await conn.execute(sa.select(team_members.c.team_id, team_members.c.user_id))
    }
    new = [{"team_id": t, "user_id": u, "role": r} for t, u, r in found if (t, u) not in present]
    tally.present += len(found) - len(new)
    tally.new += len(new)
    if new and not dry_run:
        await conn.execute(team_members.insert(), new)


async def _spend_logs(
    source: LiteLLMSource,
    store: Store | None,
    options: Options,
    aliases: Mapping[str, str],
    report: Report,
    progress: Progress,
) -> None:
    report.tally("spend logs")  # listed, in this place, even when there are none
    since = options.since.astimezone(UTC).replace(tzinfo=None) if options.since else None
    progress.start(await source.count_spend_logs(since))
    statistics = None if store is None or options.dry_run else await _Statistics.of(store)
    # the next page is read from LiteLLM while this one is mapped and written: two databases at work
    pages = source.spend_logs(since, options.page)
    ahead = asyncio.ensure_future(anext(pages, None))
    try:
        while (page := await ahead) is not None:
            ahead = asyncio.ensure_future(anext(pages, None))
            await _spend_page(page, store, options, aliases, report, statistics)
            progress.advance(len(page))
    finally:
        ahead.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):  # the error that ended the loop wins
            await ahead
        await pages.aclose()
    if statistics is not None:
        await statistics.done()
    report.new_cost = report.new_cost.normalize()


async def _spend_page(
    page: Sequence[SourceRow],
    store: Store | None,
    options: Options,
    aliases: Mapping[str, str],
    report: Report,
    statistics: _Statistics | None,
) -> None:
    tally = report.tally("spend logs")
    entries: list[Entry] = []
    for src in page:
        tally.found += 1
        result = mapping.spend_log(src, aliases)
        if isinstance(result, Skipped):
            tally.skipped += 1
            report.skipped.append(result)
        else:
            entries.append(result)
    unique = list({e.row.uid: e for e in entries}.values())
    if store is None:
        new = unique
    else:
        # one read per page, by the unique index, finds what an earlier run brought, so a rerun
        # writes nothing; write_once still decides the rest (a row a usage webhook reports
        # meanwhile) and says what it inserted
        async with store.engine.connect() as conn:
            present = await _present_uids(conn, [e.row.uid for e in unique])
        new = [e for e in unique if e.row.uid not in present]
        if not options.dry_run and new:
            inserted = await store.ledger.write_once(new)
            new = [e for e in new if e.row.uid in inserted]
    if statistics is not None:
        await statistics.grown(len(new))
    tally.new += len(new)
    tally.present += len(entries) - len(new)
    report.new_cost += sum((pricing.usd(e.cost_units or 0) for e in new), Decimal(0))


async def _present_uids(conn: AsyncConnection, uids: Sequence[str]) -> set[str]:
    """The uids of `uids` the ledger has. On PostgreSQL the unique index on uid is used even when
    the table's statistics say it is empty (not analyzed since it filled): a scan per page made
    an import over a large history quadratic."""
    if conn.dialect.name != "postgresql":
        return await _existing(conn, ledger.c.uid, uids)
    await conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
    query = sa.text("SELECT uid FROM mw_ledger WHERE uid = ANY(:uids)").bindparams(
        sa.bindparam("uids", type_=sa.ARRAY(sa.String()))
    )
    return {str(u) for u in (await conn.execute(query, {"uids": list(uids)})).scalars()}


class _Statistics:
    """Keeps the ledger's planner statistics up with an import filling it: ANALYZE after the
    first page and each time the table has grown fourfold since, then once at the end.
    Autovacuum would get there in its own time (its threshold is a fraction of the table, and it
    may be off or busy); an import should not wait for it, nor should the gateway's reports plan
    their first queries from the statistics of an empty ledger. PostgreSQL only."""

    def __init__(self, store: Store, rows: int) -> None:
        self._store = store
        self._rows = rows  # the ledger's size when last analyzed (an estimate at the start)
        self._added = 0  # rows inserted since
        self._next = 1  # analyze once this many have been inserted

    @classmethod
    async def of(cls, store: Store) -> _Statistics | None:
        if store.engine.dialect.name != "postgresql":
            return None
        async with store.engine.connect() as conn:
            estimate = await conn.scalar(sa.text("SELECT reltuples FROM pg_class WHERE oid = 'mw_ledger'::regclass"))
        return cls(store, max(int(estimate or 0), 0))

    async def grown(self, inserted: int) -> None:
        self._added += inserted
        if inserted and self._added >= self._next:
            await self._analyze()
            self._next = 3 * self._rows  # the table four times the size it is now

    async def done(self) -> None:
        if self._added:
            await self._analyze()

    async def _analyze(self) -> None:
        async with self._store.engine.begin() as conn:
            await conn.execute(sa.text("ANALYZE mw_ledger"))
        self._rows += self._added
        self._added = 0


def _stored_model(src: SourceRow, salt_key: Secret | None) -> StoredModel:
    params = src.get("litellm_params")
    params = params if isinstance(params, Mapping) else {}
    info = src.get("model_info")
    info = dict(info) if isinstance(info, Mapping) else {}
    model_id, name = str(src.get("model_id")), str(src.get("model_name"))
    if src.get("blocked"):  # LiteLLM does not route to it; served here it would widen what keys reach
        return StoredModel(
            model_id, name, None, None, "blocked in LiteLLM: left behind (add it with /model/new to serve it)"
        )
    encrypted = [k for k, v in params.items() if isinstance(v, str)]
    if salt_key is None:
        return StoredModel(model_id, name, None, None, "not checked: no --salt-key (nor LITELLM_SALT_KEY) given")
    plain: dict[str, str] = {}
    failed: list[str] = []
    for k in encrypted:
        try:
            plain[k] = decrypt(params[k], salt_key.reveal())
        except NotDecryptable:
            failed.append(k)
    if failed and not plain:
        state = f"cannot decrypt ({', '.join(sorted(failed))}): is the salt key LiteLLM's LITELLM_SALT_KEY?"
    elif failed:
        state = f"decrypted {', '.join(sorted(plain))}; not {', '.join(sorted(failed))}"
    else:
        state = f"decrypted {', '.join(sorted(plain)) or 'nothing (no encrypted values)'}"
    clear = None if failed else {**params, **plain}
    return StoredModel(model_id, name, plain.get("model"), plain.get("api_base"), state, clear, info)
