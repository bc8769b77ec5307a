"""Changes made on one replica (or with the CLI) reach the key caches of every other replica.

With Redis configured, changes are announced on a channel and the caches keep entries for ten
seconds between them; a refusal that arrives within a fraction of a second therefore shows the
announcement worked, not the cache expiring. Team rules (models, blocked) and blocked customers
are enforced on the request path too."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.e2e.test_virtual_keys import _refused_within
from tests.support.gateway import RunningGateway, run_gateway
from tests.support.wait import eventually

HI: Any = [{"role": "user", "content": "hi"}]
# While announcements are heard, keys are cached for ten seconds: a refusal well before that was
# announced, not a cache entry that ran out (usually milliseconds; generous for a loaded machine).
ANNOUNCED_S = 5.0


def _listening(gw: RunningGateway) -> None:
    eventually(
        lambda: gw.app.services is not None and gw.app.services.changes.listening.is_set(),
        5,
        "the gateway subscribed to change announcements",
    )


@pytest.fixture
def shared_config(tmp_path: Path, redis_url: str, redis_prefix: str) -> dict[str, Any]:
    return {
        "model_list": [{"model_name": "demo", "litellm_params": {"model": "mock/demo"}}],
        "general_settings": {
            "database_url": f"sqlite:///{tmp_path / 'shared.db'}",
            "redis_url": redis_url,
            "redis_prefix": redis_prefix,
        },
    }


def test_a_block_on_one_replica_is_announced_to_the_other(shared_config: dict[str, Any]) -> None:
    with run_gateway(shared_config) as one, run_gateway(shared_config) as two:
        _listening(two)
        master = {"Authorization": f"Bearer {one.key}"}
        key = httpx.post(one.url + "/key/generate", json={}, headers=master).json()["key"]
        with openai.OpenAI(base_url=two.v1, api_key=key, max_retries=0) as client:
            client.chat.completions.create(model="demo", messages=HI)  # cached on `two` for ten seconds
            assert httpx.post(one.url + "/key/block", json={"key": key}, headers=master).status_code == 200
            _refused_within(client, ANNOUNCED_S)


def test_a_revocation_with_the_cli_is_announced_to_a_running_gateway(
    shared_config: dict[str, Any], tmp_path: Path
) -> None:
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(shared_config))
    with run_gateway(shared_config) as gw:
        _listening(gw)
        master = {"Authorization": f"Bearer {gw.key}"}
        key = httpx.post(gw.url + "/key/generate", json={}, headers=master).json()["key"]
        with openai.OpenAI(base_url=gw.v1, api_key=key, max_retries=0) as client:
            client.chat.completions.create(model="demo", messages=HI)
            env = {k: v for k, v in os.environ.items() if k not in ("METERWAY_CONFIG", "CONFIG_FILE_PATH")}
            done = subprocess.run(
                [sys.executable, "-m", "meterway", "keys", "revoke", key, "--config", str(config_file)],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
            )
            assert done.returncode == 0, done.stderr
            _refused_within(client, ANNOUNCED_S)


def test_a_teams_models_and_block_apply_to_its_keys(gateway: RunningGateway, admin: httpx.Client) -> None:
    team = admin.post("/team/new", json={"models": ["demo"]}).json()["team_id"]
    key = admin.post("/key/generate", json={"team_id": team}).json()["key"]
    with openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0) as client:
        client.chat.completions.create(model="demo", messages=HI)
        with pytest.raises(openai.PermissionDeniedError) as e:
            client.chat.completions.create(model="gpt-test", messages=HI)
        assert "team may not use model 'gpt-test'" in e.value.message
        assert [m.id for m in client.models.list()] == ["demo"]
        assert admin.post("/team/update", json={"team_id": team, "blocked": True}).status_code == 200
        with pytest.raises(openai.AuthenticationError) as blocked:
            client.chat.completions.create(model="demo", messages=HI)
        assert blocked.value.code == "team_blocked"


def test_a_blocked_customer_is_refused(gateway: RunningGateway, admin: httpx.Client) -> None:
    customer = f"cust-{time.time_ns()}"
    assert admin.post("/customer/new", json={"user_id": customer, "blocked": True}).status_code == 200
    with openai.OpenAI(base_url=gateway.v1, api_key=gateway.key, max_retries=0) as client:
        with pytest.raises(openai.PermissionDeniedError) as e:
            client.chat.completions.create(model="demo", messages=HI, user=customer)
        assert e.value.code == "customer_blocked"
        client.chat.completions.create(model="demo", messages=HI, user="someone-else")
