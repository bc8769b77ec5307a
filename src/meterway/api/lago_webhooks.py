"""`POST /webhooks/lago`: Lago's webhooks about wallets, which re-read the wallets' customer at
once (a top-up is honoured within a second on every replica).

No key: the caller is Lago, and its signature is the authentication (`billing.signature`). A
webhook without its headers is a 400; one whose signature is unknown, forged or made for another
body is a 401, and changes nothing. Each is applied once, by `X-Lago-Unique-Key`: the key is
recorded only once the new reading is stored, so a redelivery that reaches another replica while
the first is still reading is read too (never answered `duplicate` for a webhook not applied), and
one that comes after is answered 200 `{"duplicate": true}`. When Lago does not answer the re-read,
the webhook is let go (503) so that Lago delivers it again. Re-reads of one customer are
coalesced (`Prepaid.customer_changed`); keys older than a week are pruned by the schedule.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson

from meterway.api.asgi import Incoming, Receive, Responder, Scope, Send, read_body, request_id
from meterway.billing.prepaid import REFRESH_TIMEOUT as _TIMEOUT
from meterway.billing.prepaid import Prepaid
from meterway.billing.signature import Forged, KeyUnavailable, Verifier
from meterway.billing.wallets import LagoUnavailable
from meterway.errors import AuthenticationFailed, BadRequest, RouteNotFound, ServiceUnavailable

log = logging.getLogger("meterway.prepaid")

PATH = "/webhooks/lago"
MAX_BODY = 256 * 1024  # Lago's wallet webhooks are a few kilobytes
MAX_KEY = 255  # the longest unique key, webhook type or customer id kept (their columns' length)
_SIGNATURE = b"x-lago-signature"
_ALGORITHM = b"x-lago-signature-algorithm"
_UNIQUE = b"x-lago-unique-key"
# the webhooks that say a customer's wallets changed
_WALLET_TYPES = ("wallet.", "wallet_transaction.")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            try:
                return bytes(value).decode().strip()
            except UnicodeDecodeError:
                return None
    return None


class LagoWebhooks:
    """The receiver: the prepaid service and the signature check, built once at start."""

    def __init__(self, prepaid: Prepaid) -> None:
        self.prepaid = prepaid
        self.verifier = Verifier(prepaid.billing, self._public_key)

    async def _public_key(self) -> str:
        return await self.prepaid.wallets.public_key(_TIMEOUT)

    async def take(self, algorithm: str, signature: str, unique_key: str, body: bytes) -> dict[str, Any]:
        try:
            await self.verifier.check(algorithm, signature, body)
        except Forged as e:
            log.warning("Lago webhook refused: %s", e)
            raise AuthenticationFailed(
                f"The webhook's signature is not Lago's ({e}).", code="invalid_lago_signature"
            ) from None
        except (LagoUnavailable, KeyUnavailable):
            raise ServiceUnavailable(
                "Lago's public key could not be read to check the signature; send again."
            ) from None
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise BadRequest("The webhook's body is not JSON.") from None
        if not isinstance(payload, dict):
            raise BadRequest("The webhook's body is not a JSON object.")
        kind = str(payload.get("webhook_type") or "")
        if not kind.startswith(_WALLET_TYPES):
            return {"ok": True, "ignored": kind}
        store = self.prepaid.store.prepaid
        if await store.webhook_taken(unique_key):
            return {"ok": True, "duplicate": True}
        customer = await self._customer(payload)
        if customer is not None and len(customer) > MAX_KEY:  # no meterway entity has so long an id
            customer = None
        if customer is None:
            await store.take_webhook(unique_key, kind[:100], None, datetime.now(UTC))
            return {"ok": True, "ignored": kind, "reason": "no customer in the webhook"}
        reason = "top_up" if kind == "wallet_transaction.created" else "webhook"
        try:
            entities = await self.prepaid.customer_changed(customer, reason)
        except Exception as e:  # not recorded: Lago's redelivery is applied
            log.warning("Lago webhook %s for %s not applied (%s); Lago will send it again", kind, customer, e)
            raise ServiceUnavailable("The wallets could not be read from Lago now; send the webhook again.") from None
        # recorded once the reading is stored: a redelivery meanwhile was read too, harmlessly
        await store.take_webhook(unique_key, kind[:100], customer, datetime.now(UTC))
        return {"ok": True, "webhook_type": kind, "refreshed": entities}

    async def _customer(self, payload: dict[str, Any]) -> str | None:
        """The Lago customer (external id) the webhook is about: on the wallet, the transaction's
        wallet, the payment error, or else read from the wallet it names."""
        obj = payload.get(str(payload.get("object_type") or ""))
        candidates = [obj] + [payload.get(k) for k in ("wallet", "wallet_transaction")]
        for found in candidates:
            if not isinstance(found, dict):
                continue
            if isinstance(found.get("external_customer_id"), str):
                return str(found["external_customer_id"])
            wallet = found.get("wallet")
            if isinstance(wallet, dict) and isinstance(wallet.get("external_customer_id"), str):
                return str(wallet["external_customer_id"])
            wallet_id = found.get("lago_wallet_id")
            if isinstance(wallet_id, str):
                try:
                    read = await self.prepaid.wallets.wallet(wallet_id, _TIMEOUT)
                except LagoUnavailable:
                    raise ServiceUnavailable("The webhook's wallet could not be read from Lago; send again.") from None
                if read is not None and isinstance(read.get("external_customer_id"), str):
                    return str(read["external_customer_id"])
        return None


async def handle(hooks: LagoWebhooks | None, scope: Scope, receive: Receive, send: Send) -> None:
    """Errors go to the boundary (`api.errors.boundary`), in OpenAI's error shape."""
    if hooks is None:
        raise RouteNotFound("Prepaid credits are off (billing.prepaid): Lago webhooks are not taken here.")
    incoming = Incoming(scope["headers"])
    signature, algorithm, unique = (_header(scope, h) for h in (_SIGNATURE, _ALGORITHM, _UNIQUE))
    missing = [n for n, v in (("X-Lago-Signature", signature), ("X-Lago-Signature-Algorithm", algorithm)) if not v]
    if missing:
        raise BadRequest(f"A Lago webhook carries {' and '.join(missing)}; this request does not.")
    body = await read_body(receive, incoming, MAX_BODY)
    if not unique:
        raise BadRequest("A Lago webhook carries X-Lago-Unique-Key; this request does not.")
    if len(unique) > MAX_KEY:
        raise BadRequest(f"X-Lago-Unique-Key is longer than {MAX_KEY} characters; Lago's are UUIDs.")
    assert signature is not None and algorithm is not None
    answer = await hooks.take(algorithm, signature, unique, body)
    await Responder(send, request_id(scope)).whole(200, orjson.dumps(answer))
