"""URL, query and header shapes that providers expect, checked where they arrive: at the stand-in."""

from __future__ import annotations

import openai
import pytest

from tests.e2e.conftest import AZURE_KEY
from tests.support.gateway import RunningGateway
from tests.upstreams.standin import StandIn


def test_azure_deployment_url_api_version_and_key_header(
    gateway: RunningGateway, upstream: StandIn, request: pytest.FixtureRequest
) -> None:
    client = openai.OpenAI(base_url=gateway.v1, api_key=gateway.key, max_retries=0)
    request.addfinalizer(client.close)
    client.chat.completions.create(model="azure-gpt", messages=[{"role": "user", "content": "hi"}])
    got = upstream.last
    assert got.path == "/openai/deployments/my-deployment/chat/completions"
    assert got.query == {"api-version": "2024-06-01"}
    assert got.headers["api-key"] == AZURE_KEY and "authorization" not in got.headers
    client.embeddings.create(model="azure-gpt", input="hi")
    assert upstream.last.path == "/openai/deployments/my-deployment/embeddings"


def test_ollama_prefix_uses_the_openai_compatible_v1_path(
    gateway: RunningGateway, upstream: StandIn, request: pytest.FixtureRequest
) -> None:
    client = openai.OpenAI(base_url=gateway.v1, api_key=gateway.key, max_retries=0)
    request.addfinalizer(client.close)
    client.chat.completions.create(model="local-llama", messages=[{"role": "user", "content": "hi"}])
    assert upstream.last.path == "/v1/chat/completions" and upstream.last.json["model"] == "llama3"


def test_paths_without_v1_prefix_are_served_too(
    gateway: RunningGateway, upstream: StandIn, request: pytest.FixtureRequest
) -> None:
    client = openai.OpenAI(base_url=gateway.url, api_key=gateway.key, max_retries=0)
    request.addfinalizer(client.close)
    r = client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content
    assert [m.id for m in client.models.list()] == gateway.settings.model_names()
