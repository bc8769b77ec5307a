"""LiteLLM operators' SQL, run unchanged with `psql` on meterway's PostgreSQL after real traffic:
the `"LiteLLM_SpendLogs"` view answers in USD what the ledger holds in 1e-10 USD, and the billing
outbox report counts what the sender did. The queries are those of docs/schema.md, word for word."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import openai
import pytest

from meterway.store.engine import create_engine
from meterway.store.migrate import MIGRATIONS
from meterway.store.url import parse
from tests.e2e.test_ledger import metered_config
from tests.lago.standin import LagoStandIn
from tests.support.gateway import RunningGateway, run_gateway
from tests.support.models import priced
from tests.support.wait import eventually
from tests.upstreams.standin import StandIn

UNIT = Decimal("1e-10")
HI: Any = [{"role": "user", "content": "hi"}]

RECENT_USAGE = """SELECT model, COUNT(*) AS requests, SUM(total_tokens) AS total_tokens, SUM(spend) AS total_spend
FROM "LiteLLM_SpendLogs"
WHERE "startTime" > NOW() - INTERVAL '24 hours'
GROUP BY model
ORDER BY total_spend DESC;"""

PER_CUSTOMER = """SELECT end_user, "user", COUNT(*) AS requests, SUM(total_tokens) AS total_tokens,
       SUM(spend) AS total_spend
FROM "LiteLLM_SpendLogs"
WHERE "startTime" >= date_trunc('month', NOW())
GROUP BY end_user, "user"
ORDER BY total_spend DESC;"""

WEBHOOK_STATUS = """SELECT
    COUNT(*) FILTER (WHERE status = 'pending' AND attempts = 0) AS pending,
    COUNT(*) FILTER (WHERE status = 'pending' AND attempts > 0) AS failed,
    COUNT(*) FILTER (WHERE status = 'sent') AS sent,
    COUNT(*) FILTER (WHERE status = 'parked') AS parked,
    NOW() - MIN(created_at) FILTER (WHERE status = 'pending') AS oldest_pending_age
FROM mw_billing_outbox;"""

# psql is PostgreSQL's client, on every machine that runs the server; in CI its absence is a failure
pytestmark = pytest.mark.skipif(
    shutil.which("psql") is None and os.environ.get("CI") != "true", reason="needs the psql client"
)


def psql(url: str, query: str) -> list[list[str]]:
    """The query's rows as `psql` prints them (unaligned, `|` between fields), header included."""
    database = url.rsplit("/", 1)[1]
    unaligned = ["-X", "-A", "-F", "|", "-P", "footer=off", "-v", "ON_ERROR_STOP=1"]
    done = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", database, *unaligned, "-c", query],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [line.split("|") for line in done.stdout.splitlines()]


def _fetch(url: str, query: str) -> list[tuple[Any, ...]]:
    async def run() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(url)
        try:
            return [tuple(r) for r in await conn.fetch(query)]
        finally:
            await conn.close()

    return asyncio.run(run())


@pytest.fixture
def traffic(standin: StandIn, pg_url: str) -> Iterator[RunningGateway]:
    """A PostgreSQL gateway after a mix of traffic: two customers, a user's key and the master
    key, priced, unpriced and Anthropic models, plain and streamed."""
    config = metered_config(standin.base_url)
    config["general_settings"]["database_url"] = pg_url
    with run_gateway(config) as gw:
        admin = {"Authorization": f"Bearer {gw.key}"}
        made = httpx.post(gw.url + "/key/generate", json={"user_id": "alice"}, headers=admin)
        assert made.status_code == 200, made.text
        for key in (made.json()["key"], gw.key):
            with openai.OpenAI(base_url=gw.v1, api_key=key, max_retries=0) as client:
                for i in range(6):
                    model, customer = ("priced", "claude", "unpriced")[i % 3], ("acme", "globex")[i % 2]
                    text = [{"role": "user", "content": "hello " * (i + 1)}]
                    client.chat.completions.create(model=model, messages=text, user=customer)
                    list(client.chat.completions.create(model=model, messages=text, user=customer, stream=True))
        yield gw


def test_recent_usage_statistics_run_unchanged_in_psql_and_answer_usd(traffic: RunningGateway, pg_url: str) -> None:
    header, *rows = psql(pg_url, RECENT_USAGE)
    assert header == ["model", "requests", "total_tokens", "total_spend"]
    expected = {
        model: (n, tokens, cost)
        for model, n, tokens, cost in _fetch(
            pg_url,
            "SELECT upstream_model, count(*), sum(total_tokens), sum(coalesce(cost, 0)) FROM mw_ledger "
            "GROUP BY upstream_model",
        )
    }
    assert len(rows) == len(expected) == 3
    got = {model: (int(n), int(tokens), Decimal(spend)) for model, n, tokens, spend in rows}
    assert got == {model: (n, int(tokens), int(cost) * UNIT) for model, (n, tokens, cost) in expected.items()}
    spends = [Decimal(spend) for *_, spend in rows]
    assert spends == sorted(spends, reverse=True) and spends[0] > 0
    # dollars as a person reads them: 0.000145, not 1450000 (nor 1.45e-04)
    assert all(Decimal(s) < 1 and "e" not in s.lower() for *_, s in rows)
    assert rows[-1][0] == "nobody-knows-me" and Decimal(rows[-1][3]) == 0  # no known price: 0, as LiteLLM logs it


def test_spend_per_customer_and_user_over_the_month(traffic: RunningGateway, pg_url: str) -> None:
    header, *rows = psql(pg_url, PER_CUSTOMER)
    assert header == ["end_user", "user", "requests", "total_tokens", "total_spend"]
    expected = _fetch(
        pg_url,
        "SELECT customer_id, coalesce(user_id, ''), count(*), sum(total_tokens), sum(coalesce(cost, 0)) "
        "FROM mw_ledger GROUP BY customer_id, user_id",
    )
    got = {(c, u): (int(n), int(t), Decimal(s)) for c, u, n, t, s in rows}
    assert got == {(c, u): (n, int(t), int(s) * UNIT) for c, u, n, t, s in expected}
    assert set(got) == {("acme", "alice"), ("globex", "alice"), ("acme", ""), ("globex", "")}


def test_every_litellm_column_is_there_with_its_type(traffic: RunningGateway, pg_url: str) -> None:
    types = dict(
        _fetch(
            pg_url,
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'LiteLLM_SpendLogs' ORDER BY ordinal_position",
        )
    )
    prisma = Path(__import__("litellm_proxy_extras").__file__).with_name("schema.prisma").read_text()
    model = prisma.split("model LiteLLM_SpendLogs {", 1)[1].split("}", 1)[0]
    litellm = {
        line.split()[0]: line.split()[1].rstrip("?")
        for line in model.splitlines()
        if line.strip() and not line.strip().startswith(("@@", "//"))
    }
    assert set(litellm) <= set(types), set(litellm) - set(types)
    wanted = {
        "String": {"text"},
        "Int": {"integer", "bigint"},
        "Float": {"numeric", "double precision"},
        "DateTime": {"timestamp with time zone", "timestamp without time zone"},
        "Json": {"jsonb"},
    }
    wrong = {name: (kind, types[name]) for name, kind in litellm.items() if types[name] not in wanted[kind]}
    assert wrong == {}
    key = _fetch(pg_url, "SELECT token FROM mw_keys WHERE user_id = 'alice'")[0][0]
    row = _fetch(
        pg_url,
        'SELECT api_key, "user", end_user, status, call_type, cache_hit, request_tags, messages '
        'FROM "LiteLLM_SpendLogs" WHERE "user" = \'alice\' LIMIT 1',
    )[0]
    assert row[0] == key and len(key) == 64  # the key's SHA-256 digest, as LiteLLM's api_key column has it
    assert row[1:6] == ("alice", row[2], "success", "acompletion", "False") and row[2] in ("acme", "globex")
    assert row[6] == "[]" and row[7] is None


def _alembic(url: str, action: str, target: str) -> None:
    """Runs Alembic's upgrade or downgrade on the database, through meterway's own engine."""
    from alembic import command
    from alembic.config import Config

    def run(connection: Any) -> None:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = connection
        getattr(command, action)(config, target)

    async def go() -> None:
        engine = create_engine(parse(url))
        try:
            async with engine.begin() as conn:
                await conn.run_sync(run)
        finally:
            await engine.dispose()

    asyncio.run(go())


def test_a_nul_escape_in_reported_metadata_does_not_break_the_view(traffic: RunningGateway, pg_url: str) -> None:
    # `json` keeps the escape; a plain cast to `jsonb` would fail every query reading the column
    event = {
        "event_type": "usage",
        "customer_id": "acme",
        "model": "reported-model",
        "tokens_input": 3,
        "tokens_output": 4,
        "request_id": "req-with-nul",
        "metadata": {"note": "a\x00b", "raw": "\\u0000"},
    }
    auth = {"Authorization": f"Bearer {traffic.key}"}
    reported = httpx.post(traffic.url + "/webhooks/usage", json=event, headers=auth)
    assert reported.status_code == 200, reported.text
    stored = _fetch(pg_url, "SELECT metadata::text FROM mw_ledger WHERE request_id = 'req-with-nul'")
    assert "\\u0000" in stored[0][0]
    _header, *rows = psql(pg_url, 'SELECT request_id, metadata, request_tags FROM "LiteLLM_SpendLogs"')
    (mine,) = [row for row in rows if row[0] == "req-with-nul"]
    assert len(rows) == 25
    assert '"note": "a\ufffdb"' in mine[1] and '"raw": "\\\\u0000"' in mine[1]  # a real NUL only


def test_downgrade_drops_the_view_and_upgrade_makes_it_again(pg_url: str) -> None:
    views = "SELECT count(*) FROM information_schema.views WHERE table_name = 'LiteLLM_SpendLogs'"
    _alembic(pg_url, "upgrade", "head")
    assert _fetch(pg_url, views) == [(1,)]
    _alembic(pg_url, "downgrade", "0011")
    assert _fetch(pg_url, views) == [(0,)]
    _alembic(pg_url, "upgrade", "head")
    assert _fetch(pg_url, views) == [(1,)]


def test_webhook_status_counts_the_billing_outbox(upstream: StandIn, lago: LagoStandIn, pg_url: str) -> None:
    config = {
        "model_list": [priced(upstream.base_url)],
        "billing": {"api_base": lago.url, "api_key": lago.api_key, "charge_by": "end_user_id"},
        "general_settings": {"database_url": pg_url},
    }
    with run_gateway(config) as gw:
        admin = {"Authorization": f"Bearer {gw.key}"}
        with openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0) as client:
            for _ in range(3):
                client.chat.completions.create(model="priced", messages=HI, user="acme")
            pending = "SELECT count(*) FROM mw_billing_outbox WHERE status = 'pending'"
            eventually(lambda: _fetch(pg_url, pending) == [(0,)], 15, "the first exports sent")
            client.chat.completions.create(model="priced", messages=HI)  # no customer: parked
            eventually(lambda: _fetch(pg_url, pending) == [(0,)], 15, "the row parked")
            lago.down()
            for _ in range(2):
                client.chat.completions.create(model="priced", messages=HI, user="acme")
            tried = "SELECT count(*) FROM mw_billing_outbox WHERE status = 'pending' AND attempts > 0"
            eventually(lambda: _fetch(pg_url, tried) == [(2,)], 15, "the sends failed once")
        header, row = psql(pg_url, WEBHOOK_STATUS)
        status = httpx.get(gw.url + "/billing/status", headers=admin).json()
    assert header == ["pending", "failed", "sent", "parked", "oldest_pending_age"]
    assert row[:4] == ["0", "2", "3", "1"]
    assert status["pending"] == 2 and status["sent"] == 3 and status["parked"] == 1
    assert row[4].startswith("00:00:")  # an interval: seconds old


def test_client_metadata_cannot_forge_who_a_row_is_attributed_to(traffic: RunningGateway, pg_url: str) -> None:
    admin = {"Authorization": f"Bearer {traffic.key}"}
    made = httpx.post(traffic.url + "/key/generate", json={"key_alias": "honest"}, headers=admin)
    assert made.status_code == 200, made.text
    forged = {
        "user_api_key_team_id": "victim",
        "user_api_key_alias": "ops",
        "user_api_key_end_user_id": "acme",
        "user_api_key_user_id": "root",
        "note": "kept",
    }
    with openai.OpenAI(base_url=traffic.v1, api_key=made.json()["key"], max_retries=0) as client:
        client.chat.completions.create(model="priced", messages=HI, user="globex", extra_body={"metadata": forged})
    query = """SELECT metadata->>'user_api_key_alias', metadata->>'user_api_key_team_id',
        metadata->>'user_api_key_end_user_id', metadata->>'user_api_key_user_id', metadata->>'note'
    FROM "LiteLLM_SpendLogs" WHERE metadata->>'note' = 'kept';"""
    eventually(lambda: len(psql(pg_url, query)) == 2)
    _header, row = psql(pg_url, query)
    # the gateway's values win; the key has no team or user, so none is claimed for it
    assert row == ["honest", "", "globex", "", "kept"]
    assert psql(
        pg_url, """SELECT count(*) FROM "LiteLLM_SpendLogs" WHERE metadata->>'user_api_key_team_id' = 'victim'"""
    )[1] == ["0"]


def test_litellm_call_types_reported_to_the_webhook_read_back_the_same_from_the_view(
    upstream: StandIn, pg_url: str
) -> None:
    """SQL filtering on LiteLLM's call types finds the images, audio, speech, rerank and moderation
    requests a LiteLLM proxy reported, under the names it reported them with."""
    call_types = ["aimage_generation", "aimage_edit", "atranscription", "aspeech", "arerank", "amoderation"]
    config = {"model_list": [priced(upstream.base_url)], "general_settings": {"database_url": pg_url}}
    with run_gateway(config) as gw:
        events = [
            {"id": f"ct-{c}", "call_type": c, "model": "m", "prompt_tokens": 0, "completion_tokens": 0}
            for c in call_types
        ]
        r = httpx.post(gw.url + "/webhooks/usage", json=events, headers={"Authorization": f"Bearer {gw.key}"})
        assert r.status_code == 200, r.text
    _header, *rows = psql(pg_url, 'SELECT request_id, call_type FROM "LiteLLM_SpendLogs" ORDER BY request_id')
    assert sorted(rows) == sorted([f"ct-{c}", c] for c in call_types)
    media = "SELECT count(*) FROM \"LiteLLM_SpendLogs\" WHERE call_type IN ('aimage_generation', 'aspeech')"
    assert psql(pg_url, media)[1] == ["2"]
