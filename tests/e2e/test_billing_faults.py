"""Fault acceptance tests of the billing export: usage reaches Lago once, whatever Lago or the gateway do.

Every scenario runs over real HTTP (the openai client, the gateway, the stand-in upstream; the
gateway's sender, the Lago stand-in) and ends with the same check (`_delivered_once`):

* every request answered in full has exactly one billable ledger row, and no other row is billable;
* the transaction ids Lago holds are exactly those rows' ids, none twice;
* no id was sent again after Lago had answered that it stored it (`double_deliveries`): a resend is
  only legitimate when the answer was lost, so this catches rows claimed twice, by two replicas or
  after a claim lapsed under a live sender;
* reconcile (`GET /billing/reconcile`) reports a match for the month.

Lago down, failing or losing answers run on the in-process gateway and SQLite; a gateway killed
mid-send and two replicas sending at once run `meterway serve` processes on a PostgreSQL database
of their own.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import openai
import yaml

from meterway.store.runtime import Store
from meterway.store.tables import billing_outbox, ledger
from tests.lago.standin import LagoStandIn
from tests.support.gateway import run_gateway
from tests.support.models import priced
from tests.support.serve import Served, ready, serving
from tests.support.wait import eventually
from tests.upstreams.standin import StandIn

MASTER = "sk-billing-faults-master-key"
HI: Any = [{"role": "user", "content": "hi"}]
CLAIM_S = 3  # billing.claim_timeout_seconds for the processes that get killed


def _config(upstream: StandIn, lago: LagoStandIn, database_url: str | None = None, **billing: Any) -> dict[str, Any]:
    general: dict[str, Any] = {"master_key": MASTER}
    if database_url:
        general["database_url"] = database_url
    return {
        "model_list": [priced(upstream.base_url)],
        "general_settings": general,
        "billing": {"api_base": lago.url, "api_key": lago.api_key, "charge_by": "end_user_id", **billing},
    }


# ---------------------------------------------------------------- traffic, waits, checks


def _requests(urls: Sequence[str], n: int, within_s: float) -> set[str]:
    """`n` chat requests for customer `acme`, plain and streamed, 8 at a time, spread over `urls`,
    each with a request id of its own; returns the ids of those answered in full."""
    run = uuid.uuid4().hex[:8]
    clients = [openai.OpenAI(base_url=url + "/v1", api_key=MASTER, max_retries=0, timeout=30) for url in urls]

    def one(i: int) -> str:
        rid = f"fault-{run}-{i}"
        client = clients[i % len(clients)]
        headers = {"x-request-id": rid}
        if i % 2:
            chunks = list(
                client.chat.completions.create(
                    model="priced", messages=HI, user="acme", stream=True, extra_headers=headers
                )
            )
            assert chunks and chunks[-1].choices[-1].finish_reason == "stop", chunks[-1:]
        else:
            reply = client.chat.completions.create(model="priced", messages=HI, user="acme", extra_headers=headers)
            assert reply.usage is not None and reply.usage.total_tokens > 0
        return rid

    pool = ThreadPoolExecutor(8)
    try:
        futures = [pool.submit(one, i) for i in range(n)]
        _, late = wait(futures, timeout=within_s)
        assert not late, f"{len(late)} of {n} requests not answered within {within_s} s"
        return {f.result() for f in futures}
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        for client in clients:
            client.close()


def _until(done: Callable[[], bool], within_s: float, what: str, every_s: float = 0.01) -> None:
    eventually(done, within_s, what, interval=every_s)


def _status(url: str) -> dict[str, Any]:
    r = httpx.get(url + "/billing/status", headers={"Authorization": f"Bearer {MASTER}"}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _settled(url: str, within_s: float) -> dict[str, Any]:
    """Waits until no export is pending; the final status."""
    status: dict[str, Any] = {}

    def done() -> bool:
        status.update(_status(url))
        return bool(status["pending"] == 0)

    _until(done, within_s, "every export settled")
    return status


def _billable(database_url: str) -> list[tuple[str, str, str | None]]:
    """(request id, ledger uid, export status) of every billable ledger row."""
    query = (
        "SELECT l.request_id, l.uid, o.status FROM mw_ledger l "
        "LEFT JOIN mw_billing_outbox o ON o.ledger_uid = l.uid WHERE l.total_tokens > 0"
    )
    if database_url.startswith("sqlite"):
        with closing(sqlite3.connect(database_url.removeprefix("sqlite:///"))) as db:
            return [(str(a), str(b), c) for a, b, c in db.execute(query).fetchall()]

    async def fetch() -> list[tuple[str, str, str | None]]:
        conn = await asyncpg.connect(database_url, timeout=10)
        try:
            return [(r[0], r[1], r[2]) for r in await conn.fetch(query)]
        finally:
            await conn.close()

    return asyncio.run(fetch())


def _delivered_once(served: set[str], database_url: str, lago: LagoStandIn, url: str) -> None:
    rows = _billable(database_url)
    requests = [request_id for request_id, _, _ in rows]
    assert len(requests) == len(set(requests)), "a request has two billable rows"
    assert set(requests) == served, "the billable rows are not exactly the requests answered"
    assert all(status == "sent" for _, _, status in rows), "a billable row is not marked sent"
    got = lago.transaction_ids()
    assert len(got) == len(set(got)), "a transaction id is in Lago twice"
    missing, unexpected = {uid for _, uid, _ in rows} - set(got), set(got) - {uid for _, uid, _ in rows}
    assert not missing and not unexpected, f"{len(missing)} missing from Lago, {len(unexpected)} unexpected"
    assert lago.double_deliveries() == [], "an event was sent again after Lago confirmed storing it"
    period = datetime.now(UTC).strftime("%Y-%m")
    r = httpx.get(
        url + "/billing/reconcile", params={"period": period}, headers={"Authorization": f"Bearer {MASTER}"}, timeout=60
    )
    report = r.json()
    assert r.status_code == 200 and report["match"] is True, report
    (sub,) = report["subscriptions"]
    assert sub["ledger_events"] == sub["lago_events"] == len(served)


def _lost_answers(lago: LagoStandIn) -> set[str]:
    """Ids of posts Lago stored whose answer never reached the sender."""
    return {t for p in lago.posts if p.stored and not p.answered for t in p.transaction_ids}


def _refused_as_stored(lago: LagoStandIn) -> list[str]:
    return [t for p in lago.posts for t in p.already_stored]


# ---------------------------------------------------------------- Lago misbehaving (in-process gateway, SQLite)


def test_lago_down_for_a_thousand_requests_then_up_delivers_each_once(upstream: StandIn, lago: LagoStandIn) -> None:
    with run_gateway(_config(upstream, lago)) as gw:
        database = gw.settings.database_url.reveal()
        # while Lago is up the sender lists its subscriptions (kept 30 s), so during the outage it
        # really posts batches into the dead connection instead of stopping at the listing
        served = _requests([gw.url], 4, within_s=30)
        _settled(gw.url, within_s=10)
        before = set(lago.transaction_ids())
        lago.down()
        down = _requests([gw.url], 1000, within_s=120)
        waiting = _status(gw.url)
        # nothing may count as sent while Lago has answered nothing; the lag shows
        assert len(down) == 1000 and waiting["pending"] == 1000 and set(lago.transaction_ids()) == before
        assert waiting["sender"]["failed_batches"] > 0, "the sender posted nothing during the outage"
        assert waiting["oldest_pending_age_seconds"] > 0 and waiting["oldest_pending"] is not None
        lago.up()
        done = _settled(gw.url, within_s=60)
        assert done["sent"] == 1004 and done["oldest_pending_age_seconds"] == 0 and done["oldest_pending"] is None
        assert done["sender"]["delivered"] == 1004 and done["sender"]["duplicates"] == 0
        _delivered_once(served | down, database, lago, gw.url)


def test_lago_failing_every_third_batch_delivers_each_once(upstream: StandIn, lago: LagoStandIn) -> None:
    lago.fail_every(3, 500)
    with run_gateway(_config(upstream, lago)) as gw:
        served = _requests([gw.url], 300, within_s=60)
        done = _settled(gw.url, within_s=60)
        assert done["sender"]["failed_batches"] > 0, "no batch was refused: the fault did not happen"
        assert done["parked"] == 0
        _delivered_once(served, gw.settings.database_url.reveal(), lago, gw.url)


def test_answers_lost_after_lago_stored_the_batch_are_resent_and_not_billed_twice(
    upstream: StandIn, lago: LagoStandIn
) -> None:
    lago.drop_next(4, after_commit=True)  # stored, but the sender never hears it
    lago.drop_next(2, after_commit=False)  # cut before storing
    with run_gateway(_config(upstream, lago)) as gw:
        served = _requests([gw.url], 120, within_s=60)
        done = _settled(gw.url, within_s=60)
        lost = _lost_answers(lago)
        assert lost, "no answer was lost: the fault did not happen"
        # each event whose answer was lost was sent again and recognised as delivered, once
        refused = _refused_as_stored(lago)
        assert sorted(refused) == sorted(lost) and done["sender"]["duplicates"] == len(lost)
        _delivered_once(served, gw.settings.database_url.reveal(), lago, gw.url)


# ---------------------------------------------------------------- processes on PostgreSQL


@contextmanager
def _serving(tmp_path: Path, config: dict[str, Any], replicas: int = 1) -> Iterator[list[Served]]:
    path = tmp_path / f"config-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {"METERWAY_CONFIG": str(path), "METERWAY_MASTER_KEY": "", "LITELLM_MASTER_KEY": ""}
    with serving(replicas, [], env) as running:
        for served in running:
            ready(served.url)
        yield running


def _kill(served: Served) -> None:
    os.kill(served.proc.pid, signal.SIGKILL)
    served.proc.wait(10)


def test_a_gateway_killed_while_sending_leaves_nothing_lost_or_billed_twice(
    tmp_path: Path, upstream: StandIn, lago: LagoStandIn, pg_url: str
) -> None:
    config = _config(upstream, lago, pg_url, claim_timeout_seconds=CLAIM_S)
    served: set[str] = set()

    def killed_mid_send(after_commit: bool) -> None:
        """Requests served while Lago is down, so none is sent yet; then Lago holds the batches the
        sender posts (two rounds may be in flight, each with a claim of its own when rows were
        still being committed as the first claimed), and the process is killed while it waits."""
        lago.down()
        with _serving(tmp_path, config) as (gateway,):
            served.update(_requests([gateway.url], 20, within_s=30))
            lago.stall_next(2, 30, after_commit=after_commit)
            lago.up()
            _until(lambda: lago.holding >= 1, 10 + CLAIM_S, "sending", every_s=0.005)
            _kill(gateway)
        lago.stall_none()
        _until(lambda: lago.holding == 0, 10, "abandoned by the killed sender")

    # 1. killed while Lago holds a batch it has not stored
    killed_mid_send(after_commit=False)
    assert lago.transaction_ids() == []
    assert {s for _, _, s in _billable(pg_url)} == {"pending"}, "rows were marked sent before Lago answered"
    # 2. killed after Lago stored a batch, before its answer (a restart, then killed again)
    killed_mid_send(after_commit=True)
    stored = set(lago.transaction_ids())
    assert stored and stored == _lost_answers(lago)
    unsent = {uid for _, uid, status in _billable(pg_url) if status != "sent"}
    assert stored <= unsent, "rows were marked sent without Lago's answer"
    # 3. a new process on the same database takes the claimed rows over once their claims lapse
    with _serving(tmp_path, config) as (last,):
        _settled(last.url, within_s=30 + CLAIM_S)
        assert sorted(_refused_as_stored(lago)) == sorted(stored), "the stored batch was not resent exactly once"
        _delivered_once(served, pg_url, lago, last.url)


def test_two_replicas_sending_from_one_database_never_send_an_event_twice(
    tmp_path: Path, upstream: StandIn, lago: LagoStandIn, pg_url: str
) -> None:
    config = _config(upstream, lago, pg_url, claim_timeout_seconds=CLAIM_S)
    with _serving(tmp_path, config, replicas=2) as replicas:
        urls = [r.url for r in replicas]
        # a backlog both senders take from at once when Lago comes back, then live traffic; the
        # first batch is stored but answered only after its claim would have lapsed: the other
        # replica must not take it over while its sender still waits
        lago.down()
        served = _requests(urls, 200, within_s=60)
        lago.stall_next(1, 2 * CLAIM_S, after_commit=True)
        lago.up()
        served |= _requests(urls, 200, within_s=60)
        done = _settled(urls[0], within_s=60)
        for url in urls:
            assert _status(url)["sender"]["delivered"] > 0, f"the sender of {url} delivered nothing"
        assert done["sent"] == len(served)
        lost = _lost_answers(lago)
        assert lost, "the slow answer was not given up on"
        assert sorted(_refused_as_stored(lago)) == sorted(lost), "an event reached Lago in two batches"
        _delivered_once(served, pg_url, lago, urls[1])


async def test_claims_taken_at_once_on_postgresql_never_overlap(pg_url: str) -> None:
    """The claim statement itself, raced by eight senders at once: two replicas meet in it too
    rarely for the test above to be sure to catch a claim that does not skip locked rows."""
    store = await Store.open(pg_url, wait_s=10, run_migrations=True)
    try:
        now = datetime.now(UTC)
        uids = [uuid.uuid4().hex for _ in range(1500)]
        row = {"started_at": now, "ended_at": now, "endpoint": "chat", "status": "success", "http_status": 200}
        async with store.engine.begin() as conn:
            await conn.execute(ledger.insert(), [{**row, "request_id": u, "uid": u, "latency_ms": 1.0} for u in uids])
            await conn.execute(
                billing_outbox.insert(), [{"ledger_uid": u, "status": "pending", "created_at": now} for u in uids]
            )
        claimed: list[str] = []

        async def sender() -> None:
            while rows := await store.outbox.claim(5, 60):
                claimed.extend(r["uid"] for r in rows)

        await asyncio.wait_for(asyncio.gather(*(sender() for _ in range(8))), timeout=60)
        assert len(claimed) == len(set(claimed)), f"{len(claimed) - len(set(claimed))} rows claimed twice"
        assert set(claimed) == set(uids)
    finally:
        await store.close()
