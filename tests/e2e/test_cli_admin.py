"""`meterway keys|users|teams|customers`, run as users run them, against the database a gateway uses."""

from __future__ import annotations

import os
import subprocess
import sys
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


def _json(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    return orjson.loads(done.stdout)


def test_a_key_made_on_the_command_line_works_at_the_gateway(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'm.db'}"
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
    db = f"sqlite:///{tmp_path / 'm.db'}"
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
    db = f"sqlite:///{tmp_path / 'm.db'}"
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
    db = f"sqlite:///{tmp_path / 'm.db'}"
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
    db = f"sqlite:///{tmp_path / 'm.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAGO_") and k not in _CONFIG_VARS}
    off = run_meterway(["billing", "status", "--database-url", db], env)
    assert off.returncode == 1 and off.stdout == "", off.stdout
    assert "Billing export is off" in off.stderr and "LAGO_API_BASE and LAGO_API_KEY" in off.stderr, off.stderr
    on = run_meterway(
        ["billing", "status", "--database-url", db],
        {**env, "LAGO_API_BASE": "http://127.0.0.1:9", "LAGO_API_KEY": "lago-test"},
    )
    assert on.returncode == 0 and "pending: 0" in on.stdout, on.stdout + on.stderr
