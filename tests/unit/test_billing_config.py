"""The `billing` section and LiteLLM's LAGO_* variables."""

from __future__ import annotations

import re
from typing import Any

import pytest

from meterway.config.billing import Billing
from meterway.config.load import parse_config
from meterway.errors import ConfigError

MODELS: dict[str, Any] = {"model_list": [{"model_name": "demo", "litellm_params": {"model": "mock/demo"}}]}


def test_without_billing_settings_export_is_off() -> None:
    assert parse_config(MODELS, source=None, env={}).billing is None


def test_litellm_lago_variables_alone_turn_export_on() -> None:
    env = {
        "LAGO_API_BASE": "http://lago.internal:3000/api/v1/",
        "LAGO_API_KEY": "lago-key",
        "LAGO_API_EVENT_CODE": "openai_tokens",
        "LAGO_API_CHARGE_BY": "team_id",
    }
    billing = parse_config(MODELS, source=None, env=env).billing
    assert billing is not None
    assert billing.api_base == "http://lago.internal:3000" and billing.api_key.reveal() == "lago-key"
    assert (billing.event_code, billing.charge_by) == ("openai_tokens", "team")
    assert billing.run_sender and not billing.split_by_token_type
    assert billing.claim_timeout_s == 60.0


def test_the_section_wins_over_the_environment_and_is_checked() -> None:
    config = {
        **MODELS,
        "billing": {
            "api_base": "https://api.getlago.com",
            "api_key": "from-config",
            "charge_by": "end_user_id",
            "split_by_token_type": True,
            "default_external_subscription_id": "sub_default",
            "tags": ["project"],
            "claim_timeout_seconds": 5,
        },
    }
    billing = parse_config(config, source=None, env={"LAGO_API_KEY": "from-env", "LAGO_API_CHARGE_BY": "key"}).billing
    assert billing is not None and billing.api_key.reveal() == "from-config" and billing.charge_by == "customer"
    assert billing.split_by_token_type and billing.default_external_subscription_id == "sub_default"
    assert billing.tags == ("project",) and billing.claim_timeout_s == 5.0


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"api_key": "k"}, "billing.api_base"),
        ({"api_base": "lago:3000", "api_key": "k"}, "http(s) URL"),
        ({"api_base": "http://lago"}, "billing.api_key"),
        ({"api_base": "http://lago", "api_key": "k", "charge_by": "org"}, "charge_by"),
        ({"api_base": "http://lago", "api_key": "k", "colour": "red"}, "billing.colour"),
        ({"api_base": "http://lago", "api_key": "k", "split_by_token_type": "yes"}, "split_by_token_type"),
        ({"api_base": "http://lago", "api_key": "k", "claim_timeout_seconds": 0.5}, "claim_timeout_seconds"),
        ({"api_base": "http://lago", "api_key": "k", "claim_timeout_seconds": "60"}, "claim_timeout_seconds"),
        ({"api_base": "http://lago", "api_key": "k", "claim_timeout_seconds": True}, "claim_timeout_seconds"),
    ],
)
def test_bad_billing_settings_are_refused_naming_the_field(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_config({**MODELS, "billing": section}, source=None, env={})


@pytest.mark.parametrize(
    ("env", "status"),
    [
        ({}, "off: no billing section and no LAGO_API_BASE and LAGO_API_KEY"),
        ({"LAGO_API_KEY": "lago-key"}, "off: LAGO_API_KEY is set but LAGO_API_BASE is not (set it to your Lago URL)"),
        ({"LAGO_API_BASE": "http://lago:3000"}, "off: LAGO_API_BASE is set but LAGO_API_KEY is not"),
        (
            {"LAGO_API_BASE": "http://lago:3000/api/v1", "LAGO_API_KEY": "lago-key"},
            "on, to http://lago:3000 (event code llm_tokens, charged by customer)",
        ),
    ],
)
def test_the_export_status_says_on_and_where_or_why_off(env: dict[str, str], status: str) -> None:
    settings = parse_config(MODELS, source=None, env=env)
    assert settings.billing_export == status and "lago-key" not in status
    half_set = status.startswith("off: LAGO_")
    assert (f"billing export is {status}" in settings.warnings) is half_set


@pytest.mark.parametrize(
    ("properties", "named"),
    [
        (["cost"], "billing.properties must be a mapping"),
        ({"spend": "price"}, "billing.properties.spend: 'price' is not a source"),
        ({"spend": 3}, "billing.properties.spend: 3 is not a source"),
        ({"project": "metadata."}, "billing.properties.project: 'metadata.' is not a source"),
        ({"": "cost"}, "billing.properties: '' is not a property name"),
    ],
)
def test_bad_billing_properties_name_the_key(properties: Any, named: str) -> None:
    config = {**MODELS, "billing": {"api_base": "http://lago", "api_key": "k", "properties": properties}}
    with pytest.raises(ConfigError, match=re.escape(named)):
        parse_config(config, source=None, env={})


def test_billing_properties_rename_add_and_drop() -> None:
    section = {"api_base": "http://lago", "api_key": "k"}
    section["properties"] = {"cost_usd": "cost", "cost": None, "project": "metadata.project", "model": None}
    billing = parse_config({**MODELS, "billing": section}, source=None, env={}).billing
    assert billing is not None
    assert billing.event_properties() == {
        "prompt_tokens": "prompt_tokens",
        "completion_tokens": "completion_tokens",
        "total_tokens": "total_tokens",
        "response_cost": "response_cost",
        "tags": "tags",
        "cost_usd": "cost",
        "project": "metadata.project",
        "queries": "queries",  # units beside tokens: carried only when the request used them
        "images": "images",
        "audio_seconds": "audio_seconds",
        "characters": "characters",
    }


def test_setup_and_check_follow_a_renamed_total_tokens() -> None:
    from meterway.billing.events import tokens_property
    from meterway.billing.setup import summable, wanted_metric

    section = {"api_base": "http://lago", "api_key": "k"}
    section["properties"] = {"tokens_total": "total_tokens", "total_tokens": None, "team": "team"}
    billing = parse_config({**MODELS, "billing": section}, source=None, env={}).billing
    assert billing is not None
    assert wanted_metric(billing, ["demo"])["field_name"] == "tokens_total" == tokens_property(billing)
    carried = summable(billing)
    assert "tokens_total" in carried and "total_tokens" not in carried and "team" not in carried


def _billing(**section: Any) -> Billing:
    config = {**MODELS, "billing": {"api_base": "http://lago", "api_key": "k", **section}}
    billing = parse_config(config, source=None, env={}).billing
    assert billing is not None
    return billing


@pytest.mark.parametrize("source", ["cost", "response_cost", "total_tokens", "cached_tokens", "metadata.units"])
def test_split_events_refuse_a_figure_of_the_whole_row(source: str) -> None:
    """Split by token type, a row is up to five events: a row figure on each would be summed up
    to five times by Lago, so it is refused at load, naming the property and why. What describes
    the row (a team, a key alias) is still on each, and a split metric may sum `tokens` only."""
    from meterway.billing.events import events_for
    from meterway.billing.setup import summable

    with pytest.raises(ConfigError, match=r"billing\.properties\.spend: .*up to five times"):
        _billing(split_by_token_type=True, properties={"team": "team", "spend": source})
    billing = _billing(split_by_token_type=True, properties={"team": "team", "project_name": "key_alias"})
    assert summable(billing) == ("tokens",)
    events = events_for(_row(prompt_tokens=10, completion_tokens=4), "acme", billing)
    assert [e["properties"] for e in events] == [
        {"type": "input", "model": "demo", "tokens": 10, "team": "t1", "project_name": "ops"},
        {"type": "output", "model": "demo", "tokens": 4, "team": "t1", "project_name": "ops"},
    ]


def _row(**given: Any) -> dict[str, Any]:
    from datetime import UTC, datetime

    row: dict[str, Any] = {
        "uid": "u1",
        "ended_at": datetime(2026, 1, 1, tzinfo=UTC),
        "model_group": "demo",
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
        "cached_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "cost": 15_000_000,
        "customer_id": "acme",
        "user_id": None,
        "team_id": "t1",
        "key_alias": "ops",
        "tags": [],
        "deployment_id": "d1",
        "upstream_model": "mock/demo",
        "endpoint": "/v1/chat/completions",
        "request_id": "r1",
        "metadata": {},
    }
    return {**row, **given}


@pytest.mark.parametrize("split", [False, True])
def test_billing_tags_are_serialised_and_never_replace_what_the_event_computed(split: bool) -> None:
    """Request metadata copied by `billing.tags` is a string or a number as `metadata.<key>` is,
    and a client naming its metadata `model`, `total_tokens` or `cost` changes none of them, even
    where the row left one out (an unpriced row has no cost)."""
    from meterway.billing.events import events_for

    billing = _billing(split_by_token_type=split, tags=["project", "model", "total_tokens", "tokens", "cost"])
    metadata = {"project": {"name": "apollo", "ids": [1, 2]}, "model": "free", "total_tokens": 1, "tokens": 1}
    (event, *_) = events_for(_row(metadata={**metadata, "cost": 0}, cost=None), "acme", billing)
    props = event["properties"]
    assert props["project"] == '{"name":"apollo","ids":[1,2]}'
    assert props["model"] == "demo" and "cost" not in props
    assert props["tokens" if split else "total_tokens"] == (10 if split else 15)


def test_each_unit_is_a_lago_property_only_when_used_and_a_split_event_of_its_own() -> None:
    from datetime import UTC, datetime

    from meterway.billing.events import events_for
    from meterway.billing.setup import summable

    row = {
        "uid": "u1",
        "ended_at": datetime(2026, 12, 3, tzinfo=UTC),
        "model_group": "rerank",
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 0,
        "cached_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "cost": 40_000_000,
        "tags": [],
        "metadata": {},
        "queries": 2,
        "images": 0,
        "audio_ms": 1500,
        "characters": 0,
    }
    plain = parse_config({**MODELS, "billing": {"api_base": "http://lago", "api_key": "k"}}, source=None, env={})
    assert plain.billing is not None
    (event,) = events_for(row, "acme", plain.billing)
    assert event["properties"]["queries"] == 2 and event["properties"]["audio_seconds"] == "1.5"
    assert "images" not in event["properties"] and "characters" not in event["properties"]
    assert {"queries", "images", "audio_seconds", "characters"} <= set(summable(plain.billing))
    section = {"api_base": "http://lago", "api_key": "k", "split_by_token_type": True}
    split = parse_config({**MODELS, "billing": section}, source=None, env={}).billing
    assert split is not None
    events = events_for(row, "acme", split)
    assert [(e["transaction_id"], e["properties"]) for e in events] == [
        ("u1:queries", {"type": "queries", "model": "rerank", "queries": 2}),
        ("u1:audio_seconds", {"type": "audio_seconds", "model": "rerank", "audio_seconds": "1.5"}),
    ]
