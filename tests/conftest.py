from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# The SDKs under test must never reach for a real provider or phone home.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_TELEMETRY", "False")
os.environ.pop("OPENAI_API_KEY", None)
os.environ.pop("ANTHROPIC_API_KEY", None)

from tests.support.gateway import RunningGateway, run_gateway


@pytest.fixture
def demo_gateway() -> Iterator[RunningGateway]:
    """A gateway serving only the built-in mock provider as model `demo`."""
    with run_gateway({"model_list": [{"model_name": "demo", "litellm_params": {"model": "mock/demo"}}]}) as gw:
        yield gw
