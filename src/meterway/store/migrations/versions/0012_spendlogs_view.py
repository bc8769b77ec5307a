"""A `"LiteLLM_SpendLogs"` view over the ledger, on PostgreSQL, so that the SQL an operator wrote
against LiteLLM's spend logs runs unchanged (docs/schema.md).

Every column of LiteLLM's table (schema.prisma, model `LiteLLM_SpendLogs`) is there, named as
Prisma names it (quoted mixed case: `"startTime"`, `"user"`), of LiteLLM's type or a wider one:
`spend` is USD as exact `numeric` (the ledger's integer 1e-10 USD times 1e-10; 0 for a row of a
model with no known price, as LiteLLM records it); token counts stay 64-bit (`bigint`, as the
ledger has them: a cast to LiteLLM's `integer` could fail a whole query on one absurd row); times
stay `timestamptz`, so `"startTime" > NOW() - INTERVAL '24 hours'` means the same whatever the
session's time zone and is answered from the ledger's index on `started_at`. A column meterway has
no data for is NULL of LiteLLM's type.

Not on SQLite: the seed reports use NOW() and INTERVAL, which SQLite does not have, and SQLite
checks every view when a table is renamed, so a view over `mw_ledger` would break every later
migration that rebuilds that table (Alembic's batch mode renames a copy into place).

A later migration that changes or drops a ledger column the view reads drops the view first and
creates it again after (PostgreSQL refuses to alter a column a view depends on).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# LiteLLM's call types for the ledger's endpoints (the inverse of `ledger.reported`'s map)
_CALL_TYPE = """CASE l.endpoint
        WHEN 'chat' THEN 'acompletion'
        WHEN 'completions' THEN 'atext_completion'
        WHEN 'embeddings' THEN 'aembedding'
        WHEN 'messages' THEN 'anthropic_messages'
        WHEN 'responses' THEN 'aresponses'
        ELSE l.endpoint END"""


# PostgreSQL's `json` keeps a "\u0000" escape a client sent inside a string, but `jsonb` refuses it,
# so one such row would fail every query reading the column. Where the text holds one (rare),
# the real escapes (after an even run of backslashes) become U+FFFD; every other row is cast as is.
_NUL_ESCAPE = r"'(?<!\\)((?:\\\\)*)\\u0000', '\1\\ufffd', 'g'"


def _jsonb(column: str) -> str:
    return (
        f"CASE WHEN strpos({column}::text, '\\u0000') = 0 THEN {column}::jsonb "
        f"ELSE regexp_replace({column}::text, {_NUL_ESCAPE})::jsonb END"
    )


# The keys the gateway writes into `metadata`, taken out of the client's metadata first and then
# added from the row: a client cannot claim another team, alias, user or customer (by sending
# `user_api_key_team_id`, say) for SQL that groups by them, even where the row has none.
_GATEWAY_KEYS = (
    "user_api_key_alias",
    "user_api_key_user_id",
    "user_api_key_team_id",
    "user_api_key_end_user_id",
    "requester_end_user",
    "source",
    "attempts",
    "flags",
    "error_information",
)
_ATTRIBUTION = ", ".join(f"'{k}'" for k in _GATEWAY_KEYS)


def _view(trim: bool, call_type: str = _CALL_TYPE) -> str:
    # 0.0000000001 has scale 10: the product is exact whatever the cost (division is not)
    usd = "COALESCE(l.cost, 0) * 0.0000000001"
    spend = f"trim_scale({usd})" if trim else usd
    return f"""CREATE VIEW "LiteLLM_SpendLogs" AS
SELECT
    l.request_id::text AS request_id,
    ({call_type})::text AS call_type,
    COALESCE(l.key_id, '')::text AS api_key,
    {spend} AS spend,
    l.total_tokens AS total_tokens,
    l.prompt_tokens AS prompt_tokens,
    l.completion_tokens AS completion_tokens,
    l.started_at AS "startTime",
    l.ended_at AS "endTime",
    round(l.latency_ms)::integer AS request_duration_ms,
    COALESCE(l.started_at + l.ttft_ms * INTERVAL '1 millisecond', l.ended_at) AS "completionStartTime",
    COALESCE(l.upstream_model, l.model_group, '')::text AS model,
    l.deployment_id::text AS model_id,
    l.model_group::text AS model_group,
    NULL::text AS custom_llm_provider,
    NULL::text AS api_base,
    l.user_id::text AS "user",
    (COALESCE({_jsonb("l.metadata")}, '{{}}'::jsonb) - ARRAY[{_ATTRIBUTION}]) || jsonb_strip_nulls(jsonb_build_object(
        'user_api_key_alias', l.key_alias,
        'user_api_key_user_id', l.user_id,
        'user_api_key_team_id', l.team_id,
        'user_api_key_end_user_id', l.customer_id,
        'requester_end_user', l.end_user,
        'source', l.source,
        'attempts', l.attempts,
        'flags', l.flags,
        'error_information', CASE WHEN l.status = 'success' THEN NULL ELSE jsonb_build_object(
            'error_code', l.http_status::text, 'error_class', l.error_type, 'status', l.status) END
    )) AS metadata,
    (CASE WHEN l.cache_hit THEN 'True' ELSE 'False' END)::text AS cache_hit,
    NULL::text AS cache_key,
    COALESCE({_jsonb("l.tags")}, '[]'::jsonb) AS request_tags,
    l.team_id::text AS team_id,
    NULL::text AS organization_id,
    l.customer_id::text AS end_user,
    NULL::text AS requester_ip_address,
    NULL::jsonb AS messages,
    NULL::jsonb AS response,
    NULL::text AS session_id,
    (CASE WHEN l.status = 'success' THEN 'success' ELSE 'failure' END)::text AS status,
    NULL::text AS mcp_namespaced_tool_name,
    NULL::text AS billing_agent_id,
    NULL::text AS agent_id,
    NULL::jsonb AS proxy_server_request,
    l.uid::text AS litellm_call_id,
    l.ended_at AS created_at,
    l.ended_at AS updated_at
FROM mw_ledger AS l"""


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    version = bind.dialect.server_version_info or (0,)
    op.execute(sa.text(_view(trim=version >= (13,))))  # trim_scale: PostgreSQL 13 and newer


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(sa.text('DROP VIEW IF EXISTS "LiteLLM_SpendLogs"'))
