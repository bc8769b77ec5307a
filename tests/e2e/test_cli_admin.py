"""`meterway keys|users|teams|customers`, run as users run them, against the database a gateway uses."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from tests.support.cli import run_meterway
from tests.support.gateway import run_gateway

_CONFIG_VARS = ("METERWAY_CONFIG", "CONFIG_FILE_PATH")


def _mw(db: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in _CONFIG_VARS}
    return run_meterway([*args, "--database-url", db], env)


def _migrated(tmp_path: Path) -> str:
    """A SQLite database brought to the schema by `meterway migrate`, as an operator does first:
    no other command migrates."""
    db = f"sqlite:///{tmp_path / 'm.db'}"
    done = run_meterway(["migrate", "--database-url", db])
    assert done.returncode == 0, done.stderr
    return db


def _json(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    return orjson.loads(done.stdout)


def test_a_key_made_on_the_command_line_works_at_the_gateway(tmp_path: Path) -> None:
    db = _migrated(tmp_path)
    made = _json(_mw(db, "keys", "create", "--models", "demo", "--alias", "cli-key", "--rpm", "60", "--json"))
    key = made["key"]
    assert made["models"] == ["demo"] and made["rpm_limit"] == 60 and made["key_alias"] == "cli-key"
    config = {
        "model_list": [
            {"model_name": "demo", "litellm_params": {"model": "mock/demo"}},
            {"model_name": "other", "litellm_params": {"model": "mock/other"}},
        ],
        "general_settings": {"database_url": db},
    }
    with run_gateway(config) as gw, openai.OpenAI(base_url=gw.v1, api_key=key, max_retries=0) as client:
        assert client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "x"}]).choices
        assert _mw(db, "keys", "block", key).returncode == 0
        listing = _mw(db, "keys", "list")
        assert "cli-key" in listing.stdout and key not in listing.stdout and "True" in listing.stdout
    assert _json(_mw(db, "keys", "info", key, "--json"))["info"]["blocked"] is True
    assert _mw(db, "keys", "revoke", key).returncode == 0
    gone = _mw(db, "keys", "info", key)
    assert gone.returncode == 1 and "not found" in gone.stderr and "Traceback" not in gone.stderr


def test_teams_users_customers_from_the_command_line(tmp_path: Path) -> None:
    db = _migrated(tmp_path)
    assert _json(_mw(db, "teams", "create", "team-a", "--alias", "search", "--json"))["team_id"] == "team-a"
    user = _json(_mw(db, "users", "create", "ann", "--email", "ann@example.com", "--role", "internal_user", "--json"))
    assert user["key"].startswith("sk-")
    customer = _mw(db, "customers", "create", "cust-9", "--alias", "Acme", "--max-budget", "25")
    assert customer.returncode == 0 and "cust-9" in customer.stdout and "25.0" in customer.stdout
    key = _json(_mw(db, "keys", "create", "--team-id", "team-a", "--json"))
    assert key["team_id"] == "team-a"
    bad = _mw(db, "keys", "create", "--team-id", "no-such-team")
    assert bad.returncode == 1 and "team_id 'no-such-team' does not exist" in bad.stderr
    assert "ann" in _mw(db, "users", "list").stdout
    assert _mw(db, "customers", "create", "cust-bound").returncode == 0
    bound = _json(_mw(db, "keys", "create", "--customer-id", "cust-bound", "--json"))
    assert bound["customer_id"] == "cust-bound"
    team = _json(_mw(db, "teams", "create", "team-b", "--customer-id", "cust-bound", "--json"))
    assert team["customer_id"] == "cust-bound"
    assert _mw(db, "keys", "create", "--customer-id", "nobody").returncode == 1
    kept = _mw(db, "customers", "delete", "cust-bound")
    assert kept.returncode == 1 and "is bound to" in kept.stderr
    assert _mw(db, "customers", "delete", "cust-9").returncode == 0
    assert _mw(db, "customers", "info", "cust-9").returncode == 1


def test_a_key_is_named_by_its_alias_and_money_prints_as_plain_decimals(tmp_path: Path) -> None:
    db = _migrated(tmp_path)
    made = _mw(db, "keys", "create", "--alias", "solo", "--max-budget", "0.00001215")
    assert made.returncode == 0 and "0.00001215" in made.stdout and "e-0" not in made.stdout, made.stdout
    twins = [_json(_mw(db, "keys", "create", "--alias", "twin", "--json"))["token_id"] for _ in range(2)]
    shown = _mw(db, "keys", "info", "solo", "--json")
    assert '"max_budget": 0.00001215' in shown.stdout and "e-0" not in shown.stdout, shown.stdout
    solo = _json(shown)["info"]
    assert solo["key_alias"] == "solo" and solo["max_budget"] == 0.00001215
    assert _mw(db, "keys", "block", "solo").returncode == 0
    assert _json(_mw(db, "keys", "info", solo["token"], "--json"))["info"]["blocked"] is True
    assert _json(_mw(db, "keys", "update", "solo", "--rpm", "7", "--json"))["rpm_limit"] == 7
    both = _mw(db, "keys", "info", "twin")
    assert both.returncode == 1 and "2 keys have the alias 'twin'" in both.stderr, both.stderr
    assert all(t in both.stderr for t in twins) and "Traceback" not in both.stderr
    assert _mw(db, "keys", "revoke", "twin").returncode == 1  # neither is revoked on a guess
    assert _json(_mw(db, "keys", "info", twins[0], "--json"))["info"]["key_alias"] == "twin"
    none = _mw(db, "keys", "info", "nobody")
    assert none.returncode == 1 and "No key has the digest or the alias 'nobody'" in none.stderr, none.stderr
    assert _mw(db, "keys", "revoke", "solo").returncode == 0
    assert _mw(db, "keys", "info", solo["token"]).returncode == 1


@pytest.mark.parametrize("command", [("keys", "info", "solo", "--json"), ("keys", "list"), ("billing", "status")])
def test_a_reader_that_closes_the_pipe_early_ends_the_command_quietly(tmp_path: Path, command: tuple[str, ...]) -> None:
    """`meterway … | head -c 10` with the reader gone before the first write: the worst case, made
    certain by closing the pipe's read end before the command starts. A fresh interpreter, since
    its last flush at exit is where a second traceback would come from."""
    db = _migrated(tmp_path)
    assert _mw(db, "keys", "create", "--alias", "solo").returncode == 0
    env = {k: v for k, v in os.environ.items() if k not in _CONFIG_VARS}
    env.update(LAGO_API_BASE="http://127.0.0.1:9", LAGO_API_KEY="lago-test")  # billing on: status prints
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "meterway", *command, "--database-url", db],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=60,
        )
    finally:
        os.close(write)
    assert done.returncode in (0, 141), done.stderr
    assert done.stderr == "", done.stderr


def test_billing_status_with_billing_off_says_so_and_fails(tmp_path: Path) -> None:
    db = _migrated(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAGO_") and k not in _CONFIG_VARS}
    off = run_meterway(["billing", "status", "--database-url", db], env)
    assert off.returncode == 1 and off.stdout == "", off.stdout
    assert "Billing export is off" in off.stderr and "LAGO_API_BASE and LAGO_API_KEY" in off.stderr, off.stderr
    on = run_meterway(
        ["billing", "status", "--database-url", db],
        {**env, "LAGO_API_BASE": "http://127.0.0.1:9", "LAGO_API_KEY": "lago-test"},
    )
    assert on.returncode == 0 and "pending: 0" in on.stdout, on.stdout + on.stderr


_READ_ONLY = (
    ("keys", "list"),
    ("keys", "info", "some-alias"),
    ("users", "list"),
    ("users", "info", "ann"),
    ("teams", "list"),
    ("teams", "info", "team-a"),
    ("customers", "list"),
    ("customers", "info", "acme"),
    ("usage", "--by", "key"),
    ("invoice", "acme"),
    ("billing", "status"),
    ("billing", "check"),
    ("billing", "reconcile"),
    ("ledger", "quarantine"),
)
_WRITING = (
    ("keys", "create", "--alias", "solo"),
    ("users", "create", "ann"),
    ("billing", "reprocess"),
    ("ledger", "reprocess"),
)


def _no_tables(url: str) -> bool:
    import sqlalchemy as sa

    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        return sa.inspect(engine).get_table_names() == []
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_commands_other_than_migrate_never_migrate_and_write_nothing(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """`keys list` against an empty database used to create the whole schema. Now every command but
    `migrate` (and `serve`) refuses a database not at this code's revision, in one line, before it
    writes anything: on SQLite the file is not even created."""
    from meterway.store.revision import HEAD

    file = tmp_path / "never.db"
    db = f"sqlite:///{file}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    env = {k: v for k, v in os.environ.items() if k not in _CONFIG_VARS}
    env.update(LAGO_API_BASE="http://127.0.0.1:9", LAGO_API_KEY="lago-test")  # billing commands get that far
    for command in (*_READ_ONLY, *_WRITING):
        done = run_meterway([*command, "--database-url", db], env)
        said = done.stderr.strip()
        assert done.returncode == 1, (command, done.stdout, said)
        assert said.endswith(f"is not migrated (revision empty, expected {HEAD}): run `meterway migrate`"), said
        assert "\n" not in said and done.stdout == "", (command, said)
        if backend == "sqlite":
            assert not file.exists(), command
        else:
            assert _no_tables(db), command
    assert run_meterway(["migrate", "--database-url", db], env).returncode == 0
    listed = run_meterway(["keys", "list", "--database-url", db], env)
    assert listed.returncode == 0 and listed.stdout.strip() == "(none)", listed.stdout + listed.stderr


@pytest.mark.parametrize("command", [("keys", "list"), ("migrate",)])
def test_a_postgresql_database_that_does_not_exist_fails_at_once_naming_it(
    pg_url: str, command: tuple[str, ...]
) -> None:
    """Retrying a database that does not exist (or a role that does not) cannot help: it fails at
    once, naming it, where it used to wait 10 s and call it unreachable."""
    missing = pg_url.rsplit("/", 1)[0] + "/mw_no_such_database"
    started = time.monotonic()
    done = run_meterway([*command, "--database-url", missing])
    elapsed = time.monotonic() - started
    print(f"{command[0]} against a missing database failed in {elapsed:.2f}s")
    assert done.returncode == 1, done.stdout
    assert "database 'mw_no_such_database' at 127.0.0.1:5432 does not exist" in done.stderr, done.stderr
    assert "not reachable" not in done.stderr and "Traceback" not in done.stderr
    assert elapsed < 4, f"took {elapsed:.2f}s (the issue asks under 2 s; 4 leaves room for a loaded machine)"
    no_role = pg_url.replace("postgres@", "mw_no_such_role@", 1)
    started = time.monotonic()
    refused = run_meterway([*command, "--database-url", no_role])
    assert refused.returncode == 1 and "refused the role" in refused.stderr, refused.stderr
    assert time.monotonic() - started < 4


def test_usage_names_keys_by_alias_takes_an_alias_and_prints_money_as_decimals(tmp_path: Path) -> None:
    import asyncio

    from meterway.store.runtime import Store
    from tests.support.rows import ledger_entry

    db = _migrated(tmp_path)
    solo = _json(_mw(db, "keys", "create", "--alias", "solo", "--json"))["token_id"]
    unnamed = _json(_mw(db, "keys", "create", "--json"))

    async def spend() -> None:
        store = await Store.open(db, wait_s=5, run_migrations=False)
        try:  # $0.00001215 each (the ledger counts 1e-10 USD)
            await store.ledger.write([ledger_entry(key_id=solo, cost=121_500) for _ in range(2)])
            await store.ledger.write([ledger_entry(key_id=unnamed["token_id"], cost=121_500)])
        finally:
            await store.close()

    asyncio.run(spend())
    table = _mw(db, "usage", "--by", "key")
    assert table.returncode == 0, table.stderr
    lines = {line.split()[0]: line.split() for line in table.stdout.splitlines()}
    assert lines["solo"][1] == "2" and lines["solo"][-1] == "0.0000243", table.stdout
    assert lines[unnamed["key_name"]][-1] == "0.00001215", table.stdout
    assert solo not in table.stdout and "e-0" not in table.stdout and "\x1b" not in table.stdout, table.stdout
    by_alias = _mw(db, "usage", "--by", "key", "--key", "solo")
    assert by_alias.returncode == 0 and unnamed["key_name"] not in by_alias.stdout, by_alias.stdout
    assert "0.0000243" in by_alias.stdout, by_alias.stdout
    machine = _json(_mw(db, "usage", "--by", "key", "--format", "json"))
    assert {r["key"] for r in machine["rows"]} == {solo, unnamed["token_id"]}, "JSON keeps the digests"
    shown = _mw(db, "keys", "info", "solo")
    assert shown.returncode == 0 and shown.stdout.splitlines()[1].split()[0] == "solo", shown.stdout
