"""The ledger writer against what the database refuses, on SQLite and real PostgreSQL: whatever a
row holds (NUL, lone surrogates, huge strings, emoji, numbers past 64 bits, NaN, deep JSON), it
ends up in `mw_ledger` (as given or cut, flagged `cut`) or whole in `mw_ledger_quarantine`, and the
rows queued behind it are written as they are."""

from __future__ import annotations

import asyncio
import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import exc as sa_exc

from meterway.ledger.recorder import Ledger
from meterway.store import refusals
from meterway.store.runtime import Store
from meterway.store.tables import ledger, ledger_quarantine
from tests.support.rows import ledger_entry

TEXT = (
    "customer_id",
    "user_id",
    "team_id",
    "key_id",
    "key_alias",
    "model_group",
    "deployment_id",
    "upstream_model",
    "end_user",
    "error_type",
    "request_id",
    "endpoint",
    "status",
)
INTS = ("prompt_tokens", "completion_tokens", "total_tokens", "cost", "http_status", "attempts")

strings = st.one_of(
    st.text(st.characters(codec=None, exclude_categories=()), max_size=40),  # NUL, surrogates, anything
    st.integers(200, 20_000).map(lambda n: "x" * n),
    st.integers(1, 2_000).map(lambda n: "\N{PILE OF POO}" * n),
    st.sampled_from(["\x00", "cust-\x00", "\ud800", "a\udfffb", "", " "]),
)
numbers = st.one_of(
    st.integers(),
    st.sampled_from([2**63, 2**63 - 1, -(2**63) - 1, 2**64, 10**30, -1, 2**31, 3 * 10**9]),
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, st.floats(), strings),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(strings, inner, max_size=4)),
    max_leaves=12,
)
hostile = st.one_of(
    st.tuples(st.sampled_from(TEXT), strings),
    st.tuples(st.sampled_from(INTS), numbers),
    st.tuples(st.just("latency_ms"), st.floats()),
    st.tuples(st.just("metadata"), st.dictionaries(strings, json_values, max_size=4)),
    st.tuples(st.just("tags"), st.lists(json_values, max_size=4)),
)


class Backend:
    """One store and one event loop for every example of a module's test."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.store: Store = self.loop.run_until_complete(Store.open(url, wait_s=10, run_migrations=True))

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def where(self, uids: list[str]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        async with self.store.engine.connect() as conn:
            written = (await conn.execute(sa.select(ledger).where(ledger.c.uid.in_(uids)))).mappings().all()
            kept = (
                await conn.execute(
                    sa.select(ledger_quarantine.c.uid, ledger_quarantine.c.row).where(ledger_quarantine.c.uid.in_(uids))
                )
            ).all()
        return {r["uid"]: dict(r) for r in written}, {str(u): str(text) for u, text in kept}

    def close(self) -> None:
        self.run(self.store.close())
        self.loop.close()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    if request.param == "sqlite":
        url = f"sqlite:///{Path(tmp_path_factory.mktemp('refusals')) / 'meterway.db'}"
    else:
        url = request.getfixturevalue("module_pg_url")
    b = Backend(url)
    try:
        yield b
    finally:
        b.close()


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field_value=hostile)
def test_every_row_is_written_or_quarantined_and_never_blocks_the_rows_behind_it(
    backend: Backend, field_value: tuple[str, Any]
) -> None:
    field, value = field_value
    bad = ledger_entry(**{field: value})
    behind = [ledger_entry(customer_id=f"cust-behind-{i}") for i in range(3)]
    ledger_ = Ledger(writer=backend.store.ledger)

    async def commit_all() -> None:
        await asyncio.gather(*(ledger_.commit(e) for e in [bad, *behind]))  # one group, the bad row first
        assert await ledger_.flush(10)

    backend.run(asyncio.wait_for(commit_all(), 60))
    assert ledger_.waiting == 0 and ledger_.healthy and ledger_.stalled() is None
    written, kept = backend.run(backend.where([bad.row.uid, *(e.row.uid for e in behind)]))
    uid = bad.row.uid
    assert (uid in written) != (uid in kept), "the row must be in the ledger or the quarantine, once"
    event(
        "quarantined" if uid in kept else "cut" if written[uid]["flags"] else "as given"
    )  # --hypothesis-show-statistics
    for e in behind:
        assert e.row.uid in written and written[e.row.uid]["flags"] is None, "a row behind was not written"
    if uid in kept:
        again = refusals.from_json(kept[uid]).row
        assert again.uid == uid
        if isinstance(value, str | int):
            assert getattr(again, field) == value, "the quarantine keeps the row whole, as given"
    elif written[uid]["flags"] == "cut":
        assert ledger_.cut_rows == 1
    else:  # taken as given
        stored = written[uid][field]
        if isinstance(value, str) and field in TEXT:
            assert stored == value
        if isinstance(value, float) and math.isfinite(value):
            assert stored == pytest.approx(value)


def test_a_cut_id_never_becomes_another_id() -> None:
    """Cutting keeps the first characters and adds a digest: 'cust-victim' + NUL is not 'cust-victim'."""
    assert refusals.cut_text("cust-victim\x00", 255) != "cust-victim"
    long = "v" * 300
    cut = refusals.cut_text(long, 255)
    assert len(cut) == 255 and cut != long[:255] and cut.startswith("v" * 246)
    assert refusals.cut_text("ordinary", 255) == "ordinary"


def test_a_quarantined_row_keeps_nul_surrogates_and_huge_ints_as_given() -> None:
    entry = ledger_entry(customer_id="a\x00b\ud800", metadata={"n": 10**30, "s": "\udfff"}, prompt_tokens=2**70)
    text = refusals.to_json(entry)
    assert text.isascii() and "\x00" not in text
    again = refusals.from_json(text)
    assert again.row == entry.row and again.cost_units == entry.cost_units and again.spend == entry.spend


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (OverflowError("Python int too large to convert to SQLite INTEGER"), "RowRefused"),
        (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), "RowRefused"),
        (sqlite3.IntegrityError("UNIQUE constraint failed"), "RowRefused"),
        (sqlite3.ProgrammingError("Error binding parameter 2: type 'dict' is not supported"), "RowRefused"),
        (sqlite3.ProgrammingError("Cannot operate on a closed database."), "WriteFailed"),
        (sqlite3.OperationalError("database is locked"), "WriteFailed"),
        (asyncpg.StringDataRightTruncationError("value too long for type character varying(255)"), "RowRefused"),
        (asyncpg.CharacterNotInRepertoireError('invalid byte sequence for encoding "UTF8": 0x00'), "RowRefused"),
        (asyncpg.UniqueViolationError("duplicate key"), "RowRefused"),
        (asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"), "DatabaseAway"),
        (asyncpg.InterfaceError("connection is closed"), "DatabaseAway"),
        (asyncpg.RaiseError("ledger writes switched off"), "WriteFailed"),
        (ConnectionRefusedError(111, "Connection refused"), "DatabaseAway"),
        (TimeoutError(), "DatabaseAway"),
        (sa_exc.OperationalError("SELECT 1", {}, ConnectionResetError()), "DatabaseAway"),
        (sa_exc.IntegrityError("INSERT", {}, sqlite3.IntegrityError("NOT NULL")), "RowRefused"),
    ],
)
def test_a_failed_write_is_told_apart_as_the_rows_fault_or_the_databases(error: Exception, kind: str) -> None:
    """Only a refused value is the row's fault (cut, else quarantined); an outage keeps rows queued;
    anything else is retried as an outage would be, and readiness says why after 5 s."""
    assert type(refusals.translate(error)).__name__ == kind
