"""The ledger against hostile values on real PostgreSQL, through a real gateway and the stand-in
upstream: usage of billions of tokens is stored and summed in 64 bits, rows the database refuses
are cut or quarantined (and seen in /billing/status, the metrics and the CLI) without stopping the
rows behind them, readiness fails while rows cannot be written and recovers after, and a request
sent right after start has its row committed before its response completes."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
import yaml

from meterway.app import create_app
from meterway.context import RequestContext
from meterway.ledger import Entry
from tests.support.cli import run_meterway
from tests.support.gateway import RunningGateway, free_socket, run_gateway, settings_for
from tests.support.models import priced
from tests.support.rows import ledger_entry
from tests.support.serve import port
from tests.support.wait import eventually
from tests.upstreams.standin import Script, StandIn

MASTER = "sk-hostile-ledger-master"
HI: Any = [{"role": "user", "content": "hi"}]
HOSTILE_USERS = {"long": "c" * 300, "nul": "cust-\x00-x", "surrogate": "cust-\ud800"}


class HostileUser:
    """A hook standing for whatever gets a value past the API's checks: it puts the hostile `user`
    wanted for a request id on the request (the value its ledger row records), and keeps the
    gateway's loop so that the test can hand the ledger rows of its own."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.wanted: dict[str, str] = {}  # request id -> a key of HOSTILE_USERS

    async def before(self, ctx: RequestContext) -> None:
        self.loop = asyncio.get_running_loop()
        kind = self.wanted.get(ctx.request_id)
        if kind is not None:
            ctx.user = HOSTILE_USERS[kind]

    async def after(self, ctx: RequestContext) -> None:
        return None


def _config(standin: StandIn, database_url: str) -> dict[str, Any]:
    return {
        "model_list": [priced(standin.base_url)],
        "general_settings": {"master_key": MASTER, "database_url": database_url},
    }


def _completion(prompt_tokens: int, completion_tokens: int = 1) -> dict[str, Any]:
    return {
        "id": "chatcmpl-huge",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "priced-up",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


async def _fetch(pg_url: str, sql: str, *args: Any) -> list[Any]:
    conn = await asyncpg.connect(pg_url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def _rows(pg_url: str, sql: str, *args: Any) -> list[Any]:
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(_fetch(pg_url, sql, *args))).result()


def _chat(gw: RunningGateway, rid: str) -> httpx.Response:
    return httpx.post(
        gw.v1 + "/chat/completions",
        json={"model": "priced", "messages": HI},
        headers={"Authorization": f"Bearer {MASTER}", "x-request-id": rid},
        timeout=20,
    )


def _commit(gw: RunningGateway, hook: HostileUser, entry: Entry) -> None:
    """A row handed to the running gateway's ledger, as its own requests' rows are."""
    assert hook.loop is not None and gw.app.services is not None
    asyncio.run_coroutine_threadsafe(gw.app.services.ledger.commit(entry), hook.loop).result(30)


def test_hostile_values_and_billions_of_tokens_never_stop_the_ledger(upstream: StandIn, pg_url: str) -> None:
    hook = HostileUser()
    with run_gateway(_config(upstream, pg_url), master_key=MASTER, hooks=(hook,)) as gw:
        admin = {"Authorization": f"Bearer {MASTER}"}
        # upstream-reported usage past 2^31, and two rows whose day passes 2^31 together
        for rid, tokens in (("huge-3e9", 3_000_000_000), ("huge-a", 1_200_000_000), ("huge-b", 1_200_000_000)):
            upstream.script(Script(status=200, body=_completion(tokens)))
            assert _chat(gw, rid).status_code == 200
        # hostile values that reached the ledger: on the request path, and handed to the writer
        answered = []
        for kind in HOSTILE_USERS:
            rid = f"hostile-{kind}"
            hook.wanted[rid] = kind
            r = _chat(gw, rid)
            if r.status_code == 200:
                answered.append(rid)
        assert answered, "the hostile requests were all refused: nothing was tested"
        injected = [
            ledger_entry(customer_id="x" * 300, request_id="injected-long"),
            ledger_entry(metadata={"n": 10**30, "s": "a\x00b"}, request_id="injected-metadata"),
            ledger_entry(end_user="u\x00", request_id="injected-nul"),
            ledger_entry(prompt_tokens=2**63, total_tokens=2**63, request_id="injected-overflow"),
        ]
        for e in injected:
            _commit(gw, hook, e)
        ordinary = [f"ordinary-{i}" for i in range(20)]
        assert [_chat(gw, rid).status_code for rid in ordinary] == [200] * 20
        eventually(
            lambda: set(ordinary) <= {r["request_id"] for r in _rows(pg_url, "SELECT request_id FROM mw_ledger")},
            10,
            "every ordinary row written after the hostile ones",
            interval=0.05,
        )
        ready = httpx.get(gw.url + "/health/ready", timeout=10)
        assert ready.status_code == 200, ready.text
        assert ready.json()["ledger"]["waiting"] == 0 and ready.json()["ledger"]["stalled"] is None

        quarantined = {r["request_id"]: r["reason"] for r in _rows(pg_url, "SELECT * FROM mw_ledger_quarantine")}
        flags = {r["request_id"]: r["flags"] for r in _rows(pg_url, "SELECT request_id, flags FROM mw_ledger")}
        for rid in [*answered, *(e.row.request_id for e in injected)]:
            assert (rid in flags) != (rid in quarantined), f"{rid} must have one row, written or quarantined"
            if rid in flags:
                assert flags[rid] == "cut", f"{rid} was written as given: {flags[rid]}"
        assert "injected-overflow" in quarantined and "out of range" in quarantined["injected-overflow"]
        status = httpx.get(gw.url + "/billing/status", headers=admin, timeout=10).json()
        assert status["ledger_quarantine"]["rows"] == len(quarantined) >= 1
        assert status["ledger_quarantine"]["oldest"] is not None
        metrics = httpx.get(gw.url + "/metrics", timeout=10).text
        assert f"meterway_ledger_quarantined_rows_total {float(len(quarantined))}" in metrics
        assert "meterway_ledger_cut_rows_total" in metrics and "meterway_ledger_write_failing 0.0" in metrics

        # 64 bits all the way: the rows, the day's rollup and the reports, as integers
        (row,) = _rows(pg_url, "SELECT prompt_tokens, cost FROM mw_ledger WHERE request_id = 'huge-3e9'")
        assert row["prompt_tokens"] == 3_000_000_000 and row["cost"] == 3_000_000_000 * 10_000 + 20_000
        logged = httpx.get(gw.url + "/spend/logs", params={"request_id": "huge-3e9"}, headers=admin).json()["data"][0]
        assert logged["prompt_tokens"] == 3_000_000_000 and logged["cost"] == "3000.000002"
        usage = httpx.get(gw.url + "/usage", params={"group_by": "day"}, headers=admin, timeout=10).json()
        day = usage["rows"][0]
        assert isinstance(day["prompt_tokens"], int) and day["prompt_tokens"] >= 5_400_000_000
        (rolled,) = _rows(pg_url, "SELECT sum(prompt_tokens) AS p FROM mw_usage_daily")
        (raw,) = _rows(pg_url, "SELECT sum(prompt_tokens) AS p FROM mw_ledger")
        assert rolled["p"] == raw["p"] == day["prompt_tokens"], "the rollup must equal the rows it sums"
        report = httpx.get(gw.url + "/global/spend/report", params={"group_by": "customer"}, headers=admin).json()
        assert any(c["metadata"] and c["metadata"][0]["total_tokens"] > 2**32 for d in report for c in d["customers"])
    env = {k: v for k, v in os.environ.items() if k not in ("METERWAY_CONFIG", "CONFIG_FILE_PATH")}
    cli = subprocess.run(
        [sys.executable, "-m", "meterway", "usage", "--by", "day", "--format", "json", "--database-url", pg_url],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert cli.returncode == 0, cli.stderr
    assert f"{len(quarantined)} ledger row(s) wait in the quarantine" in cli.stderr
    assert f'"prompt_tokens": {day["prompt_tokens"]},' in cli.stdout, "64-bit sums are JSON integers on the CLI too"


def _block_inserts(pg_url: str) -> None:
    """A trigger that fails every ledger insert with an error that is not the row's (P0001):
    the database answers pings, but takes no row."""
    _rows(
        pg_url,
        "CREATE OR REPLACE FUNCTION mw_test_refuse() RETURNS trigger LANGUAGE plpgsql AS "
        "$$BEGIN RAISE EXCEPTION 'ledger writes switched off by the test'; END$$",
    )
    _rows(
        pg_url,
        "CREATE TRIGGER mw_test_refuse BEFORE INSERT ON mw_ledger FOR EACH ROW EXECUTE FUNCTION mw_test_refuse()",
    )


def _wait_ready(url: str, status: int, within_s: float) -> dict[str, Any]:
    def answer() -> dict[str, Any] | None:
        r = httpx.get(url + "/health/ready", timeout=10)
        return r.json() if r.status_code == status else None  # type: ignore[no-any-return]

    return eventually(answer, within_s, f"/health/ready answering {status}", interval=0.05)


def test_readiness_fails_while_ledger_rows_cannot_be_written_and_recovers(upstream: StandIn, pg_url: str) -> None:
    with run_gateway(_config(upstream, pg_url), master_key=MASTER) as gw:
        assert gw.app.services is not None
        gw.app.services.ledger.stall_limit_s = 1.0  # the default is 5 s; the behaviour is the same
        _wait_ready(gw.url, 200, 10)
        _block_inserts(pg_url)
        assert _chat(gw, "while-failing").status_code == 200  # served: the row waits in the queue
        down = _wait_ready(gw.url, 503, 10)
        assert down["database"] == "ok", "the database answers pings: the ledger alone is failing"
        assert down["ledger"]["waiting"] == 1 and "switched off by the test" in down["ledger"]["stalled"]
        assert "meterway_ledger_write_failing 1.0" in httpx.get(gw.url + "/metrics").text
        _rows(pg_url, "DROP TRIGGER mw_test_refuse ON mw_ledger")
        up = _wait_ready(gw.url, 200, 10)
        assert up["ledger"]["waiting"] == 0 and up["ledger"]["stalled"] is None
        assert "meterway_ledger_write_failing 0.0" in httpx.get(gw.url + "/metrics").text
    assert [r["flags"] for r in _rows(pg_url, "SELECT flags FROM mw_ledger WHERE request_id = 'while-failing'")] == [
        None
    ], "the row is written as it was, once, after the failure"


def test_readiness_fails_while_a_ledger_commit_hangs_on_a_lock(upstream: StandIn, pg_url: str) -> None:
    with run_gateway(_config(upstream, pg_url), master_key=MASTER) as gw:
        assert gw.app.services is not None
        gw.app.services.ledger.stall_limit_s = 1.0
        _wait_ready(gw.url, 200, 10)
        locked = threading.Event()
        release = threading.Event()

        async def hold() -> None:
            conn = await asyncpg.connect(pg_url)
            try:
                async with conn.transaction():
                    await conn.execute("LOCK TABLE mw_ledger IN ACCESS EXCLUSIVE MODE")
                    locked.set()
                    await asyncio.to_thread(release.wait, 30)
            finally:
                await conn.close()

        holder = threading.Thread(target=lambda: asyncio.run(hold()))
        holder.start()
        try:
            assert locked.wait(10)
            answers: list[int] = []
            client = threading.Thread(target=lambda: answers.append(_chat(gw, "behind-a-lock").status_code))
            client.start()
            down = _wait_ready(gw.url, 503, 10)
            assert "not returned" in down["ledger"]["stalled"] and not answers, "the response waits for its commit"
        finally:
            release.set()
            holder.join(10)
        client.join(20)
        assert answers == [200]
        _wait_ready(gw.url, 200, 10)


@contextmanager
def _serve(tmp_path: Path, standin: StandIn, pg_url: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_config(standin, pg_url)))
    port_ = port()
    env = {**os.environ, "METERWAY_CONFIG": str(path), "METERWAY_MASTER_KEY": "", "LITELLM_MASTER_KEY": ""}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "meterway",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port_),
            "--log-level",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        yield proc, f"http://127.0.0.1:{port_}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stderr:
            proc.stderr.close()


def test_a_request_sent_right_after_start_has_its_row_before_its_response_completes(
    tmp_path: Path, upstream: StandIn, pg_url: str
) -> None:
    with _serve(tmp_path, upstream, pg_url) as (proc, url):

        def live() -> bool:
            assert proc.poll() is None, "meterway serve exited"
            return httpx.get(url + "/health/live", timeout=1).status_code == 200

        # the first moment the gateway answers at all
        eventually(live, 30, "meterway serve answering", interval=0.005, retry_on=(httpx.TransportError,))
        r = httpx.post(
            url + "/v1/chat/completions",
            json={"model": "priced", "messages": HI},
            headers={"Authorization": f"Bearer {MASTER}", "x-request-id": "first-request"},
            timeout=60,
        )
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert r.status_code == 200, r.text
    rows = _rows(pg_url, "SELECT request_id, prompt_tokens FROM mw_ledger WHERE request_id = 'first-request'")
    assert len(rows) == 1, "the row of an answered request was lost with the process"


def test_a_model_request_gets_503_with_retry_after_when_the_store_cannot_open(upstream: StandIn) -> None:
    closed = f"postgresql://postgres@127.0.0.1:{port()}/nowhere"
    config = {"model_list": [priced(upstream.base_url)], "general_settings": {"database_url": closed}}
    app = create_app(replace(settings_for(config, MASTER), database_wait_s=1.0))
    sock = free_socket()
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="critical", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        eventually(lambda: server.started, 10, "the server listening", interval=0.005)
        live = httpx.get(url + "/health/live", timeout=5)
        startup = httpx.get(url + "/health/startup", timeout=5).json()
        assert live.status_code == 200 and startup["store"] == "opening", "live answers while the store opens"
        r = httpx.post(
            url + "/v1/chat/completions",
            json={"model": "priced", "messages": HI},
            headers={"Authorization": f"Bearer {MASTER}"},
            timeout=20,
        )
        assert r.status_code == 503 and r.headers["retry-after"], r.text
        assert r.json()["error"]["code"] == "store_not_open"
        assert upstream.received == [] or all(x.path != "/v1/chat/completions" for x in upstream.received)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_the_command_line_lists_and_reprocesses_quarantined_rows(tmp_path: Path, fmt: str) -> None:
    db = f"sqlite:///{tmp_path / 'm.db'}"

    async def quarantine() -> None:
        from meterway.store.runtime import Store

        store = await Store.open(db, wait_s=5, run_migrations=True)
        try:
            entry = ledger_entry(request_id="kept-1")
            await store.ledger.quarantine(entry, "a reason the database gave")
        finally:
            await store.close()

    asyncio.run(quarantine())
    env = {k: v for k, v in os.environ.items() if k not in ("METERWAY_CONFIG", "CONFIG_FILE_PATH")}
    billing = fmt == "json"  # with billing on, a reprocessed row is exported as any other
    if billing:
        env.update(LAGO_API_BASE="http://127.0.0.1:9", LAGO_API_KEY="lago-test-key")

    def mw(*args: str) -> subprocess.CompletedProcess[str]:
        return run_meterway([*args, "--database-url", db], env)

    usage = mw("usage")
    assert usage.returncode == 0 and "1 ledger row(s) wait in the quarantine" in usage.stderr
    listed = mw("ledger", "quarantine", "--format", fmt)
    assert listed.returncode == 0 and "kept-1" in listed.stdout and "a reason the database gave" in listed.stdout
    again = mw("ledger", "reprocess", "--format", fmt)
    assert again.returncode == 0, again.stdout + again.stderr
    assert ("written 1" in again.stdout) if fmt == "table" else ('"written": 1' in again.stdout)
    after = mw("usage", "--format", "json")
    assert after.returncode == 0 and "quarantine" not in after.stderr and '"requests": 1' in after.stdout
    with sqlite3.connect(tmp_path / "m.db") as conn:
        exports = conn.execute("SELECT count(*) FROM mw_billing_outbox").fetchone()[0]
        (reprocessed,) = conn.execute("SELECT reprocessed_at FROM mw_ledger_quarantine").fetchone()
    assert exports == (1 if billing else 0) and reprocessed is not None
    assert "written 0" in mw("ledger", "reprocess").stdout, "a reprocessed row is not written twice"


def test_the_ui_billing_page_shows_quarantined_rows_and_reprocesses_them(upstream: StandIn, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'ui.db'}"
    config = {"model_list": [priced(upstream.base_url)], "general_settings": {"database_url": db}}
    with run_gateway(config, master_key=MASTER) as gw, httpx.Client(base_url=gw.url, timeout=10) as ui:

        async def quarantine() -> None:
            from meterway.store.runtime import Store

            store = await Store.open(db, wait_s=5, run_migrations=False)
            try:
                await store.ledger.quarantine(ledger_entry(request_id="kept-for-the-ui"), "a reason shown in the UI")
            finally:
                await store.close()

        with ThreadPoolExecutor(1) as pool:
            pool.submit(lambda: asyncio.run(quarantine())).result()
        form = ui.get("/ui/login").text
        csrf = form.split('name="csrf" value="')[1].split('"')[0]
        assert ui.post("/ui/login", data={"csrf": csrf, "key": MASTER}).status_code == 303
        page = ui.get("/ui/billing").text
        assert "kept-for-the-ui" in page and "a reason shown in the UI" in page and "Reprocess quarantined rows" in page
        token = page.split('name="csrf" value="')[1].split('"')[0]
        done = ui.post("/ui/billing/ledger-reprocess", data={"csrf": token})
        assert done.status_code == 303 and "1%20quarantined" in done.headers["location"].replace("+", "%20")
        assert "No ledger row is quarantined" in ui.get("/ui/billing").text
        status = httpx.get(gw.url + "/billing/status", headers={"Authorization": f"Bearer {MASTER}"}).json()
        assert status["ledger_quarantine"] == {"rows": 0, "oldest": None}
