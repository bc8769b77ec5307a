"""LiteLLM's rows in meterway's terms, offline: what is carried over as it is, what is changed
(with a note) and what is refused (with the reason a dry run prints); and LiteLLM's encryption."""

from __future__ import annotations

import base64
import hashlib
import os
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from meterway.importer import mapping
from meterway.importer.crypto import NotDecryptable, decrypt, encrypt
from meterway.importer.mapping import Mapped, Skipped
from meterway.ledger.reported import uid_for

DIGEST = hashlib.sha256(b"sk-live-1").hexdigest()
SALT = "salt-key-under-test"


def _key(**fields: Any) -> dict[str, Any]:
    return {"token": DIGEST, "key_name": "sk-...ve-1", "spend": 0.0, **fields}


def test_a_key_keeps_its_digest_spend_limits_and_models() -> None:
    got = mapping.key(
        _key(spend=0.1 + 0.2, max_budget=5.0, rpm_limit=60, models=["gpt-4o", "all-proxy-models"], team_id="t"),
        {},
        {"t"},
    )
    assert isinstance(got, Mapped)
    assert got.values["token"] == DIGEST
    assert got.values["spend"] == Decimal("0.30000000000000004")  # what LiteLLM's float column held
    assert got.values["max_budget"] == Decimal("5.0") and got.values["rpm_limit"] == 60
    assert got.values["models"] == ["gpt-4o", "all-proxy-models"] and got.values["team_id"] == "t"
    assert got.notes == ()


def test_a_token_that_is_not_a_digest_is_refused_with_the_reason() -> None:
    got = mapping.key(_key(token="sk-plain-text-key"), {}, set())
    assert isinstance(got, Skipped) and "SHA-256" in got.reason


def test_a_key_takes_budget_and_limits_from_its_budget_row_where_it_sets_none() -> None:
    budget = {"budget_id": "b", "max_budget": 9.5, "tpm_limit": 1000, "budget_duration": "1mo", "budget_reset_at": None}
    got = mapping.key(_key(budget_id="b", tpm_limit=None, max_budget=None), {"b": budget}, set())
    assert isinstance(got, Mapped)
    assert got.values["max_budget"] == Decimal("9.5") and got.values["tpm_limit"] == 1000
    assert got.values["budget_duration"] == "1mo" and got.values["budget_reset_at"] > datetime.now(UTC)


def test_out_of_range_limits_unknown_teams_and_durations_are_changed_with_a_note() -> None:
    got = mapping.key(_key(tpm_limit=10**12, team_id="gone", budget_duration="weekly"), {}, set())
    assert isinstance(got, Mapped)
    assert got.values["tpm_limit"] == 2**31 - 1 and got.values["team_id"] is None
    assert got.values["budget_duration"] is None
    assert len(got.notes) == 3


def test_members_come_from_every_place_litellm_keeps_them_and_admin_wins() -> None:
    teams = [{"team_id": "t", "members_with_roles": [{"user_id": "a", "role": "user"}], "admins": ["a"], "members": []}]
    users = [{"user_id": "b", "teams": ["t", "unknown-team"]}]
    memberships = [{"team_id": "t", "user_id": "c"}]
    assert mapping.members(teams, users, memberships, {"t"}) == [
        ("t", "a", "admin"),
        ("t", "b", "user"),
        ("t", "c", "user"),
    ]


def _log(**fields: Any) -> dict[str, Any]:
    start = datetime(2026, 11, 1, 12, 0, 0)
    return {
        "request_id": "chatcmpl-1",
        "call_type": "acompletion",
        "api_key": DIGEST,
        "spend": 0.000225,
        "prompt_tokens": 10,
        "completion_tokens": 20,
        "total_tokens": 30,
        "startTime": start,
        "endTime": start.replace(second=2),
        "completionStartTime": start.replace(second=1),
        "model": "gpt-4o-mini",
        "model_group": "mini",
        "user": "",
        "end_user": "cust",
        "status": "success",
        "metadata": {},
        "request_tags": ["a"],
        **fields,
    }


def test_a_spend_log_becomes_an_imported_row_with_the_webhook_uid_and_no_spend() -> None:
    got = mapping.spend_log(_log(), {DIGEST: "alias"})
    assert not isinstance(got, Skipped)
    row = got.row
    assert row.uid == uid_for("chatcmpl-1") and row.source == "imported"
    assert row.endpoint == "chat" and row.model_group == "mini" and row.upstream_model == "gpt-4o-mini"
    assert row.key_alias == "alias" and row.user_id is None and row.customer_id == "cust"
    assert row.started_at.tzinfo is UTC and row.latency_ms == 2000 and row.ttft_ms == 1000
    assert got.cost_units == 2_250_000 and got.spend == ()


def test_a_failed_spend_log_keeps_the_upstream_status() -> None:
    got = mapping.spend_log(
        _log(status="failure", metadata={"error_information": {"error_code": "429", "error_class": "RateLimitError"}}),
        {},
    )
    assert not isinstance(got, Skipped)
    assert (got.row.status, got.row.http_status, got.row.error_type) == (
        "upstream_error",
        429,
        "RateLimitError",
    )


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"model": "", "model_group": ""}, "no model"),
        ({"spend": -1.0}, "not an amount"),
        ({"request_id": "x" * 200}, "longer"),
    ],
)
def test_unmappable_spend_logs_say_why(fields: dict[str, Any], reason: str) -> None:
    got = mapping.spend_log(_log(**fields), {})
    assert isinstance(got, Skipped) and reason in got.reason


def test_values_encrypted_by_litellm_decrypt_with_its_salt_key_only() -> None:
    from litellm.proxy.common_utils.encrypt_decrypt_utils import encrypt_value

    stored = base64.urlsafe_b64encode(encrypt_value("sk-upstream", SALT)).decode()
    assert decrypt(stored, SALT) == "sk-upstream"
    assert decrypt(encrypt("x", SALT), SALT) == "x"
    with pytest.raises(NotDecryptable):
        decrypt(stored, "another-key")
    with pytest.raises(NotDecryptable):
        decrypt("not a ciphertext", SALT)


def test_aes_gcm_values_of_newer_litellm_releases_decrypt() -> None:
    import nacl.bindings

    key = hashlib.sha256(SALT.encode()).digest()
    nonce = os.urandom(12)
    sealed = nonce + nacl.bindings.crypto_aead_aes256gcm_encrypt(b"sk-upstream", None, nonce, key)
    assert decrypt("v2:gcm:" + base64.urlsafe_b64encode(sealed).decode(), SALT) == "sk-upstream"


def test_all_team_models_leaves_the_key_to_its_teams_list() -> None:
    alone = mapping.key(_key(models=["all-team-models"], team_id="t"), {}, {"t"})
    mixed = mapping.key(_key(models=["all-team-models", "gpt-4o"], team_id="t"), {}, {"t"})
    assert isinstance(alone, Mapped) and alone.values["models"] == [] and alone.notes == ()
    assert isinstance(mixed, Mapped) and mixed.values["models"] == ["gpt-4o"] and len(mixed.notes) == 1


def test_an_end_user_keeps_its_model_list_and_its_budget_rows_soft_budget() -> None:
    budget = {"budget_id": "b", "max_budget": 10.0, "soft_budget": 7.5}
    got = mapping.customer({"user_id": "end-1", "models": ["a", "b"], "budget_id": "b"}, {"b": budget})
    assert isinstance(got, Mapped)
    assert got.values["models"] == ["a", "b"]
    assert got.values["soft_budget"] == Decimal("7.5") and got.values["max_budget"] == Decimal("10.0")
    bare = mapping.customer({"user_id": "end-2", "models": None}, {})
    assert isinstance(bare, Mapped) and bare.values["models"] == [] and bare.values["soft_budget"] is None


def test_soft_budgets_of_keys_and_teams_are_carried_and_a_negative_one_noted() -> None:
    got = mapping.key(_key(budget_id="b"), {"b": {"budget_id": "b", "soft_budget": 2.0}}, set())
    assert isinstance(got, Mapped) and got.values["soft_budget"] == Decimal("2.0")
    team = mapping.team({"team_id": "t", "soft_budget": -1.0}, {})
    assert isinstance(team, Mapped) and team.values["soft_budget"] is None
    assert team.notes == ("soft_budget -1.0 is negative; imported without it",)


def test_a_spend_logs_spend_logs_metadata_is_kept_within_the_metadata_bounds() -> None:
    kept = mapping.spend_log(_log(metadata={"spend_logs_metadata": {"job": "nightly", "n": 3}}), {})
    assert not isinstance(kept, Skipped)
    assert kept.row.metadata["spend_logs_metadata"] == {"job": "nightly", "n": 3}
    huge = mapping.spend_log(_log(metadata={"spend_logs_metadata": {"blob": "x" * 20_000}}), {})
    assert not isinstance(huge, Skipped)  # the row is imported; only what is out of bounds is left out
    assert "spend_logs_metadata" not in huge.row.metadata
    assert "larger than" in huge.row.metadata["litellm"]["spend_logs_metadata_dropped"]
