"""Models managed at runtime: two `meterway serve` replicas on PostgreSQL and Redis with
STORE_MODEL_IN_DB. A model added, changed or deleted on one is served (or no longer) by both
within seconds, its key is stored encrypted, and the config file's models stay read-only."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from tests.support.serve import Served
from tests.support.serve import replicas as two_serving
from tests.support.wait import eventually
from tests.upstreams.standin import StandIn

MASTER = "sk-models-master-key"
SECRET = "sk-runtime-upstream-secret-4242"
SALT = "salt-for-runtime-model-tests-0123456789"
ADMIN = {"Authorization": f"Bearer {MASTER}"}


@contextmanager
def replicas(
    tmp_path: Path, standin: StandIn, pg_url: str, redis_url: str, prefix: str
) -> Iterator[tuple[Served, Served]]:
    config = {
        "model_list": [
            {
                "model_name": "from-config",
                "litellm_params": {"model": "openai/c-up", "api_base": standin.base_url + "/v1", "api_key": "k"},
                "model_info": {"id": "config-model"},
            }
        ],
        "general_settings": {
            "master_key": MASTER,
            "database_url": pg_url,
            "redis_url": redis_url,
            "redis_prefix": prefix,
        },
    }
    with two_serving(tmp_path, config, {"STORE_MODEL_IN_DB": "True", "METERWAY_SALT_KEY": SALT}) as both:
        yield both


def chat(served: Served, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(served.url + "/v1/chat/completions", json=body, headers=ADMIN, timeout=30)


def within(seconds: float, check: Callable[[], bool]) -> None:
    eventually(check, seconds, "the change seen by the other replica")


def stored_rows(pg_url: str) -> list[dict[str, Any]]:
    async def read() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(pg_url)
        try:
            return [dict(r) for r in await conn.fetch("SELECT * FROM mw_models")]
        finally:
            await conn.close()

    return asyncio.run(read())


def test_a_model_added_on_one_replica_serves_on_both_and_its_key_is_encrypted(
    tmp_path: Path, upstream: StandIn, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    with replicas(tmp_path, upstream, pg_url, redis_url, redis_prefix) as (one, two):
        assert chat(two, "added").status_code == 404
        new = {
            "model_name": "added",
            "litellm_params": {"model": "openai/added-up", "api_base": upstream.base_url + "/v1", "api_key": SECRET},
            "model_info": {"id": "added-1"},
        }
        r = httpx.post(one.url + "/model/new", json=new, headers=ADMIN)
        assert r.status_code == 200, r.text
        assert "api_key" not in r.json()["litellm_params"] and r.json()["model_info"]["db_model"] is True
        assert chat(one, "added").status_code == 200  # at once where it was added
        within(5, lambda: chat(two, "added").status_code == 200)
        assert upstream.last.credential == SECRET and upstream.last.json["model"] == "added-up"

        rows = stored_rows(pg_url)
        assert [row["model_id"] for row in rows] == ["added-1"]
        assert SECRET not in repr(rows) and "added-up" not in rows[0]["litellm_params"]

        info = httpx.get(two.url + "/v1/model/info", headers=ADMIN).json()["data"]
        by_id = {m["model_info"]["id"]: m for m in info}
        assert set(by_id) == {"config-model", "added-1"} and by_id["config-model"]["model_info"]["db_model"] is False
        assert SECRET not in repr(info)

        upd = {"model_info": {"id": "added-1"}, "litellm_params": {"model": "openai/changed-up"}}
        assert httpx.post(two.url + "/model/update", json=upd, headers=ADMIN).status_code == 200
        within(5, lambda: chat(one, "added").status_code == 200 and upstream.last.json["model"] == "changed-up")
        assert upstream.last.credential == SECRET  # kept from before: an update changes what it names

        refused = httpx.post(one.url + "/model/delete", json={"id": "config-model"}, headers=ADMIN)
        assert refused.status_code == 403 and "config file" in refused.json()["error"]["message"]
        assert httpx.post(one.url + "/model/delete", json={"id": "added-1"}, headers=ADMIN).status_code == 200
        within(5, lambda: chat(two, "added").status_code == 404)
        assert chat(two, "from-config").status_code == 200


def test_an_unusable_model_is_refused_before_it_is_stored(
    tmp_path: Path, upstream: StandIn, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    cases = [({"model": "nonsense/x"}, "unknown provider"), ({"model": "openai/x", "api_base": "ftp://x"}, "http")]
    with replicas(tmp_path, upstream, pg_url, redis_url, redis_prefix) as (one, _):
        for params, message in cases:
            r = httpx.post(one.url + "/model/new", json={"model_name": "bad", "litellm_params": params}, headers=ADMIN)
            assert r.status_code == 400 and message in r.json()["error"]["message"]
    assert stored_rows(pg_url) == []
