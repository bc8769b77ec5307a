from __future__ import annotations

import os
from collections import Counter

import pytest

# The SDKs under test must never reach for a real provider or phone home.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_TELEMETRY", "False")
os.environ.pop("OPENAI_API_KEY", None)
os.environ.pop("ANTHROPIC_API_KEY", None)

# Fixtures for real PostgreSQL and Redis, and the npm clients (tests/node), available to every test.
from tests.support.databases import _databases, module_pg_url, pg_url, second_pg_url  # noqa: F401
from tests.support.node import node_clients  # noqa: F401
from tests.support.redis_server import redis_prefix, redis_url  # noqa: F401


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """schemathesis names the test of each API operation `test…[METHOD /path]` but gives them all
    the function's node id; xdist schedules by node id and would run one operation of the 45.
    Each gets the id its name says."""
    seen = Counter(item.nodeid for item in items)
    for item in items:
        if seen[item.nodeid] > 1 and item.parent is not None:
            if hasattr(item, "_id"):  # pytest 9: a structured id
                item._id = item.parent.id.child(item.name)
            else:
                item._nodeid = f"{item.parent.nodeid}::{item.name}"
