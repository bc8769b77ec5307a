"""Logs as operators read them: JSON lines with `--log-format json`, each request's lines carrying
its request id (the one the client gets back), levels from the environment, no secrets."""

from __future__ import annotations

import httpx
import orjson

from tests.support.serve import serve

HI = [{"role": "user", "content": "hi"}]


def test_json_lines_carry_the_request_id_and_no_secret() -> None:
    env = {"METERWAY_MASTER_KEY": "sk-logs-secret", "METERWAY_LOG_LEVEL": "info"}
    for served in serve(["--log-format", "json", "--access-log", "--log-level", "info"], env):
        headers = {"Authorization": "Bearer sk-logs-secret"}
        resp = httpx.post(served.url + "/v1/chat/completions", json={"model": "demo", "messages": HI}, headers=headers)
        assert resp.status_code == 200
        rid = resp.headers["x-request-id"]
        served.proc.terminate()  # a graceful stop: lines of requests already answered are written first
        _, err = served.proc.communicate(timeout=30)
        lines = [orjson.loads(line) for line in err.splitlines() if line.startswith("{")]
        assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
        assert any(line["message"].startswith("serving 1 model(s)") for line in lines)
        mine = [line for line in lines if line.get("request_id") == rid]
        assert mine and "POST /v1/chat/completions" in mine[0]["message"]
        assert "sk-logs-secret" not in err.replace("master key: sk-logs-secret", "")


def test_the_level_comes_from_the_environment() -> None:
    for level, shown in (("WARNING", False), ("INFO", True)):
        for served in serve([], {"METERWAY_MASTER_KEY": "sk-x", "LITELLM_LOG": level}):
            served.proc.terminate()
            _, err = served.proc.communicate(timeout=30)
            assert ("serving 1 model(s)" in err) is shown  # an info line
