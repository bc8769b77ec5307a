"""`meterway customers info` and `keys info` with prepaid credits on: the `prepaid` object of
`/customer/info` and `/key/info` printed readably (its parts, wallets and latest readings), and
what the CLI needs to build the same reader as the gateway (`Prepaid`) over its own store.

The CLI has no limiter of its own. With Redis configured it reads the gateway's counter there
(what requests settled and hold since the reading), as `/customer/info` does; without Redis the
gateway counts in its own process, which the CLI cannot see, and the output says so. Lago is asked
only with `--refresh`, bounded (`REFRESH_BOUND_S`): when it does not answer, the reading stored
in `mw_prepaid_balances` is shown with its age and the error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from meterway.cli import output
from meterway.ui.prepaid import age

if TYPE_CHECKING:
    from meterway.billing.prepaid import Prepaid

log = logging.getLogger("meterway.cli")

REFRESH_BOUND_S = 10.0  # `--refresh` waits at most this for Lago, every call of the reading together
REDIS_BOUND_S = 3.0  # reading the gateway's counter in Redis waits at most this
HISTORY_PRINTED = 10  # readings printed (the API gives up to 50; --json has them all)
REASON = "cli"  # a reading taken by `--refresh`, as its history says

Budget = Callable[[str], Awaitable[tuple[int, int]]]


def redis_budget(client: Any, prefix: str, notes: list[str]) -> Budget:
    """The limiter's read of a prepaid counter in Redis (`RedisLimiter.budget`: this process holds
    no lease, so it reads exactly what the gateways settled and hold). Redis failing is a note,
    not a crash: the reading's own figures are shown without the requests since."""
    from meterway.limits.redis import RedisLimiter

    limiter = RedisLimiter(client, prefix + "limits:")

    async def budget(counter: str) -> tuple[int, int]:
        try:
            async with asyncio.timeout(REDIS_BOUND_S):
                return await limiter.budget(counter)
        except Exception as e:  # redis' errors, OSError, TimeoutError: whatever stops the read
            notes.append(f"Redis did not answer ({e.__class__.__name__}): requests since the reading are not counted.")
            return 0, 0

    return budget


def charged_entity(result: dict[str, Any], command: str, charge_by: str) -> str | None:
    """The entity a `customers info` or `keys info` answer is charged as (what `--refresh` reads)."""
    if command == "customers":
        return str(result["customer_id"]) if charge_by == "customer" and result.get("customer_id") else None
    info = result.get("info") or {}
    field = {"customer": "customer_id", "user": "user_id", "team": "team_id", "key": "token"}[charge_by]
    value = info.get(field)
    return str(value) if value else None


async def refresh(prepaid: Prepaid, entity: str, notes: list[str]) -> None:
    """Reads the entity's wallets from Lago now (stored, as the gateway's readings are), within
    REFRESH_BOUND_S; when Lago fails, the stored reading stays and the note says so."""
    from meterway.billing.prepaid import FIRST_USE_TIMEOUT

    try:
        async with asyncio.timeout(REFRESH_BOUND_S):
            reading = await prepaid.refresh(entity, REASON, FIRST_USE_TIMEOUT)
    except TimeoutError:
        reading = None
    if reading is None:
        notes.append(f"Lago was not read (it failed, or took over {REFRESH_BOUND_S:g} s): the stored reading is shown.")


def of(result: Any, command: str) -> dict[str, Any] | None:
    """The `prepaid` object in a `customers info` or `keys info` answer."""
    if not isinstance(result, dict):
        return None
    holder = result if command == "customers" else result.get("info")
    found = holder.get("prepaid") if isinstance(holder, dict) else None
    return found if isinstance(found, dict) else None


def show(prepaid: dict[str, Any], notes: list[str]) -> None:
    """Prints the prepaid object: a heading, its parts, its wallets and its latest readings."""
    currency = prepaid.get("currency") or ""
    print()
    print(
        f"Prepaid credits: {prepaid.get('mode')}, charged as {prepaid.get('charged_as')} "
        f"'{prepaid.get('entity_id')}'"
        + (f", Lago customer '{prepaid['lago_customer_id']}'" if prepaid.get("lago_customer_id") else "")
    )
    if prepaid.get("read_at") is None:
        print(f"  Lago has not been read yet: {prepaid.get('last_error') or 'no reading'}")
    else:
        print(f"  available: {amount(prepaid.get('available'))} {currency}".rstrip())
        print(f"  read at {_when(prepaid.get('read_at'))} UTC, {age(prepaid.get('reading_age_s'))} ago")
        if prepaid.get("stale"):
            print(f"  STALE: Lago is not answering ({prepaid.get('last_error') or 'no reason given'})")
        elif prepaid.get("last_error"):
            print(f"  last attempt failed: {prepaid['last_error']}")
    for note in notes:
        print(f"  note: {note}")
    if prepaid.get("read_at") is not None:
        parts = (
            ("available", "available"),
            ("lago balance (ongoing)", "lago_balance"),
            ("usage Lago counted", "lago_counted_usage"),
            ("priced usage this period", "priced_usage"),
            ("not yet counted by Lago", "uncounted"),
            ("reserved in flight", "reserved"),
            ("funded this period", "funded"),
        )
        print()
        output.table(
            ["figure", currency or "amount"],
            [[n, amount(prepaid.get(k))] for n, k in parts],
            numeric=[currency or "amount"],
        )
    wallets = prepaid.get("wallets") or []
    if wallets:
        print()
        print("Wallets, in the order Lago uses them:")
        cols = [
            "priority",
            "wallet",
            "code",
            "status",
            "balance",
            "ongoing_balance",
            "ongoing_usage",
            "expires",
            "usable",
        ]
        rows = [
            [
                str(w.get("priority")),
                str(w.get("name") or w.get("lago_id")),
                str(w.get("code") or "-"),
                str(w.get("status")),
                f"{amount(w.get('balance'))} {w.get('currency') or ''}".rstrip(),
                amount(w.get("ongoing_balance")),
                amount(w.get("ongoing_usage")),
                _when(w.get("expiration_at")),
                "yes" if w.get("usable") else "no",
            ]
            for w in wallets
        ]
        output.table(cols, rows, numeric=("priority", "balance", "ongoing_balance", "ongoing_usage"))
    history = prepaid.get("history") or []
    if history:
        print()
        shown = history[:HISTORY_PRINTED]
        more = f" ({len(shown)} of {len(history)}; --json has them all)" if len(history) > len(shown) else ""
        print(f"Readings, newest first{more}:")
        cols = ["at", "reason", "balance", "counted", "priced", "available"]
        output.table(
            cols,
            [[_when(h.get("at")), str(h.get("reason"))] + [amount(h.get(c)) for c in cols[2:]] for h in shown],
            numeric=cols[2:],
        )


def amount(value: Any) -> str:
    """The API's decimal string, every digit kept."""
    if value is None:
        return "-"
    try:
        return format(Decimal(str(value)), "f")
    except InvalidOperation:
        return str(value)


def _when(value: Any) -> str:
    if not isinstance(value, str):
        return "-"
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return value
