"""The prepaid alert call-site: credits_low / credits_exhausted handed to the sink once per amount
credited to the usable wallets (a top-up re-arms them; Lago's refresh of the ongoing balance, which
moves the funded amount by its cent rounding, does not), and a sink that fails does not fail the
request."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from meterway.billing.prepaid import Prepaid, PrepaidAlert, Priced
from meterway.config.billing import Billing
from meterway.config.billing import Prepaid as PrepaidConfig
from meterway.config.secret import Secret
from meterway.store.prepaid import Reading, WalletView

BILLING = Billing(api_base="http://lago", api_key=Secret("k"), prepaid=PrepaidConfig(mode="enforce"))


def _priced(balance: int, ongoing_usage: int = 0, priced: int = 0) -> Priced:
    """A reading of one wallet of `balance` (balance_cents, money units) of which Lago counted
    `ongoing_usage`; `priced`: P_R."""
    start = datetime(2026, 12, 1, tzinfo=UTC)
    wallet = WalletView(
        "w1",
        "main",
        "main",
        50,
        "active",
        "USD",
        "1.0",
        balance,
        balance - ongoing_usage,
        ongoing_usage,
        None,
        "",
        True,
    )
    reading = Reading(
        "acme", "acme", "acme", "p", "USD", start, None, True, balance - ongoing_usage, ongoing_usage, priced,
        (wallet,), "schedule", start,
    )  # fmt: skip
    return Priced(reading, None, None, 0.0)


async def test_each_alert_is_sent_once_per_funded_amount_and_a_top_up_rearms_it() -> None:
    sent: list[PrepaidAlert] = []

    async def sink(alert: PrepaidAlert) -> None:
        sent.append(alert)

    prepaid = Prepaid(BILLING, store=None, session=None, alert=sink)  # type: ignore[arg-type]  # warn touches neither
    await prepaid.warn("credits_low", "customer", _priced(10**9), 10**8)
    await prepaid.warn("credits_low", "customer", _priced(10**9), 5 * 10**7)
    await prepaid.warn("credits_exhausted", "customer", _priced(10**9), 0)
    await prepaid.warn("credits_low", "customer", _priced(2 * 10**9), 10**8)  # topped up
    assert [(a.event, a.funded) for a in sent] == [
        ("credits_low", Decimal("0.1")),
        ("credits_exhausted", Decimal("0.1")),
        ("credits_low", Decimal("0.2")),
    ]
    assert sent[0].available == Decimal("0.01") and sent[0].currency == "USD" and "acme" in sent[0].dedupe


async def test_a_failing_sink_is_logged_and_tried_again_next_time() -> None:
    calls = 0

    async def sink(alert: PrepaidAlert) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("outbox away")

    prepaid = Prepaid(BILLING, store=None, session=None, alert=sink)  # type: ignore[arg-type]  # warn touches neither
    await prepaid.warn("credits_exhausted", "customer", _priced(10**9), 0)
    await prepaid.warn("credits_exhausted", "customer", _priced(10**9), 0)
    assert calls == 2


async def test_lagos_refresh_without_a_top_up_does_not_send_credits_low_again_and_a_top_up_does() -> None:
    sent: list[PrepaidAlert] = []

    async def sink(alert: PrepaidAlert) -> None:
        sent.append(alert)

    prepaid = Prepaid(BILLING, store=None, session=None, alert=sink)  # type: ignore[arg-type]  # warn touches neither
    cent = 10**8
    await prepaid.warn("credits_low", "customer", _priced(100 * cent, 0, 37 * cent + 4), 10**8)
    # Lago counted the usage, rounded to its cents: B falls, U_L rises, funded moves by a fraction of a cent
    refreshed = _priced(100 * cent, 38 * cent, 37 * cent + 4)
    assert refreshed.reading.funded != _priced(100 * cent, 0, 37 * cent + 4).reading.funded
    await prepaid.warn("credits_low", "customer", refreshed, 10**8)
    await prepaid.warn("credits_low", "customer", _priced(100 * cent, 40 * cent, 41 * cent), 10**8)
    assert len(sent) == 1
    await prepaid.warn("credits_low", "customer", _priced(150 * cent, 40 * cent, 41 * cent), 10**8)  # topped up
    assert len(sent) == 2
