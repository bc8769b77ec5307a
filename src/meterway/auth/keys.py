"""Virtual keys: how they are made and how they are looked up.

A key is `sk-` followed by 43 URL-safe characters (32 random bytes). Only its SHA-256 hex digest
is stored: the same digest the LiteLLM proxy stores, so keys imported from it keep working.
A key is shown once, when it is made; afterwards it is known by its digest and a short name.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from meterway.config.secret import Secret

PREFIX = "sk-"


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def digest(key: str | bytes) -> str:
    """The stored form of a key: its SHA-256 hex digest, whatever it is given. Authentication uses
    this and only this, so a digest (shown by `/key/list`, `/spend/logs`, the ledger) is hashed
    like any other guess and never authenticates as the key it names."""
    data = key if isinstance(key, bytes) else key.encode()
    return hashlib.sha256(data).hexdigest()


def is_digest(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def reference(ref: str) -> str:
    """The digest of the key a management call names: the key itself, or (as LiteLLM accepts)
    its digest, 64 lowercase hex characters, taken as it is. Never used to authenticate: naming
    a key is allowed only to a caller already allowed to manage it (`management.authorize`)."""
    return ref if is_digest(ref) else digest(ref)


def derive_key(secret: Secret, from_digest: str) -> str:
    """The key that replaces the key with digest `from_digest`: random to anyone without the
    server's secret, and the same every time, so a retried regeneration is idempotent."""
    mac = hmac.new(secret.reveal().encode(), b"regenerate:" + from_digest.encode(), hashlib.sha256).digest()
    return PREFIX + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def display_name(key: str) -> str:
    """Enough of a key to recognise it in a list, never enough to use it."""
    return f"{key[:3]}...{key[-4:]}"
