"""What a LiteLLM end user brings over besides its budget: its model list, which LiteLLM enforces
and meterway must too (an import must not widen what an end user may call), its soft budget, and
the `spend_logs_metadata` of its requests.

A LiteLLM database is built from the migrations LiteLLM ships (`tests/support/litellm_db.py`),
filled as a proxy would have it and imported with `meterway import litellm`; a real gateway is
run on the result, with the openai and anthropic SDKs as clients. The same model list set through `/customer/new` is enforced the same way.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import anthropic
import asyncpg
import httpx
import openai
import orjson
import pytest

from meterway.cli.main import main
from tests.support.gateway import run_gateway
from tests.support.litellm_db import create_litellm_database
from tests.upstreams.standin import StandIn

NOW = datetime.now(UTC).replace(tzinfo=None, microsecond=0)  # LiteLLM's columns hold naive UTC
KEY = "sk-end-user-tests-0001"  # a key with no model list of its own: every model
HI = [{"role": "user", "content": "hi"}]


async def _fill(url: str) -> None:
    await create_litellm_database(url)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            'INSERT INTO "LiteLLM_BudgetTable" (budget_id, max_budget, soft_budget, created_by, updated_by) VALUES '
            "('b-end', 100.0, 80.0, 'admin', 'admin'), ('b-key', NULL, 4.5, 'admin', 'admin')"
        )
        await conn.execute(
            'INSERT INTO "LiteLLM_TeamTable" (team_id, admins, members, soft_budget, models) '
            "VALUES ('team-soft', '{}', '{}', 30.0, '{}')"
        )
        await conn.execute(
            'INSERT INTO "LiteLLM_VerificationToken" (token, key_name, key_alias, models, budget_id, team_id) '
            "VALUES ($1, 'sk-...0001', 'end-user-key', '{}', 'b-key', 'team-soft')",
            hashlib.sha256(KEY.encode()).hexdigest(),
        )
        await conn.execute(
            'INSERT INTO "LiteLLM_EndUserTable" (user_id, models, budget_id) VALUES '
            "('end-a', '{a}', 'b-end'), ('end-free', '{}', NULL)"
        )
        await conn.execute(
            'INSERT INTO "LiteLLM_SpendLogs" (request_id, call_type, api_key, spend, total_tokens, prompt_tokens, '
            'completion_tokens, "startTime", "endTime", model, model_group, end_user, status, metadata) VALUES '
            "('chatcmpl-tagged', 'acompletion', '', 0.001, 30, 10, 20, $1, $1, 'gpt-4o-mini', 'a', 'end-a', "
            "'success', $2)",
            NOW - timedelta(days=2),
            orjson.dumps({"spend_logs_metadata": {"job": "nightly-eval", "run": 7}}).decode(),
        )
    finally:
        await conn.close()


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
            "litellm_params": {"model": "openai/upstream", "api_base": base + "/v1", "api_key": "sk-upstream"},
        }

    return {"model_list": [model("a"), model("b")], "general_settings": {"database_url": database_url}}


@pytest.fixture
def imported(second_pg_url: str, pg_url: str, capsys: pytest.CaptureFixture[str]) -> Iterator[str]:
    asyncio.run(_fill(second_pg_url))
    assert main(["import", "litellm", "--from", second_pg_url, "--database-url", pg_url]) == 0
    capsys.readouterr()
    yield pg_url


def test_an_imported_end_users_model_list_is_enforced_as_a_keys_is(imported: str, standin: StandIn) -> None:
    with (
        run_gateway(_config(standin.base_url, imported)) as gw,
        openai.OpenAI(base_url=gw.v1, api_key=KEY, max_retries=0) as client,
    ):
        reply = client.chat.completions.create(model="a", messages=HI, user="end-a")  # type: ignore[arg-type]
        assert reply.choices[0].message.content
        with pytest.raises(openai.PermissionDeniedError) as refused:
            client.chat.completions.create(model="b", messages=HI, user="end-a")  # type: ignore[arg-type]
        assert refused.value.status_code == 403 and refused.value.code == "model_not_allowed"
        assert "Customer 'end-a' may not use model 'b'" in refused.value.message
        # an end user with an empty list, and a request naming none, are not restricted by it
        client.chat.completions.create(model="b", messages=HI, user="end-free")  # type: ignore[arg-type]
        client.chat.completions.create(model="b", messages=HI)  # type: ignore[arg-type]
        with anthropic.Anthropic(base_url=gw.url, api_key=KEY, max_retries=0) as claude:
            with pytest.raises(anthropic.PermissionDeniedError) as denied:  # Anthropic's format on /v1/messages
                claude.messages.create(model="b", max_tokens=16, messages=HI, metadata={"user_id": "end-a"})  # type: ignore[arg-type]
            assert denied.value.status_code == 403
            assert denied.value.body["error"]["type"] == "permission_error"  # type: ignore[index]

        # a key's refusal, for comparison: the same status and code
        admin = {"Authorization": f"Bearer {gw.key}"}
        limited = httpx.post(gw.url + "/key/generate", json={"models": ["a"]}, headers=admin).json()["key"]
        with (
            openai.OpenAI(base_url=gw.v1, api_key=limited, max_retries=0) as keyed,
            pytest.raises(openai.PermissionDeniedError) as by_key,
        ):
            keyed.chat.completions.create(model="b", messages=HI)  # type: ignore[arg-type]
        assert (by_key.value.status_code, by_key.value.code) == (403, refused.value.code)

        customer = httpx.get(gw.url + "/customer/info", params={"end_user_id": "end-a"}, headers=admin).json()
        assert customer["models"] == ["a"] and customer["soft_budget"] == 80.0 and customer["max_budget"] == 100.0
        key = httpx.get(gw.url + "/key/info", params={"key": KEY}, headers=admin).json()["info"]
        assert key["soft_budget"] == 4.5
        team = httpx.get(gw.url + "/team/info", params={"team_id": "team-soft"}, headers=admin).json()
        assert team["team_info"]["soft_budget"] == 30.0

    (row,) = _fetch(imported, "SELECT metadata FROM mw_ledger WHERE request_id = 'chatcmpl-tagged'")
    assert orjson.loads(row["metadata"])["spend_logs_metadata"] == {"job": "nightly-eval", "run": 7}


def test_a_model_list_set_through_the_management_api_is_enforced_and_changed_at_once(
    pg_url: str, standin: StandIn
) -> None:
    with run_gateway(_config(standin.base_url, pg_url)) as gw:
        admin = {"Authorization": f"Bearer {gw.key}"}
        made = httpx.post(
            gw.url + "/customer/new", json={"user_id": "acme", "models": ["a"], "soft_budget": 5}, headers=admin
        )
        assert made.status_code == 200 and made.json()["models"] == ["a"] and made.json()["soft_budget"] == 5.0
        key = httpx.post(gw.url + "/key/generate", json={"soft_budget": 2.5}, headers=admin).json()
        assert key["soft_budget"] == 2.5
        with openai.OpenAI(base_url=gw.v1, api_key=key["key"], max_retries=0) as client:
            client.chat.completions.create(model="a", messages=HI, user="acme")  # type: ignore[arg-type]
            with pytest.raises(openai.PermissionDeniedError):
                client.chat.completions.create(model="b", messages=HI, user="acme")  # type: ignore[arg-type]
            with pytest.raises(openai.PermissionDeniedError):  # streamed: refused before the stream starts
                client.chat.completions.create(model="b", messages=HI, user="acme", stream=True)  # type: ignore[arg-type]
            updated = httpx.post(
                gw.url + "/customer/update", json={"user_id": "acme", "models": ["a", "b"]}, headers=admin
            )
            assert updated.json()["models"] == ["a", "b"]
            client.chat.completions.create(model="b", messages=HI, user="acme")  # type: ignore[arg-type]
        info = httpx.get(gw.url + "/customer/info", params={"end_user_id": "acme"}, headers=admin).json()
        assert info["models"] == ["a", "b"] and info["soft_budget"] == 5.0
