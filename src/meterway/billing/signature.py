"""Lago's webhook signatures, checked as Lago makes them (`shared/lago/wallets/README.md`).

`hmac`: `X-Lago-Signature` is the strict Base64 of HMAC-SHA256 over the raw body, keyed with the
organization's API key (ours, `billing.api_key`). `jwt`: an RS256 JWT of `{data: <the body>,
iss: <Lago's API URL>}`, signed with Lago's private key; the public key is fetched once from
`GET /api/v1/webhooks/json_public_key` and kept, and fetched again when a signature does not
verify, in case Lago's key was rotated. Every fetch, failed or not, is at most one per
`REFETCH_S` (one at a time): forged jwt webhooks cannot make the gateway call Lago for each.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from meterway.config.billing import Billing

REFETCH_S = 30.0  # a failing jwt fetches Lago's public key again at most this often
NO_KEY_RETRY_S = 5.0  # while no key was ever read (Lago away), it is asked for at most this often


class Forged(Exception):
    """The signature does not match the body: the webhook did not come from our Lago."""


class KeyUnavailable(Exception):
    """Lago's public key is not known and was asked for less than `REFETCH_S` ago: a jwt cannot
    be checked now (the webhook is let go, to be sent again)."""


def check_hmac(body: bytes, signature: str, api_key: str) -> None:
    expected = base64.b64encode(hmac.new(api_key.encode(), body, hashlib.sha256).digest()).decode()
    if not hmac.compare_digest(expected.encode(), signature.strip().encode()):
        raise Forged("the hmac signature does not match the body")


def _same_body(data: Any, body: bytes) -> bool:
    """The JWT's `data` is the body Lago sent (its JSON text, or that JSON decoded)."""
    try:
        sent = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    if isinstance(data, str):
        if data.encode() == body:
            return True
        try:
            return bool(orjson.loads(data) == sent)
        except orjson.JSONDecodeError:
            return False
    return bool(data == sent)


class Verifier:
    def __init__(
        self,
        billing: Billing,
        fetch_key: Callable[[], Awaitable[str]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.billing = billing
        self._fetch = fetch_key  # Lago's public key, base64 of its PEM
        self._clock = clock
        self._pem: bytes | None = None
        self._fetched = float("-inf")
        self._lock = asyncio.Lock()

    async def check(self, algorithm: str, signature: str, body: bytes) -> None:
        """Raises Forged unless `signature` is Lago's for `body`; LagoUnavailable (from the key's
        fetch) when a jwt cannot be checked because Lago does not answer."""
        if algorithm == "hmac":
            check_hmac(body, signature, self.billing.api_key.reveal())
            return
        if algorithm != "jwt":
            raise Forged(f"unknown signature algorithm {algorithm[:20]!r}")
        if self._pem is None:
            await self._refresh(None)
        try:
            self._check_jwt(signature, body)
        except Forged:
            known = self._pem
            await self._refresh(known)  # the key may have been rotated: once more with Lago's current one
            if self._pem is known:
                raise
            self._check_jwt(signature, body)

    async def _refresh(self, known: bytes | None) -> None:
        """Fetches Lago's key unless another caller replaced `known` meanwhile or a fetch was made
        in the last REFETCH_S; raises KeyUnavailable when there is still no key."""
        async with self._lock:
            if self._pem is not known:
                return
            if self._clock() - self._fetched < (REFETCH_S if known is not None else NO_KEY_RETRY_S):
                if self._pem is None:
                    raise KeyUnavailable("Lago's public key was not read (asked for a moment ago)")
                return
            self._fetched = self._clock()
            await self._load()

    async def _load(self) -> None:
        encoded = await self._fetch()
        try:
            pem = base64.b64decode(encoded, validate=False)
        except (binascii.Error, ValueError):
            pem = encoded.encode()
        self._pem = pem if b"BEGIN" in pem else encoded.encode()

    def _check_jwt(self, token: str, body: bytes) -> None:
        import jwt

        if self._pem is None:
            raise Forged("no public key")
        try:
            claims = jwt.decode(
                token.strip(),
                self._pem,
                algorithms=["RS256"],
                issuer=self.billing.api_base,
                options={"require": ["iss"], "verify_aud": False},
            )
        except (jwt.PyJWTError, ValueError) as e:
            raise Forged(f"the jwt signature does not verify ({e.__class__.__name__})") from None
        if not _same_body(claims.get("data"), body):
            raise Forged("the jwt was made for another body")
