"""Model entries for test configs."""

from __future__ import annotations

from typing import Any


def priced(
    upstream_base: str, name: str = "priced", *, input_usd: float = 0.000001, output_usd: float = 0.000002
) -> dict[str, Any]:
    """A model on the stand-in upstream (`/v1`), with per-token prices."""
    return {
        "model_name": name,
        "litellm_params": {
            "model": "openai/priced-up",
            "api_base": upstream_base + "/v1",
            "api_key": "sk-up",
            "input_cost_per_token": input_usd,
            "output_cost_per_token": output_usd,
        },
    }


def client_library_models(upstream_base: str, *, anthropic_key: str, openai_key: str) -> list[dict[str, Any]]:
    """The deployment kinds the client-library tests drive: `demo` (the built-in mock, bridged in
    process), `claude` (the Anthropic stand-in, bridged), `gpt` (the OpenAI stand-in, native) and
    `vllm` (a chat-only OpenAI-compatible server, bridged to its chat completions)."""
    return [
        {"model_name": "demo", "litellm_params": {"model": "mock/demo"}},
        {
            "model_name": "claude",
            "litellm_params": {
                "model": "anthropic/claude-upstream",
                "api_base": upstream_base,
                "api_key": anthropic_key,
            },
        },
        {
            "model_name": "gpt",
            "litellm_params": {
                "model": "openai/gpt-upstream",
                "api_base": upstream_base + "/v1",
                "api_key": openai_key,
            },
        },
        {
            "model_name": "vllm",
            "litellm_params": {"model": "hosted_vllm/llama", "api_base": upstream_base + "/v1", "api_key": openai_key},
        },
    ]
