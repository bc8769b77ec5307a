"""A key's digest is what authentication compares; a digest given where a key is expected is
hashed like any guess, and taken as it is only where a management call names a key."""

from __future__ import annotations

import hashlib

from meterway.auth.keys import digest, new_key, reference


def test_digest_hashes_whatever_it_is_given_even_a_digest() -> None:
    key = new_key()
    stored = hashlib.sha256(key.encode()).hexdigest()
    assert digest(key) == digest(key.encode()) == stored
    assert digest(stored) != stored
    assert digest(b"\xff\xfe not utf-8") == hashlib.sha256(b"\xff\xfe not utf-8").hexdigest()


def test_reference_takes_a_lowercase_digest_as_it_is_and_hashes_anything_else() -> None:
    key = new_key()
    stored = digest(key)
    assert reference(stored) == stored
    assert reference(key) == stored
    assert reference(stored.upper()) == digest(stored.upper())
    assert reference(stored[:-1]) == digest(stored[:-1])
