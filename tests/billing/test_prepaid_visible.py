"""Prepaid credits where operators look: the admin UI's customer page, `meterway customers info`
and `keys info`, and `/metrics`. Real gateways on PostgreSQL and Redis, the Lago stand-in set up
and topped up with lago-python-client (its signed webhook re-reads the wallets), the openai SDK as
the client; the CLI in a child process against the same database, Redis and Lago.

Every figure shown is compared with the one `/customer/info` answers at the same moment.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.billing.test_prepaid import CREDITS, _plan, ask, config, customer, gateways, info, top_up
from tests.lago.standin import LagoStandIn, prepaid_ready
from tests.support.cli import run_meterway
from tests.support.gateway import RunningGateway, free_socket
from tests.support.wait import eventually

HOSTILE = '<script>alert("wallet")</script>[bold]<img src=x onerror=alert(1)>[/]'


@pytest.fixture
def lago() -> Iterator[LagoStandIn]:
    with LagoStandIn() as stand_in:
        yield stand_in


def two_wallets(lago: LagoStandIn) -> tuple[Any, Any]:
    """acme's wallets: a hostile name at priority 2 (0.05 credits), a promo at priority 1 (0.02):
    Lago uses the promo first, and so must every listing."""
    from lago_python_client.client import Client
    from lago_python_client.models import Wallet

    main = prepaid_ready(lago, "acme", CREDITS, plan=_plan(lago), name=HOSTILE, code="main", priority=2)
    promo = Client(api_key=lago.api_key, api_url=lago.url).wallets.create(
        Wallet(
            external_customer_id="acme",
            rate_amount="1.0",
            granted_credits="0.02",
            currency="USD",
            priority=1,
            code="promo",
            name="Promo",
        )
    )
    return main, promo


def bob_without_wallets(lago: LagoStandIn) -> None:
    from lago_python_client.client import Client
    from lago_python_client.models import Customer, Subscription

    client = Client(api_key=lago.api_key, api_url=lago.url)
    client.customers.create(Customer(external_id="bob", currency="USD"))
    client.subscriptions.create(Subscription(external_customer_id="bob", plan_code="prepaid", external_id="bob"))


@contextmanager
def ui(gw: RunningGateway) -> Iterator[httpx.Client]:
    """A UI session of the admin, logged in with the master key through the login form."""
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        form = client.get("/ui/login")
        found = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert found is not None
        reply = client.post("/ui/login", data={"csrf": found.group(1), "key": gw.key})
        assert reply.status_code == 303, reply.text
        yield client


def page(client: httpx.Client, customer_id: str) -> str:
    reply = client.get("/ui/customers/view", params={"customer_id": customer_id})
    assert reply.status_code == 200, reply.text
    return reply.text


def shown_available(html: str) -> str:
    found = re.search(r'data-test="prepaid-available" data-exact="([^"]*)"', html)
    assert found is not None, "no available balance on the page"
    return found.group(1)


def history_rows(html: str) -> list[str]:
    table = html.split('data-test="prepaid-history"', 1)[1].split("</table>", 1)[0]
    return re.findall(r'<td class="n" data-exact="([^"]*)">', table)


def metric(gw: RunningGateway, line_start: str) -> float:
    text = httpx.get(gw.url + "/metrics").text
    found = [x for x in text.splitlines() if x.startswith(line_start)]
    assert found, f"{line_start} not on /metrics"
    return float(found[0].split()[-1])


def test_customer_page_shows_the_api_balance_wallets_in_priority_order_and_a_history_that_grows_on_top_up(
    lago: LagoStandIn, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    main, promo = two_wallets(lago)
    bob_without_wallets(lago)
    with gateways(config(lago, pg_url, redis_url, redis_prefix)) as (gw,), ui(gw) as browser:
        for who in ("acme", "bob", "carol"):  # carol: a customer Lago does not know
            customer(gw, who)
        lago.add_webhook(gw.url + "/webhooks/lago", "hmac")
        assert ask(gw) == 200 and ask(gw) == 200 and ask(gw, "bob") == 200 and ask(gw, "carol") == 200

        html = page(browser, "acme")
        api = info(gw)["prepaid"]
        assert "Prepaid credits" in html
        assert shown_available(html) == api["available"] == "0.05"  # 0.07 of credits less 2 requests of 0.01
        assert re.findall(r'data-wallet="([^"]+)"', html) == [promo.lago_id, main.lago_id]  # Lago's order
        assert "<script>alert" not in html and "<img src=x" not in html
        assert "&lt;script&gt;alert(&#34;wallet&#34;)&lt;/script&gt;" in html
        assert f'data-exact="{api["funded"]}"' in html and f'data-exact="{api["lago_balance"]}"' in html
        assert "<polyline points=" in html  # the line of the available balance, drawn on the server
        before = history_rows(html)
        assert before == [h["available"] for h in api["history"]] and before

        top_up(lago, main.lago_id, "0.10")  # Lago's signed webhook: the gateway reads the wallets again
        eventually(lambda: len(history_rows(page(browser, "acme"))) == len(before) + 1, 10, "a reading after top-up")
        html = page(browser, "acme")
        api = info(gw)["prepaid"]
        assert shown_available(html) == api["available"] == "0.15"
        assert history_rows(html)[0] == "0.15" and history_rows(html)[1:] == before  # newest first
        assert api["history"][0]["reason"] in ("top_up", "webhook")

        for nothing in ("bob", "carol"):  # a Lago customer without wallets, and one Lago does not know
            html = page(browser, nothing)
            assert "Prepaid credits" not in html and 'data-test="prepaid"' not in html
        assert info(gw, "bob")["prepaid"]["wallets"] == []

        listing = browser.get("/ui/customers").text
        assert 'href="/ui/customers/view?customer_id=acme"' in listing

        # spend it all: the 402s are counted, and the gauge says what /customer/info says
        for _ in range(20):
            if ask(gw) == 402:
                break
        else:
            pytest.fail("never refused")
        assert metric(gw, 'meterway_prepaid_refusals_total{mode="enforce"}') >= 1
        gauge = metric(gw, 'meterway_prepaid_available{entity="acme"}')
        left = Decimal(info(gw)["prepaid"]["available"])
        assert abs(Decimal(repr(gauge)) - max(left, Decimal(0))) < Decimal("1e-9")
        assert shown_available(page(browser, "acme")) == info(gw)["prepaid"]["available"]


def test_customer_page_without_prepaid_credits_shows_no_panel(
    lago: LagoStandIn, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    two_wallets(lago)
    cfg = config(lago, pg_url, redis_url, redis_prefix, mode="off")
    with gateways(cfg) as (gw,), ui(gw) as browser:
        customer(gw)
        assert ask(gw) == 200
        assert info(gw)["prepaid"] is None
        html = page(browser, "acme")
        assert "Prepaid credits" not in html and "acme" in html


def cli_config(lago: LagoStandIn, pg_url: str, redis_url: str | None, redis_prefix: str, scratch: str) -> str:
    cfg = config(lago, pg_url, redis_url or "", redis_prefix)
    if redis_url is None:
        del cfg["general_settings"]["redis_url"]
    path = Path(scratch) / "meterway.yaml"
    path.write_bytes(orjson.dumps(cfg))  # JSON is YAML
    return str(path)


def cfg_of(path: str) -> dict[str, Any]:
    loaded: dict[str, Any] = orjson.loads(Path(path).read_bytes())
    return loaded


def test_cli_customers_and_keys_info_print_the_balance_its_parts_and_wallets_and_the_stored_reading_when_lago_is_down(
    lago: LagoStandIn, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    main, _promo = two_wallets(lago)
    with gateways(config(lago, pg_url, redis_url, redis_prefix)) as (gw,), tempfile.TemporaryDirectory() as scratch:
        customer(gw)
        assert ask(gw) == 200 and ask(gw) == 200
        made = httpx.post(
            gw.url + "/key/generate",
            json={"key_alias": "acme-key", "customer_id": "acme"},
            headers={"Authorization": f"Bearer {gw.key}"},
        )
        assert made.status_code == 200, made.text
        api = info(gw)["prepaid"]
        path = cli_config(lago, pg_url, redis_url, redis_prefix, scratch)

        done = run_meterway(["customers", "info", "acme", "--config", path])
        assert done.returncode == 0, done.stderr
        out = done.stdout
        assert "Prepaid credits: enforce, charged as customer 'acme'" in out
        assert f"available: {api['available']} USD" in out  # 0.05: the Redis counter of the gateway
        for figure in ("lago balance (ongoing)", "usage Lago counted", "not yet counted by Lago", "funded"):
            assert figure in out
        rows = [line.split() for line in out.splitlines()]
        assert ["funded", "this", "period", api["funded"]] in rows
        assert out.index("promo") < out.index("main")  # priority 1 first
        assert HOSTILE in out  # printed as the text it is: neither HTML nor rich markup

        raw = run_meterway(["customers", "info", "acme", "--config", path, "--json"])
        assert raw.returncode == 0, raw.stderr
        shown = orjson.loads(raw.stdout)["prepaid"]
        for field in ("available", "funded", "lago_balance", "uncounted", "priced_usage", "wallets", "history"):
            assert shown[field] == api[field], field

        key = run_meterway(["keys", "info", "acme-key", "--config", path])
        assert key.returncode == 0, key.stderr
        assert f"available: {api['available']} USD" in key.stdout

        # Lago goes away: --refresh is bounded, says so, and the stored reading is printed with its age
        lago.down()
        down = run_meterway(["customers", "info", "acme", "--config", path, "--refresh"], timeout=40)
        assert down.returncode == 0, down.stderr
        assert "Lago was not read" in down.stdout
        assert f"available: {api['available']} USD" in down.stdout
        assert re.search(r"read at \S+ \S+ UTC, (\d+ min )?\d+ s ago", down.stdout)
        assert "last attempt failed" in down.stdout  # the error stored with the reading
        lago.up()

        # a Lago that takes the connection and never answers: --refresh gives up within its bound
        with free_socket() as silent:
            silent.listen()
            hanging = {
                **cfg_of(path),
                "billing": {**cfg_of(path)["billing"], "api_base": f"http://127.0.0.1:{silent.getsockname()[1]}"},
            }
            stalled_path = Path(scratch) / "stalled.yaml"
            stalled_path.write_bytes(orjson.dumps(hanging))
            stalled = run_meterway(
                ["customers", "info", "acme", "--config", str(stalled_path), "--refresh"], timeout=40
            )
        assert stalled.returncode == 0, stalled.stderr
        assert "Lago was not read" in stalled.stdout and f"available: {api['available']} USD" in stalled.stdout

        # Lago back: --refresh takes a reading (the history says the CLI took it)
        top_up(lago, main.lago_id, "0.10")
        fresh = run_meterway(["customers", "info", "acme", "--config", path, "--refresh", "--json"])
        assert fresh.returncode == 0, fresh.stderr
        after = orjson.loads(fresh.stdout)["prepaid"]
        assert after["available"] == "0.15" and after["last_error"] is None
        assert after["history"][0]["reason"] == "cli"


def test_cli_without_redis_prints_the_reading_and_says_what_it_cannot_count(
    lago: LagoStandIn, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    two_wallets(lago)
    with gateways(config(lago, pg_url, redis_url, redis_prefix)) as (gw,), tempfile.TemporaryDirectory() as scratch:
        customer(gw)
        assert ask(gw) == 200
        funded = info(gw)["prepaid"]["funded"]
        path = cli_config(lago, pg_url, None, redis_prefix, scratch)
        done = run_meterway(["customers", "info", "acme", "--config", path])
        assert done.returncode == 0, done.stderr
        assert "no Redis" in done.stdout
        assert any(line.split() == ["funded", "this", "period", funded] for line in done.stdout.splitlines())


def test_on_sqlite_a_stale_reading_is_flagged_on_the_page_and_by_the_cli_with_lagos_error(
    lago: LagoStandIn, tmp_path: Path
) -> None:
    two_wallets(lago)
    cfg = config(lago, f"sqlite:///{tmp_path / 'one.db'}", "", "", refresh_interval=1, stale_after=1)
    cfg["general_settings"] = {"database_url": cfg["general_settings"]["database_url"]}
    with gateways(cfg) as (gw,), ui(gw) as browser:
        customer(gw)
        assert ask(gw) == 200
        html = page(browser, "acme")
        assert 'data-test="prepaid-stale"' not in html and shown_available(html) == info(gw)["prepaid"]["available"]
        lago.down()
        # stale by age alone; why (Lago's error) is there once the schedule has tried
        eventually(lambda: (p := info(gw)["prepaid"])["stale"] and p["last_error"], 15, "stale, and why")
        html = page(browser, "acme")
        api = info(gw)["prepaid"]
        assert 'data-test="prepaid-stale"' in html and "is stale" in html
        assert api["last_error"] and api["last_error"].split(":")[0] in html
        assert shown_available(html) == api["available"]  # the last reading's figure, still shown

        path = tmp_path / "meterway.yaml"
        path.write_bytes(orjson.dumps(cfg))
        done = run_meterway(["customers", "info", "acme", "--config", str(path)])
        assert done.returncode == 0, done.stderr
        assert "STALE: Lago is not answering" in done.stdout
        # the gateway counts the requests since the reading in its own process: the CLI shows the
        # reading's own figure (funded less the usage priced then), and says what it leaves out
        assert f"available: {api['history'][0]['available']} USD" in done.stdout
        assert "no Redis" in done.stdout
