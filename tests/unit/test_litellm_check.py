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


def test_quick_start_refuses_bedrock_and_wildcards_and_names_ignored_settings() -> None:
    found = _review("quick_start.yaml")
    v = _verdicts(found)
    assert v["model_list[0] (gpt-4o)"] == "honoured"
    assert v["model_list[0] (gpt-4o).litellm_params.rpm"] == "honoured"
    assert v["model_list[1] (bedrock-claude-v1)"] == "refused"
    assert v["model_list[3] (anthropic-claude)"] == "refused"
    assert v["model_list[5] (*)"] == "refused"
    assert v["model_list[4] (vllm-models)"] == "honoured"
    assert v["model_list[4] (vllm-models).model_info.version"] == "ignored"
    assert v["general_settings.master_key"] == "honoured"
    assert v["general_settings.alerting"] == "ignored"
    assert v["litellm_settings.drop_params"] == "ignored"
    assert v["litellm_settings.success_callback: langfuse"] == "ignored"
    assert not found.starts
    assert found.problem is not None and "bedrock" in found.problem


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


def test_load_balancing_starts_with_retries_fallbacks_and_router_settings_ignored() -> None:
    found = _review("load_balancing.yaml")
    v = _verdicts(found)
    assert v["litellm_settings.request_timeout"] == "honoured"
    for key in ("num_retries", "fallbacks", "context_window_fallbacks", "allowed_fails"):
        assert v[f"litellm_settings.{key}"] == "ignored"
    assert all(verdict == "ignored" for path, verdict in v.items() if path.startswith("router_settings."))
    assert found.count("refused") == 0
    assert found.starts, found.problem


def test_azure_example_starts_with_env_references_unset() -> None:
    found = _review("azure_timeouts.yaml")
    v = _verdicts(found)
    assert v["model_list[0] (gpt-4-team1).litellm_params.stream_timeout"] == "honoured"
    assert v["model_list[0] (gpt-4-team1).litellm_params.max_retries"] == "ignored"
    assert found.starts, found.problem


@pytest.mark.parametrize(("name", "status"), [("azure_timeouts.yaml", 0), ("quick_start.yaml", 1)])
def test_check_config_litellm_exits_by_whether_meterway_would_start(
    name: str, status: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", "--litellm", str(CONFIGS / name)]) == status
    out = capsys.readouterr().out
    assert "honoured" in out and "would" in out
