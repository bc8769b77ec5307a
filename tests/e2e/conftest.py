from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.lago.standin import LagoStandIn, billing_ready
from tests.support.gateway import RunningGateway, free_socket, run_gateway
from tests.upstreams.standin import StandIn

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
        },
    }
]

UPSTREAM_KEY = "sk-upstream-secret-do-not-leak-42"
ANTHROPIC_KEY = "sk-ant-upstream-secret-do-not-leak"
AZURE_KEY = "azure-upstream-secret-do-not-leak"


@pytest.fixture(scope="session")
def standin() -> Iterator[StandIn]:
    with StandIn() as s:
        yield s


@pytest.fixture
def upstream(standin: StandIn) -> StandIn:
    """The shared stand-in, with nothing recorded or scripted from earlier tests."""
    standin.reset()
    return standin


def closed_port() -> int:
    sock = free_socket()
    port: int = sock.getsockname()[1]
    sock.close()
    return port


def e2e_config(base: str) -> dict[str, Any]:
    return {
        "model_list": [
            {
                "model_name": "gpt-test",
                "litellm_params": {"model": "openai/gpt-upstream", "api_base": base + "/v1", "api_key": UPSTREAM_KEY},
            },
            {
                "model_name": "same-name",
                "litellm_params": {"model": "openai/same-name", "api_base": base + "/v1", "api_key": UPSTREAM_KEY},
            },
            {
                "model_name": "claude",
                "litellm_params": {"model": "anthropic/claude-upstream", "api_base": base, "api_key": ANTHROPIC_KEY},
            },
            {
                "model_name": "azure-gpt",
                "litellm_params": {
                    "model": "azure/my-deployment",
                    "api_base": base,
                    "api_key": AZURE_KEY,
                    "api_version": "2024-06-01",
                },
            },
            {
                "model_name": "local-llama",
                "litellm_params": {"model": "ollama/llama3", "api_base": base, "api_key": "ollama"},
            },
            {
                "model_name": "slow",
                "litellm_params": {
                    "model": "openai/slow",
                    "api_base": base + "/v1",
                    "api_key": UPSTREAM_KEY,
                    "timeout": 0.5,
                },
            },
            {
                "model_name": "nowhere",
                "litellm_params": {
                    "model": "openai/nowhere",
                    "api_base": f"http://127.0.0.1:{closed_port()}/v1",
                    "api_key": UPSTREAM_KEY,
                },
            },
            {"model_name": "demo", "litellm_params": {"model": "mock/demo"}},
        ],
        "general_settings": {"max_request_size_mb": 0.05},
    }


@pytest.fixture(scope="session")
def gateway(standin: StandIn) -> Iterator[RunningGateway]:
    with run_gateway(e2e_config(standin.base_url)) as gw:
        yield gw


@pytest.fixture
def client(gateway: RunningGateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.v1, api_key=gateway.key, max_retries=0) as c:
        yield c


@pytest.fixture
def admin(gateway: RunningGateway) -> Iterator[httpx.Client]:
    """An HTTP client on the shared gateway, authenticated with the master key."""
    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {gateway.key}"}, timeout=10) as c:
        yield c


@pytest.fixture
def lago() -> Iterator[LagoStandIn]:
    """A Lago stand-in set up with the real client: metric `llm_tokens` (sum of `total_tokens`), a
    pay-as-you-go plan, and customer `acme` with an active subscription `acme` since yesterday."""
    with LagoStandIn() as stand_in:
        billing_ready(stand_in, ["acme"])
        yield stand_in
