"""The `meterway` command as users run it (a real process on a real port), and its probes."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import pytest

from tests.support.serve import Served
from tests.support.serve import port as _port
from tests.support.serve import ready as _ready
from tests.support.serve import serve as _serve
from tests.support.wait import eventually_async

FIXTURES = Path(__file__).parent.parent / "fixtures" / "litellm"


def _meterway(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meterway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def demo_server() -> Iterator[Served]:
    env = {"METERWAY_MASTER_KEY": "", "LITELLM_MASTER_KEY": "", "METERWAY_CONFIG": "", "CONFIG_FILE_PATH": ""}
    yield from _serve([], env)


def test_serve_without_config_starts_demo_mode_with_a_printed_master_key(demo_server: Served) -> None:
    demo_server.proc.terminate()
    _, err = demo_server.proc.communicate(timeout=10)
    match = re.search(r"master key: (sk-\S+)", err)
    assert match and "demo mode" in err
    assert len(match.group(1)) >= 35


def test_demo_mode_answers_with_the_printed_key() -> None:
    env = {"METERWAY_MASTER_KEY": "sk-demo-test-key", "METERWAY_CONFIG": "", "CONFIG_FILE_PATH": ""}
    for served in _serve([], env):
        headers = {"Authorization": "Bearer sk-demo-test-key"}
        r = httpx.post(
            served.url + "/v1/chat/completions",
            headers=headers,
            json={"model": "demo", "messages": [{"role": "user", "content": "hello"}]},
        )
        assert r.status_code == 200 and "hello" in r.json()["choices"][0]["message"]["content"]
        assert httpx.get(served.url + "/v1/models", headers=headers).json()["data"][0]["id"] == "demo"
        assert _ready(served.url)["store"] == "open"


def test_serve_reads_the_config_named_by_litellm_variable(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "model_list:\n  - model_name: from-file\n    litellm_params: {model: mock/x}\n"
        "general_settings: {master_key: sk-file-key}\n"
    )
    for served in _serve([], {"METERWAY_CONFIG": "", "CONFIG_FILE_PATH": str(cfg)}):
        r = httpx.get(served.url + "/v1/models", headers={"Authorization": "Bearer sk-file-key"})
        assert [m["id"] for m in r.json()["data"]] == ["from-file"]


def test_serve_with_two_workers_answers(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model_list:\n  - model_name: m\n    litellm_params: {model: mock/x}\n")
    env = {"METERWAY_MASTER_KEY": "sk-two-workers", "REDIS_URL": "", "REDIS_HOST": ""}
    for served in _serve(["--config", str(cfg), "--workers", "2"], env):
        for _ in range(4):
            r = httpx.post(
                served.url + "/v1/embeddings",
                json={"model": "m", "input": "x"},
                headers={"Authorization": "Bearer sk-two-workers"},
            )
            assert r.status_code == 200
        served.proc.terminate()
        _, err = served.proc.communicate(timeout=10)
        assert "rate limits are counted per worker" in err, "two workers without Redis must say so"


def test_check_config_prints_models_with_secrets_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"AZURE_API_KEY_EU": "eu-secret-key-0001", "AZURE_API_KEY_CA": "ca-secret-key-0002"}
    done = _meterway("check-config", "--config", str(FIXTURES / "quickstart.yaml"), env=env)
    assert done.returncode == 0, done.stderr
    assert "gpt-4o: deployment gpt-4o -> azure/gpt-4o-eu" in done.stdout
    assert "vllm-models" in done.stdout and "eu-secret-key-0001" not in done.stdout
    assert "eu-...0001" in done.stdout and "sk-1234" not in done.stdout
    assert "warning: litellm_settings.drop_params" in done.stdout


def test_check_config_fails_with_a_readable_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_list:\n  - model_name: x\n    litellm_params: {model: nosuch/m}\n")
    done = _meterway("check-config", "--config", str(bad))
    assert done.returncode == 1
    assert "config error" in done.stderr and "model_list[0] (model_name: x)" in done.stderr
    assert "Traceback" not in done.stderr
    missing = _meterway("check-config", "--config", str(tmp_path / "absent.yaml"))
    assert missing.returncode == 1 and "cannot read config file" in missing.stderr


def test_serve_refuses_a_missing_environment_variable(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "model_list:\n  - model_name: x\n    litellm_params: {model: openai/x, api_key: os.environ/NOPE_NOT_SET}\n"
    )
    done = _meterway("serve", "--config", str(cfg), "--port", str(_port()))
    assert done.returncode == 1 and "NOPE_NOT_SET is not set" in done.stderr


PROBES = 20
PROBE_TIMEOUT_S = 1.0  # Kubernetes' default probe timeout: an answer later than this is a failed probe


async def _saturate_and_probe(url: str, key: str) -> tuple[int, list[int | str]]:
    """64 connections keep the gateway busy while the liveness probe is called `PROBES` times,
    50 ms apart, each with a kubelet's timeout; the load runs until the probes are done and at
    least 600 requests were served. Returns the requests served and the probes' outcomes."""
    body = {"model": "m", "messages": [{"role": "user", "content": "load"}], "stream": True}
    headers = {"Authorization": f"Bearer {key}"}
    served = 0
    outcomes: list[int | str] = []
    done = asyncio.Event()
    probe_timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def worker() -> None:
            nonlocal served
            while not done.is_set() and served < 20_000:
                async with session.post(url + "/v1/chat/completions", json=body, headers=headers) as r:
                    await r.read()
                    served += 1

        async def prober() -> None:
            await eventually_async(lambda: served >= 100, 30, "the load under way")
            while len(outcomes) < PROBES:
                try:
                    async with session.get(url + "/health/live", timeout=probe_timeout) as r:
                        await r.read()
                        outcomes.append(r.status)
                except TimeoutError:
                    outcomes.append("timed out")
                await asyncio.sleep(0.05)
            await eventually_async(lambda: served >= 600, 30, "600 requests served")
            done.set()

        await asyncio.gather(prober(), *(worker() for _ in range(64)))
    return served, outcomes


def test_liveness_answers_while_the_gateway_is_saturated(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model_list:\n  - model_name: m\n    litellm_params: {model: mock/x}\n")
    for served_gw in _serve(["--config", str(cfg)], {"METERWAY_MASTER_KEY": "sk-load"}):
        # Traffic arrives once the pod is ready, as a Service sends it (the store opens before that)
        _ready(served_gw.url)
        served, outcomes = asyncio.run(_saturate_and_probe(served_gw.url, "sk-load"))
        assert served >= 600, "the load must actually have kept the gateway busy"
        # each probe answered within a kubelet's default timeout, with 200
        assert outcomes == [200] * PROBES, outcomes
