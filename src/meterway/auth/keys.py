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
    """The stored form of a key. A value that is already a digest (64 hex characters, as LiteLLM
    accepts in its management calls) is returned as it is."""
    text = key.decode() if isinstance(key, bytes) else key
    if len(text) == 64 and not text.startswith(PREFIX) and all(c in "0123456789abcdef" for c in text):
        return text
    return hashlib.sha256(text.encode()).hexdigest()


def derive_key(secret: Secret, from_digest: str) -> str:
    """The key that replaces the key with digest `from_digest`: random to anyone without the
    server's secret, and the same every time, so a retried regeneration is idempotent."""
    mac = hmac.new(secret.reveal().encode(), b"regenerate:" + from_digest.encode(), hashlib.sha256).digest()
    return PREFIX + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def display_name(key: str) -> str:
    """Enough of a key to recognise it in a list, never enough to use it."""
    return f"{key[:3]}...{key[-4:]}"
