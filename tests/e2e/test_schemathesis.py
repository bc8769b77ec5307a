"""Schemathesis over /openapi.json: requests made from the management API's own description,
valid and invalid, against a real gateway. None may get a 5xx. Bounded (a few examples per
operation, a fixed seed, derandomized) so it runs in seconds, the same cases every run.

The gateway is this module's own, on a scratch SQLite database, so whatever the generated calls
delete, block or regenerate breaks nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import orjson
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig

from meterway.api.openapi import document
from tests.support.gateway import RunningGateway, run_gateway

SEED = 15


@pytest.fixture(scope="module")
def schema_gateway() -> Iterator[RunningGateway]:
    config = {
        "model_list": [{"model_name": "demo", "litellm_params": {"model": "mock/demo"}}],
        "general_settings": {"store_model_in_db": True},
    }
    with run_gateway(config) as gw:
        yield gw


# The document the gateway serves, built in-process so the operations are known when tests are
# collected; the requests go to the running gateway.
schema = schemathesis.openapi.from_dict(
    orjson.loads(document()),
    config=SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "generation": {"max-examples": 5, "deterministic": True, "database": "none"},
            "phases": {"stateful": {"enabled": False}},
            "request-timeout": 10,
        }
    ),
)


@schema.parametrize()
def test_no_generated_request_gets_a_server_error(case: schemathesis.Case, schema_gateway: RunningGateway) -> None:
    headers = {"Authorization": f"Bearer {schema_gateway.key}"}
    case.call_and_validate(base_url=schema_gateway.url, headers=headers, checks=[not_a_server_error])


def test_the_fuzzed_document_is_the_one_served(schema_gateway: RunningGateway) -> None:
    served = httpx.get(schema_gateway.url + "/openapi.json", timeout=10)
    assert served.status_code == 200 and orjson.loads(served.content) == orjson.loads(document())
