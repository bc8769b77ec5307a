"""`meterway keys|users|teams|customers`, run as users run them, against the database a gateway uses."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import openai
import orjson

from tests.support.cli import run_meterway
from tests.support.gateway import run_gateway


def _mw(db: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("METERWAY_CONFIG", "CONFIG_FILE_PATH")}
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
