"""`GET /metrics`: scraped before and after real traffic, the counters and histograms move by
exactly what was served, refused and failed, and by what the ledger recorded; with several
workers, every scrape sums them all."""

from __future__ import annotations

import sqlite3
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.gateway import run_gateway
from tests.support.models import priced
from tests.support.serve import serve
from tests.upstreams.standin import StandIn

HI: Any = [{"role": "user", "content": "hi"}]


def scrape(url: str, path: str = "/metrics") -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample, by name and labels."""
    resp = httpx.get(url + path, timeout=10)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def moved(before: dict[Any, float], after: dict[Any, float], name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_counters_and_histograms_move_by_what_was_served(upstream: StandIn) -> None:
    with run_gateway({"model_list": [priced(upstream.base_url)]}) as gw:
        admin = {"Authorization": f"Bearer {gw.key}"}
        httpx.post(gw.url + "/team/new", json={"team_id": "search"}, headers=admin).raise_for_status()
        key = httpx.post(gw.url + "/key/generate", json={"team_id": "search"}, headers=admin).json()["key"]
        limited = httpx.post(gw.url + "/key/generate", json={"rpm_limit": 1}, headers=admin).json()["key"]
        before = scrape(gw.url)
        with openai.OpenAI(base_url=gw.v1, api_key=key, max_retries=0) as client:
            client.chat.completions.create(model="priced", messages=HI, user="acme")
            client.chat.completions.create(model="priced", messages=HI, user="acme")
            list(client.chat.completions.create(model="priced", messages=HI, user="acme", stream=True))
            client.embeddings.create(model="priced", input="hello")
            upstream.script_fail(500, {"error": {"message": "boom"}})
            with pytest.raises(openai.InternalServerError):
                client.chat.completions.create(model="priced", messages=HI)
        with openai.OpenAI(base_url=gw.v1, api_key=limited, max_retries=0) as client:
            client.chat.completions.create(model="priced", messages=HI)
            with pytest.raises(openai.RateLimitError):
                client.chat.completions.create(model="priced", messages=HI)
        after = scrape(gw.url)

        assert moved(before, after, "meterway_requests_total", endpoint="chat", model="priced", status="200") == 4
        assert moved(before, after, "meterway_requests_total", endpoint="embeddings", model="priced", status="200") == 1
        assert moved(before, after, "meterway_requests_total", endpoint="chat", model="priced", status="429") == 1
        assert moved(before, after, "meterway_limit_rejections_total", reason="rpm") == 1
        deployment = gw.settings.deployments[0].id
        errors = moved(
            before, after, "meterway_upstream_errors_total", deployment=deployment, error_type="upstream_error"
        )
        assert errors == 1
        assert moved(before, after, "meterway_request_duration_seconds_count", endpoint="chat", model="priced") == 6
        assert moved(before, after, "meterway_time_to_first_token_seconds_count", model="priced") == 1

        with sqlite3.connect(gw.settings.database_url.reveal().removeprefix("sqlite:///")) as db:
            prompt, completion, cost = db.execute(
                "SELECT sum(prompt_tokens), sum(completion_tokens), sum(cost) FROM mw_ledger WHERE customer_id = 'acme'"
            ).fetchone()
            team_prompt = db.execute("SELECT sum(prompt_tokens) FROM mw_ledger WHERE team_id = 'search'").fetchone()[0]
        assert prompt > 0 and completion > 0
        assert moved(before, after, "meterway_customer_tokens_total", customer="acme", type="input") == prompt
        assert moved(before, after, "meterway_customer_tokens_total", customer="acme", type="output") == completion
        assert moved(before, after, "meterway_team_tokens_total", team="search", type="input") == team_prompt
        assert moved(before, after, "meterway_customer_cost_usd_total", customer="acme") == pytest.approx(
            cost * 1e-10, rel=1e-9
        )
        assert moved(before, after, "meterway_ledger_commit_seconds_count") >= 1
        assert scrape(gw.url, "/health/metrics").keys() >= after.keys() - {k for k in after if "created" in k[0]}


def test_customer_labels_are_bounded() -> None:
    from meterway.telemetry.metrics import OTHER, Bounded

    bound = Bounded(2)
    assert [bound(v) for v in ("a", "b", "c", "a", "d", None)] == ["a", "b", OTHER, "a", OTHER, ""]


def test_several_workers_are_summed_on_every_scrape(tmp_path: Any) -> None:
    for served in serve(["--workers", "2"], {"METERWAY_MASTER_KEY": "sk-metrics"}):
        headers = {"Authorization": "Bearer sk-metrics", "Connection": "close"}
        body = {"model": "demo", "messages": HI}
        before = scrape(served.url)
        for _ in range(20):  # a new connection each: the kernel spreads them over both workers
            assert httpx.post(served.url + "/v1/chat/completions", json=body, headers=headers).status_code == 200
        for _ in range(6):  # whichever worker answers, it reports both workers' counts
            after = scrape(served.url)
            assert moved(before, after, "meterway_requests_total", endpoint="chat", model="demo", status="200") == 20
