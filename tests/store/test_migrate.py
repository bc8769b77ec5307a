"""`meterway migrate` on SQLite and real PostgreSQL: idempotent, forward from an earlier revision,
clear about an unreachable or malformed database."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from meterway.cli.main import main
from meterway.store.engine import create_engine
from meterway.store.migrate import head, migrate
from meterway.store.tables import metadata
from meterway.store.url import parse
from tests.support.cli import run_meterway
from tests.support.gateway import free_socket


def _sqlite(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'meterway.db'}"


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "METERWAY_CONFIG", "CONFIG_FILE_PATH")}
    return run_meterway(["migrate", *args], env, timeout)


def _tables(url: str) -> set[str]:
    async def run() -> set[str]:
        engine = create_engine(parse(url))
        try:
            async with engine.connect() as conn:
                return set(await conn.run_sync(lambda c: sa.inspect(c).get_table_names()))
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _drift(url: str) -> list[object]:
    """Differences between the tables the code uses and the schema the migrations built."""

    async def run() -> list[object]:
        engine = create_engine(parse(url))
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(
                    lambda c: compare_metadata(MigrationContext.configure(c, opts={"compare_type": True}), metadata)
                )
        finally:
            await engine.dispose()

    return asyncio.run(run())


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migrate_twice_creates_then_changes_nothing(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = _sqlite(tmp_path) if backend == "sqlite" else request.getfixturevalue("pg_url")
    first = _cli("--database-url", url)
    assert first.returncode == 0, first.stderr
    assert f"migrated from empty to {head()}" in first.stdout
    assert {"mw_users", "mw_teams", "mw_team_members", "mw_customers", "mw_keys"} <= _tables(url)
    second = _cli("--database-url", url)
    assert second.returncode == 0 and f"up to date (revision {head()})" in second.stdout
    assert _drift(url) == []


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migrate_brings_a_database_at_the_previous_revision_forward_keeping_its_rows(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = _sqlite(tmp_path) if backend == "sqlite" else request.getfixturevalue("pg_url")

    async def prepare() -> None:
        engine = create_engine(parse(url))
        try:
            await migrate(engine, "0001")
            async with engine.begin() as conn:
                await conn.execute(
                    sa.text(
                        "INSERT INTO mw_users (user_id, user_role, models, metadata) "
                        "VALUES ('u-1', 'internal_user', '[]', '{}')"
                    )
                )
        finally:
            await engine.dispose()

    asyncio.run(prepare())
    assert "mw_keys" not in _tables(url)
    done = _cli("--database-url", url)
    assert done.returncode == 0 and f"migrated from 0001 to {head()}" in done.stdout, done.stderr
    assert "mw_keys" in _tables(url)

    async def users() -> list[str]:
        engine = create_engine(parse(url))
        try:
            async with engine.connect() as conn:
                return list((await conn.execute(sa.text("SELECT user_id FROM mw_users"))).scalars())
        finally:
            await engine.dispose()

    assert asyncio.run(users()) == ["u-1"]


def test_the_revision_the_code_expects_is_the_newest_migration() -> None:
    from meterway.store import revision

    assert head() == revision.HEAD


def test_unreachable_database_fails_within_the_wait_naming_host_and_port_not_password() -> None:
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    done = _cli("--database-url", f"postgresql://meter:s3cret-pw@127.0.0.1:{port}/meterway", "--wait", "1.5")
    assert done.returncode == 1
    assert f"127.0.0.1:{port}" in done.stderr and "not reachable" in done.stderr
    assert "s3cret-pw" not in done.stderr + done.stdout and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://meter:s3cret-pw@db:5432:5432/meterway",
        "postgresql://meter:s3cret-pw@db%3A5432/meterway",
        "mysql://meter:s3cret-pw@db/meterway",
    ],
)
def test_malformed_database_url_is_reported_as_such_at_once(url: str) -> None:
    # a malformed URL must not be waited for: the command ends long before its --wait would
    done = _cli("--database-url", url, "--wait", "30", timeout=25)
    assert done.returncode == 1
    assert "malformed database URL" in done.stderr or "unsupported database URL" in done.stderr
    assert "s3cret-pw" not in done.stderr and "waiting" not in done.stderr


def test_migrate_reads_database_url_from_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    db = tmp_path / "from-config.db"
    cfg.write_text(f"general_settings:\n  database_url: sqlite:///{db}\n")
    assert main(["migrate", "--config", str(cfg)]) == 0
    assert db.exists() and f"SQLite file {db}" in capsys.readouterr().out


def test_store_opens_without_migrating_when_current_and_refuses_an_old_schema_with_no_migrate(tmp_path: Path) -> None:
    from meterway.store.runtime import Store

    url = _sqlite(tmp_path)

    async def run() -> None:
        engine = create_engine(parse(url))
        await migrate(engine, "0001")
        await engine.dispose()
        needs = rf"is not migrated \(revision 0001, expected {head()}\): run `meterway migrate`"
        with pytest.raises(Exception, match=needs):
            await Store.open(url, wait_s=1, run_migrations=False)
        store = await Store.open(url, wait_s=1, run_migrations=True)
        await store.close()
        again = await Store.open(url, wait_s=1, run_migrations=False)
        await again.close()

    asyncio.run(run())


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_0013_adds_the_units_to_the_ledger_and_rollup_and_takes_them_away_again(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Rows written before 0013 used no unit (0); a downgrade drops the columns, and on PostgreSQL
    the `"LiteLLM_SpendLogs"` view over the ledger (0012) survives both ways."""
    from alembic import command
    from alembic.config import Config

    from meterway.store.migrate import MIGRATIONS

    url = _sqlite(tmp_path) if backend == "sqlite" else request.getfixturevalue("pg_url")
    units = ("queries", "images", "audio_ms", "characters")

    def alembic(action: str, target: str) -> None:
        def run(connection: sa.Connection) -> None:
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = connection
            getattr(command, action)(config, target)

        async def go() -> None:
            engine = create_engine(parse(url))
            try:
                async with engine.begin() as conn:
                    await conn.run_sync(run)
            finally:
                await engine.dispose()

        asyncio.run(go())

    async def read(query: str) -> list[Any]:
        engine = create_engine(parse(url))
        try:
            async with engine.begin() as conn:
                return list(await conn.execute(sa.text(query)))
        finally:
            await engine.dispose()

    def columns(table: str) -> set[str]:
        async def run() -> set[str]:
            engine = create_engine(parse(url))
            try:
                async with engine.connect() as conn:
                    return await conn.run_sync(lambda c: {col["name"] for col in sa.inspect(c).get_columns(table)})
            finally:
                await engine.dispose()

        return asyncio.run(run())

    alembic("upgrade", "0012")
    asyncio.run(
        read(
            "INSERT INTO mw_ledger (request_id, started_at, ended_at, endpoint, stream, prompt_tokens, "
            "completion_tokens, cached_tokens, cache_write_tokens, reasoning_tokens, total_tokens, "
            "tokens_estimated, status, http_status, latency_ms, tags, metadata, source, attempts, cache_hit) "
            "VALUES ('r-1', '2026-12-01 00:00:00+00', '2026-12-01 00:00:01+00', 'chat', false, 3, 4, 0, 0, 0, 7, "
            "false, 'success', 200, 1.0, '[]', '{}', 'gateway', 1, false) RETURNING 1"
        )
    )
    alembic("upgrade", "head")
    assert set(units) <= columns("mw_ledger") and set(units) <= columns("mw_usage_daily")
    assert asyncio.run(read("SELECT queries, images, audio_ms, characters FROM mw_ledger")) == [(0, 0, 0, 0)]
    view = "SELECT count(*) FROM information_schema.views WHERE table_name = 'LiteLLM_SpendLogs'"
    if backend == "postgresql":
        assert asyncio.run(read(view)) == [(1,)]
        asyncio.run(read("UPDATE mw_ledger SET endpoint = 'rerank', queries = 2 RETURNING 1"))
        call_type = 'SELECT call_type FROM "LiteLLM_SpendLogs"'
        assert asyncio.run(read(call_type)) == [("arerank",)]  # LiteLLM's name for it
    alembic("downgrade", "0012")
    assert not set(units) & columns("mw_ledger") and not set(units) & columns("mw_usage_daily")
    assert asyncio.run(read("SELECT total_tokens FROM mw_ledger")) == [(7,)]
    if backend == "postgresql":
        assert asyncio.run(read(call_type)) == [("rerank",)]  # 0012's view again
    alembic("upgrade", "head")
    assert _drift(url) == []


def test_0014_names_the_images_and_audio_endpoints_as_litellm_call_types_and_0013_names_them_again(
    pg_url: str,
) -> None:
    """SQL written against LiteLLM's spend logs filters on its call types: after 0014 the view reads
    the images and audio endpoints as LiteLLM names them; a downgrade restores 0013's view."""
    from alembic import command
    from alembic.config import Config

    from meterway.store.migrate import MIGRATIONS

    def alembic(action: str, target: str) -> None:
        def run(connection: sa.Connection) -> None:
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = connection
            getattr(command, action)(config, target)

        async def go() -> None:
            engine = create_engine(parse(pg_url))
            try:
                async with engine.begin() as conn:
                    await conn.run_sync(run)
            finally:
                await engine.dispose()

        asyncio.run(go())

    async def read(query: str) -> list[Any]:
        engine = create_engine(parse(pg_url))
        try:
            async with engine.begin() as conn:
                return list(await conn.execute(sa.text(query)))
        finally:
            await engine.dispose()

    endpoints = {
        "images": "aimage_generation",
        "image_edits": "aimage_edit",
        "images_edit": "aimage_edit",
        "image_variations": "aimage_generation",
        "transcriptions": "atranscription",
        "translations": "atranscription",
        "speech": "aspeech",
        "rerank": "arerank",
        "moderations": "amoderation",
        "chat": "acompletion",
        "batches": "batches",
    }
    alembic("upgrade", "0013")
    for i, endpoint in enumerate(endpoints):
        asyncio.run(
            read(
                "INSERT INTO mw_ledger (request_id, started_at, ended_at, endpoint, stream, prompt_tokens, "
                "completion_tokens, cached_tokens, cache_write_tokens, reasoning_tokens, total_tokens, "
                "tokens_estimated, status, http_status, latency_ms, tags, metadata, source, attempts, cache_hit) "
                f"VALUES ('r-{i}', '2026-12-01 00:00:00+00', '2026-12-01 00:00:01+00', '{endpoint}', false, 0, 0, "
                "0, 0, 0, 0, false, 'success', 200, 1.0, '[]', '{}', 'gateway', 1, false) RETURNING 1"
            )
        )
    query = 'SELECT l.endpoint, v.call_type FROM mw_ledger l JOIN "LiteLLM_SpendLogs" v USING (request_id)'
    before = dict(asyncio.run(read(query)))
    assert before["images"] == "images" and before["rerank"] == "arerank"  # 0013's view
    alembic("upgrade", "0014")
    assert dict(asyncio.run(read(query))) == endpoints
    alembic("downgrade", "0013")
    assert dict(asyncio.run(read(query))) == before
    alembic("upgrade", "head")
    assert _drift(pg_url) == []
