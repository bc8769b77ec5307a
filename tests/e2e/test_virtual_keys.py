"""Virtual keys on the request path, through the `openai` SDK. Keys are written straight into the
gateway's database (the management API comes later), the way a second replica would see them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from meterway.auth.keys import new_key
from meterway.store.engine import create_engine
from meterway.store.keys import KeyStore
from meterway.store.url import parse
from tests.support.gateway import RunningGateway
from tests.support.wait import eventually

MESSAGES: Any = [{"role": "user", "content": "hi"}]


def _store_op(gw: RunningGateway, op: str, key: str, **values: Any) -> None:
    async def run() -> None:
        engine = create_engine(parse(gw.settings.database_url.reveal()))
        try:
            store = KeyStore(engine)
            if op == "create":
                await store.create(key, **values)
            else:
                await store.update(key, **values)
        finally:
            await engine.dispose()

    asyncio.run(run())


def _client(gw: RunningGateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.v1, api_key=key, max_retries=0)


def _refused_within(client: openai.OpenAI, within_s: float) -> None:
    """Calls until the key is refused; fails if it is still served after `within_s` (the bound the
    gateway promises for seeing a block: a cache lifetime, or an announcement's delivery)."""

    def refused() -> bool:
        try:
            client.chat.completions.create(model="demo", messages=MESSAGES)
        except openai.AuthenticationError:
            return True
        return False

    eventually(refused, within_s, "the blocked key refused")


@pytest.fixture
def keyed(gateway: RunningGateway) -> Iterator[tuple[RunningGateway, str]]:
    key = new_key()
    _store_op(gateway, "create", key, models=["gpt-test", "demo", "unconfigured-model"], key_alias="team-a")
    yield gateway, key


def test_a_stored_key_works(keyed: tuple[RunningGateway, str], upstream: object) -> None:
    gw, key = keyed
    with _client(gw, key) as client:
        r = client.chat.completions.create(model="gpt-test", messages=MESSAGES)
        assert r.choices[0].message.content


def test_a_model_outside_the_keys_list_is_403_naming_it(keyed: tuple[RunningGateway, str]) -> None:
    gw, key = keyed
    with _client(gw, key) as client, pytest.raises(openai.PermissionDeniedError) as e:
        client.chat.completions.create(model="claude", messages=MESSAGES)
    assert "claude" in e.value.message and e.value.code == "model_not_allowed"


def test_models_list_and_404_show_only_what_the_key_may_use(keyed: tuple[RunningGateway, str]) -> None:
    gw, key = keyed
    with _client(gw, key) as client:
        assert sorted(m.id for m in client.models.list()) == ["demo", "gpt-test"]
        with pytest.raises(openai.NotFoundError) as e:
            client.chat.completions.create(model="unconfigured-model", messages=MESSAGES)
    assert "claude" not in e.value.message and "gpt-test" in e.value.message


def test_unknown_blocked_and_expired_keys_are_401(gateway: RunningGateway) -> None:
    blocked, expired = new_key(), new_key()
    _store_op(gateway, "create", blocked, blocked=True)
    _store_op(gateway, "create", expired, expires=datetime.now(UTC) - timedelta(seconds=5))
    for key, code in ((new_key(), "invalid_api_key"), (blocked, "key_blocked"), (expired, "key_expired")):
        with _client(gateway, key) as client, pytest.raises(openai.AuthenticationError) as e:
            client.chat.completions.create(model="demo", messages=MESSAGES)
        assert e.value.code == code


def test_blocking_a_key_in_the_database_takes_effect_within_the_cache_lifetime(gateway: RunningGateway) -> None:
    key = new_key()
    _store_op(gateway, "create", key)
    with _client(gateway, key) as client:
        client.chat.completions.create(model="demo", messages=MESSAGES)  # now cached as usable
        _store_op(gateway, "update", key, blocked=True)
        _refused_within(client, 2.0)


def test_a_key_blocked_through_one_gateway_is_refused_by_another_within_a_second(tmp_path: Path) -> None:
    from tests.support.gateway import run_gateway

    db = f"sqlite:///{tmp_path / 'shared.db'}"
    config = {
        "model_list": [{"model_name": "demo", "litellm_params": {"model": "mock/demo"}}],
        "general_settings": {"database_url": db},
    }
    with run_gateway(config) as one, run_gateway(config) as two:
        master = {"Authorization": f"Bearer {one.key}"}
        key = httpx.post(one.url + "/key/generate", json={}, headers=master).json()["key"]
        with _client(two, key) as client:
            client.chat.completions.create(model="demo", messages=MESSAGES)  # cached as usable on `two`
            assert httpx.post(one.url + "/key/block", json={"key": key}, headers=master).status_code == 200
            _refused_within(client, 1.0)
