from __future__ import annotations

import os

# The SDKs under test must never reach for a real provider or phone home.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_TELEMETRY", "False")
os.environ.pop("OPENAI_API_KEY", None)
os.environ.pop("ANTHROPIC_API_KEY", None)

# Fixtures for real PostgreSQL and Redis, and the npm clients (tests/node), available to every test.
from tests.support.databases import module_pg_url, pg_url, second_pg_url  # noqa: F401
from tests.support.node import node_clients  # noqa: F401
from tests.support.redis_server import redis_prefix, redis_url  # noqa: F401
