"""The schema, as SQLAlchemy Core tables. Migrations in `store/migrations` create and change it;
this module is what the code reads and writes through, and a test checks the two agree."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    func,
    text,
)

from meterway.ledger.row import UNITS
from meterway.store.types import Money

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _times() -> list[Column[object]]:
    return [
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    ]


def _limits() -> list[Column[object]]:
    """Budget and rate limits, the same on every entity that carries them."""
    return [
        Column("max_budget", Money(), nullable=True),
        Column("budget_duration", String(32), nullable=True),
        Column("budget_reset_at", DateTime(timezone=True), nullable=True),
        Column("spend", Money(), nullable=False, server_default="0"),
        Column("rpm_limit", Integer, nullable=True),
        Column("tpm_limit", Integer, nullable=True),
        Column("max_parallel_requests", Integer, nullable=True),
        Column("soft_budget", Money(), nullable=True),  # added by migration 0011: warn at it, never refuse
    ]


users = Table(
    "mw_users",
    metadata,
    Column("user_id", String(255), primary_key=True),
    Column("user_email", String(320), nullable=True, index=True),
    Column("user_role", String(32), nullable=False, server_default="internal_user"),
    Column("models", JSON, nullable=False, default=list),
    Column("billing_external_customer_id", String(255), nullable=True),
    Column("billing_external_subscription_id", String(255), nullable=True),
    Column("metadata", JSON, nullable=False, default=dict),
    *_limits(),
    *_times(),
)

teams = Table(
    "mw_teams",
    metadata,
    Column("team_id", String(255), primary_key=True),
    Column("team_alias", String(255), nullable=True, index=True),
    Column("models", JSON, nullable=False, default=list),
    Column("blocked", Boolean, nullable=False, server_default="0"),
    Column("billing_external_customer_id", String(255), nullable=True),
    Column("billing_external_subscription_id", String(255), nullable=True),
    Column("metadata", JSON, nullable=False, default=dict),
    *_limits(),
    *_times(),
    # added by migration 0009: the customer every key of the team is charged to, whatever `user` says
    Column("customer_id", String(255), nullable=True, index=True),
)

team_members = Table(
    "mw_team_members",
    metadata,
    Column("team_id", String(255), ForeignKey("mw_teams.team_id", ondelete="CASCADE"), primary_key=True),
    Column("user_id", String(255), primary_key=True),
    Column("role", String(32), nullable=False, server_default="user"),
    *_times(),
)

customers = Table(
    "mw_customers",
    metadata,
    Column("customer_id", String(255), primary_key=True),  # the request's `user` field
    Column("alias", String(255), nullable=True),
    Column("blocked", Boolean, nullable=False, server_default="0"),
    Column("billing_external_customer_id", String(255), nullable=True),
    Column("billing_external_subscription_id", String(255), nullable=True),
    Column("billing_plan_code", String(255), nullable=True),  # the Lago plan `billing setup` subscribes it to
    Column("metadata", JSON, nullable=False, default=dict),
    # added by migration 0011: the models this end user may call (empty: no restriction of its own)
    Column("models", JSON, nullable=False, default=list, server_default="[]"),
    *_limits(),
    *_times(),
)

keys = Table(
    "mw_keys",
    metadata,
    Column("token", String(64), primary_key=True),  # SHA-256 hex digest of the key; the key is never stored
    Column("key_name", String(32), nullable=False),  # "sk-...abcd": enough to recognise, not to use
    Column("key_alias", String(255), nullable=True, index=True),
    Column("models", JSON, nullable=False, default=list),
    Column("expires", DateTime(timezone=True), nullable=True),
    Column("blocked", Boolean, nullable=False, server_default="0"),
    Column("user_id", String(255), nullable=True, index=True),
    Column("team_id", String(255), ForeignKey("mw_teams.team_id", ondelete="SET NULL"), nullable=True, index=True),
    Column("billing_external_customer_id", String(255), nullable=True),
    Column("billing_external_subscription_id", String(255), nullable=True),
    Column("metadata", JSON, nullable=False, default=dict),
    *_limits(),
    *_times(),
    # added by migration 0009: the customer the key is charged to, whatever the request's `user` says
    Column("customer_id", String(255), nullable=True, index=True),
)


def _tokens() -> list[Column[object]]:
    """64-bit: an upstream may report billions of tokens, and a day's sum must hold several such rows."""
    return [
        Column(name, BigInteger, nullable=False, server_default="0")
        for name in (
            "prompt_tokens",  # includes cached and cache-written prompt tokens, as OpenAI counts them
            "completion_tokens",  # includes reasoning tokens
            "cached_tokens",
            "cache_write_tokens",
            "reasoning_tokens",
        )
    ]


def _units() -> list[Column[object]]:
    return [Column(name, BigInteger, nullable=False, server_default="0") for name in UNITS]


def _unit_prices(nullable: bool) -> list[Column[object]]:
    """Per-token prices the row was charged at (money units): NULL in the ledger where unknown,
    -1 in rollups (a column of a unique key cannot be NULL and still match)."""
    return [
        Column(name, BigInteger, nullable=nullable, server_default=None if nullable else "-1")
        for name in ("price_input", "price_output", "price_cache_read", "price_cache_write")
    ]


# One row per model request, written before its response completes (see docs/ledger.md).
ledger = Table(
    "mw_ledger",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("request_id", String(128), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("ended_at", DateTime(timezone=True), nullable=False),
    Column("endpoint", String(16), nullable=False),
    Column("key_id", String(64), nullable=True),  # key digest, "master", or NULL when unauthenticated
    Column("key_alias", String(255), nullable=True),
    Column("user_id", String(255), nullable=True),
    Column("team_id", String(255), nullable=True),
    Column("customer_id", String(255), nullable=True),  # the request's `user`
    Column("model_group", String(255), nullable=True),
    Column("deployment_id", String(255), nullable=True),
    Column("upstream_model", String(255), nullable=True),
    Column("stream", Boolean, nullable=False, server_default="0"),
    *_tokens(),
    Column("total_tokens", BigInteger, nullable=False, server_default="0"),
    Column("tokens_estimated", Boolean, nullable=False, server_default="0"),
    *_unit_prices(nullable=True),
    Column("cost", Money(), nullable=True),  # NULL: the model has no known price (never a silent 0)
    Column("status", String(16), nullable=False),  # success, upstream_error, client_aborted, rejected
    Column("http_status", Integer, nullable=False),
    Column("error_type", String(64), nullable=True),
    Column("latency_ms", Float, nullable=False),
    Column("ttft_ms", Float, nullable=True),
    Column("tags", JSON, nullable=False, default=list),
    Column("metadata", JSON, nullable=False, default=dict),
    Index("ix_mw_ledger_request_id", "request_id"),
    Index("ix_mw_ledger_started_at", "started_at"),
    Index("ix_mw_ledger_customer_id_started_at", "customer_id", "started_at"),
    Index("ix_mw_ledger_key_id_started_at", "key_id", "started_at"),
    Index("ix_mw_ledger_user_id_started_at", "user_id", "started_at"),
    Index("ix_mw_ledger_team_id_started_at", "team_id", "started_at"),
    Index("ix_mw_ledger_model_group_started_at", "model_group", "started_at"),
    # added by migration 0004: unique per row, made when the row is, the base of its Lago transaction ids
    Column("uid", String(32), nullable=True),
    Index("ix_mw_ledger_uid", "uid", unique=True),
    # added by migration 0006: "gateway" (served here) or "webhook" (reported by another proxy)
    Column("source", String(16), nullable=False, server_default="gateway"),
    # partial: only the few rows that did not come through the gateway, to count and re-queue them
    Index(
        "ix_mw_ledger_source",
        "source",
        postgresql_where=text("source <> 'gateway'"),
        sqlite_where=text("source <> 'gateway'"),
    ),
    # added by migration 0007: upstream attempts (retries and fallbacks add to 1; 0 for a cache hit)
    Column("attempts", Integer, nullable=False, server_default="1"),
    # and whether the response cache answered it
    Column("cache_hit", Boolean, nullable=False, server_default="0"),
    # added by migration 0009: what was wrong with the row's input (usage_negative, usage_absurd, cut...), or NULL
    Column("flags", String(128), nullable=True),
    # and the request's `user` when the key is bound to a customer (then `customer_id` is the key's)
    Column("end_user", String(255), nullable=True),
    # added by migration 0013: units beside tokens
    *_units(),
)

# A ledger row the database refused even with its values cut to their columns' bounds (migration
# 0009): kept whole, as JSON, with the database's reason, until it is reprocessed. The ledger's
# writer never retries such a row forever and never lets it block the rows behind it.
ledger_quarantine = Table(
    "mw_ledger_quarantine",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("uid", String(32), nullable=True),
    Column("request_id", String(128), nullable=True),
    Column("reason", Text, nullable=False),
    Column("row", Text, nullable=False),  # the row as JSON
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("reprocessed_at", DateTime(timezone=True), nullable=True),
    Index("ix_mw_ledger_quarantine_created_at", "created_at"),
)

# A ledger row's export to Lago, inserted in the row's own transaction when billing is on, so no
# event can be lost between the ledger and the sender (see docs/billing.md).
billing_outbox = Table(
    "mw_billing_outbox",
    metadata,
    Column("ledger_uid", String(32), primary_key=True),
    Column("status", String(16), nullable=False, server_default="pending"),  # pending, sent, parked
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", DateTime(timezone=True), nullable=True),
    Column("claimed_until", DateTime(timezone=True), nullable=True),  # a sender holds the row until then
    Column("reason", Text, nullable=True),  # why a row is parked, readable
    Column("lago_error", JSON, nullable=True),  # Lago's error body, as it answered
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("sent_at", DateTime(timezone=True), nullable=True),
    Index("ix_mw_billing_outbox_status_next_attempt_at", "status", "next_attempt_at"),
    # claims take the oldest pending rows: in index order, never a sort of the whole backlog
    Index(
        "ix_mw_billing_outbox_pending",
        "created_at",
        postgresql_where=text("status = 'pending'"),
        sqlite_where=text("status = 'pending'"),
    ),
)

# Totals per UTC day and every reporting dimension, kept in the same transaction as the ledger
# rows they sum, so reports over days and months read thousands of rows, not millions.
# Dimensions absent from a row are '' (not NULL), so that the unique key matches them.
usage_daily = Table(
    "mw_usage_daily",
    metadata,
    Column("day", String(10), nullable=False),  # YYYY-MM-DD, UTC
    *(
        Column(name, String(255), nullable=False, server_default="")
        for name in ("customer_id", "key_id", "user_id", "team_id", "model_group")
    ),
    *_unit_prices(nullable=False),
    Column("requests", BigInteger, nullable=False, server_default="0"),
    Column("errors", BigInteger, nullable=False, server_default="0"),
    Column("unpriced", BigInteger, nullable=False, server_default="0"),  # requests with cost NULL
    *_tokens(),
    Column("cost", Money(), nullable=False, server_default="0"),
    *_units(),  # added by migration 0013
    UniqueConstraint(
        "day",
        "customer_id",
        "key_id",
        "user_id",
        "team_id",
        "model_group",
        "price_input",
        "price_output",
        "price_cache_read",
        "price_cache_write",
        name="uq_mw_usage_daily_group",
    ),
    Index("ix_mw_usage_daily_customer_id_day", "customer_id", "day"),
    Index("ix_mw_usage_daily_day_model_group", "day", "model_group"),
)

# Deployments added at runtime (`/model/new`, with STORE_MODEL_IN_DB), added by migration 0008.
# `litellm_params` holds the deployment's parameters, credentials included, as one Fernet token
# (see `meterway.store.models`): nothing in this table can call a provider without the salt key.
models = Table(
    "mw_models",
    metadata,
    Column("model_id", String(255), primary_key=True),
    Column("model_name", String(255), nullable=False, index=True),
    Column("litellm_params", Text, nullable=False),  # encrypted JSON
    Column("model_info", JSON, nullable=False, default=dict),
    *_times(),
)

# Responses API responses (migration 0010), by id: whose they are, which deployment served them (a
# native one is asked again for them), and, for a response bridged to a chat API, the Response
# object and its input items as JSON text (NULL when not stored: `too_large` says why). A row is
# visible only to the key that created it (and the master key); it expires at `expires_at`.
responses = Table(
    "mw_responses",
    metadata,
    Column("response_id", String(128), primary_key=True),
    Column("key_id", String(64), nullable=True),  # key digest or "master"
    Column("team_id", String(255), nullable=True),
    Column("model_group", String(255), nullable=True),
    Column("deployment_id", String(255), nullable=False),
    Column("native", Boolean, nullable=False, server_default="0"),
    Column("status", String(16), nullable=False),  # queued, in_progress, completed, incomplete, failed, cancelled
    Column("body", Text, nullable=True),
    Column("input_items", Text, nullable=True),
    Column("too_large", Boolean, nullable=False, server_default="0"),
    Column("metered", Boolean, nullable=False, server_default="0"),  # its generation's ledger row is written
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Index("ix_mw_responses_expires_at", "expires_at"),
)

# Budget and credit alerts waiting for, or delivered to, their receivers (migration 0015): one row
# per alert and destination; the unique (dedupe, destination) makes each crossing alerted once
# across replicas. Claimed and retried like billing exports; kept after delivery.
alerts = Table(
    "mw_alerts",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    Column("dedupe", String(600), nullable=False),  # scope, entity, period, event, threshold
    Column("destination", String(16), nullable=False),  # webhook, slack
    Column("event", String(64), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("status", String(16), nullable=False, server_default="pending"),  # pending, sent, failed
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", DateTime(timezone=True), nullable=True),
    Column("claimed_until", DateTime(timezone=True), nullable=True),
    Column("claimed_by", String(64), nullable=True),  # the claiming replica's token: only it marks the row
    Column("last_error", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("sent_at", DateTime(timezone=True), nullable=True),
    Index("ix_mw_alerts_dedupe_destination", "dedupe", "destination", unique=True),
    Index("ix_mw_alerts_status_next_attempt_at", "status", "next_attempt_at"),
)

# Prepaid credits (migration 0016): per charged entity, the last reading of its Lago wallets and
# the Lago price of its ledger rows at that reading (money units of the plan's currency).
prepaid_balances = Table(
    "mw_prepaid_balances",
    metadata,
    Column("entity_id", String(255), primary_key=True),
    Column("lago_customer_id", String(255), nullable=True, index=True),
    Column("subscription_id", String(255), nullable=True),
    Column("plan_code", String(255), nullable=True),
    Column("currency", String(8), nullable=True),
    Column("period_start", DateTime(timezone=True), nullable=True),  # the subscription's current billing period
    Column("period_end", DateTime(timezone=True), nullable=True),
    Column("has_wallets", Boolean, nullable=False, server_default=false()),
    Column("balance_units", BigInteger, nullable=False, server_default="0"),  # active wallets' ongoing balance
    Column("lago_usage_units", BigInteger, nullable=False, server_default="0"),  # usage Lago had counted
    Column("priced_units", BigInteger, nullable=False, server_default="0"),  # Lago price of our rows then
    # of which invoiceable pay-in-advance charges, and the part of those Lago had taken from the
    # balance already (the rows it had received): Lago debits such fees at once, not as ongoing usage
    Column("advance_units", BigInteger, nullable=False, server_default="0"),
    Column("advance_paid_units", BigInteger, nullable=False, server_default="0"),
    Column("wallets", JSON, nullable=True),
    Column("reason", String(32), nullable=True),  # what caused the reading: schedule, webhook, first_use...
    Column("read_at", DateTime(timezone=True), nullable=True),  # last successful reading
    Column("attempt_at", DateTime(timezone=True), nullable=True),  # last attempt, successful or not
    Column("error", Text, nullable=True),  # why the last attempt failed, readable
    # a request last asked for it (0017): the schedule stops reading entities idle for long
    Column("last_used_at", DateTime(timezone=True), nullable=True),
)

prepaid_history = Table(
    "mw_prepaid_history",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    Column("entity_id", String(255), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("reason", String(32), nullable=False),
    Column("balance_units", BigInteger, nullable=False),
    Column("lago_usage_units", BigInteger, nullable=False),
    Column("priced_units", BigInteger, nullable=False),
    Column("available_units", BigInteger, nullable=False),
    Index("ix_mw_prepaid_history_entity_id_at", "entity_id", "at"),
)

# Lago webhooks already taken, by Lago's `X-Lago-Unique-Key`: a redelivery changes nothing.
lago_webhooks = Table(
    "mw_lago_webhooks",
    metadata,
    Column("unique_key", String(255), primary_key=True),
    Column("webhook_type", String(100), nullable=False),
    Column("lago_customer_id", String(255), nullable=True),
    Column("received_at", DateTime(timezone=True), nullable=False, index=True),
)
