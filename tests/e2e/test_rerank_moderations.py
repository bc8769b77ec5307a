"""Rerank and moderations end to end: Cohere's rerank shape over plain HTTP against a `cohere/`
deployment (at a stand-in that checks its key and answers in Cohere's v2 format) and against an
OpenAI-compatible reranker (Jina's shape, as vLLM serves it); OpenAI's moderations through the
`openai` SDK. Each is answered in its own shape and leaves a ledger row billed in its own unit:
search units as `queries` x `input_cost_per_query`, in `/usage`, `meterway usage`, the invoice
preview and the Lago export; a budget refuses a rerank it cannot pay for."""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.lago.standin import LagoStandIn, billing_ready
from tests.support.cli import run_meterway
from tests.support.gateway import RunningGateway, run_gateway
from tests.support.wait import eventually
from tests.upstreams.providers import ProviderStandIn
from tests.upstreams.standin import Script

QUERY_PRICE = 0.002  # USD per search unit, Cohere's list price for rerank-v3.5
UNIT = 10**10  # the ledger's money units per USD
DOCS = ["the capital of France is Paris", "bananas are yellow", "Paris is in France"]


@pytest.fixture(scope="module")
def providers() -> Iterator[ProviderStandIn]:
    with ProviderStandIn() as s:
        yield s


@pytest.fixture(scope="module")
def lago() -> Iterator[LagoStandIn]:
    with LagoStandIn() as stand_in:
        billing_ready(stand_in, ["acme"])
        yield stand_in


@pytest.fixture(scope="module")
def gw(providers: ProviderStandIn, lago: LagoStandIn) -> Iterator[RunningGateway]:
    base = providers.base_url
    config = {
        "model_list": [
            {
                "model_name": "rerank",
                "litellm_params": {"model": "cohere/rerank-v3.5", "api_base": base, "api_key": "co-key"},
                "model_info": {"input_cost_per_query": QUERY_PRICE},
            },
            {
                "model_name": "rerank-wrong-key",
                "litellm_params": {"model": "cohere/rerank-v3.5", "api_base": base, "api_key": "not-the-key"},
            },
            {
                "model_name": "vllm-rerank",
                "litellm_params": {
                    "model": "hosted_vllm/BAAI/bge-reranker-v2-m3",
                    "api_base": base + "/v1",
                    "input_cost_per_token": 0.000001,
                },
            },
            {
                "model_name": "omni-moderation-latest",
                "litellm_params": {"model": "openai/omni-moderation-latest", "api_base": base + "/v1", "api_key": "k"},
            },
        ],
        "billing": {"api_base": lago.url, "api_key": lago.api_key, "charge_by": "end_user_id"},
    }
    with run_gateway(config) as g:
        yield g


def _post(gw: RunningGateway, path: str, body: dict[str, Any], key: str | None = None) -> httpx.Response:
    return httpx.post(gw.url + path, json=body, headers={"Authorization": f"Bearer {key or gw.key}"}, timeout=30)


def _row(gw: RunningGateway, request_id: str) -> dict[str, Any]:
    with sqlite3.connect(gw.settings.database_url.reveal().removeprefix("sqlite:///")) as db:
        db.row_factory = sqlite3.Row
        found = db.execute("SELECT * FROM mw_ledger WHERE request_id = ?", (request_id,)).fetchone()
    assert found is not None
    return dict(found)


def test_cohere_rerank_answers_in_cohere_shape_and_bills_search_units(
    gw: RunningGateway, providers: ProviderStandIn
) -> None:
    body = {"model": "rerank", "query": "Paris France", "documents": [DOCS[0], {"text": DOCS[1]}, DOCS[2]]}
    r = _post(gw, "/v1/rerank", {**body, "top_n": 2, "return_documents": True, "user": "acme"})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["id"].startswith("rerank-standin-")
    assert [x["index"] for x in answer["results"]] == [2, 0]
    assert answer["results"][0]["document"] == {"text": DOCS[2]}
    assert answer["meta"]["billed_units"] == {"search_units": 1}
    sent = providers.received[-1]
    assert sent.path == "/v2/rerank" and sent.json["documents"] == DOCS and sent.json["model"] == "rerank-v3.5"
    row = _row(gw, r.headers["x-request-id"])
    assert row["endpoint"] == "rerank" and row["queries"] == 1 and row["customer_id"] == "acme"
    assert row["cost"] == round(QUERY_PRICE * UNIT)
    # Cohere's own path, and without the documents: no `document` in the results
    plain = _post(gw, "/v2/rerank", body)
    assert plain.status_code == 200 and all("document" not in x for x in plain.json()["results"])


def test_the_cohere_stand_in_refuses_a_wrong_key(gw: RunningGateway) -> None:
    r = _post(gw, "/rerank", {"model": "rerank-wrong-key", "query": "q", "documents": ["d"]})
    assert r.status_code == 401 and r.json()["error"]["message"], r.text


def test_an_openai_compatible_reranker_is_billed_by_its_tokens(gw: RunningGateway, providers: ProviderStandIn) -> None:
    r = _post(gw, "/rerank", {"model": "vllm-rerank", "query": "Paris", "documents": DOCS, "return_documents": True})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["results"][0]["document"]["text"] in DOCS and answer["meta"]["billed_units"] == {"search_units": 1}
    sent = providers.received[-1]
    assert sent.path == "/v1/rerank" and sent.json["model"] == "BAAI/bge-reranker-v2-m3"
    tokens = 1 * len(DOCS) + sum(len(d.split()) for d in DOCS)
    assert answer["meta"]["tokens"] == {"input_tokens": tokens, "output_tokens": 0}
    row = _row(gw, r.headers["x-request-id"])
    assert row["queries"] == 1 and row["prompt_tokens"] == tokens and row["cost"] == tokens * 10_000


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "rerank", "documents": ["d"]}, "query"),
        ({"model": "rerank", "query": "q", "documents": "d"}, "documents"),
        ({"model": "rerank", "query": "q", "documents": ["d"] * 10_000}, "documents"),
        ({"model": "rerank", "query": "q", "documents": ["d"], "top_n": -1}, "top_n"),
        ({"model": "rerank", "query": "q", "documents": []}, "documents"),
    ],
)
def test_bad_rerank_input_is_an_openai_400(gw: RunningGateway, body: dict[str, Any], param: str) -> None:
    r = _post(gw, "/v1/rerank", body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_moderation_through_the_openai_sdk(gw: RunningGateway) -> None:
    with openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0) as client:
        raw = client.moderations.with_raw_response.create(
            model="omni-moderation-latest", input=["a calm day", "an attack"]
        )
    result = raw.parse()
    assert [x.flagged for x in result.results] == [False, True]
    assert result.results[1].categories.violence is True
    row = _row(gw, raw.headers["x-request-id"])
    assert row["endpoint"] == "moderations" and row["status"] == "success"
    assert row["cost"] == 0  # OpenAI charges nothing: priced at 0 in the bundled table, not unknown


def test_usage_cli_invoice_and_lago_carry_queries(gw: RunningGateway, lago: LagoStandIn) -> None:
    body = {"model": "rerank", "query": "q", "documents": ["d"] * 150, "user": "acme"}  # two search units
    r = _post(gw, "/v1/rerank", body)
    assert r.status_code == 200 and r.json()["meta"]["billed_units"] == {"search_units": 2}
    uid = _row(gw, r.headers["x-request-id"])["uid"]
    usage = httpx.get(
        gw.url + "/usage", params={"group_by": "model"}, headers={"Authorization": f"Bearer {gw.key}"}
    ).json()
    by_model = {x["model"]: x for x in usage["rows"]}
    assert by_model["rerank"]["queries"] >= 2 and usage["totals"]["queries"] >= 2
    env = {k: v for k, v in os.environ.items() if k not in ("METERWAY_CONFIG", "CONFIG_FILE_PATH")}
    done = run_meterway(
        ["usage", "--by", "model", "--format", "csv", "--database-url", gw.settings.database_url.reveal()], env
    )
    assert done.returncode == 0, done.stderr
    header, *lines = done.stdout.splitlines()
    assert "queries" in header.split(",")
    at = header.split(",").index("queries")
    assert any(line.startswith("rerank,") and int(line.split(",")[at]) >= 2 for line in lines), done.stdout
    invoice = httpx.get(gw.url + "/customer/acme/invoice-preview", headers={"Authorization": f"Bearer {gw.key}"}).json()
    (line,) = [x for x in invoice["lines"] if x["token_type"] == "queries"]
    assert line["model"] == "rerank" and line["quantity"] >= 2 and line["unit_price"] == "0.002"
    eventually(lambda: any(e.transaction_id == uid for e in lago.events), 15, "the rerank's event in Lago")
    (event,) = [e for e in lago.events if e.transaction_id == uid]
    assert event.properties["queries"] == 2 and event.properties["model"] == "rerank"
    assert "images" not in event.properties and "audio_seconds" not in event.properties


def test_the_ui_shows_queries_in_usage_and_the_request_log(gw: RunningGateway) -> None:
    r = _post(gw, "/v1/rerank", {"model": "rerank", "query": "q", "documents": ["d"] * 3})
    assert r.status_code == 200
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        form = client.get("/ui/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf is not None
        assert client.post("/ui/login", data={"csrf": csrf.group(1), "key": gw.key}).status_code == 303
        usage = client.get("/ui/usage", params={"group_by": "model"})
        assert usage.status_code == 200 and 'data-test="usage-queries"' in usage.text
        detail = client.get("/ui/logs/detail", params={"request_id": r.headers["x-request-id"]})
        assert detail.status_code == 200 and 'data-test="unit-queries">1<' in detail.text, detail.text


def test_a_budget_refuses_a_rerank_it_cannot_pay_for(gw: RunningGateway) -> None:
    # $0.003 pays for one search unit ($0.002), not for the two 150 documents may cost
    key = _post(gw, "/key/generate", {"max_budget": 0.003}).json()["key"]
    refused = _post(gw, "/v1/rerank", {"model": "rerank", "query": "q", "documents": ["d"] * 150}, key)
    assert refused.status_code == 400, refused.text
    assert "Budget exceeded" in refused.json()["error"]["message"]
    served = _post(gw, "/v1/rerank", {"model": "rerank", "query": "q", "documents": ["d"] * 3}, key)
    assert served.status_code == 200, served.text


def test_the_demo_model_reranks_and_moderates() -> None:
    with run_gateway({"model_list": [{"model_name": "demo", "litellm_params": {"model": "mock/demo"}}]}) as demo:
        ranked = _post(demo, "/rerank", {"model": "demo", "query": "red apple", "documents": ["blue sky", "red apple"]})
        assert ranked.status_code == 200, ranked.text
        assert [x["index"] for x in ranked.json()["results"]] == [1, 0]
        with openai.OpenAI(base_url=demo.v1, api_key=demo.key, max_retries=0) as client:
            assert client.moderations.create(model="demo", input="hello").results[0].flagged is False


@pytest.mark.parametrize("reported", ["3", -5, 2.5])
def test_search_units_that_are_no_count_bill_the_requests_own(
    gw: RunningGateway, providers: ProviderStandIn, reported: Any
) -> None:
    answer = {
        "id": "rerank-bad-units",
        "results": [{"index": 0, "relevance_score": 0.9}],
        "meta": {"billed_units": {"search_units": reported}},
    }
    providers.script(Script(status=200, body=answer, path="/v2/rerank"))
    r = _post(gw, "/v1/rerank", {"model": "rerank", "query": "q", "documents": ["d"] * 150})
    assert r.status_code == 200, r.text
    assert r.json()["meta"]["billed_units"]["search_units"] >= 0
    row = _row(gw, r.headers["x-request-id"])
    # 150 short documents: at most two search units, as reserved
    assert row["queries"] == 2 and row["cost"] == round(2 * QUERY_PRICE * UNIT)
    assert "usage_invalid" in (row["flags"] or "")


def test_a_rerank_of_dense_documents_reserves_a_search_unit_per_500_bytes(gw: RunningGateway) -> None:
    # 100 documents of 1,200 digits: a chunk of 500 tokens may be 500 bytes, so 300 chunks, 3 search
    # units ($0.006): more than $0.005 pays for (at 3 bytes a token it reserved one)
    key = _post(gw, "/key/generate", {"max_budget": 0.005}).json()["key"]
    refused = _post(gw, "/v1/rerank", {"model": "rerank", "query": "q", "documents": ["7" * 1200] * 100}, key)
    assert refused.status_code == 400 and "Budget exceeded" in refused.json()["error"]["message"], refused.text
