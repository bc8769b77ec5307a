"""The ledger's durability contract against real PostgreSQL: a gateway SIGKILLed under load loses
no row of a completed response and writes none twice; a database cut off for a while loses no
row, refuses requests beyond the queue bound with 503, and catches up when the cut heals."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import yaml

from tests.support.gateway import run_gateway
from tests.support.models import priced
from tests.support.netcut import CuttableProxy
from tests.support.serve import ready, serve
from tests.support.wait import eventually
from tests.upstreams.standin import Script, StandIn

MASTER = "sk-durability-master-key"
HI = [{"role": "user", "content": "hi"}]


def _config(standin: StandIn, database_url: str, **general: Any) -> dict[str, Any]:
    return {
        "model_list": [priced(standin.base_url)],
        "general_settings": {"master_key": MASTER, "database_url": database_url, **general},
    }


def _serve_env(tmp_path: Path, standin: StandIn, pg_url: str) -> dict[str, str]:
    """The environment for `meterway serve` on that config (and no master key from outside)."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_config(standin, pg_url)))
    return {"METERWAY_CONFIG": str(path), "METERWAY_MASTER_KEY": "", "LITELLM_MASTER_KEY": ""}


async def _rows(pg_url: str, sql: str) -> list[Any]:
    conn = await asyncpg.connect(pg_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


async def _load(url: str, completed: set[str], stop: threading.Event, deadline_s: float) -> None:
    """32 clients sending plain and streamed requests, each with its own request id, until `stop`;
    `completed` gets the id of every request whose whole response arrived."""
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {MASTER}"}, timeout=10) as client:

        async def one(i: int) -> None:
            end = time.monotonic() + deadline_s
            n = 0
            while not stop.is_set() and time.monotonic() < end:
                rid = f"crash-{i}-{n}-{uuid.uuid4().hex[:6]}"
                n += 1
                body = {"model": "priced", "messages": HI, "stream": n % 2 == 0}
                try:
                    r = await client.post(url + "/v1/chat/completions", json=body, headers={"x-request-id": rid})
                except httpx.HTTPError:
                    continue
                complete = r.status_code == 200 and (
                    b"[DONE]" in r.content if body["stream"] else b"usage" in r.content
                )
                if complete:
                    completed.add(rid)

        await asyncio.gather(*(one(i) for i in range(32)))


def test_a_gateway_killed_under_load_has_exactly_one_row_per_completed_response(
    tmp_path: Path, upstream: StandIn, pg_url: str
) -> None:
    env = _serve_env(tmp_path, upstream, pg_url)
    completed: set[str] = set()
    stop = threading.Event()
    with contextmanager(serve)([], env) as gw:
        ready(gw.url)
        loader = threading.Thread(target=lambda: asyncio.run(_load(gw.url, completed, stop, 30)))
        loader.start()
        # killed with 32 requests in flight, once enough have completed to be worth checking
        eventually(lambda: len(completed) > 100, 30, "100 responses completed under load")
        os.kill(gw.proc.pid, signal.SIGKILL)
        gw.proc.wait(10)
        stop.set()
        loader.join(30)
    assert len(completed) > 50, f"only {len(completed)} requests completed before the kill"
    with contextmanager(serve)([], env) as again:  # the same database, restarted
        ready(again.url)
        counts = asyncio.run(_rows(pg_url, "SELECT request_id, count(*) AS n FROM mw_ledger GROUP BY request_id"))
    rows = {r["request_id"]: r["n"] for r in counts}
    missing = completed - rows.keys()
    assert not missing, f"{len(missing)} completed responses have no ledger row, e.g. {sorted(missing)[:3]}"
    assert max(rows.values()) == 1, "a request has two rows"
    _rollup_matches(pg_url)


def test_sigterm_lets_a_request_in_flight_finish_and_writes_its_row(
    tmp_path: Path, upstream: StandIn, pg_url: str
) -> None:
    env = _serve_env(tmp_path, upstream, pg_url)
    upstream.script(Script(delay=1.5))
    result: list[httpx.Response] = []
    with contextmanager(serve)([], env) as gw:
        ready(gw.url)
        body = {"model": "priced", "messages": HI}
        headers = {"Authorization": f"Bearer {MASTER}", "x-request-id": "in-flight-at-sigterm"}
        slow = threading.Thread(
            target=lambda: result.append(
                httpx.post(gw.url + "/v1/chat/completions", json=body, headers=headers, timeout=10)
            )
        )
        slow.start()
        upstream.wait_for_received(1)
        gw.proc.send_signal(signal.SIGTERM)
        slow.join(10)
        # uvicorn shuts down gracefully, then re-raises the signal: the exit status says SIGTERM
        assert gw.proc.wait(20) in (0, -signal.SIGTERM)
    assert result and result[0].status_code == 200
    rows = asyncio.run(_rows(pg_url, "SELECT request_id FROM mw_ledger WHERE request_id = 'in-flight-at-sigterm'"))
    assert len(rows) == 1


def _rollup_matches(pg_url: str) -> None:
    (raw,) = asyncio.run(
        _rows(
            pg_url,
            "SELECT count(*) AS n, sum(prompt_tokens) AS p, sum(completion_tokens) AS c, sum(cost) AS s FROM mw_ledger",
        )
    )
    (rolled,) = asyncio.run(
        _rows(
            pg_url,
            "SELECT sum(requests) AS n, sum(prompt_tokens) AS p, sum(completion_tokens) AS c, sum(cost) AS s "
            "FROM mw_usage_daily",
        )
    )
    assert dict(raw) == dict(rolled), "the daily rollup must equal the rows it sums"


def _pg_port(pg_url: str) -> int:
    hostport = pg_url.split("@")[-1].split("/")[0]
    return int(hostport.rsplit(":", 1)[1]) if ":" in hostport else 5432


def test_a_database_cut_loses_no_row_and_refuses_beyond_the_queue_bound(upstream: StandIn, pg_url: str) -> None:
    proxy = CuttableProxy(_pg_port(pg_url))
    proxy.start()
    proxied = pg_url.replace(f":{_pg_port(pg_url)}/", f":{proxy.port}/")
    try:
        with run_gateway(_config(upstream, proxied, ledger_queue_size=20), master_key=MASTER) as gw:
            headers = {"Authorization": f"Bearer {MASTER}"}

            def call(rid: str) -> int:
                body = {"model": "priced", "messages": HI}
                r = httpx.post(
                    gw.v1 + "/chat/completions", json=body, headers={**headers, "x-request-id": rid}, timeout=10
                )
                return r.status_code

            before = [f"before-{i}" for i in range(10)]
            assert [call(r) for r in before] == [200] * 10
            proxy.set_cut(True)
            during = [f"during-{i}" for i in range(25)]
            statuses = [call(r) for r in during]
            assert statuses == [200] * 20 + [503] * 5, statuses
            waiting = httpx.get(gw.url + "/health/ready").json()
            assert waiting["ledger"]["waiting"] == 20 and waiting["ledger"]["writing"] is False
            proxy.set_cut(False)
            eventually(
                lambda: httpx.get(gw.url + "/health/ready").json()["ledger"]["waiting"] == 0,
                20,
                "the queued rows written after the cut healed",
                interval=0.05,
            )
            assert call("after-0") == 200
        ids = {r["request_id"] for r in asyncio.run(_rows(pg_url, "SELECT request_id FROM mw_ledger"))}
        served = {*before, *during[:20], "after-0"}
        assert served <= ids, f"rows lost: {sorted(served - ids)[:5]}"
        assert not ids & set(during[20:]), "a refused request must not have been served"
        _rollup_matches(pg_url)
    finally:
        proxy.stop()
