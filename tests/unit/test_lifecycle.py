"""The gateway's lifecycle: model requests that arrive while the services open wait for them,
no more of them than the ledger may hold and no longer than the store waits for its database;
when the store cannot be opened they are refused with 503 store_not_open and Retry-After."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from meterway.errors import ServiceUnavailable
from meterway.services import Lifecycle, State

SERVICES: Any = object()  # the lifecycle only holds them


def test_a_request_waiting_while_opening_gets_the_services_once_open() -> None:
    async def scenario() -> Any:
        lifecycle = Lifecycle(wait_limit=10, wait_s=30)
        waiting = asyncio.ensure_future(lifecycle.wait_open())
        await asyncio.sleep(0)  # the request is waiting now
        assert not waiting.done() and lifecycle.state is State.OPENING
        lifecycle.opened(SERVICES)
        return await waiting, lifecycle

    services, lifecycle = asyncio.run(scenario())
    assert services is SERVICES and lifecycle.state is State.OPEN and lifecycle.store_text == "open"


def test_a_store_that_cannot_open_refuses_waiting_requests_with_its_reason_on_the_probes() -> None:
    async def refused() -> ServiceUnavailable:
        lifecycle = Lifecycle(wait_limit=10, wait_s=30)
        waiting = asyncio.ensure_future(lifecycle.wait_open())
        await asyncio.sleep(0)
        lifecycle.failed("database at db:5432 did not answer within 30s")
        with pytest.raises(ServiceUnavailable) as e:
            await waiting
        assert lifecycle.state is State.FAILED and lifecycle.store_text.startswith("database at db:5432")
        return e.value

    err = asyncio.run(refused())
    assert err.code == "store_not_open" and err.retry_after is not None and err.http_status() == 503


def test_requests_past_the_ledgers_capacity_do_not_wait_and_other_routes_never_wait() -> None:
    async def scenario() -> None:
        lifecycle = Lifecycle(wait_limit=1, wait_s=30)
        first = asyncio.ensure_future(lifecycle.wait_open())
        await asyncio.sleep(0)
        with pytest.raises(ServiceUnavailable):  # the second finds no room to wait
            await lifecycle.wait_open()
        with pytest.raises(ServiceUnavailable) as e:
            lifecycle.now()
        assert e.value.code == "starting"
        lifecycle.opened(SERVICES)
        assert await first is SERVICES and lifecycle.now() is SERVICES
        lifecycle.stopping()
        assert lifecycle.services is None and lifecycle.state is State.STOPPING

    asyncio.run(scenario())
