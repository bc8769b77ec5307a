"""`check-config --litellm` on configs from LiteLLM's docs: every setting gets a verdict, and the
last line says whether meterway would start with the file as it is."""

from __future__ import annotations

from pathlib import Path

import pytest

from meterway.cli.main import main
from meterway.config.litellm_check import Review, review
from meterway.config.load import read_yaml

CONFIGS = Path(__file__).parent.parent / "fixtures" / "litellm_configs"


def _review(name: str) -> Review:
    return review(read_yaml(CONFIGS / name))


def _verdicts(found: Review) -> dict[str, str]:
    return {f.path: f.verdict for f in found.findings}


def test_quick_start_serves_bedrock_refuses_wildcards_and_names_ignored_settings() -> None:
    found = _review("quick_start.yaml")
    v = _verdicts(found)
    assert v["model_list[0] (gpt-4o)"] == "honoured"
    assert v["model_list[0] (gpt-4o).litellm_params.rpm"] == "honoured"
    assert v["model_list[1] (bedrock-claude-v1)"] == "honoured"
    assert v["model_list[3] (anthropic-claude)"] == "honoured"
    assert v["model_list[3] (anthropic-claude).litellm_params.aws_region_name"] == "honoured"
    assert v["model_list[5] (*)"] == "refused"
    assert v["model_list[4] (vllm-models)"] == "honoured"
    assert v["model_list[4] (vllm-models).model_info.version"] == "ignored"
    assert v["general_settings.master_key"] == "honoured"
    assert v["general_settings.alerting"] == "honoured"
    assert v["litellm_settings.drop_params"] == "ignored"
    assert v["litellm_settings.success_callback: langfuse"] == "ignored"
    assert found.starts, found.problem  # Bedrock takes its credentials from the standard AWS chain


def test_every_aws_setting_litellm_users_write_is_honoured() -> None:
    params = {
        "model": "bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0",
        "aws_access_key_id": "AKIAEXAMPLE",
        "aws_secret_access_key": "secret",
        "aws_session_token": "token",
        "aws_region_name": "eu-west-3",
        "aws_role_name": "arn:aws:iam::123456789012:role/bedrock",
        "aws_session_name": "gateway",
        "aws_profile_name": "prod",
        "aws_bedrock_runtime_endpoint": "https://bedrock.example.com",
        "aws_sts_endpoint": "https://sts.example.com",
    }
    found = review({"model_list": [{"model_name": "claude", "litellm_params": params}]})
    v = _verdicts(found)
    assert v["model_list[0] (claude)"] == "honoured"
    for key in params:
        assert v[f"model_list[0] (claude).litellm_params.{key}"] == "honoured", key


def test_model_params_ignores_request_defaults_and_refuses_a_placeholder_base() -> None:
    found = _review("model_params.yaml")
    v = _verdicts(found)
    for path in (
        "model_list[0] (gpt-4-team1).litellm_params.seed",
        "model_list[0] (gpt-4-team1).litellm_params.max_tokens",
        "model_list[1] (gpt-4-team2).litellm_params.temperature",
        "model_list[0] (gpt-4-team1).litellm_params.azure_ad_token",
    ):
        assert v[path] == "ignored", path
    assert v["model_list[2] (openai-gpt-4o).litellm_params.extra_headers"] == "honoured"
    assert v["model_list[2] (openai-gpt-4o).litellm_params.organization"] == "honoured"
    assert v["model_list[3] (mistral-7b)"] == "refused"
    assert not found.starts
    assert found.problem is not None and "your_ollama_api_base" in found.problem


def test_load_balancing_starts_with_retries_fallbacks_and_routing_honoured() -> None:
    found = _review("load_balancing.yaml")
    v = _verdicts(found)
    assert v["litellm_settings.request_timeout"] == "honoured"
    for key in ("num_retries", "fallbacks", "context_window_fallbacks", "allowed_fails"):
        assert v[f"litellm_settings.{key}"] == "honoured"
    for key in ("routing_strategy", "num_retries", "timeout"):
        assert v[f"router_settings.{key}"] == "honoured"
    for key in ("model_group_alias", "redis_host", "redis_password", "redis_port"):
        assert v[f"router_settings.{key}"] == "ignored"
    assert found.count("refused") == 0
    assert found.starts, found.problem


def test_azure_example_starts_with_env_references_unset() -> None:
    found = _review("azure_timeouts.yaml")
    v = _verdicts(found)
    assert v["model_list[0] (gpt-4-team1).litellm_params.stream_timeout"] == "honoured"
    assert v["model_list[0] (gpt-4-team1).litellm_params.max_retries"] == "ignored"
    assert found.starts, found.problem


@pytest.mark.parametrize(("name", "status"), [("azure_timeouts.yaml", 0), ("model_params.yaml", 1)])
def test_check_config_litellm_exits_by_whether_meterway_would_start(
    name: str, status: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", "--litellm", str(CONFIGS / name)]) == status
    out = capsys.readouterr().out
    assert "honoured" in out and "would" in out


def test_an_open_webui_and_lago_deployment_is_reviewed_under_its_own_keys() -> None:
    data = {
        "model_list": [{"model_name": "gpt-4o", "litellm_params": {"model": "openai/gpt-4o"}}],
        "general_settings": {"user_header_name": "X-OpenWebUI-User-Id"},
        "litellm_settings": {
            "success_callback": ["lago", "webhook"],
            "failure_callback": "webhook",
            "default_tags": ["owui"],
            "extra_spend_tag_headers": ["x-openwebui-user-email"],
        },
    }
    found = {f.path: f for f in review(data).findings}
    assert found["general_settings.user_header_name"].verdict == "honoured"
    assert found["litellm_settings.default_tags"].verdict == "honoured"
    assert found["litellm_settings.success_callback: lago"].verdict == "honoured"
    for path in ("litellm_settings.success_callback: webhook", "litellm_settings.failure_callback: webhook"):
        assert found[path].verdict == "ignored" and "POST /webhooks/usage" in found[path].why
    assert "default_tags" in found["litellm_settings.extra_spend_tag_headers"].why
