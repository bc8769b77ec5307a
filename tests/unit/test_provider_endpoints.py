"""Providers as data, offline: each family's URLs and key header come from its `Endpoint` and its
registry row, and the registry reads only the environment it is handed."""

from __future__ import annotations

import pytest

import meterway.config  # noqa: F401  # first: config imports the provider registry, not the reverse
from meterway.config.secret import Secret
from meterway.errors import ConfigError
from meterway.providers import registry
from meterway.providers.base import Api


@pytest.mark.parametrize(
    ("model", "api_base", "chat_url", "key_header"),
    [
        ("openai/gpt-4o", "http://h:1/v1/", "http://h:1/v1/chat/completions", ("Authorization", "Bearer k")),
        ("groq/llama", None, "https://api.groq.com/openai/v1/chat/completions", ("Authorization", "Bearer k")),
        ("ollama/llama3", "http://h:1", "http://h:1/v1/chat/completions", ("Authorization", "Bearer k")),
        (
            "azure/dep",
            "http://h:1",
            "http://h:1/openai/deployments/dep/chat/completions?api-version=2024-10-21",
            ("api-key", "k"),
        ),
        ("anthropic/claude", "http://h:1", "http://h:1/v1/messages", ("x-api-key", "k")),
        ("anthropic/claude", "http://h:1/v1", "http://h:1/v1/messages", ("x-api-key", "k")),
        ("cohere/command", None, "https://api.cohere.com/v2/chat", ("Authorization", "Bearer k")),
        (
            "gemini/models/gemini-2.5-flash",
            "http://h:1/v1",
            "http://h:1/v1/models/gemini-2.5-flash:generateContent",
            ("x-goog-api-key", "k"),
        ),
    ],
)
def test_each_family_builds_its_urls_and_key_header_from_its_endpoint(
    model: str, api_base: str | None, chat_url: str, key_header: tuple[str, str]
) -> None:
    resolved = registry.resolve(model, api_base, Secret("k"), env={})
    provider = registry.build(resolved, label="d", extra_headers={"X-Team": "blue"})
    assert str(provider.urls[Api.CHAT]) == chat_url  # type: ignore[attr-defined]
    name, value = key_header
    headers = provider.headers  # type: ignore[attr-defined]
    assert headers[name] == value and headers["Content-Type"] == "application/json" and headers["X-Team"] == "blue"


def test_gemini_streams_and_batches_go_to_their_own_methods() -> None:
    provider = registry.build(registry.resolve("gemini/g", None, None, env={}), label="d")
    urls = {route: str(url) for route, url in provider.urls.items()}  # type: ignore[attr-defined]
    assert urls["stream"].endswith("/v1beta/models/g:streamGenerateContent?alt=sse")
    assert urls["batch"].endswith("/v1beta/models/g:batchEmbedContents")
    assert provider.supports(Api.EMBEDDINGS) and not provider.supports(Api.COMPLETIONS)
    assert "x-goog-api-key" not in provider.headers  # type: ignore[attr-defined]  # no key, no header


def test_the_registry_reads_the_environment_it_is_given_and_not_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GROQ_API_KEY", "from-the-process")
    monkeypatch.setenv("AZURE_API_VERSION", "1999-01-01")
    assert registry.resolve("groq/llama", None, None, env={}).api_key is None
    given = {"GROQ_API_KEY": "from-config", "GROQ_API_BASE": "http://groq.local/v1"}
    resolved = registry.resolve("groq/llama", None, None, env=given)
    assert resolved.api_key is not None and resolved.api_key.reveal() == "from-config"
    assert resolved.api_base == "http://groq.local/v1"
    azure = registry.resolve("azure/dep", "http://h:1", None, env={"AZURE_API_VERSION": "2025-01-01"})
    assert str(registry.build(azure, label="d").urls[Api.CHAT]).endswith("?api-version=2025-01-01")  # type: ignore[attr-defined]
    # the deployment's own api_version wins over the environment's
    pinned = registry.build(azure, label="d", api_version="2024-06-01")
    assert str(pinned.urls[Api.CHAT]).endswith("?api-version=2024-06-01")  # type: ignore[attr-defined]


def test_a_family_without_a_public_base_needs_api_base() -> None:
    with pytest.raises(ConfigError, match="needs api_base"):
        registry.resolve("hosted_vllm/meta-llama/Llama-3", None, None, env={})
