"""Hostile input at the edge: every value that would be stored is bounded and NUL-free, bodies must
be UTF-8 JSON of bounded depth, and none of it ever gets a 5xx. Each case here answered 500 (or
stored a value the store refuses, or one no listing could show again) before the checks existed.
See docs/security.md for the bounds."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from collections.abc import Iterator
from typing import Any

import anthropic
import asyncpg
import httpx
import pytest

from tests.e2e.test_errors import error_of
from tests.e2e.test_ledger import ledger_row
from tests.e2e.test_ui_http import login
from tests.support.gateway import RunningGateway, run_gateway

CHAT = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "demo", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}


def demo_config() -> dict[str, Any]:
    return {"model_list": [{"model_name": "demo", "litellm_params": {"model": "mock/demo"}}], "general_settings": {}}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def edge(request: pytest.FixtureRequest) -> Iterator[RunningGateway]:
    """A gateway with the in-process demo model, on SQLite and on PostgreSQL (which, unlike SQLite,
    refuses NUL in text: a value let through would fail the commit there)."""
    config = demo_config()
    if request.param == "postgresql":
        config["general_settings"]["database_url"] = request.getfixturevalue("module_pg_url")
    with run_gateway(config) as gw:
        yield gw


@pytest.fixture
def http(edge: RunningGateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=edge.url, headers={"Authorization": f"Bearer {edge.key}"}, timeout=20) as c:
        yield c


def post_json(http: httpx.Client, path: str, body: Any, **headers: str) -> httpx.Response:
    """The body as Python's json writes it: NUL, surrogates and 30-digit integers included."""
    return http.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json", **headers})


# ---------------------------------------------------------------- model routes


@pytest.mark.parametrize(
    ("extra", "param", "code"),
    [
        ({"user": "a\x00b"}, "user", "invalid_value"),
        ({"user": "u" * 256}, "user", "string_too_long"),
        ({"model": "demo\x00"}, "model", "invalid_value"),
        ({"model": "m" * 256}, "model", "string_too_long"),
        ({"tags": ["ok", "bad\x00"]}, "tags", "invalid_value"),
        ({"tags": ["t" * 256]}, "tags", "string_too_long"),
        ({"tags": [f"t{i}" for i in range(65)]}, "tags", "too_many_tags"),
        ({"tags": "not-a-list"}, "tags", "invalid_type"),
        ({"metadata": {"tags": ["x\x00"]}}, "metadata.tags", "invalid_value"),
        ({"metadata": {"k\x00": 1}}, "metadata", "invalid_value"),
        ({"metadata": {"k" * 256: 1}}, "metadata", "invalid_value"),
        ({"metadata": {"blob": "x" * 20_000}}, "metadata", "metadata_too_large"),
        ({"metadata": "a string"}, "metadata", "invalid_type"),
    ],
)
def test_a_stored_field_past_its_bound_is_400_naming_it_and_its_row_holds_no_bad_value(
    edge: RunningGateway, http: httpx.Client, extra: dict[str, Any], param: str, code: str
) -> None:
    rid = "edge-" + uuid.uuid4().hex
    r = post_json(http, "/v1/chat/completions", {**CHAT, **extra}, **{"x-request-id": rid})
    err = error_of(r)
    assert r.status_code == 400 and err["param"] == param and err["code"] == code, err
    row = ledger_row(edge, rid)  # the refused request is metered too, without what was refused
    assert row["http_status"] == 400 and row["model"] is None and row["end_user"] is None
    assert row["request_tags"] == [] and row["metadata"] == {}


def test_values_within_the_bounds_are_stored_as_sent(edge: RunningGateway, http: httpx.Client) -> None:
    rid = "edge-" + uuid.uuid4().hex
    user = "ü" * 255  # the bound counts characters, not bytes
    tags = [f"tag-{i}-😀" for i in range(64)]
    metadata = {"k" * 255: "v", "nested": {"n": [1, 2, {"deep": True}]}, "big": 10**30}
    r = post_json(
        http,
        "/v1/chat/completions",
        {**CHAT, "user": user, "tags": tags, "metadata": metadata},
        **{"x-request-id": rid},
    )
    assert r.status_code == 200, r.text
    row = ledger_row(edge, rid)
    assert row["end_user"] == user and row["request_tags"] == tags
    assert row["metadata"]["nested"] == metadata["nested"] and row["metadata"]["big"] == 1e30


@pytest.mark.parametrize(
    ("path", "body", "tags"),
    [
        ("/v1/chat/completions", {**CHAT, "metadata": {"tags": ["from-metadata"], "team": "a"}}, ["from-metadata"]),
        ("/v1/chat/completions", {**CHAT, "tags": ["top"], "metadata": {"tags": ["inner"]}}, ["top"]),
        ("/v1/embeddings", {"model": CHAT["model"], "input": "hi", "tags": ["embed"]}, ["embed"]),
    ],
)
def test_tags_come_from_tags_else_metadata_tags_as_litellm_clients_send_them(
    edge: RunningGateway, http: httpx.Client, path: str, body: dict[str, Any], tags: list[str]
) -> None:
    rid = "edge-" + uuid.uuid4().hex
    r = post_json(http, path, body, **{"x-request-id": rid})
    assert r.status_code == 200, r.text
    row = ledger_row(edge, rid)
    assert row["request_tags"] == tags and row["metadata"] == body.get("metadata", {})


@pytest.mark.parametrize("metadata", [{"user_id": "a\x00"}, {"user_id": "u" * 256}, {"user_id": 7}])
def test_anthropic_user_id_past_its_bound_is_400_in_anthropic_format(
    edge: RunningGateway, metadata: dict[str, Any]
) -> None:
    with (
        anthropic.Anthropic(base_url=edge.url, api_key=edge.key, max_retries=0) as client,
        pytest.raises(anthropic.BadRequestError) as caught,
    ):
        client.messages.create(**MESSAGES, metadata=metadata)  # type: ignore[call-overload]
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error" and "metadata.user_id" in body["error"]["message"]


_BODIES = {
    "/v1/chat/completions": CHAT,
    "/v1/embeddings": {"model": "demo", "input": "hi"},
    "/v1/responses": {"model": "demo", "input": "hi"},
    "/v1/messages": MESSAGES,
}


@pytest.mark.parametrize("path", list(_BODIES))
@pytest.mark.parametrize(
    ("field", "value"),
    [("metadata", '{"x":1e400}'), ("litellm_metadata", '{"x":1e400}'), ("tags", '["a",-1e400]')],
)
def test_a_number_past_a_double_in_metadata_or_tags_is_400_naming_the_field(
    http: httpx.Client, path: str, field: str, value: str
) -> None:
    # valid JSON that no 64-bit float holds: it answered 500 (the parser refused it after the syntax check)
    body = json.dumps(_BODIES[path])[:-1].encode() + f',"{field}":{value}}}'.encode()
    r = http.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    if path == "/v1/messages":
        assert r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error"
        assert f"'{field}'" in r.json()["error"]["message"]
    else:
        error = error_of(r)
        assert error["param"] == field and error["type"] == "invalid_request_error", error


def test_a_number_past_a_double_anywhere_in_a_responses_body_is_400(http: httpx.Client) -> None:
    # the Responses runs and the token count read the whole body again: it answered 500
    for path in ("/v1/responses", "/v1/responses/input_tokens"):
        for extra in (',"temperature":1e400', ',"x":-1e400'):
            body = b'{"model":"demo","input":"hi"' + extra.encode() + b"}"
            r = http.post(path, content=body, headers={"content-type": "application/json"})
            assert r.status_code == 400, (path, r.text)
            assert error_of(r)["code"] == "invalid_value" and "out of range" in error_of(r)["message"]


def test_json_nested_a_hundred_thousand_deep_is_400(http: httpx.Client) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    for body in (
        b'{"model":"demo","messages":[{"role":"user","content":"x"}],"extra":' + deep + b"}",
        b'{"model":"demo","messages":[{"role":"user","content":' + deep + b"}]}",
    ):
        r = http.post("/v1/chat/completions", content=body)
        assert r.status_code == 400 and error_of(r)["code"] == "nested_too_deep"
    r = http.post("/v1/messages", content=b'{"model":"demo","max_tokens":5,"messages":[' + deep + b"]}")
    assert r.status_code == 400 and r.json()["type"] == "error"
    r = http.post("/key/generate", content=b'{"metadata":{"a":' + deep + b"}}")
    assert r.status_code == 400 and error_of(r)["code"] == "nested_too_deep"


def test_invalid_utf8_and_lone_surrogates_in_a_body_are_400(http: httpx.Client) -> None:
    for content in (b'"\xff\xfe"', b'"caf\xe9"', b'"\xed\xa0\x80"'):  # not UTF-8; CESU-8 surrogate bytes
        body = b'{"model":"demo","messages":[{"role":"user","content":' + content + b"}]}"
        r = http.post("/v1/chat/completions", content=body)
        assert r.status_code == 400 and error_of(r)["code"] == "invalid_encoding", r.text
    for escape in (b"\\ud800", b"\\udfff", b"\\ud800x", b"\\ud800\\u0041"):
        body = b'{"model":"demo","messages":[{"role":"user","content":"' + escape + b'"}]}'
        r = http.post("/v1/chat/completions", content=body)
        assert r.status_code == 400 and "not valid JSON" in error_of(r)["message"], r.text
    pair = '{"model":"demo","messages":[{"role":"user","content":"\\ud83d\\ude00 caf\u00e9"}]}'  # a valid pair
    assert http.post("/v1/chat/completions", content=pair.encode()).status_code == 200


def test_a_key_header_that_is_not_utf8_is_401_not_500(edge: RunningGateway) -> None:
    for path, body in (("/v1/chat/completions", CHAT), ("/key/generate", {}), ("/v1/messages", MESSAGES)):
        for header in (b"authorization", b"x-api-key"):
            value = b"Bearer sk-\xff\xfe" if header == b"authorization" else b"sk-\xff\xfe"
            r = httpx.post(edge.url + path, json=body, headers={header.decode(): value}, timeout=10)
            assert r.status_code == 401, (path, header, r.text)


# ---------------------------------------------------------------- management API


def _nest(depth: int) -> dict[str, Any]:
    """An object `depth` levels deep."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"n": value}
    return value


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"max_budget": 3.5e16}, "max_budget"),
        ({"max_budget": -1}, "max_budget"),
        ({"rpm_limit": 10**20}, "rpm_limit"),
        ({"tpm_limit": 2**31}, "tpm_limit"),
        ({"max_parallel_requests": -1}, "max_parallel_requests"),
        ({"duration": "999999999d"}, "duration"),
        ({"duration": "9" * 5000 + "d"}, "duration"),
        ({"budget_duration": "36501d"}, "budget_duration"),
        ({"metadata": {"a": 10**30}}, "metadata"),
        ({"metadata": {"a": -(2**63) - 1}}, "metadata"),
        ({"metadata": {"k\x00": 1}}, "metadata"),
        ({"metadata": _nest(17)}, "metadata"),
        ({"metadata": {"blob": "x" * 20_000}}, "metadata"),
        ({"key_alias": "a\x00"}, "key_alias"),
        ({"key_alias": "a" * 256}, "key_alias"),
        ({"user_id": "u\x00"}, "user_id"),
        ({"models": ["gpt\x00"]}, "models"),
        ({"billing_external_customer_id": "c" * 256}, "billing_external_customer_id"),
        ({"key": "sk-" + "x" * 600}, "key"),
    ],
)
def test_key_generate_refuses_values_that_cannot_be_stored_before_writing(
    http: httpx.Client, body: dict[str, Any], param: str
) -> None:
    before = http.get("/key/list").json()["total_count"]
    r = post_json(http, "/key/generate", body)
    err = error_of(r)
    assert r.status_code == 400 and err["param"] == param, err
    assert http.get("/key/list").json()["total_count"] == before  # nothing was stored


def test_bounds_on_other_entities_and_queries(http: httpx.Client) -> None:
    for path, body, param in (
        ("/team/new", {"team_id": "t\x00"}, "team_id"),
        ("/team/new", {"team_alias": "a" * 256}, "team_alias"),
        ("/user/new", {"user_email": "e" * 321}, "user_email"),
        ("/user/new", {"user_id": "u", "rpm_limit": 2**31}, "rpm_limit"),
        ("/customer/new", {"user_id": "c\x00"}, "user_id"),
        ("/customer/new", {"user_id": "c", "max_budget": 1e9}, "max_budget"),
        ("/customer/new", {"user_id": "c", "metadata": {"a": 10**19}}, "metadata"),
        ("/team/delete", {"team_ids": ["x\x00"]}, "team_ids"),
        ("/key/delete", {"keys": ["sk-\x00"]}, "keys"),
        ("/model/new", {"model_name": "m\x00", "litellm_params": {"model": "mock/demo"}}, None),
        ("/billing/reprocess", {"reason": "a\x00"}, "reason"),
        ("/webhooks/reprocess", {"since": "2024-01-01\x00"}, "since"),
        ("/team/member_add", {"team_id": "t", "member": {"user_id": "\x00"}}, "member.user_id"),
    ):
        r = post_json(http, path, body)
        assert r.status_code == 400, (path, r.text)
        if param is not None:
            assert error_of(r)["param"] == param, (path, r.text)
    for path in ("/key/info?key=sk-%00", "/user/info?user_id=%00", "/spend/logs?user_id=%00", "/key/list?team_id=%00"):
        r = http.get(path)
        assert r.status_code == 400 and "NUL" in error_of(r)["message"], (path, r.text)
    r = http.get("/spend/logs", params={"model": "m" * 2000})
    assert r.status_code == 400 and error_of(r)["param"] == "model"
    r = http.get("/key/list", params={"page": "9" * 30})  # an offset no store can take
    assert r.status_code == 400 and error_of(r)["param"] == "page"
    for customer, code in (("a%00b", "invalid_value"), ("c" * 300, "string_too_long")):
        r = http.get(f"/customer/{customer}/invoice-preview")
        assert r.status_code == 400 and error_of(r)["code"] == code, r.text


def test_reported_usage_with_nul_or_huge_counts_is_422_not_a_write_that_never_commits(http: httpx.Client) -> None:
    event = {"id": "r-" + uuid.uuid4().hex, "model": "m", "user": "u", "prompt_tokens": 1, "completion_tokens": 1}
    for bad, param in (
        ({"model": "m\x00"}, "model"),
        ({"end_user": "u\x00"}, "end_user"),
        ({"prompt_tokens": 2**63}, "prompt_tokens"),
    ):
        r = post_json(http, "/webhooks/usage", {**event, **bad})
        assert r.status_code == 422 and error_of(r)["param"] == param, r.text
    assert post_json(http, "/webhooks/usage", event).status_code == 200


def test_ui_pages_refuse_a_nul_or_an_unreachable_page_in_their_query(edge: RunningGateway) -> None:
    with login(edge, key=edge.key) as ui:
        for path in (
            "/ui/logs?request_id=%00",
            "/ui/logs?model=%00",
            "/ui/usage?customer_id=%00",
            "/ui/keys?page=" + "9" * 30,
        ):
            assert ui.get(path).status_code == 400, path


def test_a_stored_key_with_an_unencodable_integer_is_listed_with_it_as_a_string(edge: RunningGateway) -> None:
    """A key stored before the bounds (metadata holding a 30-digit integer) made every
    `/key/list?return_full_object=true` a 500. It is written here straight into the database."""
    with httpx.Client(base_url=edge.url, headers={"Authorization": f"Bearer {edge.key}"}, timeout=10) as http:
        made = http.post("/key/generate", json={"key_alias": "legacy-big-int", "metadata": {"a": 1}}).json()
        _set_metadata(edge, made["token"], '{"a": 123456789012345678901234567890, "n": [1, -99999999999999999999]}')
        keys = []
        page = 1
        while True:
            r = http.get("/key/list", params={"return_full_object": "true", "size": 100, "page": page})
            assert r.status_code == 200, r.text
            keys += r.json()["keys"]
            if page >= r.json()["total_pages"]:
                break
            page += 1
        legacy = next(k for k in keys if k["token"] == made["token"])
        assert legacy["metadata"] == {"a": "123456789012345678901234567890", "n": [1, "-99999999999999999999"]}
        r = http.get("/key/info", params={"key": made["token"]})
        assert r.status_code == 200 and r.json()["info"]["metadata"]["a"] == "123456789012345678901234567890"


def _set_metadata(gw: RunningGateway, token: str, metadata: str) -> None:
    url = gw.settings.database_url.reveal()
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            db.execute("UPDATE mw_keys SET metadata = ? WHERE token = ?", (metadata, token))
        return

    async def update() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("UPDATE mw_keys SET metadata = $1::json WHERE token = $2", metadata, token)
        finally:
            await conn.close()

    asyncio.run(update())


# ---------------------------------------------------------------- UI


@pytest.mark.parametrize("path", ["/ui/static/%00", "/ui/static/a%00b.css", "/ui/static/" + "a" * 5000, "/ui/static/"])
def test_odd_static_paths_are_404(edge: RunningGateway, path: str) -> None:
    assert httpx.get(edge.url + path, timeout=10).status_code == 404


def test_a_body_too_deep_to_rewrite_is_400_and_a_shallower_one_is_served(gateway: RunningGateway) -> None:
    """Bodies the gateway rewrites for the upstream (model renamed, API translated) pass the head
    decoder at 300 levels but not the JSON encoder: 400, not the encoder's error as a 500."""
    with httpx.Client(base_url=gateway.v1, headers={"Authorization": f"Bearer {gateway.key}"}, timeout=20) as http:
        for depth, status in ((100, 200), (300, 400)):
            nested = b"[" * depth + b"]" * depth
            for model in ("gpt-test", "azure-gpt"):
                body = b'{"model":"%s","messages":[{"role":"user","content":"x","extra":%s}]}' % (
                    model.encode(),
                    nested,
                )
                r = http.post("/chat/completions", content=body)
                assert r.status_code == status, (depth, model, r.text)
                if status == 400:
                    assert error_of(r)["code"] == "nested_too_deep"
