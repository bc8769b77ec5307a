"""No key reaches a log: `meterway serve` with its access log on, called the way LiteLLM's docs
call it (`GET /key/info?key=sk-...`), writes neither that key nor the master key anywhere; and a
management error quotes the request id its client was given."""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from meterway.api import errors, management
from meterway.telemetry.logs import redact
from tests.support.gateway import RunningGateway, run_gateway
from tests.support.serve import serve
from tests.support.wait import eventually

MASTER = "sk-master-never-logged-0123456789"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_access_log_holds_no_raw_key_after_key_info(tmp_path: Path, fmt: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("model_list:\n  - model_name: m\n    litellm_params: {model: mock/x}\n")
    env = {"METERWAY_MASTER_KEY": MASTER, "METERWAY_LOG_LEVEL": "info"}
    args = ["--config", str(config), "--access-log", "--log-level", "info", "--log-format", fmt]
    for served in serve(args, env):
        master = {"Authorization": f"Bearer {MASTER}"}
        _wait_ready(served.url)
        made = httpx.post(served.url + "/key/generate", json={"key_alias": "logged"}, headers=master).json()
        key = made["key"]
        assert httpx.get(served.url + "/key/info", params={"key": key}, headers=master).status_code == 200
        assert httpx.get(served.url + "/spend/logs", params={"api_key": key}, headers=master).status_code == 200
        assert httpx.get(served.url + f"/key/info?KEY={key}&x=1", headers=master).status_code == 400
        assert httpx.get(served.url + f"/no/such/{key}", headers=master).status_code == 404
        assert httpx.get(served.url + "/key/info", params={"key": MASTER}, headers=master).status_code == 404
        chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        ok = httpx.post(served.url + "/v1/chat/completions", json=chat, headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200
        served.proc.terminate()
        out, err = served.proc.communicate(timeout=30)
        assert "GET /key/info?key=[redacted]" in err, err[-3000:]  # the access log was on, and redacted
        for secret in (key, MASTER, key[3:], MASTER[3:]):
            assert secret not in out and secret not in err, secret


def _wait_ready(url: str) -> None:
    eventually(lambda: httpx.get(url + "/health/ready").status_code == 200, 20, "the store opened")


def test_redaction_keeps_the_rest_of_the_line() -> None:
    line = '127.0.0.1:5 - "GET /key/info?key=sk-abcdefghijklmnop&page=2 HTTP/1.1" 200'
    assert redact(line) == '127.0.0.1:5 - "GET /key/info?key=[redacted]&page=2 HTTP/1.1" 200'
    assert redact("/spend/logs?api_key=abc%20def") == "/spend/logs?api_key=[redacted]"
    assert redact("upstream said sk-ant-0123456789abc") == "upstream said sk-[redacted]"
    assert redact("monkey=banana sk-short") == "monkey=banana sk-short"
    assert redact("?x-api-key=abc&Key=def") == "?x-api-key=[redacted]&Key=[redacted]"
    assert redact("the master is hunter2hunter2!", ("hunter2hunter2",)) == "the master is [redacted]!"


def test_a_management_error_quotes_the_request_id_its_client_got(caplog: pytest.LogCaptureFixture) -> None:
    """An unexpected failure of a management handler is a 500 whose message quotes the id in the
    response's `x-request-id` (and the log line says the same id), not a made-up one."""
    with run_gateway({"model_list": []}) as gw:
        status, headers, body = asyncio.run(_call_failing_handler(gw))
    assert status == 500
    rid = headers[b"x-request-id"].decode()
    assert rid == "client-chosen-id-42"
    assert f"quote request id {rid}" in orjson.loads(body)["error"]["message"]
    assert any(rid in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


async def _call_failing_handler(gw: RunningGateway) -> tuple[int, dict[bytes, bytes], bytes]:
    async def failing(routes: Any, body: bytes, query: dict[str, str]) -> Any:
        raise RuntimeError("a bug in a handler")

    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/key/list",
        "query_string": b"",
        "headers": [(b"authorization", f"Bearer {gw.key}".encode()), (b"x-request-id", b"client-chosen-id-42")],
    }
    assert gw.app.services is not None
    await errors.boundary(partial(management.handle, gw.app.services, failing))(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body
