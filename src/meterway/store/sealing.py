"""Credentials sealed at rest: one Fernet token (AES-128-CBC with HMAC-SHA256, from `cryptography`)
under a key derived with HKDF-SHA256 from the salt key (METERWAY_SALT_KEY, else LITELLM_SALT_KEY,
else the master key). Imported only where something is sealed: `cryptography` costs memory a
gateway without stored models does not need to pay.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import orjson
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from meterway.config.secret import Secret


class Unreadable(Exception):
    """A stored model sealed under another salt key (or damaged)."""


class Sealer:
    def __init__(self, salt_key: Secret) -> None:
        kdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"meterway/models", info=b"litellm_params")
        self._fernet = Fernet(base64.urlsafe_b64encode(kdf.derive(salt_key.reveal().encode())))

    def seal(self, params: Mapping[str, Any]) -> str:
        return self._fernet.encrypt(orjson.dumps(params)).decode()

    def open(self, token: str) -> dict[str, Any]:
        try:
            value = orjson.loads(self._fernet.decrypt(token.encode()))
        except (InvalidToken, orjson.JSONDecodeError):
            raise Unreadable("sealed under another salt key") from None
        if not isinstance(value, dict):
            raise Unreadable("not a mapping")
        return value
