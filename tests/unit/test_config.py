"""Loading LiteLLM-format configs: what resolves, what is refused, and how the refusal reads."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from meterway.config.load import load_settings, parse_config
from meterway.errors import ConfigError
from meterway.providers.anthropic import AnthropicProvider
from meterway.providers.azure import AzureProvider
from meterway.providers.base import Api
from meterway.providers.messages_adapter import MessagesAdapter
from meterway.providers.openai import OpenAIProvider

FIXTURES = Path(__file__).parent.parent / "fixtures" / "litellm"


def _env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def test_litellm_quickstart_config_loads_with_one_warning_per_ignored_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    _env(monkeypatch, AZURE_API_KEY_EU="eu-key-123456789", AZURE_API_KEY_CA="ca-key-123456789")
    s = load_settings(FIXTURES / "quickstart.yaml")
    assert s.model_names() == ["gpt-4o", "vllm-models"]
    assert [d.id for d in s.deployments] == ["gpt-4o", "gpt-4o#1", "vllm-models"]
    eu, ca, vllm = s.deployments
    assert ca.upstream_model == "gpt-4o-ca" and ca.api_key is not None and ca.api_key.reveal() == "ca-key-123456789"
    assert eu.family == "azure" and eu.upstream_model == "gpt-4o-eu" and eu.api_key is not None
    assert eu.api_key.reveal() == "eu-key-123456789" and eu.rpm == 6
    assert vllm.upstream_model == "facebook/opt-125m" and vllm.api_base == "http://0.0.0.0:4000/v1"
    assert s.master_key is not None and s.master_key.reveal() == "sk-1234"
    assert sorted(s.warnings) == [
        "litellm_settings.drop_params: ignored: meterway forwards the body as sent; the upstream decides on "
        "unknown parameters",
        "litellm_settings.set_verbose: ignored: use --log-level debug",
        "model_list[2] (vllm-models, facebook/opt-125m): no known price; its requests are recorded with cost "
        "NULL until model_info sets input_cost_per_token and output_cost_per_token",
    ]
    # the Azure deployments of gpt-4o take the bundled table's prices for the model they serve
    assert eu.prices.input_per_token == Decimal("0.0000025") and eu.prices.output_per_token == Decimal("0.00001")
    assert s.unpriced_models == ("vllm-models",)


def test_azure_deployment_builds_deployment_url_with_api_version_and_api_key_header(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _env(
        monkeypatch,
        AZURE_EUROPE_API_KEY="e" * 20,
        AZURE_CANADA_API_KEY="c" * 20,
        AZURE_FRANCE_API_KEY="f" * 20,
        PROXY_MASTER_KEY="sk-proxy-master",
        PROXY_DATABASE_URL="postgresql://u:p@db/x",
    )
    s = load_settings(FIXTURES / "azure_and_settings.yaml")
    france = s.deployments[2]
    inner = france.provider
    assert isinstance(inner, AzureProvider) and isinstance(france.messages_provider, MessagesAdapter)
    assert str(inner.urls[Api.CHAT]) == (
        "https://openai-france-1234.openai.azure.com/openai/deployments/gpt-turbo/chat/completions"
        "?api-version=2023-05-15"
    )
    assert inner.headers["api-key"] == "f" * 20 and "Authorization" not in inner.headers
    europe = s.deployments[0].provider
    assert isinstance(europe, AzureProvider)
    assert str(europe.urls[Api.EMBEDDINGS]).endswith("/gpt-35-turbo/embeddings?api-version=2024-10-21")
    assert s.database_url.reveal() == "postgresql://u:p@db/x"
    assert not any("database_url" in w for w in s.warnings) and "u:p@db" not in repr(s)


def test_provider_prefixes_resolve_to_their_public_base_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    _env(
        monkeypatch,
        OPENAI_API_KEY="sk-openai-xxxxxxxx",
        ANTHROPIC_API_KEY="sk-ant-xxxxxxxx",
        GROQ_API_KEY="gsk-xxxxxxxx",
        OPENROUTER_API_KEY="or-xxxxxxxx",
        METERWAY_TEST_MASTER="sk-m",
    )
    monkeypatch.delenv("OLLAMA_API_BASE", raising=False)
    s = load_settings(FIXTURES / "many_providers.yaml")
    bases = {d.model_name: d.api_base for d in s.deployments}
    assert bases == {
        "gpt-4o": "https://api.openai.com/v1",
        "claude-sonnet": "https://api.anthropic.com",
        "llama-groq": "https://api.groq.com/openai/v1",
        "router-model": "https://openrouter.ai/api/v1",
        "local-llama": "http://localhost:11434/v1",
        "local-chat": "http://ollama.internal:11434/v1",
        "vllm": "http://vllm.internal:8000/v1",
        "deepseek": "https://api.deepseek.com/v1",
        "mistral": "https://api.mistral.ai/v1",
        "together": "https://api.together.xyz/v1",
        "fireworks": "https://api.fireworks.ai/inference/v1",
    }
    by_name = {d.model_name: d for d in s.deployments}
    assert by_name["router-model"].upstream_model == "meta-llama/llama-3-70b-instruct"
    ollama = by_name["local-llama"].provider
    assert isinstance(ollama, OpenAIProvider)
    assert str(ollama.urls[Api.CHAT]) == "http://localhost:11434/v1/chat/completions"
    claude = by_name["claude-sonnet"]
    assert isinstance(claude.provider, AnthropicProvider) and claude.messages_provider is claude.provider
    assert by_name["gpt-4o"].prices.input_per_token == Decimal("0.0000025")
    assert by_name["gpt-4o"].timeout.total == 60 and by_name["gpt-4o"].stream_timeout.sock_read == 30
    # keys come from each provider's usual environment variable when the config names none
    assert by_name["llama-groq"].api_key is not None and by_name["llama-groq"].api_key.reveal() == "gsk-xxxxxxxx"
    ignored = {w.split(":")[0] for w in s.warnings if not w.startswith("model_list[")}
    assert ignored == set()  # router_settings.routing_strategy and num_retries are acted on
    assert s.routing.strategy == "simple-shuffle" and s.routing.num_retries == 2
    # open models on open servers have no price in the bundled table: said once each, cost NULL
    assert set(s.unpriced_models) == {d.id for d in s.deployments if d.prices.input_per_token is None}
    assert "claude-sonnet" not in s.unpriced_models and "gpt-4o" not in s.unpriced_models


def test_missing_environment_variable_is_an_error_naming_it_and_the_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    data = {
        "model_list": [
            {"model_name": "m", "litellm_params": {"model": "openai/x", "api_key": "os.environ/NOT_SET_ANYWHERE"}}
        ]
    }
    with pytest.raises(ConfigError) as e:
        parse_config(data, source=None)
    assert "model_list[0] (model_name: m)" in e.value.message
    assert "NOT_SET_ANYWHERE is not set" in e.value.message


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"model_name": "m", "litellm_params": {}}, "model_list[0] (model_name: m): litellm_params.model is required"),
        ({"litellm_params": {"model": "openai/x"}}, "model_list[0]: model_name is required"),
        ({"model_name": "m"}, "litellm_params is required"),
        ({"model_name": "m", "litellm_params": {"model": "madeup/x"}}, "unknown provider 'madeup'"),
        (
            {"model_name": "m", "litellm_params": {"model": "openai/x", "timeout": "soon"}},
            "litellm_params.timeout must be a number, got 'soon'",
        ),
        (
            {"model_name": "m", "litellm_params": {"model": "openai/x", "rpm": 1.5}},
            "litellm_params.rpm must be a non-negative integer",
        ),
        (
            {"model_name": "m", "litellm_params": {"model": "openai/x", "api_base": "ftp://x"}},
            "litellm_params.api_base must be an http(s) URL",
        ),
        ({"model_name": "m", "litellm_params": {"model": "hosted_vllm/x"}}, "needs api_base"),
        (
            {"model_name": "m", "litellm_params": {"model": "openai/x"}, "model_info": {"input_cost_per_token": "abc"}},
            "model_info.input_cost_per_token must be a number",
        ),
    ],
)
def test_bad_entry_is_refused_with_a_message_naming_entry_and_field(entry: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config({"model_list": [entry]}, source=None)
    assert expected in e.value.message


def test_yaml_syntax_error_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_list:\n  - model_name: [unclosed\n")
    with pytest.raises(ConfigError) as e:
        load_settings(bad)
    assert str(bad) in e.value.message and "not valid YAML" in e.value.message


def test_master_key_falls_back_to_meterway_then_litellm_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("METERWAY_MASTER_KEY", raising=False)
    monkeypatch.setenv("LITELLM_MASTER_KEY", "sk-from-litellm")
    assert parse_config({}, source=None).master_key.reveal() == "sk-from-litellm"  # type: ignore[union-attr]
    monkeypatch.setenv("METERWAY_MASTER_KEY", "sk-from-meterway")
    assert parse_config({}, source=None).master_key.reveal() == "sk-from-meterway"  # type: ignore[union-attr]


def test_include_merges_model_lists_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "models.yaml").write_text("model_list:\n  - model_name: b\n    litellm_params: {model: mock/b}\n")
    (tmp_path / "main.yaml").write_text(
        "include:\n  - models.yaml\nmodel_list:\n  - model_name: a\n    litellm_params: {model: mock/a}\n"
    )
    assert load_settings(tmp_path / "main.yaml").model_names() == ["a", "b"]


def test_secrets_print_as_stars(monkeypatch: pytest.MonkeyPatch) -> None:
    s = parse_config(
        {
            "model_list": [
                {"model_name": "m", "litellm_params": {"model": "openai/x", "api_key": "sk-very-secret-value"}}
            ]
        },
        source=None,
    )
    d = s.deployments[0]
    assert "sk-very-secret-value" not in repr(d) and "sk-very-secret-value" not in str(d.api_key)
    assert d.api_key is not None and d.api_key.masked() == "sk-...alue"


def test_upstream_size_bounds_come_from_general_settings_or_the_environment() -> None:
    base: dict[str, object] = {"model_list": [{"model_name": "m", "litellm_params": {"model": "mock/m"}}]}
    defaults = parse_config(base, source=None, env={})
    assert (defaults.max_upstream_event_bytes, defaults.max_upstream_body_bytes) == (4 * 1024**2, 64 * 1024**2)
    configured = parse_config(
        {**base, "general_settings": {"max_upstream_event_bytes": 65536}},
        source=None,
        env={"METERWAY_MAX_UPSTREAM_BODY_BYTES": "1048576"},
    )
    assert (configured.max_upstream_event_bytes, configured.max_upstream_body_bytes) == (65536, 1048576)
    with pytest.raises(ConfigError, match="max_upstream_body_bytes"):
        parse_config({**base, "general_settings": {"max_upstream_body_bytes": "big"}}, source=None, env={})
    with pytest.raises(ConfigError, match="METERWAY_MAX_UPSTREAM_EVENT_BYTES"):
        parse_config(base, source=None, env={"METERWAY_MAX_UPSTREAM_EVENT_BYTES": "1.5MB"})


def test_each_callback_warning_names_its_own_key_and_what_to_use_instead() -> None:
    """`success_callback: webhook` was reported as `litellm_settings.callbacks`; every warning
    names the setting where the user wrote it, and what meterway does instead."""
    data = {
        "litellm_settings": {
            "success_callback": ["lago", "webhook"],
            "callbacks": ["otel", "langfuse"],
            "failure_callback": "webhook",
            "json_logs": True,
        },
        "general_settings": {"alerting": ["slack"], "some_flag": 1},
        "router_settings": {"redis_host": "redis"},
    }
    warnings = parse_config(data, source=None, env={}).warnings
    webhook = [w for w in warnings if "'webhook'" in w]
    assert [w.split(":")[0] for w in webhook] == [
        "litellm_settings.success_callback",
        "litellm_settings.failure_callback",
    ]
    assert all("POST /webhooks/usage" in w and "billing section" in w for w in webhook)
    assert any(w.startswith("litellm_settings.callbacks: 'langfuse' is not supported; ignored: ") for w in warnings)
    assert "litellm_settings.json_logs: ignored: use --log-format json" in warnings
    assert "general_settings.alerting: 'slack' has no SLACK_WEBHOOK_URL" in "".join(warnings)
    assert "general_settings.some_flag: ignored" in warnings
    assert any(w.startswith("router_settings.redis_host: ignored: Redis comes from") for w in warnings)
    assert not any("lago" in w or "otel" in w for w in warnings)


def test_customer_headers_follow_litellms_settings_and_order() -> None:
    def headers(general: dict[str, Any]) -> tuple[str, ...]:
        return parse_config({"general_settings": general}, source=None, env={}).customer_headers

    standard = ("x-litellm-customer-id", "x-litellm-end-user-id")
    assert headers({}) == standard
    assert headers({"user_header_name": "X-OpenWebUI-User-Id"}) == (*standard, "x-openwebui-user-id")
    mapped = {
        "user_header_name": "X-OpenWebUI-User-Id",
        "user_header_mappings": [
            {"header_name": "X-OpenWebUI-User-Email", "litellm_user_role": "customer"},
            {"header_name": "X-Internal", "litellm_user_role": "internal_user"},
        ],
    }
    settings = parse_config({"general_settings": mapped}, source=None, env={})
    assert settings.customer_headers == (*standard, "x-openwebui-user-email")  # the mappings win, as in LiteLLM
    assert any(
        "user_header_mappings[1].litellm_user_role: internal_user is not supported" in w for w in settings.warnings
    )
    one = {"user_header_mappings": {"header_name": "X-Customer", "litellm_user_role": "customer"}}
    assert headers(one) == (*standard, "x-customer")


@pytest.mark.parametrize(
    ("general", "named"),
    [
        ({"user_header_name": "X Bad"}, "general_settings.user_header_name must be an HTTP header name"),
        ({"user_header_name": 3}, "general_settings.user_header_name must be an HTTP header name"),
        ({"user_header_mappings": [{"header_name": "X-A"}]}, "general_settings.user_header_mappings[0] must be"),
        (
            {"user_header_mappings": [{"header_name": "X-A", "litellm_user_role": "proxy_admin"}]},
            "general_settings.user_header_mappings[0].litellm_user_role must be customer or internal_user",
        ),
    ],
)
def test_bad_customer_header_settings_name_the_key(general: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(named)):
        parse_config({"general_settings": general}, source=None, env={})


def test_default_tags_are_read_and_checked() -> None:
    tags = parse_config({"litellm_settings": {"default_tags": ["prod", "owui", "prod"]}}, source=None, env={})
    assert tags.default_tags == ("prod", "owui") and not tags.warnings
    for bad in ("prod", [1], [""], ["x" * 300]):
        with pytest.raises(ConfigError, match=re.escape("litellm_settings.default_tags")):
            parse_config({"litellm_settings": {"default_tags": bad}}, source=None, env={})
