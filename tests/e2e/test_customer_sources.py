"""Where each client puts the customer, and where the gateway finds it: Open WebUI's headers with
`general_settings.user_header_name`, LiteLLM's own customer headers, the body fields LiteLLM reads
(`user`, `litellm_metadata.user`, `metadata.user_id`), through the openai SDK, the `litellm` SDK
(with `litellm_proxy/` and with `openai/`) and plain HTTP. Each statement of docs/billing.md's
"How each client names its customer" is one of these assertions. Also `litellm_settings.default_tags`
on every row."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest
import sqlalchemy as sa

from meterway.store.runtime import Store
from meterway.store.tables import ledger
from tests.support.cli import run_meterway
from tests.support.gateway import RunningGateway, run_gateway
from tests.support.models import priced
from tests.upstreams.standin import StandIn

HI: Any = [{"role": "user", "content": "hi"}]
OWUI = {"X-OpenWebUI-User-Id": "u-7f3a", "X-OpenWebUI-User-Email": "ana@example.com", "X-OpenWebUI-User-Name": "Ana"}


@pytest.fixture(scope="module")
def gw(standin: StandIn) -> Iterator[RunningGateway]:
    config = {
        "model_list": [priced(standin.base_url)],
        "general_settings": {"user_header_name": "X-OpenWebUI-User-Id"},
        "litellm_settings": {"default_tags": ["owui", "prod"]},
    }
    with run_gateway(config) as running:
        yield running


def _rows(gw: RunningGateway, rid: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(gw.settings.database_url.reveal().removeprefix("sqlite:///")) as db:
        return db.execute(
            "SELECT customer_id, end_user, tags, http_status FROM mw_ledger WHERE request_id = ?", (rid,)
        ).fetchall()


def _customer(gw: RunningGateway, rid: str) -> str | None:
    (row,) = _rows(gw, rid)
    return row[0]  # type: ignore[no-any-return]


def _chat(gw: RunningGateway, rid: str, key: str | None = None, **kwargs: Any) -> None:
    headers = {"x-request-id": rid, **kwargs.pop("headers", {})}
    with openai.OpenAI(base_url=gw.v1, api_key=key or gw.key, max_retries=0, default_headers=headers) as sdk:
        sdk.chat.completions.create(model="priced", messages=HI, **kwargs)


def test_open_webui_headers_name_the_customer_with_user_header_name(gw: RunningGateway) -> None:
    """Open WebUI sends its user's id, email and name as headers and no `user`: with
    `user_header_name: X-OpenWebUI-User-Id` the id is the customer (the openai SDK's
    `default_headers` stands in for Open WebUI's forwarding here)."""
    _chat(gw, "owui-1", headers=OWUI)
    assert _customer(gw, "owui-1") == "u-7f3a"
    _chat(gw, "owui-2", headers=OWUI, user="from-body")  # a configured header wins over `user`, as in LiteLLM
    assert _customer(gw, "owui-2") == "u-7f3a"
    _chat(gw, "owui-3", headers={"X-OpenWebUI-User-Email": "ana@example.com"})  # only the configured one counts
    assert _customer(gw, "owui-3") is None


def test_litellms_standard_customer_headers_and_body_fields(gw: RunningGateway) -> None:
    _chat(gw, "std-1", headers={"x-litellm-customer-id": "globex"}, user="ignored")
    _chat(gw, "std-2", headers={"x-litellm-end-user-id": "initech"})
    _chat(gw, "std-3", headers={"x-litellm-customer-id": "first", "X-OpenWebUI-User-Id": "second"})
    assert [_customer(gw, r) for r in ("std-1", "std-2", "std-3")] == ["globex", "initech", "first"]
    # plain HTTP (curl): `user`, else `litellm_metadata.user`, else `metadata.user_id`, else `metadata.user`
    auth = {"Authorization": f"Bearer {gw.key}"}
    bodies = {
        "curl-1": {"user": "acme"},
        "curl-2": {"litellm_metadata": {"user": "umbrella"}},
        "curl-3": {"metadata": {"user_id": "hooli"}},
        "curl-4": {"user": "acme", "metadata": {"user_id": "hooli"}},
        "curl-5": {"metadata": {"user": "wayne"}},  # read last: LiteLLM does not, its users' clients send it
        "curl-6": {"metadata": {"user": "wayne", "user_id": "hooli"}},
    }
    for rid, extra in bodies.items():
        body = {"model": "priced", "messages": HI, **extra}
        httpx.post(gw.v1 + "/chat/completions", json=body, headers={**auth, "x-request-id": rid}).raise_for_status()
    assert [_customer(gw, r) for r in bodies] == ["acme", "umbrella", "hooli", "acme", "wayne", "hooli"]


def test_a_customer_header_is_bounded_like_user(gw: RunningGateway) -> None:
    auth = {"Authorization": f"Bearer {gw.key}", "x-request-id": "long-1", "X-OpenWebUI-User-Id": "x" * 300}
    answer = httpx.post(gw.v1 + "/chat/completions", json={"model": "priced", "messages": HI}, headers=auth)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["param"] == "header x-openwebui-user-id" and "255" in error["message"], error


def test_a_key_bound_to_a_customer_keeps_it_whatever_the_header_says(gw: RunningGateway) -> None:
    admin = {"Authorization": f"Bearer {gw.key}"}
    httpx.post(gw.url + "/customer/new", json={"user_id": "bound-co"}, headers=admin).raise_for_status()
    key = httpx.post(gw.url + "/key/generate", json={"customer_id": "bound-co"}, headers=admin).json()["key"]
    _chat(gw, "bound-1", key=key, headers=OWUI)
    assert _rows(gw, "bound-1")[0][:2] == ("bound-co", "u-7f3a")  # the header's name is kept as the end user


def test_default_tags_are_on_every_row(gw: RunningGateway) -> None:
    _chat(gw, "tags-1")
    _chat(gw, "tags-2", extra_body={"tags": ["batch", "owui"]})
    refused = httpx.post(
        gw.v1 + "/chat/completions",
        json={"model": "priced"},
        headers={"Authorization": "Bearer sk-wrong", "x-request-id": "tags-3"},
    )
    assert refused.status_code == 401
    tags = {rid: orjson.loads(_rows(gw, rid)[0][2]) for rid in ("tags-1", "tags-2", "tags-3")}
    assert tags == {"tags-1": ["owui", "prod"], "tags-2": ["owui", "prod", "batch"], "tags-3": ["owui", "prod"]}


LITELLM_CLIENT = r"""
import json, sys
import litellm
litellm.telemetry = False
litellm.suppress_debug_info = True
base, key = sys.argv[1], sys.argv[2]
cases = {
    "proxy-user": ("litellm_proxy/priced", {"user": "lp-user"}),
    "proxy-metadata": ("litellm_proxy/priced", {"metadata": {"user": "lp-meta", "user_id": "lp-meta"}}),
    "proxy-extra-body": ("litellm_proxy/priced", {"extra_body": {"litellm_metadata": {"user": "lp-extra"}}}),
    "proxy-header": ("litellm_proxy/priced", {"extra_headers": {"X-OpenWebUI-User-Id": "lp-header"}}),
    "openai-user": ("openai/priced", {"user": "oa-user"}),
    "openai-extra-body": ("openai/priced", {"extra_body": {"user": "oa-extra"}}),
    "openai-header": ("openai/priced", {"extra_headers": {"x-litellm-customer-id": "oa-header"}}),
    "openai-proxy-server-request": ("openai/priced", {"proxy_server_request": {"body": {"user": "oa-psr"}}}),
}
for rid, (model, kwargs) in cases.items():
    headers = {"x-request-id": rid, **kwargs.pop("extra_headers", {})}
    litellm.completion(model=model, api_base=base, api_key=key, messages=[{"role": "user", "content": "hi"}],
                       extra_headers=headers, **kwargs)
print(json.dumps(sorted(cases)))
"""


def test_what_the_litellm_sdk_sends_as_the_customer(gw: RunningGateway) -> None:
    """The `litellm` SDK as a client (litellm 1.110): with `litellm_proxy/` its `user=` arrives as
    `user`; with `openai/` it is not sent at all; `metadata=` and `proxy_server_request=` are never
    sent; `extra_body` and `extra_headers` always arrive."""
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False"}
    done = subprocess.run(
        [sys.executable, "-c", LITELLM_CLIENT, gw.v1, gw.key], capture_output=True, text=True, timeout=180, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    got = {rid: _customer(gw, rid) for rid in orjson.loads(done.stdout.strip().splitlines()[-1])}
    assert got == {
        "proxy-user": "lp-user",
        "proxy-metadata": None,
        "proxy-extra-body": "lp-extra",
        "proxy-header": "lp-header",
        "openai-user": None,
        "openai-extra-body": "oa-extra",
        "openai-header": "oa-header",
        "openai-proxy-server-request": None,
    }


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def tagged(request: pytest.FixtureRequest, standin: StandIn) -> Iterator[RunningGateway]:
    """Traffic under `default_tags: [owui]` with and without tags of its own, on both stores."""
    config: dict[str, Any] = {
        "model_list": [priced(standin.base_url)],
        "litellm_settings": {"default_tags": ["owui"]},
    }
    if request.param == "postgresql":
        config["general_settings"] = {"database_url": request.getfixturevalue("module_pg_url")}
    with run_gateway(config) as running:
        with openai.OpenAI(base_url=running.v1, api_key=running.key, max_retries=0) as sdk:
            for i, tags in enumerate([[], ["batch"], ["batch", "eval"], ["eval"], []]):
                text = "hello " * (i + 1)
                extra = {"tags": tags} if tags else {}
                sdk.chat.completions.create(
                    model="priced", messages=[{"role": "user", "content": text}], extra_body=extra
                )
        yield running


def test_usage_by_tag_sums_each_tags_rows_and_totals_count_each_row_once(tagged: RunningGateway) -> None:
    admin = {"Authorization": f"Bearer {tagged.key}"}
    logs = httpx.get(tagged.url + "/spend/logs", headers=admin).json()
    rows = logs if isinstance(logs, list) else logs.get("data", logs.get("rows", []))
    assert len(rows) == 5 and all("owui" in (r.get("request_tags") or r.get("tags")) for r in rows), rows
    report = httpx.get(tagged.url + "/usage", params={"group_by": "tag"}, headers=admin)
    assert report.status_code == 200, report.text
    body = report.json()
    by_tag = {r["tag"]: r for r in body["rows"]}
    assert {t: r["requests"] for t, r in by_tag.items()} == {"batch": 2, "eval": 2, "owui": 5}
    assert by_tag["owui"]["total_tokens"] == body["totals"]["total_tokens"] > by_tag["batch"]["total_tokens"] > 0
    assert body["totals"]["requests"] == 5 and by_tag["owui"]["cost"] == body["totals"]["cost"]
    url = tagged.settings.database_url.reveal()
    cli = run_meterway(["usage", "--by", "tag,day", "--format", "json", "--database-url", url])
    assert cli.returncode == 0, cli.stderr
    day_rows = orjson.loads(cli.stdout)["rows"]
    assert sorted((r["tag"], r["requests"]) for r in day_rows) == [("batch", 2), ("eval", 2), ("owui", 5)]


def test_require_customer_binding_refuses_a_header_naming_a_customer_as_it_does_user(standin: StandIn) -> None:
    config = {
        "model_list": [priced(standin.base_url)],
        "general_settings": {"user_header_name": "X-OpenWebUI-User-Id", "require_customer_binding": True},
    }
    with run_gateway(config) as running:
        admin = {"Authorization": f"Bearer {running.key}"}
        httpx.post(running.url + "/customer/new", json={"user_id": "acme"}, headers=admin).raise_for_status()
        key = httpx.post(running.url + "/key/generate", json={}, headers=admin).json()["key"]
        for header in ("X-OpenWebUI-User-Id", "x-litellm-customer-id"):
            answer = httpx.post(
                running.v1 + "/chat/completions",
                json={"model": "priced", "messages": HI},
                headers={"Authorization": f"Bearer {key}", header: "acme"},
            )
            assert answer.status_code == 403 and answer.json()["error"]["code"] == "customer_not_bound", answer.text


def test_a_rows_tags_are_each_once_and_at_most_64(gw: RunningGateway, standin: StandIn) -> None:
    """The defaults and a request's own tags, each within the bound, stay within it together; a
    request naming a tag twice (with defaults or without) keeps it once, so usage by tag counts
    the row once."""
    _chat(gw, "tags-cap", extra_body={"tags": [f"t{i}" for i in range(64)]})
    assert orjson.loads(_rows(gw, "tags-cap")[0][2]) == ["owui", "prod", *(f"t{i}" for i in range(62))]
    with run_gateway({"model_list": [priced(standin.base_url)]}) as plain:
        _chat(plain, "tags-twice", extra_body={"tags": ["a", "b", "a"]})
        assert orjson.loads(_rows(plain, "tags-twice")[0][2]) == ["a", "b"]


def test_usage_by_tag_counts_a_row_naming_a_tag_twice_once(tagged: RunningGateway) -> None:
    """A row kept before tags were de-duplicated may name a tag twice: it is one request of that
    tag's group, not two (the row is rewritten so here; the other test's figures stay true)."""

    async def name_batch_twice() -> None:
        store = await Store.open(tagged.settings.database_url.reveal(), wait_s=5, run_migrations=False)
        try:
            async with store.engine.begin() as conn:
                twice = ["owui", "batch", "eval", "batch"]
                await conn.execute(
                    sa.update(ledger)
                    .where(sa.cast(ledger.c.tags, sa.Text).like('%"eval"%'))
                    .where(sa.cast(ledger.c.tags, sa.Text).like('%"batch"%'))
                    .values(tags=twice)
                )
        finally:
            await store.engine.dispose()

    asyncio.run(name_batch_twice())
    admin = {"Authorization": f"Bearer {tagged.key}"}
    report = httpx.get(tagged.url + "/usage", params={"group_by": "tag"}, headers=admin)
    assert report.status_code == 200, report.text
    assert {r["tag"]: r["requests"] for r in report.json()["rows"]} == {"batch": 2, "eval": 2, "owui": 5}
