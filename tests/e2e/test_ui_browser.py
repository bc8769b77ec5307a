"""The admin UI in a real browser: Playwright driving Debian's headless Chromium (Playwright cannot
download its own browser here), against a real gateway, the stand-in upstream and the Lago
stand-in. Each main page is saved as a screenshot on the way (docs/screenshots/ holds a set made so)."""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.lago.standin import LagoStandIn
from tests.support.gateway import RunningGateway, run_gateway
from tests.support.models import priced
from tests.support.wait import eventually
from tests.upstreams.standin import StandIn

playwright = pytest.importorskip("playwright.sync_api")

# Screenshots go to a scratch folder; METERWAY_SCREENSHOTS=docs/screenshots refreshes the README's
# (a test run must not rewrite tracked files).
SHOTS = Path(os.environ.get("METERWAY_SCREENSHOTS") or Path(tempfile.gettempdir()) / "meterway-screenshots")
HI: Any = [{"role": "user", "content": "hi"}]


def _chromium() -> str:
    path = os.environ.get("METERWAY_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        stop = pytest.fail if os.environ.get("CI") == "true" else pytest.skip
        stop("Chromium not installed (apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = _chromium()
    with playwright.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 860}, accept_downloads=True)
    tab = context.new_page()
    tab.set_default_timeout(10_000)
    tab.on("dialog", lambda dialog: dialog.accept())  # the "are you sure?" of block, delete, regenerate
    errors: list[str] = []
    tab.on("pageerror", lambda e: errors.append(str(e)))
    yield tab
    context.close()
    assert errors == [], f"script errors on the page: {errors}"


def _shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _login(page: Any, gw: RunningGateway) -> None:
    page.goto(gw.url + "/ui/")
    page.get_by_label("Master key or your API key").fill(gw.key)
    _shot(page, "login")
    page.get_by_role("button", name="Log in with key").click()
    page.get_by_role("heading", name="Overview").wait_for()


def _usage(gw: RunningGateway, **params: str) -> dict[str, Any]:
    today = datetime.now(UTC).date().isoformat()
    query = {"start": today, "end": today, **params}
    reply = httpx.get(gw.url + "/usage", params=query, headers={"Authorization": f"Bearer {gw.key}"}, timeout=10)
    reply.raise_for_status()
    result: dict[str, Any] = reply.json()
    return result


def test_a_key_made_in_the_ui_is_metered_reported_and_blocked(upstream: StandIn, page: Any) -> None:
    with run_gateway({"model_list": [priced(upstream.base_url)]}) as gw:
        _login(page, gw)
        page.get_by_role("link", name="Keys").click()
        page.get_by_label("Alias").fill("browser-key")
        page.get_by_label("Models (none: all)").select_option("priced")
        page.get_by_label("Budget (USD)").fill("5")
        page.get_by_label("Requests per minute").fill("100")
        page.get_by_label("Metadata (JSON object)").fill('{"project": "ui-test"}')
        page.get_by_role("button", name="Create key").click()
        shown = page.locator("[data-test=new-key]")
        key = shown.input_value()
        assert key.startswith("sk-")
        page.get_by_role("button", name="Copy").click()
        page.get_by_role("button", name="Copied").wait_for()

        with openai.OpenAI(base_url=gw.v1, api_key=key, max_retries=0) as client:
            raw = client.chat.completions.with_raw_response.create(model="priced", messages=HI, user="acme")
            request_id = raw.headers["x-request-id"]
            raw.parse()

        # the request log has it, and its detail opens beside the table (htmx)
        page.get_by_role("link", name="Request log").click()
        row = page.locator(f"tr[data-request='{request_id}']")
        row.get_by_role("link", name="Open").click()
        detail = page.locator("#detail [data-test=log-detail]")
        detail.wait_for()
        usage = _usage(gw)
        assert Decimal(detail.locator("[data-test=cost]").inner_text().split()[0]) == Decimal(usage["totals"]["cost"])
        assert "no: reported by the upstream" in detail.inner_text()
        _shot(page, "request-log")

        # overview and usage explorer show GET /usage's totals, to the last digit
        page.get_by_role("link", name="Overview").click()
        page.locator("canvas[data-chart]").wait_for()
        assert page.locator("[data-test=today-spend]").get_attribute("data-exact") == usage["totals"]["cost"]
        _shot(page, "overview")
        page.set_viewport_size({"width": 390, "height": 844})  # a phone
        # until the chart has followed (the browser polls, on each frame)
        page.wait_for_function("document.documentElement.scrollWidth <= 390", timeout=5000)
        _shot(page, "overview-phone")
        page.set_viewport_size({"width": 1280, "height": 860})
        page.get_by_role("link", name="Usage").click()
        page.get_by_role("checkbox", name="model").check()
        page.get_by_label("Per").select_option("day")
        page.get_by_role("button", name="Show").click()
        assert page.locator("[data-test=usage-total]").inner_text() == _usage(gw)["totals"]["cost"]
        by_model = _usage(gw, group_by="model,day")
        assert page.locator("[data-test=usage-table] tbody tr").count() == len(by_model["rows"])
        _shot(page, "usage")

        # the CSV download parses and sums to the same total
        with page.expect_download() as download:
            page.locator("[data-test=csv]").click()
        text = Path(download.value.path()).read_text()
        rows = list(csv.DictReader(io.StringIO(text)))
        assert rows and {"model", "day", "cost", "total_tokens"} <= set(rows[0])
        assert sum(Decimal(r["cost"]) for r in rows) == Decimal(usage["totals"]["cost"])

        # the key search narrows the table in place (htmx), and finds the key by its alias
        page.get_by_role("link", name="Keys").click()
        search = page.get_by_label("Search keys")
        search.fill("no-such-key")
        page.get_by_text("No keys match").wait_for()
        search.fill("browser")
        page.locator("#key-table tr", has_text="browser-key").wait_for()
        assert page.url.endswith("/ui/keys")  # no page load: the table was swapped

        # block the key in the UI: the next SDK request is refused
        _shot(page, "keys")
        page.get_by_role("button", name="Block browser-key").click()
        page.get_by_text("Key blocked.").wait_for()
        with (
            openai.OpenAI(base_url=gw.v1, api_key=key, max_retries=0) as client,
            pytest.raises(openai.AuthenticationError),
        ):
            client.chat.completions.create(model="priced", messages=HI)
        page.get_by_role("button", name="Unblock browser-key").wait_for()

        # teams, users and customers made in their forms
        page.get_by_role("link", name="Users", exact=True).click()
        new = page.locator("section", has=page.get_by_role("heading", name="New user"))
        new.get_by_label("User id").fill("alice")
        new.get_by_label("Email").fill("alice@example.com")
        new.get_by_label("Budget (USD)").fill("20")
        new.get_by_role("button", name="Create user").click()
        page.get_by_text("User saved.").wait_for()
        _shot(page, "users")
        page.get_by_role("link", name="Teams", exact=True).click()
        new = page.locator("section", has=page.get_by_role("heading", name="New team"))
        new.get_by_label("Team id").fill("research")
        new.get_by_label("Alias").fill("Research")
        new.get_by_label("Budget (USD)").fill("50")
        new.get_by_label("Requests per minute").fill("600")
        new.get_by_role("button", name="Create team").click()
        page.get_by_text("Team saved.").wait_for()
        page.get_by_text("Edit").first.click()
        page.get_by_label("Add member (user id)").fill("alice")
        page.get_by_role("button", name="Add member").click()
        page.get_by_text("alice (user)").wait_for()
        _shot(page, "teams")
        page.get_by_role("link", name="Customers", exact=True).click()
        assert "seen in requests, not created here" in page.locator("tr", has_text="acme").inner_text()
        new = page.locator("section", has=page.get_by_role("heading", name="New customer"))
        new.get_by_label("Customer id").fill("acme")
        new.get_by_label("Budget (USD)").fill("100")
        new.get_by_role("button", name="Create customer").click()
        page.get_by_text("Customer saved.").wait_for()
        assert "$0.000018" in page.locator("tr", has_text="acme").inner_text()
        _shot(page, "customers")
        page.get_by_role("link", name="Models", exact=True).click()
        page.get_by_role("heading", name="Models").wait_for()
        _shot(page, "models")


def test_a_parked_billing_event_is_seen_mapped_reprocessed_and_delivered(
    upstream: StandIn, lago: LagoStandIn, page: Any
) -> None:
    config = {
        "model_list": [priced(upstream.base_url)],
        "billing": {"api_base": lago.url, "api_key": lago.api_key, "charge_by": "end_user_id"},
    }
    with run_gateway(config) as gw:
        with openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0) as client:
            client.chat.completions.create(model="priced", messages=HI)  # names no customer
            client.chat.completions.create(model="priced", messages=HI, user="bob")  # bob has no Lago subscription
        _login(page, gw)
        page.get_by_role("link", name="Billing").click()
        reasons = page.locator("[data-test=parked-reasons]")

        def parked() -> bool:
            if "no active Lago subscription 'bob'" in reasons.inner_text():
                return True
            page.reload()
            return False

        eventually(parked, 15, "both events parked", interval=0.1)
        assert "no customer (the request's `user` field)" in reasons.inner_text()
        assert page.locator("[data-test=parked]").inner_text() == "2"
        _shot(page, "billing")

        # map bob onto acme's Lago subscription on the customers page
        page.get_by_role("link", name="Customers").click()
        new = page.locator("section", has=page.get_by_role("heading", name="New customer"))
        new.get_by_label("Customer id").fill("bob")
        new.get_by_label("Lago subscription").fill("acme")
        new.get_by_role("button", name="Create customer").click()
        page.get_by_text("Customer saved.").wait_for()

        page.get_by_role("link", name="Billing").click()
        bob = page.locator("tr", has_text="no active Lago subscription 'bob'")
        bob.get_by_role("button", name="Reprocess these").click()
        page.get_by_text("1 parked event(s) queued again.").wait_for()
        eventually(lambda: lago.transaction_ids(), 20, "the reprocessed event reaching Lago")
        assert {e.external_subscription_id for e in lago.events} == {"acme"}

        def marked_sent() -> bool:  # once Lago has answered
            if page.locator("[data-test=sent]").inner_text() == "1":
                return True
            page.reload()
            return False

        eventually(marked_sent, 20, "the delivered event marked sent", interval=0.1)
        assert page.locator("[data-test=parked]").inner_text() == "1"  # the request with no customer stays parked

        # reconcile the month: Lago holds exactly what was sent
        page.get_by_role("button", name="Compare").click()
        assert "Everything matches" in page.locator("[data-test=reconcile-result]").inner_text()

        # the invoice preview for bob, from the ledger
        page.get_by_label("Invoice customer").select_option("bob")
        page.get_by_role("button", name="Preview").click()
        total = page.locator("[data-test=invoice-total]").inner_text()
        assert Decimal(total) == Decimal(_usage(gw, customer_id="bob")["totals"]["cost"]) > 0
