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
