"""The `litellm` package as a client, exactly as its users call a proxy.

litellm keeps event loops and HTTP clients in module state that it never closes, so it runs in a
child process of its own: the calls below are the ones its users write, the child prints what it
got as JSON and the tests check that, and the stand-in's record, here."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import orjson
import pytest

from tests.support.gateway import RunningGateway
from tests.upstreams.standin import StandIn, reply_for

CLIENT = r"""
import json, sys
import litellm
litellm.telemetry = False
litellm.suppress_debug_info = True
base, key = sys.argv[1], sys.argv[2]
out = {}
r = litellm.completion(model="openai/gpt-test", api_base=base, api_key=key,
                       messages=[{"role": "user", "content": "Hello from litellm"}])
out["completion"] = r.choices[0].message.content
stream = litellm.completion(model="openai/gpt-test", api_base=base, api_key=key,
                            messages=[{"role": "user", "content": "Stream from litellm"}], stream=True)
out["stream"] = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
e = litellm.embedding(model="openai/gpt-test", api_base=base, api_key=key, input=["one", "two"])
out["embedding_sizes"] = [len(d["embedding"]) for d in e.data]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def litellm_run(gateway: RunningGateway, standin: StandIn) -> tuple[dict[str, Any], list[Any]]:
    standin.reset()
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False"}
    done = subprocess.run(
        [sys.executable, "-c", CLIENT, gateway.v1, gateway.key], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return orjson.loads(done.stdout.strip().splitlines()[-1]), list(standin.received)


def test_litellm_completion_through_the_gateway(litellm_run: tuple[dict[str, Any], list[Any]]) -> None:
    out, received = litellm_run
    assert out["completion"] == reply_for("Hello from litellm")
    assert received[0].path == "/v1/chat/completions" and received[0].json["model"] == "gpt-upstream"


def test_litellm_streaming_completion_through_the_gateway(litellm_run: tuple[dict[str, Any], list[Any]]) -> None:
    out, received = litellm_run
    assert out["stream"] == reply_for("Stream from litellm")
    assert received[1].json["stream"] is True


def test_litellm_embedding_through_the_gateway(litellm_run: tuple[dict[str, Any], list[Any]]) -> None:
    out, received = litellm_run
    assert out["embedding_sizes"] == [8, 8]
    assert received[2].path == "/v1/embeddings" and received[2].json["input"] == ["one", "two"]
