"""Who is calling. For now only the master key; virtual keys plug in behind `authenticate`."""

from __future__ import annotations

from dataclasses import dataclass

from meterway.config.secret import Secret
from meterway.errors import AuthenticationFailed


@dataclass(frozen=True, slots=True)
class Principal:
    """The identity a request acts as. `key_id` is a digest or a name, never the key itself."""

    key_id: str
    role: str  # "proxy_admin" for the master key


MASTER = Principal(key_id="master", role="proxy_admin")


def bearer_token(authorization: bytes | None, x_api_key: bytes | None, api_key: bytes | None) -> bytes | None:
    """The key from `Authorization: Bearer`, `x-api-key` (Anthropic clients) or `api-key` (Azure clients)."""
    if authorization:
        scheme, _, token = authorization.partition(b" ")
        if scheme.lower() == b"bearer" and token:
            return token.strip()
        return authorization.strip()
    return x_api_key or api_key or None


class Authenticator:
    def __init__(self, master_key: Secret | None) -> None:
        self._master = master_key

    def authenticate(self, token: bytes | None) -> Principal:
        if token is None:
            raise AuthenticationFailed("Missing API key. Send it as 'Authorization: Bearer <key>'.")
        if self._master is not None and self._master.matches(token):
            return MASTER
        raise AuthenticationFailed("Invalid API key.")
