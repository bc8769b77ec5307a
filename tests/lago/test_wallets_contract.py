"""The Lago stand-in's wallets, wallet transactions, ongoing balance and signed webhooks, driven
through the real lago-python-client and checked against Lago's published schemas
(`shared/lago/wallets/`, beside the repository as `../shared` in CI as here)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from lago_python_client.client import Client
from lago_python_client.exceptions import LagoApiError
from lago_python_client.models import Wallet, WalletTransaction

from tests.lago.standin import LagoStandIn, billing_period, prepaid_ready

WALLETS = Path(__file__).resolve().parents[2].parent / "shared" / "lago" / "wallets"


def _required(name: str) -> set[str]:
    return set(yaml.safe_load((WALLETS / name).read_text())["required"])


def _webhook_required(name: str) -> set[str]:
    spec = yaml.safe_load((WALLETS / name).read_text())
    return set(spec["post"]["requestBody"]["content"]["application/json"]["schema"]["required"])


@pytest.fixture
def lago() -> Iterator[LagoStandIn]:
    with LagoStandIn() as stand_in:
        yield stand_in


class Receiver:
    """A webhook receiver on a loopback port: records each POST, answers `statuses` in turn (then 200)."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.statuses = list(statuses or [])
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                owner.received.append(({k: v for k, v in self.headers.items()}, body))
                self.send_response(owner.statuses.pop(0) if owner.statuses else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/lago"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _client(lago: LagoStandIn) -> Client:
    return Client(api_key=lago.api_key, api_url=lago.url)


def _raw(lago: LagoStandIn, path: str) -> Any:
    import httpx

    answer = httpx.get(lago.url + path, headers={"Authorization": f"Bearer {lago.api_key}"})
    assert answer.status_code == 200
    return answer.json()


def _usage_events(lago: LagoStandIn, customer: str, tokens: int, prefix: str = "u") -> None:
    from lago_python_client.models import Event

    _client(lago).events.create(
        Event(
            transaction_id=f"{prefix}-{customer}-{tokens}",
            external_subscription_id=customer,
            code="llm_tokens",
            timestamp=datetime.now(UTC).timestamp(),
            properties={"total_tokens": tokens},
        )
    )


def test_wallet_create_find_update_list_terminate(lago: LagoStandIn) -> None:
    made = prepaid_ready(lago, "acme", "10", rate_amount="0.5", name="Prepaid", priority=5)
    assert made.status == "active" and made.rate_amount == "0.5" and made.credits_balance == "10.0"
    assert made.balance_cents == 500 and made.ongoing_balance_cents == 500 and made.ongoing_usage_balance_cents == 0
    assert made.credits_ongoing_balance == "10.0" and made.credits_ongoing_usage_balance == "0.0"
    assert made.code == "prepaid" and made.priority == 5
    body = _raw(lago, f"/api/v1/wallets/{made.lago_id}")["wallet"]
    assert _required("WalletObject.yaml") <= set(body)
    assert body["invoice_requires_successful_payment"] is False

    client = _client(lago)
    found = client.wallets.find(made.lago_id)
    assert found is not None and found.lago_id == made.lago_id
    updated = client.wallets.update(Wallet(name="Credits", priority=1), made.lago_id)
    assert updated is not None and updated.name == "Credits" and updated.priority == 1
    listed = client.wallets.find_all({"external_customer_id": "acme"})
    assert [w.lago_id for w in listed["wallets"]] == [made.lago_id]
    assert listed["meta"]["total_count"] == 1
    raw = _raw(lago, "/api/v1/wallets?external_customer_id=acme")
    assert set(raw) == {"wallets", "meta"} and raw["meta"]["current_page"] == 1
    assert _raw(lago, "/api/v1/customers/acme/wallets")["wallets"][0]["lago_id"] == made.lago_id

    gone = client.wallets.destroy(made.lago_id)
    assert gone is not None and gone.status == "terminated" and gone.terminated_at is not None

    with pytest.raises(LagoApiError) as e:
        client.wallets.find("no-such-wallet")
    assert e.value.status_code == 404 and e.value.response["code"] == "wallet_not_found"
    with pytest.raises(LagoApiError) as e:
        client.wallets.create(Wallet(external_customer_id="nobody", rate_amount="1", currency="USD"))
    assert e.value.status_code == 404 and e.value.response["code"] == "customer_not_found"
    with pytest.raises(LagoApiError) as e:
        client.wallets.create(Wallet(external_customer_id="acme", rate_amount="1", currency="EUR"))
    assert e.value.status_code == 422
    assert e.value.response["error_details"] == {"currency": ["currencies_does_not_match"]}


def test_top_ups_one_transaction_per_kind_and_balance_on_settle(lago: LagoStandIn) -> None:
    wallet = prepaid_ready(lago, "acme", "10", rate_amount="1.0", invoice_requires_successful_payment=True)
    client = _client(lago)
    made = client.wallet_transactions.create(
        WalletTransaction(wallet_id=wallet.lago_id, paid_credits="20.0", granted_credits="5", voided_credits="1")
    )
    paid, granted, voided = made["wallet_transactions"]
    assert (paid.transaction_status, paid.status, paid.credit_amount, paid.amount) == (
        "purchased",
        "pending",
        "20.0",
        "20.0",
    )
    assert (granted.transaction_status, granted.status) == ("granted", "settled")
    assert (voided.transaction_status, voided.transaction_type, voided.status) == ("voided", "outbound", "settled")
    after = client.wallets.find(wallet.lago_id)
    assert after is not None and after.credits_balance == "14.0" and after.balance_cents == 1400

    lago.settle_payment(paid.lago_id)
    after = client.wallets.find(wallet.lago_id)
    assert after is not None and after.credits_balance == "34.0" and after.balance_cents == 3400

    body = _raw(lago, f"/api/v1/wallet_transactions/{paid.lago_id}")["wallet_transaction"]
    assert _required("WalletTransactionObject.yaml") <= set(body) and body["status"] == "settled"
    listed = client.wallet_transactions.find_all(wallet.lago_id, {"transaction_status": "granted"})
    assert len(listed["wallet_transactions"]) == 2  # the wallet's initial grant and this one
    with pytest.raises(LagoApiError) as e:
        client.wallet_transactions.create(WalletTransaction(wallet_id=wallet.lago_id, voided_credits="1000"))
    assert e.value.status_code == 422


def test_ongoing_balance_moves_only_on_refresh_and_spreads_by_priority(lago: LagoStandIn) -> None:
    first = prepaid_ready(lago, "acme", "2", priority=1, code="first")  # 200 cents
    client = _client(lago)
    second = client.wallets.create(
        Wallet(external_customer_id="acme", rate_amount="1.0", currency="USD", granted_credits="5", code="second")
    )
    assert second is not None
    _usage_events(lago, "acme", 3000)  # 3000 tokens x 0.001 = 3.00 USD = 300 cents
    assert client.wallets.find(first.lago_id).ongoing_balance_cents == 200  # type: ignore[union-attr]
    lago.refresh_ongoing_balances("acme")
    a, b = client.wallets.find(first.lago_id), client.wallets.find(second.lago_id)
    assert a is not None and b is not None
    assert (a.ongoing_usage_balance_cents, a.ongoing_balance_cents, a.credits_ongoing_balance) == (200, 0, "0.0")
    assert (b.ongoing_usage_balance_cents, b.ongoing_balance_cents, b.credits_ongoing_usage_balance) == (
        100,
        400,
        "1.0",
    )
    assert b.balance_cents == 500  # the balance itself waits for the invoice


def test_depleted_ongoing_balance_is_sent_once(lago: LagoStandIn, receiver: Receiver) -> None:
    lago.add_webhook(receiver.url, "hmac")
    wallet = prepaid_ready(lago, "acme", "1")
    _usage_events(lago, "acme", 2000)
    lago.refresh_ongoing_balances()
    lago.refresh_ongoing_balances()
    lago.wait_deliveries(2)
    depleted = [w for w in lago.webhooks if w["webhook_type"] == "wallet.depleted_ongoing_balance"]
    assert len(depleted) == 1 and depleted[0]["wallet"]["lago_id"] == wallet.lago_id
    assert depleted[0]["wallet"]["ongoing_balance_cents"] == -100
    assert _webhook_required("wallet_depleted_ongoing_balance.yaml") <= set(depleted[0])


def test_refresh_terminates_expired_wallets(lago: LagoStandIn) -> None:
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    wallet = prepaid_ready(lago, "acme", "1", expiration_at=soon)
    lago.wallets[wallet.lago_id].expiration_at = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    lago.refresh_ongoing_balances()
    found = _client(lago).wallets.find(wallet.lago_id)
    assert found is not None and found.status == "terminated"


def test_hmac_webhooks_verify_and_retry_with_the_same_key(lago: LagoStandIn) -> None:
    receiver = Receiver([500, 503])
    try:
        lago.add_webhook(receiver.url, "hmac")
        wallet = prepaid_ready(lago, "acme", "3")
        attempts = [d for d in lago.wait_deliveries(3) if d.webhook_type == "wallet_transaction.created"]
        assert [d.status for d in attempts] == [500, 503, 200]
        assert len({d.unique_key for d in attempts}) == 1
        headers, body = receiver.received[-1]
        expected = base64.b64encode(hmac.new(lago.api_key.encode(), body, hashlib.sha256).digest()).decode()
        assert headers["X-Lago-Signature-Algorithm"] == "hmac"
        assert hmac.compare_digest(headers["X-Lago-Signature"], expected)
        payload = json.loads(body)
        assert _webhook_required("wallet_transaction_created.yaml") <= set(payload)
        assert payload["organization_id"] == lago.organization_id
        assert payload["wallet_transaction"]["wallet"]["lago_id"] == wallet.lago_id
        assert _required("WalletTransactionObject.yaml") <= set(payload["wallet_transaction"])
    finally:
        receiver.close()


def test_jwt_webhooks_verify_with_the_public_key(lago: LagoStandIn, receiver: Receiver) -> None:
    import httpx

    made = httpx.post(
        lago.url + "/api/v1/webhook_endpoints",
        json={"webhook_endpoint": {"webhook_url": receiver.url, "signature_algo": "jwt"}},
        headers={"Authorization": f"Bearer {lago.api_key}"},
    ).json()["webhook_endpoint"]
    assert _required("WebhookEndpointObject.yaml") <= set(made) and made["signature_algo"] == "jwt"
    wallet = prepaid_ready(lago, "acme", "3", invoice_requires_successful_payment=True)
    paid = _client(lago).wallet_transactions.create(WalletTransaction(wallet_id=wallet.lago_id, paid_credits="2"))
    pending = paid["wallet_transactions"][0]
    lago.fail_payment(pending.lago_id)
    lago.wait_deliveries(4)
    payloads = [json.loads(body) for _, body in receiver.received]  # concurrent deliveries: any order
    assert sorted(p["webhook_type"] for p in payloads) == [
        "wallet_transaction.created",
        "wallet_transaction.created",
        "wallet_transaction.payment_failure",
        "wallet_transaction.updated",
    ]
    key = _client(lago).webhooks.public_key()
    text = httpx.get(lago.url + "/api/v1/webhooks/public_key", headers={"Authorization": f"Bearer {lago.api_key}"})
    assert text.headers["content-type"].startswith("text/plain") and base64.b64decode(text.text) == key
    for headers, body in receiver.received:
        assert headers["X-Lago-Signature-Algorithm"] == "jwt"
        claims = jwt.decode(headers["X-Lago-Signature"], key, algorithms=["RS256"], issuer=lago.url)
        assert claims["data"] == body.decode()
    (failure,) = [p for p in payloads if p["webhook_type"] == "wallet_transaction.payment_failure"]
    assert _webhook_required("wallet_transaction_payment_failure.yaml") <= set(failure)
    assert failure["payment_provider_wallet_transaction_payment_error"]["lago_wallet_transaction_id"] == pending.lago_id
    (updated,) = [p["wallet_transaction"] for p in payloads if p["webhook_type"] == "wallet_transaction.updated"]
    assert updated["status"] == "failed" and updated["failed_at"] is not None
    assert lago.sign_jwt(b"{}") and lago.sign_hmac(b"{}")


def test_subscriptions_carry_their_current_billing_period(lago: LagoStandIn) -> None:
    prepaid_ready(lago, "acme", "1")
    sub = _raw(lago, "/api/v1/subscriptions/acme")["subscription"]
    start, end = billing_period(sub["started_at"])
    assert sub["current_billing_period_started_at"] == start.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert sub["current_billing_period_ending_at"] == end.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert end.day >= 28 and (end.hour, end.minute, end.second) == (23, 59, 59)
    listed = _raw(lago, "/api/v1/subscriptions?external_customer_id=acme")["subscriptions"][0]
    assert listed["current_billing_period_ending_at"] == sub["current_billing_period_ending_at"]
    found = _client(lago).subscriptions.find("acme")
    assert found is not None and found.external_id == "acme"


def test_auto_refresh_runs_the_refresh_in_the_background(lago: LagoStandIn) -> None:
    wallet = prepaid_ready(lago, "acme", "10")
    _usage_events(lago, "acme", 1000)  # 1.00 USD
    lago.auto_refresh(0.02)
    client = _client(lago)
    seen = None
    for _ in range(250):  # bounded: ~5 s at most
        found = client.wallets.find(wallet.lago_id)
        assert found is not None
        seen = found.ongoing_usage_balance_cents
        if seen == 100:
            break
        time.sleep(0.02)
    lago.auto_refresh(None)
    assert seen == 100


def test_a_wallet_limited_to_another_metric_takes_no_usage(lago: LagoStandIn) -> None:
    from lago_python_client.models.wallet import AppliesTo

    other = prepaid_ready(
        lago, "acme", "5", priority=1, code="other", applies_to=AppliesTo(billable_metric_codes=["x"])
    )
    client = _client(lago)
    general = client.wallets.create(
        Wallet(external_customer_id="acme", rate_amount="1.0", currency="USD", granted_credits="5", code="general")
    )
    assert general is not None and other.applies_to is not None
    _usage_events(lago, "acme", 1000)
    lago.refresh_ongoing_balances("acme")
    a, b = client.wallets.find(other.lago_id), client.wallets.find(general.lago_id)
    assert a is not None and b is not None
    assert (a.ongoing_usage_balance_cents, b.ongoing_usage_balance_cents) == (0, 100)


def test_depleted_is_sent_again_after_a_top_up_brought_the_balance_back(lago: LagoStandIn) -> None:
    wallet = prepaid_ready(lago, "acme", "1")
    _usage_events(lago, "acme", 1000, prefix="a")  # 1.00: ongoing balance 0
    lago.refresh_ongoing_balances()
    _client(lago).wallet_transactions.create(WalletTransaction(wallet_id=wallet.lago_id, granted_credits="1"))
    lago.refresh_ongoing_balances()  # 1.00 again: positive, the flag is cleared
    _usage_events(lago, "acme", 1500, prefix="b")
    lago.refresh_ongoing_balances()
    lago.refresh_ongoing_balances()
    depleted = [w for w in lago.webhooks if w["webhook_type"] == "wallet.depleted_ongoing_balance"]
    assert [w["wallet"]["ongoing_balance_cents"] for w in depleted] == [0, -50]


def test_a_pay_in_advance_charge_is_paid_from_the_wallet_when_its_event_comes(lago: LagoStandIn) -> None:
    from lago_python_client.models import Charge, Plan

    if "llm_tokens" not in lago.metrics:
        from tests.lago.standin import billing_ready

        billing_ready(lago, [])
    plan = Plan(
        name="Instant",
        code="instant",
        interval="monthly",
        amount_cents=0,
        amount_currency="USD",
        pay_in_advance=False,
        charges=[
            Charge(
                billable_metric_id=lago.metrics["llm_tokens"]["lago_id"],
                charge_model="standard",
                pay_in_advance=True,
                invoiceable=True,
                properties={"amount": "0.001"},
            )
        ],
    )
    wallet = prepaid_ready(lago, "acme", "5", plan=plan)
    _usage_events(lago, "acme", 1000)  # 1.00 billed at once
    client = _client(lago)
    found = client.wallets.find(wallet.lago_id)
    assert found is not None and found.balance_cents == 400 and found.credits_balance == "4.0"
    assert found.consumed_credits == "1.0" and found.ongoing_balance_cents == 400
    lago.refresh_ongoing_balances()
    found = client.wallets.find(wallet.lago_id)
    assert found is not None and (found.ongoing_usage_balance_cents, found.ongoing_balance_cents) == (0, 400)
    (invoiced,) = client.wallet_transactions.find_all(wallet.lago_id, {"transaction_status": "invoiced"})[
        "wallet_transactions"
    ]
    assert (invoiced.transaction_type, invoiced.status, invoiced.amount) == ("outbound", "settled", "1.0")
