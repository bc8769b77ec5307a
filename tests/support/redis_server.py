"""Real Redis for tests, on 127.0.0.1:6379 (METERWAY_TEST_REDIS overrides). Each test gets its own
key prefix, deleted afterwards; where Redis is not running a test is skipped with what to start,
and under CI=true it fails instead."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis

URL = os.environ.get("METERWAY_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture
def redis_url() -> Iterator[str]:
    client = redis.Redis.from_url(URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as e:
        message = f"Redis unreachable at {URL}: {e}; start it (redis-server --daemonize yes) or set METERWAY_TEST_REDIS"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    yield URL
    client.close()


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    prefix = f"meterway-test:{uuid.uuid4().hex[:10]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)
    client.close()
