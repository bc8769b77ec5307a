"""Every route goes through one error boundary (`api.errors.boundary`): whatever a handler raises,
expected or not, the client gets the one JSON error shape (OpenAI's, or Anthropic's on
/v1/messages) with the request's id in `x-request-id`, and an unexpected failure quotes that id
in its message. One test per handler family, each failure provoked for real: a hook that raises,
a table dropped from the test's own database."""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from meterway.context import RequestContext
from tests.support.gateway import RunningGateway, run_gateway
from tests.upstreams.standin import StandIn

HI: Any = [{"role": "user", "content": "hi"}]
RID = "boundary-test-id-7"


class Broken:
    """A hook with a bug: it raises what no handler expects."""

    async def before(self, ctx: RequestContext) -> None:
        raise ZeroDivisionError("a bug in a hook")

    async def after(self, ctx: RequestContext) -> None:
        return None


@contextmanager
def gateway(upstream: StandIn, **kwargs: Any) -> Iterator[tuple[RunningGateway, Path]]:
    with tempfile.TemporaryDirectory() as scratch:
        db = Path(scratch) / "boundary.db"
        config = {
            "model_list": [{"model_name": "m", "litellm_params": {"model": "openai/m", "api_base": upstream.base_url}}],
            "general_settings": {"database_url": f"sqlite:///{db}"},
        }
        with run_gateway(config, **kwargs) as gw:
            yield gw, db


def _drop(db: Path, table: str) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(f"DROP TABLE {table}")


def _openai_error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-request-id"] == RID
    error: dict[str, Any] = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def _internal(r: httpx.Response) -> None:
    error = _openai_error(r, 500)
    assert error["type"] == "internal_error"
    assert f"quote request id {RID}" in error["message"]
    assert "ZeroDivision" not in error["message"] and "no such table" not in error["message"]


def test_a_model_route_answers_a_bug_in_a_hook_as_a_500_in_each_apis_shape(upstream: StandIn) -> None:
    with gateway(upstream, hooks=(Broken(),)) as (gw, _):
        headers = {"Authorization": f"Bearer {gw.key}", "x-request-id": RID}
        _internal(httpx.post(gw.v1 + "/chat/completions", json={"model": "m", "messages": HI}, headers=headers))
        r = httpx.post(gw.v1 + "/messages", json={"model": "m", "max_tokens": 5, "messages": HI}, headers=headers)
        assert r.status_code == 500 and r.headers["x-request-id"] == RID
        assert r.json() == {"type": "error", "error": {"type": "api_error", "message": r.json()["error"]["message"]}}
        assert f"quote request id {RID}" in r.json()["error"]["message"]
    assert upstream.received == []


def test_a_management_route_answers_a_dropped_table_as_a_500_with_its_request_id(upstream: StandIn) -> None:
    with gateway(upstream) as (gw, db):
        headers = {"Authorization": f"Bearer {gw.key}", "x-request-id": RID}
        assert httpx.get(gw.url + "/customer/list", headers=headers).status_code == 200
        _drop(db, "mw_customers")
        _internal(httpx.get(gw.url + "/customer/list", headers=headers))
        r = httpx.get(gw.url + "/customer/list", headers={"Authorization": f"Bearer {gw.key}"})
        made = r.headers["x-request-id"]  # no id sent: the one made for it is in the header and the message
        assert r.status_code == 500 and f"quote request id {made}" in r.json()["error"]["message"]


def test_the_usage_webhooks_answer_a_dropped_ledger_in_the_one_shape(upstream: StandIn) -> None:
    event = {"request_id": "reported-1", "model": "m", "tokens_input": 3, "tokens_output": 2}
    with gateway(upstream) as (gw, db):
        headers = {"Authorization": f"Bearer {gw.key}", "x-request-id": RID}
        _drop(db, "mw_ledger")
        error = _openai_error(httpx.post(gw.url + "/webhooks/usage", json=event, headers=headers), 503)
        assert "send it again" in error["message"]
        _internal(httpx.get(gw.url + "/webhooks/stats", headers=headers))


def test_the_ui_answers_a_dropped_table_as_json_on_its_api_and_as_a_page_elsewhere(upstream: StandIn) -> None:
    with gateway(upstream) as (gw, db), httpx.Client(base_url=gw.url, timeout=10) as browser:
        form = browser.get("/ui/login").text
        csrf = form.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        assert browser.post("/ui/login", data={"csrf": csrf, "key": gw.key}).status_code == 303
        _drop(db, "mw_usage_daily")
        _internal(browser.get("/ui/api/usage", headers={"x-request-id": RID}))
        page = browser.get("/ui/usage", headers={"x-request-id": RID})
        assert page.status_code == 500 and page.headers["x-request-id"] == RID
        assert page.headers["content-type"].startswith("text/html") and RID in page.text


def test_models_and_probes_answer_through_the_boundary(upstream: StandIn) -> None:
    with gateway(upstream) as (gw, db):
        admin = {"Authorization": f"Bearer {gw.key}"}
        key = httpx.post(gw.url + "/key/generate", json={}, headers=admin).json()["key"]
        _drop(db, "mw_keys")
        headers = {"Authorization": f"Bearer {key}", "x-request-id": RID}
        error = _openai_error(httpx.get(gw.v1 + "/models", headers=headers), 503)
        assert error["message"] == "The key store is unavailable; retry shortly."
        missing = _openai_error(httpx.get(gw.v1 + "/models/nope", headers={**admin, "x-request-id": RID}), 404)
        assert missing["type"] == "not_found_error"
        assert httpx.get(gw.url + "/health/live").status_code == 200


def test_a_path_asked_with_another_method_is_405_naming_the_allowed_ones(upstream: StandIn) -> None:
    with gateway(upstream) as (gw, _):
        headers = {"Authorization": f"Bearer {gw.key}", "x-request-id": RID}
        for method, path, allowed in (
            ("GET", "/v1/chat/completions", "POST"),
            ("GET", "/key/generate", "POST"),
            ("POST", "/metrics", "GET"),
            ("DELETE", "/openapi.json", "GET"),
        ):
            r = httpx.request(method, gw.url + path, headers=headers)
            error = _openai_error(r, 405)
            assert r.headers["allow"] == allowed and error["type"] == "invalid_request_error", path
        _openai_error(httpx.post(gw.url + "/no/such/path", headers=headers), 404)
