"""Probes and lifecycle as an orchestrator meets them: readiness reports a database or Redis cut off
within its timeout (liveness does not care), startup says when migrations are done, and SIGTERM
during streams lets them finish, writes their rows and exits 0."""

from __future__ import annotations

import asyncio
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import yaml

from meterway.api.health import Readiness
from tests.support.gateway import run_gateway
from tests.support.models import priced
from tests.support.netcut import CuttableProxy
from tests.support.serve import ready, serve
from tests.support.wait import ManualClock, eventually
from tests.upstreams.standin import Script, StandIn

HI: Any = [{"role": "user", "content": "hi"}]
MASTER = "sk-probes-master"


def _port(url: str) -> int:
    hostport = url.split("@")[-1].split("/")[0]
    return int(hostport.rsplit(":", 1)[1]) if ":" in hostport else 5432


def _wait_status(url: str, status: int, within_s: float) -> httpx.Response:
    """Polls `url` until it answers `status`. Each poll may take 5 s at most: a readiness check
    that waited for a driver's connect instead of its own timeout fails here."""

    def answer() -> httpx.Response | None:
        r = httpx.get(url, timeout=5)
        return r if r.status_code == status else None

    return eventually(answer, within_s, f"{url} answering {status}", interval=0.05)


def test_readiness_reports_a_database_or_redis_cut_off_within_its_timeout(upstream: StandIn, pg_url: str) -> None:
    database, cache = CuttableProxy(_port(pg_url)), CuttableProxy(6379)
    database.start()
    cache.start()
    general = {
        "database_url": pg_url.replace(f":{_port(pg_url)}/", f":{database.port}/"),
        "redis_url": f"redis://127.0.0.1:{cache.port}/0",
    }
    try:
        with run_gateway({"model_list": [priced(upstream.base_url)], "general_settings": general}) as gw:
            up = _wait_status(gw.url + "/health/ready", 200, 10).json()
            assert up["database"] == "ok" and up["redis"] == "ok" and up["status"] == "ready"
            assert httpx.get(gw.url + "/health/startup").status_code == 200

            database.set_cut(True)
            down = _wait_status(gw.url + "/health/ready", 503, 10)  # once the answer cached for a second is old
            assert down.json()["database"] != "ok", down.text
            assert httpx.get(gw.url + "/health/live", timeout=5).status_code == 200, "liveness does not care"
            database.set_cut(False)
            _wait_status(gw.url + "/health/ready", 200, 10)

            cache.set_cut(True)
            gone = _wait_status(gw.url + "/health/ready", 503, 5).json()
            assert gone["redis"] != "ok" and gone["database"] == "ok"
            cache.set_cut(False)
            _wait_status(gw.url + "/health/ready", 200, 10)
    finally:
        database.stop()
        cache.stop()


def test_readiness_is_checked_at_most_once_a_second(upstream: StandIn) -> None:
    with run_gateway({"model_list": [priced(upstream.base_url)]}) as gw:
        assert gw.app.services is not None
        store = gw.app.services.store
        calls = 0
        ping = store.ping

        async def counted() -> None:
            nonlocal calls
            calls += 1
            await ping()

        store.ping = counted  # type: ignore[method-assign]
        clock = ManualClock()
        gw.app.readiness = Readiness(clock=clock)  # the same check, on a clock the test moves
        for _ in range(20):
            assert httpx.get(gw.url + "/health/ready").status_code == 200
        assert calls == 1, "probes within a second share one check"
        clock.advance(0.99)
        assert httpx.get(gw.url + "/health/ready").status_code == 200 and calls == 1
        clock.advance(0.01)
        for _ in range(5):
            assert httpx.get(gw.url + "/health/ready").status_code == 200
        assert calls == 2, "a second later the database is checked again, once"


async def _rows(pg_url: str, sql: str) -> list[Any]:
    conn = await asyncpg.connect(pg_url)
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


def test_sigterm_during_streams_lets_them_finish_writes_their_rows_and_exits_0(
    tmp_path: Path, upstream: StandIn, pg_url: str
) -> None:
    config = {"model_list": [priced(upstream.base_url)], "general_settings": {"database_url": pg_url}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {"METERWAY_CONFIG": str(path), "METERWAY_MASTER_KEY": MASTER}
    upstream.script(Script(event_gap=0.15), times=3)  # each stream takes about a second
    results: dict[str, list[str]] = {}
    relaying = threading.Semaphore(0)

    def stream(rid: str) -> None:
        body = {"model": "priced", "messages": HI, "stream": True}
        headers = {"Authorization": f"Bearer {MASTER}", "x-request-id": rid}
        with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, headers=headers, timeout=20) as r:
            lines = []
            for line in r.iter_lines():
                if line and not lines:
                    relaying.release()
                if line:
                    lines.append(line)
            results[rid] = lines

    with contextmanager(serve)([], env) as gw:
        ready(gw.url)
        threads = [threading.Thread(target=stream, args=(f"draining-{i}",)) for i in range(3)]
        for t in threads:
            t.start()
        for _ in threads:  # every stream has started relaying
            assert relaying.acquire(timeout=20), "a stream never started"
        gw.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(20)
        assert gw.proc.wait(30) == 0
    assert sorted(results) == ["draining-0", "draining-1", "draining-2"]
    assert all(lines[-1] == "data: [DONE]" and len(lines) > 3 for lines in results.values())
    rows = asyncio.run(_rows(pg_url, "SELECT request_id, status FROM mw_ledger WHERE request_id LIKE 'draining-%'"))
    assert sorted((r["request_id"], r["status"]) for r in rows) == [(f"draining-{i}", "success") for i in range(3)]
