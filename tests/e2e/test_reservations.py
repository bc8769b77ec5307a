"""Reservations across replicas: two `meterway serve` processes sharing PostgreSQL and Redis.

Each request reserves its maximum cost before the upstream call and settles to its real cost
after; these tests check the three promises that makes: concurrent requests cannot overspend a
budget, a replica killed mid-request does not block the budget past the lease's time to live, and
no outcome (success, upstream error, client abort) leaves anything reserved.

Prices: 0.0001 USD per input and 0.01 USD per output token. The stand-in answers "hi" with 4 prompt
and 7 completion tokens: 0.0704 USD; with max_tokens 7 a request reserves about 0.0725 USD.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import redis

from tests.support.serve import Served
from tests.support.serve import replicas as two_serving
from tests.support.wait import NeverHappened, clear_of_minute_edge, eventually
from tests.upstreams.standin import Script, StandIn

MASTER = "sk-reservations-master-key"
COST = Decimal("0.0704")
BODY = {"model": "priced", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 7}


@contextmanager
def two_replicas(
    tmp_path: Path, standin: StandIn, pg_url: str, redis_url: str, prefix: str, lease_ttl: float
) -> Iterator[tuple[Served, Served]]:
    config = {
        "model_list": [
            {
                "model_name": name,
                "litellm_params": {
                    "model": "openai/priced-upstream",
                    "api_base": base,
                    "api_key": "sk-upstream",
                    "input_cost_per_token": 0.0001,
                    "output_cost_per_token": 0.01,
                },
            }
            for name, base in (("priced", standin.base_url + "/v1"), ("broken", "http://127.0.0.1:9/v1"))
        ],
        "general_settings": {
            "master_key": MASTER,
            "database_url": pg_url,
            "redis_url": redis_url,
            "redis_prefix": prefix,
            "lease_ttl_seconds": lease_ttl,
        },
    }
    with two_serving(tmp_path, config) as both:
        yield both


def _key(served: Served, **fields: Any) -> tuple[str, str]:
    r = httpx.post(served.url + "/key/generate", json=fields, headers={"Authorization": f"Bearer {MASTER}"})
    assert r.status_code == 200, r.text
    return r.json()["key"], r.json()["token"]


def _settled_spend(served: Served, key: str, expected: Decimal | None = None) -> Decimal:
    """The key's spend in PostgreSQL once the settling after the last responses is written (the
    caller asserts it: on a timeout this returns the last figure read)."""

    def spend() -> Decimal:
        r = httpx.get(served.url + f"/key/info?key={key}", headers={"Authorization": f"Bearer {MASTER}"})
        return Decimal(str(r.json()["info"]["spend"]))

    if expected is None:
        return spend()
    with suppress(NeverHappened):
        eventually(lambda: spend() == expected, 5, f"spend {expected}")
    return spend()


def _redis_budget(redis_url: str, prefix: str, digest: str) -> dict[str, int]:
    client = redis.Redis.from_url(redis_url)
    try:
        values = client.hgetall(f"{prefix}limits:key:{digest}:budget:all")
        return {k.decode(): int(v) for k, v in values.items() if not k.startswith(b"l:")}
    finally:
        client.close()


def _given_back(redis_url: str, prefix: str, digest: str) -> dict[str, int]:
    """The key's budget counter once the replicas have given back what they leased and not used
    (they do after half a second without use), polled for at most 5 s."""
    deadline = time.monotonic() + 5
    while True:
        budget = _redis_budget(redis_url, prefix, digest)
        if budget.get("reserved", 0) == 0 or time.monotonic() > deadline:
            return budget
        time.sleep(0.05)


async def _burst(replicas: tuple[Served, Served], key: str, n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        return list(
            await asyncio.gather(
                *(client.post(replicas[i % 2].url + "/v1/chat/completions", json=BODY) for i in range(n))
            )
        )


def test_fifty_concurrent_requests_cannot_overspend_a_budget_that_covers_ten(
    tmp_path: Path, upstream: StandIn, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    budget = 10 * COST
    upstream.set_default(Script(delay=0.3))  # the requests overlap: all are in flight together
    with two_replicas(tmp_path, upstream, pg_url, redis_url, redis_prefix, lease_ttl=60) as replicas:
        key, digest = _key(replicas[0], max_budget=float(budget))
        responses = asyncio.run(_burst(replicas, key, 50))
        ok = sum(r.status_code == 200 for r in responses)
        refused = [r for r in responses if r.status_code == 400]
        assert ok + len(refused) == 50, [r.text for r in responses if r.status_code not in (200, 400)]
        assert all(r.json()["error"]["type"] == "budget_exceeded" for r in refused)
        spend = _settled_spend(replicas[1], key, ok * COST)
        assert spend == ok * COST, "every served request is settled at its real cost"
        assert spend <= budget + COST
        assert ok >= 5, f"only {ok} served: reservations should admit what the budget covers"
        assert _given_back(redis_url, redis_prefix, digest)["reserved"] == 0


def test_rpm_30_admits_exactly_30_across_both_and_a_block_on_one_is_refused_by_the_other(
    tmp_path: Path, upstream: StandIn, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    with two_replicas(tmp_path, upstream, pg_url, redis_url, redis_prefix, lease_ttl=60) as (one, two):
        clear_of_minute_edge(5)  # once both are up (their start may take seconds): the burst stays in one window
        key, _ = _key(one, rpm_limit=30)
        responses = asyncio.run(_burst((one, two), key, 50))
        assert sorted(r.status_code for r in responses) == [200] * 30 + [429] * 20
        other, _ = _key(one)
        headers = {"Authorization": f"Bearer {other}"}
        assert httpx.post(two.url + "/v1/chat/completions", json=BODY, headers=headers).status_code == 200
        blocked = httpx.post(one.url + "/key/block", json={"key": other}, headers={"Authorization": f"Bearer {MASTER}"})
        assert blocked.status_code == 200
        # The promise: revocation is seen across replicas within a second.
        eventually(
            lambda: httpx.post(two.url + "/v1/chat/completions", json=BODY, headers=headers).status_code == 401,
            1.0,
            "the block seen by the other replica",
        )


def test_a_replica_killed_mid_request_blocks_the_budget_only_until_its_lease_expires(
    tmp_path: Path, upstream: StandIn, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    ttl = 1.0
    with two_replicas(tmp_path, upstream, pg_url, redis_url, redis_prefix, lease_ttl=ttl) as (doomed, survivor):
        key, _ = _key(doomed, max_budget=0.1)  # one request's reservation at a time
        headers = {"Authorization": f"Bearer {key}"}
        upstream.script(Script(delay=20))
        hanging = threading.Thread(
            target=lambda: _ignore(
                lambda: httpx.post(doomed.url + "/v1/chat/completions", json=BODY, headers=headers, timeout=30)
            )
        )
        hanging.start()
        upstream.wait_for_received(1)
        os.kill(doomed.proc.pid, signal.SIGKILL)
        blocked = httpx.post(survivor.url + "/v1/chat/completions", json=BODY, headers=headers)
        assert blocked.status_code == 400 and "reserved by requests in flight" in blocked.json()["error"]["message"]

        def admitted() -> bool:
            r = httpx.post(survivor.url + "/v1/chat/completions", json=BODY, headers=headers)
            assert r.status_code in (200, 400), r.text  # refused for the reservation until it lapses
            return r.status_code == 200

        eventually(admitted, ttl + 10, "the dead replica's reservation lapsing", interval=0.1)
        hanging.join(timeout=30)


def _ignore(call: Any) -> None:
    with suppress(httpx.HTTPError):
        call()


async def _mixed(replicas: tuple[Served, Served], key: str, total: int) -> dict[str, int]:
    """`total` requests, 20 at a time, of four kinds: answered, answered as a stream, upstream
    unreachable, and a stream the client abandons after its first bytes. The stand-in also fails
    some of them with a 500 (whichever arrive while its failures are queued)."""
    outcomes: dict[str, int] = {}
    queue = iter(range(total))
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:

        async def one(i: int) -> None:
            base = replicas[i % 2].url + "/v1/chat/completions"
            kind = ("plain", "stream", "unreachable", "abort")[i % 4]
            body = {
                **BODY,
                "model": "broken" if kind == "unreachable" else "priced",
                "stream": kind in ("stream", "abort"),
            }
            if kind == "abort":
                async with client.stream("POST", base, json=body) as r:
                    async for _ in r.aiter_raw():
                        break  # leave with the stream unfinished
                status = r.status_code
            else:
                status = (await client.post(base, json=body)).status_code
            outcomes[f"{kind}:{status}"] = outcomes.get(f"{kind}:{status}", 0) + 1

        async def worker() -> None:
            for i in queue:
                await one(i)

        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(20))), timeout=240)
    return outcomes


def test_a_thousand_mixed_requests_leave_nothing_reserved(
    tmp_path: Path, upstream: StandIn, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    upstream.script_fail(500, {"error": {"message": "upstream failed", "type": "server_error"}}, times=150)
    upstream.set_default(Script(delay=0.002))
    with two_replicas(tmp_path, upstream, pg_url, redis_url, redis_prefix, lease_ttl=600) as replicas:
        key, digest = _key(replicas[0], max_budget=1000.0, max_parallel_requests=50, tpm_limit=10_000_000)
        outcomes = asyncio.run(_mixed(replicas, key, 1000))
        assert sum(outcomes.values()) == 1000
        for kind in ("plain:200", "stream:200", "unreachable:502", "abort:200", "plain:502"):
            assert outcomes.get(kind, 0) > 0, outcomes
        client = redis.Redis.from_url(redis_url)
        try:

            def held() -> tuple[dict[str, int], int]:
                budget = _redis_budget(redis_url, redis_prefix, digest)
                slots = int(client.hget(f"{redis_prefix}limits:key:{digest}:parallel:slots", "reserved") or 0)
                return budget, slots

            # the replicas give back what they leased and did not use after half a second idle
            with suppress(NeverHappened):
                eventually(lambda: held()[0]["reserved"] == 0 and held()[1] == 0, 5, "nothing held")
            budget, slots = held()
        finally:
            client.close()
        assert budget["reserved"] == 0 and slots == 0, (budget, slots)
        spend = _settled_spend(replicas[0], key, Decimal(budget["spent"]) * Decimal("1e-10"))
        assert spend == Decimal(budget["spent"]) * Decimal("1e-10"), "the store and the counters agree on spend"
        assert spend > 0


def _until(served: Served, headers: dict[str, str], status: int, within_s: float = 1.0) -> None:
    """Posts to `served` until it answers `status`, failing if that takes longer than `within_s`."""
    started = time.monotonic()
    while True:
        r = httpx.post(served.url + "/v1/chat/completions", json=BODY, headers=headers)
        if r.status_code == status:
            return
        assert time.monotonic() - started < within_s, f"still {r.status_code} after {within_s} s: {r.text}"
        time.sleep(0.02)


def test_a_changed_budget_applies_on_both_replicas_within_a_second_though_each_holds_a_lease(
    tmp_path: Path, upstream: StandIn, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    with two_replicas(tmp_path, upstream, pg_url, redis_url, redis_prefix, lease_ttl=60) as (one, two):
        key, _ = _key(one, max_budget=100.0)
        headers = {"Authorization": f"Bearer {key}"}
        for served in (one, two, one, two):  # each replica now leases more of the budget than one request
            assert httpx.post(served.url + "/v1/chat/completions", json=BODY, headers=headers).status_code == 200
        master = {"Authorization": f"Bearer {MASTER}"}
        lowered = httpx.post(one.url + "/key/update", json={"key": key, "max_budget": 0.2}, headers=master)
        assert lowered.status_code == 200, lowered.text  # 4 x 0.0704 spent: nothing more fits
        _until(two, headers, 400)
        _until(one, headers, 400)
        raised = httpx.post(two.url + "/key/update", json={"key": key, "max_budget": 100.0}, headers=master)
        assert raised.status_code == 200, raised.text
        _until(one, headers, 200)
        _until(two, headers, 200)


def test_a_key_deleted_on_one_replica_is_refused_by_the_other_within_a_second(
    tmp_path: Path, upstream: StandIn, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    with two_replicas(tmp_path, upstream, pg_url, redis_url, redis_prefix, lease_ttl=60) as (one, two):
        key, _ = _key(one, max_budget=100.0, rpm_limit=1000, max_parallel_requests=10)
        headers = {"Authorization": f"Bearer {key}"}
        assert httpx.post(two.url + "/v1/chat/completions", json=BODY, headers=headers).status_code == 200
        master = {"Authorization": f"Bearer {MASTER}"}
        assert httpx.post(one.url + "/key/delete", json={"keys": [key]}, headers=master).status_code == 200
        _until(two, headers, 401)


def test_what_an_idle_replica_leased_goes_back_so_the_other_reaches_the_rpm_limit(
    tmp_path: Path, upstream: StandIn, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    """Under-serving is passing: a replica that leased more than it used gives it back once idle,
    and the other, whose requests keep coming, then admits exactly up to the limit."""
    with two_replicas(tmp_path, upstream, pg_url, redis_url, redis_prefix, lease_ttl=60) as (one, two):
        clear_of_minute_edge(12)  # once both are up: all of it, to the deadline below, in one rpm window
        key, _ = _key(one, rpm_limit=30)
        headers = {"Authorization": f"Bearer {key}"}
        admitted = 0
        for _ in range(3):  # `one` leases units beyond these three
            admitted += httpx.post(one.url + "/v1/chat/completions", json=BODY, headers=headers).status_code == 200
        assert admitted == 3
        deadline = time.monotonic() + 9  # bounds a failure; on a loaded machine the 27 requests take seconds
        while admitted < 30:
            status = httpx.post(two.url + "/v1/chat/completions", json=BODY, headers=headers).status_code
            assert status in (200, 429)
            admitted += status == 200
            assert time.monotonic() < deadline, f"only {admitted} of 30 admitted"
            if status == 429:
                time.sleep(0.05)
        for served in (one, two):
            assert httpx.post(served.url + "/v1/chat/completions", json=BODY, headers=headers).status_code == 429
