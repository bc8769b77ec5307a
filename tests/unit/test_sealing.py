"""Stored models' parameters are sealed under the salt key: readable with it, not without."""

from __future__ import annotations

import pytest

import meterway.config  # noqa: F401  # first: config imports the provider registry, not the reverse
from meterway.config.secret import Secret
from meterway.store.sealing import Sealer, Unreadable


def test_sealed_parameters_open_only_with_the_same_salt_key() -> None:
    params = {"model": "openai/gpt-4o", "api_key": "sk-secret-value"}
    token = Sealer(Secret("salt-one")).seal(params)
    assert "sk-secret-value" not in token and "gpt-4o" not in token
    assert Sealer(Secret("salt-one")).open(token) == params
    with pytest.raises(Unreadable):
        Sealer(Secret("salt-two")).open(token)
