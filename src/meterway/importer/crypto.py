"""LiteLLM's encrypted values, opened with its salt key.

The LiteLLM proxy encrypts every string in a stored model's `litellm_params` under a 32-byte key,
the SHA-256 of its salt key (`LITELLM_SALT_KEY`, else its master key). Two formats are in use:
the long-standing one is an XSalsa20-Poly1305 secret box (nonce first), written as URL-safe
base64 (older releases: standard base64); newer releases may instead write `v2:gcm:` followed by
URL-safe base64 of a 12-byte nonce, the AES-256-GCM ciphertext and its tag. Both are opened here
with libsodium (PyNaCl), the same library the secret-box format was written with.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from meterway.errors import MeterwayError

AES_GCM_PREFIX = "v2:gcm:"
_GCM_NONCE = 12


class NotDecryptable(MeterwayError):
    """A value that is not a ciphertext under the given salt key (wrong key, or not encrypted)."""


def _key(salt_key: str) -> bytes:
    return hashlib.sha256(salt_key.encode()).digest()


def _b64(value: str) -> bytes:
    padded = value + "=" * (-len(value) % 4)
    try:
        return base64.urlsafe_b64decode(padded)
    except (binascii.Error, ValueError):
        try:
            return base64.b64decode(padded)
        except (binascii.Error, ValueError):
            raise NotDecryptable("not base64") from None


def decrypt(value: str, salt_key: str) -> str:
    """The plaintext of one stored value, or `NotDecryptable`."""
    import nacl.bindings
    import nacl.exceptions
    import nacl.secret

    try:
        if value.startswith(AES_GCM_PREFIX):
            sealed = _b64(value[len(AES_GCM_PREFIX) :])
            if len(sealed) < _GCM_NONCE + 16:
                raise NotDecryptable("too short for AES-256-GCM")
            plain = nacl.bindings.crypto_aead_aes256gcm_decrypt(
                sealed[_GCM_NONCE:], None, sealed[:_GCM_NONCE], _key(salt_key)
            )
        else:
            sealed = _b64(value)
            if len(sealed) <= nacl.secret.SecretBox.NONCE_SIZE + nacl.secret.SecretBox.MACBYTES - 1:
                raise NotDecryptable("too short for a secret box")
            plain = nacl.secret.SecretBox(_key(salt_key)).decrypt(sealed)
        return plain.decode("utf-8")
    except (nacl.exceptions.CryptoError, UnicodeDecodeError, ValueError) as e:
        raise NotDecryptable(f"cannot decrypt: {e.__class__.__name__}") from None


def encrypt(value: str, salt_key: str) -> str:
    """A value as LiteLLM stores it by default (secret box, URL-safe base64). Used by tests and by
    anyone checking a salt key; the importer itself only decrypts."""
    import nacl.secret

    return base64.urlsafe_b64encode(bytes(nacl.secret.SecretBox(_key(salt_key)).encrypt(value.encode()))).decode()
