"""Reported usage checked and mapped offline: the uid of a request id, times, money, format
detection, pricing and the spend a reported row adds; and the webhook secret's configuration."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from meterway.config.load import parse_config
from meterway.errors import BadRequest, ConfigError, Unprocessable
from meterway.ledger import prices
from meterway.ledger.reported import (
    Pricer,
    detect,
    entry_for,
    events_of,
    parse_all,
    parse_event,
    reported_units,
    spend_targets,
    uid_for,
)

NOW = time.time()


def event(**changes: Any) -> dict[str, Any]:
    base = {"request_id": "r-1", "model": "gpt-4o", "tokens_input": 10, "tokens_output": 5, "customer_id": "acme"}
    return {**base, **changes}


def test_a_request_id_gives_the_same_32_character_uid_every_time_and_other_ids_other_uids() -> None:
    assert uid_for("req-abc123") == uid_for("req-abc123")
    assert len(uid_for("req-abc123")) == 32 and uid_for("req-abc123").startswith("wh-")
    assert uid_for("req-abc123") != uid_for("req-abc124")


def test_times_are_read_as_seconds_milliseconds_or_iso_and_a_far_future_one_is_refused() -> None:
    assert parse_event(event(timestamp=1703123456), NOW).ended_at == 1703123456
    assert parse_event(event(timestamp=1703123456789), NOW).ended_at == pytest.approx(1703123456.789)
    iso = parse_event(event(timestamp="2023-12-21T01:50:56Z"), NOW).ended_at
    assert iso == datetime(2023, 12, 21, 1, 50, 56, tzinfo=UTC).timestamp()
    with pytest.raises(Unprocessable, match="timestamp must be a time between 2000 and now"):
        parse_event(event(timestamp=NOW + 7 * 86_400), NOW)


def test_money_may_be_a_decimal_string_and_a_float_is_taken_to_the_nearest_unit() -> None:
    assert parse_event(event(cost_usd="0.5"), NOW).cost_usd == Decimal("0.5")
    assert reported_units(Decimal(repr(0.1 + 0.2))) == 3_000_000_000
    assert reported_units(Decimal(repr(0.000225))) == 2_250_000
    for bad in ("a lot", True, [1], float("nan")):
        with pytest.raises(Unprocessable, match="cost_usd must be a non-negative number"):
            parse_event(event(cost_usd=bad), NOW)
    with pytest.raises(Unprocessable, match="must be in US dollars"):
        parse_event(event(cost_usd=2_000_000), NOW)


def test_each_event_of_a_batch_is_recognised_on_its_own() -> None:
    litellm = {
        "id": "chatcmpl-1",
        "call_type": "acompletion",
        "model": "gpt-4o",
        "prompt_tokens": 3,
        "completion_tokens": 4,
    }
    assert detect(event()) == "usage_event" and detect(litellm) == "litellm"
    both = parse_all([event(), litellm], NOW)
    assert [r.format for r in both] == ["usage_event", "litellm"]
    assert both[1].usage.total_tokens == 7 and both[1].endpoint == "chat"


def test_a_batch_names_the_first_bad_event_by_index_and_counts_the_others() -> None:
    with pytest.raises(Unprocessable) as refused:
        parse_all([event(), event(tokens_input=-1), event(model=None)], NOW)
    assert refused.value.param == "events[1].tokens_input"
    assert "(2 of 3 events are invalid; nothing was stored)" in refused.value.message


def test_bodies_are_one_event_a_list_or_an_events_object() -> None:
    assert events_of({"request_id": "x"}) == ([{"request_id": "x"}], True)
    assert events_of([1, 2]) == ([1, 2], False)
    assert events_of({"events": [1]}) == ([1], False)
    with pytest.raises(BadRequest):
        events_of(42)


def test_a_model_served_here_is_priced_as_its_deployment_else_from_the_bundled_table() -> None:
    settings = parse_config(
        {
            "model_list": [
                {
                    "model_name": "house",
                    "litellm_params": {
                        "model": "openai/x",
                        "api_base": "http://127.0.0.1:1/v1",
                        "api_key": "k",
                        "input_cost_per_token": 0.000003,
                        "output_cost_per_token": 0.000004,
                    },
                }
            ]
        },
        source=None,
        env={},
    )
    pricer = Pricer(settings.deployments, prices.load())
    assert pricer.unit_prices("house", "gpt-4o") == (30_000, 40_000, None, None)
    assert pricer.unit_prices("gpt-4o", "openai/gpt-4o") == (25_000, 100_000, 12_500, None)
    assert pricer.unit_prices("no-such-model", None) is None
    row = entry_for(parse_event(event(model="no-such-model"), NOW), pricer, ()).row
    assert row.cost is None and row.source == "webhook"  # unpriced: NULL, never a silent 0


def test_spend_goes_to_named_entities_that_exist_in_their_current_budget_period() -> None:
    reported = parse_event(event(api_key_hash="k" * 64, metadata={"team_id": "t-1"}), NOW)
    reset = datetime.fromtimestamp(NOW - 10, UTC)  # the stored period has ended
    budgets = {("customer", "acme"): ("30d", reset), ("key", "k" * 64): (None, None)}
    targets = {t.scope: t for t in spend_targets(reported, budgets, NOW)}
    assert set(targets) == {"customer", "key"}  # team t-1 does not exist
    assert targets["key"].period_end is None
    end = targets["customer"].period_end
    assert end is not None and NOW < end <= NOW + 30 * 86_400


def test_the_webhook_secret_comes_from_general_settings_or_the_environment_and_must_be_long() -> None:
    secret = "s" * 20
    assert parse_config({"general_settings": {"webhook_secret": secret}}, source=None, env={}).webhook_secret
    from_env = parse_config({}, source=None, env={"METERWAY_WEBHOOK_SECRET": secret}).webhook_secret
    assert from_env is not None and from_env.reveal() == secret and secret not in repr(from_env)
    assert parse_config({}, source=None, env={}).webhook_secret is None
    with pytest.raises(ConfigError, match="webhook_secret must be a string of at least 16 characters"):
        parse_config({"general_settings": {"webhook_secret": "short"}}, source=None, env={})
