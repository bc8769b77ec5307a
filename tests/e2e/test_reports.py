"""Usage reports and invoice previews against the rows they cover, checked with SQL written here."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import openai
import pytest

from tests.e2e.test_ledger import metered_config
from tests.support.cli import run_meterway
from tests.support.gateway import RunningGateway, run_gateway
from tests.upstreams.standin import StandIn

UNIT = Decimal("1e-10")
MONTH = datetime.now(UTC).strftime("%Y-%m")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def reported(request: pytest.FixtureRequest, standin: StandIn) -> Iterator[RunningGateway]:
    """A gateway with a known mix of traffic: two customers, two models, plain and streamed; on
    the embedded SQLite store and on PostgreSQL."""
    config = metered_config(standin.base_url)
    if request.param == "postgresql":
        config["general_settings"]["database_url"] = request.getfixturevalue("module_pg_url")
    with run_gateway(config) as gw:
        with openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0) as client:
            for i in range(6):
                customer = ("acme", "globex")[i % 2]
                model = ("priced", "claude", "unpriced")[i % 3]
                text = "hello " * (i + 1)
                client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}], user=customer)
                stream = client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": text}], user=customer, stream=True
                )
                list(stream)
        yield gw


def _sql(gw: RunningGateway, query: str) -> list[tuple[Any, ...]]:
    """Runs the test's own SQL on the gateway's database. `{day}` is the UTC day of started_at."""
    url = gw.settings.database_url.reveal()
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            return db.execute(query.format(day="substr(started_at, 1, 10)")).fetchall()

    async def fetch() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(url)
        try:
            day = "to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
            return [tuple(r) for r in await conn.fetch(query.format(day=day))]
        finally:
            await conn.close()

    return asyncio.run(fetch())


def _get(gw: RunningGateway, path: str, key: str | None = None, **params: str) -> httpx.Response:
    return httpx.get(gw.url + path, params=params, headers={"Authorization": f"Bearer {key or gw.key}"})


def test_usage_totals_equal_the_sum_of_the_rows(reported: RunningGateway) -> None:
    r = _get(reported, "/usage", group_by="customer,model,day")
    assert r.status_code == 200, r.text
    got = {(x["customer"], x["model"], x["day"]): x for x in r.json()["rows"]}
    expected = _sql(
        reported,
        "SELECT coalesce(customer_id, ''), model_group, {day}, count(*), "
        "sum(prompt_tokens), sum(completion_tokens), sum(coalesce(cost, 0)) "
        "FROM mw_ledger GROUP BY 1, 2, 3",
    )
    assert len(got) == len(expected) and expected
    for customer, model, day, n, prompt, completion, cost in expected:
        row = got[(customer, model, day)]
        assert (row["requests"], row["prompt_tokens"], row["completion_tokens"]) == (n, prompt, completion)
        assert Decimal(row["cost"]) == Decimal(cost) * UNIT
    totals = r.json()["totals"]
    assert totals["requests"] == sum(e[3] for e in expected)


def test_usage_by_hour_reads_the_rows_and_agrees_with_the_rollup(reported: RunningGateway) -> None:
    by_hour = _get(reported, "/usage", group_by="model,hour").json()
    by_day = _get(reported, "/usage", group_by="model").json()
    assert by_hour["totals"] == by_day["totals"]
    assert all(len(row["hour"]) == 16 for row in by_hour["rows"])


def test_usage_as_csv_parses_to_the_same_figures(reported: RunningGateway) -> None:
    r = httpx.get(
        reported.url + "/usage",
        params={"group_by": "customer"},
        headers={"Authorization": f"Bearer {reported.key}", "Accept": "text/csv"},
    )
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    as_json = _get(reported, "/usage", group_by="customer").json()["rows"]
    assert [(x["customer"], int(x["requests"]), x["cost"]) for x in rows] == [
        (x["customer"], x["requests"], x["cost"]) for x in as_json
    ]


def test_invoice_total_is_the_sum_of_quantity_times_unit_price(reported: RunningGateway) -> None:
    r = _get(reported, "/customer/acme/invoice-preview", period=MONTH)
    assert r.status_code == 200, r.text
    invoice = r.json()
    priced = [line for line in invoice["lines"] if line["unit_price"] is not None]
    assert priced and all(Decimal(x["amount"]) == x["quantity"] * Decimal(x["unit_price"]) for x in priced)
    assert Decimal(invoice["total"]) == sum(Decimal(x["amount"]) for x in priced)
    ((cost,),) = _sql(reported, "SELECT sum(cost) FROM mw_ledger WHERE customer_id = 'acme'")
    assert Decimal(invoice["total"]) == Decimal(cost) * UNIT
    assert invoice["unpriced_models"] == ["unpriced"], "the unpriced model's lines say so"
    page = _get(reported, "/customer/acme/invoice-preview", period=MONTH, format="html")
    assert page.headers["content-type"].startswith("text/html") and invoice["total"] in page.text
    as_csv = list(csv.DictReader(io.StringIO(_get(reported, "/end_user/acme/invoice-preview", format="csv").text)))
    assert len(as_csv) == len(invoice["lines"])
    assert _get(reported, "/customer/nobody/invoice-preview").status_code == 404
    assert _get(reported, "/customer/acme/invoice-preview", period="2026-13").status_code == 400


def test_spend_logs_filter_and_global_report(reported: RunningGateway) -> None:
    logs = _get(reported, "/spend/logs", customer_id="globex", model="priced").json()
    assert logs["total"] == len(logs["data"]) > 0
    assert {(x["end_user"], x["model"]) for x in logs["data"]} == {("globex", "priced")}
    report = _get(reported, "/global/spend/report", group_by="customer").json()
    assert report and {c["customer"] for day in report for c in day["customers"]} == {"acme", "globex"}
    bad = _get(reported, "/usage", group_by="colour")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "group_by"


def test_an_internal_user_sees_only_its_own_usage(reported: RunningGateway) -> None:
    admin = {"Authorization": f"Bearer {reported.key}"}
    user = httpx.post(reported.url + "/user/new", json={"user_role": "internal_user"}, headers=admin).json()
    key = user["key"]
    with openai.OpenAI(base_url=reported.v1, api_key=key, max_retries=0) as client:
        client.chat.completions.create(model="priced", messages=[{"role": "user", "content": "mine"}])
    mine = _get(reported, "/usage", key, group_by="model").json()
    assert mine["totals"]["requests"] == 1
    everything = _get(reported, "/usage", group_by="model").json()
    assert everything["totals"]["requests"] > 1
    assert _get(reported, "/customer/acme/invoice-preview", key).status_code == 403


def _cli(gw: RunningGateway, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("METERWAY_CONFIG", "CONFIG_FILE_PATH")}
    return run_meterway([*args, "--database-url", gw.settings.database_url.reveal()], env)


def test_the_cli_prints_the_same_reports(reported: RunningGateway) -> None:
    done = _cli(reported, "usage", "--by", "customer,model", "--format", "csv")
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    api = _get(reported, "/usage", group_by="customer,model").json()["rows"]
    assert [(r["customer"], r["model"], r["cost"]) for r in rows] == [
        (r["customer"], r["model"], r["cost"]) for r in api
    ]
    invoice = _cli(reported, "invoice", "acme", "--period", MONTH)
    assert invoice.returncode == 0 and "total" in invoice.stdout
    api_total = _get(reported, "/customer/acme/invoice-preview", period=MONTH).json()["total"]
    assert api_total in invoice.stdout
    bad = _cli(reported, "invoice", "acme", "--period", "last-month")
    assert bad.returncode == 1 and "period" in bad.stderr and "Traceback" not in bad.stderr
