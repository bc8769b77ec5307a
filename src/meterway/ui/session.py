"""UI sessions: a signed cookie holding who logged in and until when, and the CSRF token bound to it.

The cookie holds no key: a login with a virtual key keeps only its digest, and the key is looked up
(through the same cache as the API) on every page, so a blocked or deleted key ends its session at
once. The signature is an HMAC-SHA256 under a secret derived from the master key (or the salt key),
so every replica accepts every replica's sessions; a gateway with neither signs with a random
secret, and its sessions end when it restarts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from dataclasses import dataclass
from typing import Literal

import orjson

from meterway.config.secret import Secret
from meterway.errors import AuthenticationFailed

COOKIE = "meterway_ui"
Kind = Literal["admin", "key"]  # admin: the master key or UI_USERNAME; key: a user's virtual key


class SessionInvalid(AuthenticationFailed):
    """The session cookie is missing, forged or expired: the browser is sent to the login page."""


class CsrfFailed(AuthenticationFailed):
    """A form or UI call came without this session's CSRF token."""

    status = 403


@dataclass(frozen=True, slots=True)
class Session:
    sid: str  # random per login: the CSRF token is bound to it
    kind: Kind
    key_digest: str  # for kind "key": the digest of the key that logged in; "" otherwise
    expires: float  # unix time
    name: str  # shown in the header: the UI username, "master key" or the key's alias


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    def __init__(self, root: Secret | None, lifetime_s: int) -> None:
        seed = root.reveal().encode() if root is not None else os.urandom(32)
        self._key = hmac.new(seed, b"meterway ui session v1", hashlib.sha256).digest()
        self.lifetime_s = lifetime_s

    def _sign(self, data: bytes) -> str:
        return _b64(hmac.new(self._key, data, hashlib.sha256).digest())

    def issue(self, kind: Kind, key_digest: str, name: str) -> tuple[Session, str]:
        """A new session and its cookie value."""
        session = Session(_b64(os.urandom(18)), kind, key_digest, time.time() + self.lifetime_s, name)
        payload = orjson.dumps([session.sid, kind, key_digest, session.expires, name])
        return session, f"{_b64(payload)}.{self._sign(payload)}"

    def read(self, cookie: str | None) -> Session:
        if not cookie or "." not in cookie:
            raise SessionInvalid("Log in to use the admin UI.")
        body, _, signature = cookie.partition(".")
        try:
            payload = _unb64(body)
        except ValueError:
            raise SessionInvalid("The session cookie is malformed.") from None
        if not hmac.compare_digest(signature, self._sign(payload)):
            raise SessionInvalid("The session cookie is not valid.")
        sid, kind, key_digest, expires, name = orjson.loads(payload)
        if expires <= time.time():
            raise SessionInvalid("The session has expired; log in again.")
        return Session(sid, kind, key_digest, float(expires), name)

    def csrf(self, session: Session) -> str:
        return self._sign(b"csrf:" + session.sid.encode())

    def check_csrf(self, session: Session, token: str | None) -> None:
        if not token or not hmac.compare_digest(token, self.csrf(session)):
            raise CsrfFailed("The form's CSRF token is missing or wrong; reload the page and try again.")
