"""`meterway import litellm` from a LiteLLM proxy's PostgreSQL database into a fresh meterway one,
then a gateway on the result: the LiteLLM keys work unchanged, with their spend, budgets and model
lists; the imported history adds up; a second import changes nothing; a later one brings only
what is new.

The LiteLLM database is built by applying the migrations LiteLLM itself ships (the
`litellm-proxy-extras` package, `tests/support/litellm_db.py`) and filled as a proxy in use would
have it: digests of keys, and the stored model's credentials encrypted with LiteLLM's own
function, so the importer is checked against the real schema and the real scheme. What must hold
before an import writes (salt key, seal key) is checked before anything is written.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import openai
import orjson
import pytest

from meterway.cli.main import main
from tests.support.gateway import run_gateway
from tests.support.litellm_db import create_litellm_database
from tests.upstreams.standin import StandIn

SALT_KEY = "sk-litellm-salt-key-for-tests"
NOW = datetime.now(UTC).replace(tzinfo=None, microsecond=0)  # LiteLLM's columns hold naive UTC
LOGS = 3000

# keys as their holders have them; LiteLLM stores only the digests
NEARLY_SPENT = "sk-alpha-nearly-spent-0001"  # budget 1.00 USD, 0.99 spent
ROOMY = "sk-alpha-roomy-0002"  # budget 100 USD, 1.25 spent, model list ["priced"]
BLOCKED = "sk-blocked-0003"
ORPHAN = "sk-orphan-team-0004"  # names a team that LiteLLM has no row for


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _litellm_encrypt(value: str) -> str:
    """As the LiteLLM proxy stores a model's parameter (its own secret-box function)."""
    from litellm.proxy.common_utils.encrypt_decrypt_utils import encrypt_value

    return base64.urlsafe_b64encode(encrypt_value(value, SALT_KEY)).decode()


@dataclass
class Filled:
    url: str
    logs: list[tuple[str, Decimal]]  # request id, spend: the importable rows


async def _fill(url: str) -> Filled:
    await create_litellm_database(url)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            'INSERT INTO "LiteLLM_BudgetTable" (budget_id, max_budget, rpm_limit, tpm_limit, budget_duration, '
            "budget_reset_at, created_by, updated_by) VALUES "
            "('b-gold', 50.0, 120, 200000, '30d', $1, 'admin', 'admin'), ('b-org', 5000, NULL, NULL, NULL, NULL, "
            "'admin', 'admin')",
            NOW + timedelta(days=12),
        )
        await conn.execute(
            'INSERT INTO "LiteLLM_OrganizationTable" (organization_id, organization_alias, budget_id, models, '
            "created_by, updated_by) VALUES ('org-acme', 'Acme Corp', 'b-org', '{}', 'admin', 'admin')"
        )
        await conn.execute(
            'INSERT INTO "LiteLLM_TeamTable" (team_id, team_alias, organization_id, admins, members, '
            "members_with_roles, metadata, max_budget, spend, models, rpm_limit, budget_duration, budget_reset_at) "
            "VALUES ('team-alpha', 'Alpha', 'org-acme', '{}', '{}', $1, '{\"cost_center\": \"42\"}', 1000, 12.5, "
            "'{priced,other}', 500, '1mo', $2), "
            "('team-beta', 'Beta', NULL, '{carol}', '{}', '[]', '{}', NULL, 0, '{}', NULL, NULL, NULL)",
            orjson.dumps([{"user_id": "alice", "role": "admin"}, {"user_id": "bob", "role": "user"}]).decode(),
            NOW + timedelta(days=20),
        )
        await conn.execute(
            'INSERT INTO "LiteLLM_UserTable" (user_id, user_alias, teams, user_role, max_budget, spend, user_email, '
            "models) VALUES ('alice', 'Alice', '{team-alpha}', 'proxy_admin', NULL, 3.5, 'alice@example.com', '{}'), "
            "('bob', NULL, '{team-alpha}', 'internal_user', 20, 0.75, 'bob@example.com', '{}'), "
            "('carol', NULL, '{}', 'customer', NULL, 0, NULL, '{}')"
        )
        await conn.execute(
            "INSERT INTO \"LiteLLM_TeamMembership\" (user_id, team_id, spend) VALUES ('bob', 'team-alpha', 0.75)"
        )
        keys = [
            (_digest(NEARLY_SPENT), "sk-...0001", "nearly-spent", 0.99, 1.0, ["priced"], "team-alpha", "alice", None),
            (_digest(ROOMY), "sk-...0002", "roomy", 1.25, 100.0, ["priced"], "team-alpha", "bob", None),
            (_digest(BLOCKED), "sk-...0003", "blocked", 0.0, None, [], "team-beta", "carol", True),
            (_digest(ORPHAN), "sk-...0004", "orphan", 0.0, None, [], "team-ghost", None, None),
            ("sk-stored-in-clear", "sk-...lear", "unhashed", 0.0, None, [], None, None, None),
        ]
        keys += [
            (_digest(f"sk-bulk-{i:03d}"), f"sk-...{i:04d}", f"bulk-{i}", 0.01 * i, 10.0, [], "team-beta", None, None)
            for i in range(40)
        ]
        await conn.executemany(
            'INSERT INTO "LiteLLM_VerificationToken" (token, key_name, key_alias, spend, max_budget, models, '
            "team_id, user_id, blocked, rpm_limit, tpm_limit, max_parallel_requests, budget_duration, "
            "budget_reset_at, metadata) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 100, 100000, 10, '30d', $10, "
            '\'{"env": "prod"}\')',
            [(*k, NOW + timedelta(days=10)) for k in keys],
        )
        await conn.execute(
            'INSERT INTO "LiteLLM_EndUserTable" (user_id, alias, spend, budget_id, default_model) VALUES '
            "('cust-1', 'Customer One', 4.5, 'b-gold', 'priced'), ('cust-2', NULL, 0, NULL, NULL)"
        )
        params = {
            "model": _litellm_encrypt("openai/gpt-4o-mini"),
            "api_base": _litellm_encrypt("https://api.openai.com/v1"),
            "api_key": _litellm_encrypt("sk-upstream-stored-in-litellm"),
        }
        await conn.execute(
            'INSERT INTO "LiteLLM_ProxyModelTable" (model_id, model_name, litellm_params, model_info, created_by, '
            "updated_by) VALUES ('m-1', 'gpt-4o-mini', $1, '{}', 'admin', 'admin')",
            orjson.dumps(params).decode(),
        )
        return Filled(url, await _add_logs(conn, LOGS, seed=7))
    finally:
        await conn.close()


async def _add_logs(conn: asyncpg.Connection, n: int, seed: int) -> list[tuple[str, Decimal]]:
    """`n` spend logs over the 20 days before yesterday ended, plus one without a model (not importable)."""
    rng = random.Random(seed)
    tokens = [_digest(k) for k in (NEARLY_SPENT, ROOMY)] + [_digest(f"sk-bulk-{i:03d}") for i in range(40)]
    rows: list[tuple[Any, ...]] = []
    kept: list[tuple[str, Decimal]] = []
    for i in range(n):
        start = NOW - timedelta(days=1, hours=1) - timedelta(seconds=rng.randrange(20 * 86400))
        prompt, completion = rng.randrange(5, 2000), rng.randrange(1, 800)
        spend = round(prompt * 0.0000025 + completion * 0.00001, 8)
        request_id = f"chatcmpl-{seed}-{i:05d}"
        failed = i % 97 == 0
        rows.append(
            (
                request_id,
                "acompletion",
                rng.choice(tokens),
                0.0 if failed else spend,
                0 if failed else prompt + completion,
                0 if failed else prompt,
                0 if failed else completion,
                start,
                start + timedelta(milliseconds=rng.randrange(200, 9000)),
                "gpt-4o-mini",
                rng.choice(["priced", "other"]),
                rng.choice(["alice", "bob", ""]),
                rng.choice(["team-alpha", "team-beta", None]),
                rng.choice(["cust-1", "cust-2", None]),
                "failure" if failed else "success",
                orjson.dumps(
                    {"error_information": {"error_code": "429", "error_class": "RateLimitError"}} if failed else {}
                ).decode(),
            )
        )
        kept.append((request_id, Decimal(0) if failed else Decimal(str(spend))))
    rows.append(
        (
            f"no-model-{seed}",
            "acompletion",
            "",
            0.0,
            0,
            0,
            0,
            NOW - timedelta(days=3),
            NOW - timedelta(days=3),
            "",
            "",
            "",
            None,
            None,
            "success",
            "{}",
        )
    )
    await conn.executemany(
        'INSERT INTO "LiteLLM_SpendLogs" (request_id, call_type, api_key, spend, total_tokens, prompt_tokens, '
        'completion_tokens, "startTime", "endTime", model, model_group, "user", team_id, end_user, status, '
        "metadata) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
        rows,
    )
    return kept


def _import(source: str, target: str, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    args = ["import", "litellm", "--from", source, "--database-url", target, "--salt-key", SALT_KEY, *extra]
    assert main(args) == 0
    return capsys.readouterr().out


def _fetch(url: str, sql: str) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(url)
        try:
            return list(await conn.fetch(sql))
        finally:
            await conn.close()

    return asyncio.run(run())


def _config(base: str, database_url: str) -> dict[str, Any]:
    def model(name: str) -> dict[str, Any]:
        return {
            "model_name": name,
            "litellm_params": {
                "model": "openai/priced-upstream",
                "api_base": base + "/v1",
                "api_key": "sk-upstream",
                "input_cost_per_token": 0.001,
                "output_cost_per_token": 0.002,
            },
        }

    return {"model_list": [model("priced"), model("other")], "general_settings": {"database_url": database_url}}


@pytest.fixture
def litellm_db(second_pg_url: str) -> Iterator[Filled]:
    yield asyncio.run(_fill(second_pg_url))


def test_imported_keys_work_with_their_budgets_models_and_history(
    litellm_db: Filled,
    pg_url: str,
    standin: StandIn,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("METERWAY_SALT_KEY", "meterway-own-salt-key-for-models")
    dry = _import(litellm_db.url, pg_url, capsys, "--dry-run")
    assert "dry run, nothing written" in dry
    assert f"spend logs: {LOGS + 1} found, would import {LOGS}" in dry
    assert "not imported: LiteLLM_SpendLogs no-model-7: no model or model_group" in dry
    assert "not imported: LiteLLM_VerificationToken sk-stored-in…: the token column does not hold" in dry

    out = _import(litellm_db.url, pg_url, capsys)
    assert "keys: 45 found, imported 44, 0 already in meterway (kept as they are), 1 not importable" in out
    assert "teams: 2 found, imported 2" in out and "users: 3 found, imported 3" in out
    assert "customers: 2 found, imported 2" in out and "team members: 3 found, imported 3" in out
    assert f"spend logs: {LOGS + 1} found, imported {LOGS}, 0 already in meterway" in out
    assert "team 'team-ghost' is not in LiteLLM_TeamTable" in out
    assert "role 'customer' has no meterway equivalent" in out
    # the stored model: decrypted with LiteLLM's salt key, sealed again under meterway's
    assert "gpt-4o-mini (id m-1): model openai/gpt-4o-mini, api_base https://api.openai.com/v1" in out
    assert "credentials decrypted api_base, api_key, model" in out
    assert "models: 1 found, imported 1" in out
    assert "sk-upstream-stored-in-litellm" not in out
    (stored,) = _fetch(pg_url, "SELECT model_id, model_name, litellm_params FROM mw_models")
    assert (stored["model_id"], stored["model_name"]) == ("m-1", "gpt-4o-mini")
    assert "sk-upstream-stored-in-litellm" not in str(stored["litellm_params"])
    # the import analyzed the ledger it filled (a table never analyzed has reltuples -1)
    assert _fetch(pg_url, "SELECT reltuples FROM pg_class WHERE relname = 'mw_ledger'")[0][0] == LOGS
    # history only: nothing queued for Lago without --export-to-billing
    assert _fetch(pg_url, "SELECT count(*) FROM mw_billing_outbox")[0][0] == 0
    team = _fetch(pg_url, "SELECT metadata, spend FROM mw_teams WHERE team_id = 'team-alpha'")[0]
    assert orjson.loads(team["metadata"])["organization"]["organization_alias"] == "Acme Corp"
    assert team["spend"] == 125_000_000_000  # 12.5 USD in 1e-10 units
    customer = _fetch(
        pg_url, "SELECT max_budget, rpm_limit, budget_duration FROM mw_customers WHERE customer_id = 'cust-1'"
    )
    assert tuple(customer[0]) == (500_000_000_000, 120, "30d")

    yesterday = (NOW - timedelta(days=1)).date().isoformat()
    first = (NOW - timedelta(days=22)).date().isoformat()
    expected = sum((spend for _, spend in litellm_db.logs), Decimal(0))
    served = _config(standin.base_url, pg_url)
    served["general_settings"]["store_model_in_db"] = True
    with run_gateway(served) as gw:
        admin = {"Authorization": f"Bearer {gw.key}"}
        listed = httpx.get(gw.url + "/model/info", headers=admin)
        assert listed.status_code == 200 and "m-1" in listed.text  # served from meterway's store
        assert "sk-upstream-stored-in-litellm" not in listed.text
        usage = httpx.get(gw.url + "/usage", params={"start": first, "end": yesterday}, headers=admin).json()
        assert usage["totals"]["requests"] == LOGS
        assert Decimal(usage["totals"]["cost"]) == expected

        with openai.OpenAI(base_url=gw.v1, api_key=ROOMY, max_retries=0) as client:
            reply = client.chat.completions.create(model="priced", messages=[{"role": "user", "content": "hi"}])
            assert reply.choices[0].message.content
            with pytest.raises(openai.PermissionDeniedError):  # "other" is outside the key's model list
                client.chat.completions.create(model="other", messages=[{"role": "user", "content": "hi"}])
        with openai.OpenAI(base_url=gw.v1, api_key=NEARLY_SPENT, max_retries=0) as client:
            with pytest.raises(openai.BadRequestError) as refused:  # 0.01 USD left cannot pay for this
                client.chat.completions.create(
                    model="priced", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
                )
            assert refused.value.code == "budget_exceeded"
        with (
            openai.OpenAI(base_url=gw.v1, api_key=BLOCKED, max_retries=0) as client,
            pytest.raises(openai.AuthenticationError),
        ):
            client.chat.completions.create(model="priced", messages=[{"role": "user", "content": "hi"}])
        info = httpx.get(gw.url + "/key/info", params={"key": ROOMY}, headers=admin).json()
        spent_here = Decimal(str(info["info"]["spend"]))
        assert spent_here > Decimal("1.25")  # carried over, plus what the request above cost

    def snapshot() -> list[Any]:
        return [
            _fetch(pg_url, f"SELECT count(*) FROM {t}")[0][0]
            for t in ("mw_keys", "mw_users", "mw_teams", "mw_team_members", "mw_customers", "mw_ledger", "mw_models")
        ]

    before = snapshot()
    again = _import(litellm_db.url, pg_url, capsys)
    assert "nothing new: meterway already has everything" in again
    assert snapshot() == before
    spend = _fetch(pg_url, f"SELECT spend FROM mw_keys WHERE token = '{_digest(ROOMY)}'")[0][0]
    assert Decimal(spend) * Decimal("1e-10") == spent_here  # meterway's own spend is not overwritten

    async def later() -> None:
        conn = await asyncpg.connect(litellm_db.url)
        try:
            await _add_logs(conn, 5, seed=8)
        finally:
            await conn.close()

    asyncio.run(later())
    newer = _import(litellm_db.url, pg_url, capsys)
    assert f"spend logs: {LOGS + 7} found, imported 5, {LOGS} already in meterway" in newer
    assert snapshot()[-2] == before[-2] + 5  # mw_ledger


def test_import_into_sqlite_with_billing_export_queues_the_billable_rows_once(
    litellm_db: Filled, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import sqlite3

    target = f"sqlite:///{tmp_path}/meterway.db"
    since = ("--export-to-billing", "--since", (NOW - timedelta(days=10)).isoformat())
    since += ("--without-models",)  # no key of meterway's to seal them under here
    out = _import(litellm_db.url, target, capsys, *since)
    assert "not imported: LiteLLM_ProxyModelTable m-1: left behind (--without-models)" in out
    with sqlite3.connect(tmp_path / "meterway.db") as db:
        rows, billable = db.execute(
            "SELECT count(*), sum(total_tokens > 0 AND status = 'success') FROM mw_ledger WHERE source = 'imported'"
        ).fetchone()
        queued = db.execute("SELECT count(*) FROM mw_billing_outbox").fetchone()[0]
    assert 0 < rows < LOGS  # only the days since --since
    assert f"imported {rows}" in out
    assert queued == billable > 0
    assert _import(litellm_db.url, target, capsys, *since).endswith("nothing new: meterway already has everything\n")
    with sqlite3.connect(tmp_path / "meterway.db") as db:
        assert db.execute("SELECT count(*) FROM mw_billing_outbox").fetchone()[0] == queued


_TABLES = ("mw_keys", "mw_users", "mw_teams", "mw_team_members", "mw_customers", "mw_ledger", "mw_models")


def _counts(url: str) -> list[int]:
    return [_fetch(url, f"SELECT count(*) FROM {t}")[0][0] for t in _TABLES]


@pytest.mark.parametrize("dry_run", [False, True], ids=["import", "dry-run"])
def test_a_stored_model_without_its_keys_stops_the_import_before_anything_is_written(
    litellm_db: Filled,
    pg_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    dry_run: bool,
) -> None:
    for name in ("LITELLM_SALT_KEY", "METERWAY_SALT_KEY", "LITELLM_MASTER_KEY", "METERWAY_MASTER_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert main(["migrate", "--database-url", pg_url]) == 0  # a migrated, empty meterway
    capsys.readouterr()
    base = ["import", "litellm", "--from", litellm_db.url, "--database-url", pg_url, *(["--dry-run"] * dry_run)]

    def refused(*extra: str) -> str:
        assert main([*base, *extra]) == 1
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.count("\n") == 1 and captured.err.startswith("meterway: ")  # one line
        assert _counts(pg_url) == [0] * len(_TABLES)  # nothing written
        return captured.err

    monkeypatch.setenv("METERWAY_SALT_KEY", "meterway-own-salt-key-for-models")
    assert "1 stored model with encrypted credentials and no salt key was given" in refused()
    assert "opens none of the credentials" in refused("--salt-key", "not-the-salt-key")
    monkeypatch.delenv("METERWAY_SALT_KEY")
    assert "no key to seal the credentials of the 1 stored model under" in refused("--salt-key", SALT_KEY)


def test_stored_models_are_sealed_under_the_master_key_of_the_config_a_gateway_serves_them_with(
    litellm_db: Filled,
    pg_url: str,
    standin: StandIn,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import yaml

    from meterway.config.load import load_settings

    for name in ("LITELLM_SALT_KEY", "METERWAY_SALT_KEY", "LITELLM_MASTER_KEY", "METERWAY_MASTER_KEY"):
        monkeypatch.delenv(name, raising=False)
    params = {
        "model": _litellm_encrypt("openai/priced-upstream"),
        "api_base": _litellm_encrypt(standin.base_url + "/v1"),
        "api_key": _litellm_encrypt("sk-upstream"),
    }

    async def add_model() -> None:
        conn = await asyncpg.connect(litellm_db.url)
        try:
            await conn.execute(
                'INSERT INTO "LiteLLM_ProxyModelTable" (model_id, model_name, litellm_params, model_info, '
                "created_by, updated_by) VALUES ('m-2', 'stored-in-litellm', $1, '{}', 'admin', 'admin')",
                orjson.dumps(params).decode(),
            )
            await conn.execute(  # blocked in LiteLLM: never served there, so not here either
                'INSERT INTO "LiteLLM_ProxyModelTable" (model_id, model_name, litellm_params, model_info, '
                "created_by, updated_by, blocked) VALUES ('m-3', 'blocked-in-litellm', $1, '{}', 'admin', 'admin', true)",
                orjson.dumps(params).decode(),
            )
        finally:
            await conn.close()

    asyncio.run(add_model())
    config = _config(standin.base_url, pg_url)
    config["general_settings"].update(master_key="sk-master-of-the-config", store_model_in_db=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))

    args = ["import", "litellm", "--from", litellm_db.url, "--config", str(path), "--salt-key", SALT_KEY]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "models: 3 found, imported 2" in out
    assert "LiteLLM_ProxyModelTable m-3: blocked in LiteLLM" in out
    with run_gateway(load_settings(path)) as gw:
        assert gw.key == "sk-master-of-the-config"
        with openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0) as client:
            reply = client.chat.completions.create(
                model="stored-in-litellm", messages=[{"role": "user", "content": "hi"}]
            )
            with pytest.raises(openai.NotFoundError):
                client.chat.completions.create(model="blocked-in-litellm", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content


def test_a_terminal_is_shown_the_import_s_progress_with_an_eta(litellm_db: Filled, pg_url: str) -> None:
    """On a terminal: a progress bar over the spend logs, with the time left. (Into a pipe or a
    file, as every other test here, only the report is written.)"""
    import os
    import pty
    import subprocess
    import sys

    leader, follower = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "120", "METERWAY_SALT_KEY": "meterway-own-salt-key"}
    args = ["import", "litellm", "--from", litellm_db.url, "--database-url", pg_url, "--salt-key", SALT_KEY]
    child = subprocess.Popen(
        [sys.executable, "-m", "meterway", *args], stdout=follower, stderr=follower, stdin=subprocess.DEVNULL, env=env
    )
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    assert child.wait(timeout=60) == 0
    text = shown.decode(errors="replace")
    assert "spend logs" in text and "ETA" in text and f"/{LOGS + 1}" in text
    assert f"spend logs: {LOGS + 1} found, imported {LOGS}" in text


def test_a_meterway_database_of_a_newer_revision_is_refused_before_anything_is_written(
    litellm_db: Filled, pg_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METERWAY_SALT_KEY", "meterway-own-salt-key-for-models")
    assert main(["migrate", "--database-url", pg_url]) == 0
    _fetch(pg_url, "UPDATE alembic_version SET version_num = '9999'")
    capsys.readouterr()
    for extra in ((), ("--dry-run",)):
        args = ["import", "litellm", "--from", litellm_db.url, "--database-url", pg_url, "--salt-key", SALT_KEY]
        assert main([*args, *extra]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is at revision 9999, which this meterway" in err
        assert _counts(pg_url) == [0] * len(_TABLES)


def test_a_dry_run_into_a_sqlite_file_that_does_not_exist_creates_nothing(
    litellm_db: Filled, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METERWAY_SALT_KEY", "meterway-own-salt-key-for-models")
    _fetch(
        litellm_db.url,
        'INSERT INTO "LiteLLM_VerificationToken" (token, key_name, key_alias, models, spend) '
        f"VALUES ('{_digest('sk-wild-0005')}', 'sk-...0005', 'wild', '{{openai/*,priced}}', 0)",
    )
    target = tmp_path / "new.db"
    out = _import(litellm_db.url, f"sqlite:///{target}", capsys, "--dry-run")
    assert not target.exists()  # connecting would have created it
    assert f"spend logs: {LOGS + 1} found, would import {LOGS}" in out
    # lists are compared by exact name: a LiteLLM wildcard is reported, not silently kept
    (wild,) = [line for line in out.splitlines() if line.startswith("changed: LiteLLM_VerificationToken wild")]
    assert "'openai/*'" in wild and "wildcard" in wild


def test_the_progress_bar_goes_to_the_terminal_on_stderr_and_stdout_holds_the_report(
    litellm_db: Filled, pg_url: str
) -> None:
    import os
    import pty
    import subprocess
    import sys

    leader, follower = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "120", "METERWAY_SALT_KEY": "meterway-own-salt-key"}
    args = ["import", "litellm", "--from", litellm_db.url, "--database-url", pg_url, "--salt-key", SALT_KEY]
    child = subprocess.Popen(
        [sys.executable, "-m", "meterway", *args],
        stdout=subprocess.PIPE,
        stderr=follower,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    assert child.stdout is not None
    with child.stdout:
        out = child.stdout.read().decode()
    assert child.wait(timeout=60) == 0
    assert "ETA" in shown.decode(errors="replace") and f"/{LOGS + 1}" in shown.decode(errors="replace")
    assert "ETA" not in out and "\x1b" not in out  # stdout: the report alone, for a pipe or a file
    assert f"spend logs: {LOGS + 1} found, imported {LOGS}" in out


def test_with_database_url_a_config_that_does_not_load_stops_only_the_stored_models(
    litellm_db: Filled,
    pg_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert main(["migrate", "--database-url", pg_url]) == 0
    config = tmp_path / "meterway.yaml"
    config.write_text("general_settings:\n  master_key: os.environ/METERWAY_TEST_UNSET_MASTER\n")
    monkeypatch.delenv("METERWAY_TEST_UNSET_MASTER", raising=False)
    monkeypatch.setenv("METERWAY_CONFIG", str(config))
    monkeypatch.setenv("METERWAY_SALT_KEY", "meterway-own-salt-key-for-models")
    capsys.readouterr()
    args = ["import", "litellm", "--from", litellm_db.url, "--database-url", pg_url, "--salt-key", SALT_KEY]
    # the stored model is sealed under the key the config names: it must load, said in one line
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(config) in err and "METERWAY_TEST_UNSET_MASTER" in err
    assert "--without-models" in err and _counts(pg_url) == [0] * len(_TABLES)
    # everything else needs no key of the config's
    assert main([*args, "--without-models"]) == 0
    assert f"spend logs: {LOGS + 1} found, imported {LOGS}" in capsys.readouterr().out


def test_imported_image_audio_speech_and_rerank_logs_land_under_their_endpoints_with_their_units(
    second_pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """LiteLLM stores a request's response and input in its spend log with
    `store_prompts_in_spend_logs`: the units are read from them as from its logging payload; a
    response too large to read (base64 images) leaves them unknown, and a log without one has none."""
    import sqlite3

    logs = [
        ("img-1", "aimage_generation", {"created": 1, "data": [{"url": "u1"}, {"url": "u2"}]}, {}),
        ("img-big", "aimage_generation", {"data": [{"b64_json": "A" * 100_000}]}, {}),
        ("edit-1", "aimage_edit", {"data": [{"url": "u1"}]}, {}),
        ("stt-1", "atranscription", {"text": "hi", "duration": 3.5}, {}),
        ("tts-1", "aspeech", {"object": "binary"}, [{"role": "user", "content": "Hello there"}]),
        ("rr-1", "arerank", {"meta": {"billed_units": {"search_units": 2}}}, {}),
        ("rr-plain", "arerank", {}, {}),
        ("mod-1", "amoderation", {}, {}),
        ("bad-1", "atranscription", {"duration": -4}, {}),
    ]

    async def fill() -> None:
        await create_litellm_database(second_pg_url)
        conn = await asyncpg.connect(second_pg_url)
        try:
            await conn.executemany(
                'INSERT INTO "LiteLLM_SpendLogs" (request_id, call_type, api_key, spend, total_tokens, '
                'prompt_tokens, completion_tokens, "startTime", "endTime", model, model_group, status, metadata, '
                "response, messages) VALUES ($1, $2, '', 0.01, 0, 0, 0, $3, $3, 'm', 'm', 'success', '{}', $4, $5)",
                [
                    (rid, call, NOW - timedelta(hours=1), orjson.dumps(resp).decode(), orjson.dumps(msgs).decode())
                    for rid, call, resp, msgs in logs
                ],
            )
        finally:
            await conn.close()

    asyncio.run(fill())
    target = f"sqlite:///{tmp_path}/meterway.db"
    _import(second_pg_url, target, capsys, "--without-models")
    with sqlite3.connect(tmp_path / "meterway.db") as db:
        got = {
            r[0]: r[1:]
            for r in db.execute(
                "SELECT request_id, endpoint, queries, images, audio_ms, characters, flags, cost FROM mw_ledger"
            )
        }
    cost = 100_000_000  # LiteLLM's 0.01 USD, as it charged
    assert got == {
        "img-1": ("images", 0, 2, 0, 0, None, cost),
        "img-big": ("images", 0, 0, 0, 0, None, cost),
        "edit-1": ("image_edits", 0, 1, 0, 0, None, cost),
        "stt-1": ("transcriptions", 0, 0, 3500, 0, None, cost),
        "tts-1": ("speech", 0, 0, 0, 11, None, cost),
        "rr-1": ("rerank", 2, 0, 0, 0, None, cost),
        "rr-plain": ("rerank", 0, 0, 0, 0, None, cost),
        "mod-1": ("moderations", 0, 0, 0, 0, None, cost),
        "bad-1": ("transcriptions", 0, 0, 0, 0, "usage_invalid", cost),
    }
