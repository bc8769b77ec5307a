"""A LiteLLM proxy's PostgreSQL database, read and never written.

Everything is read inside one read-only, repeatable-read transaction, so keys, teams and spend
logs come from one consistent snapshot while the LiteLLM proxy keeps serving. Only columns that
exist are selected (older LiteLLM releases lack some, e.g. `status` on spend logs; a missing one
reads as NULL), so one importer reads the schemas of many releases. Spend logs are read in pages
ordered by (startTime, request_id), the order of LiteLLM's own index, so memory stays bounded
however long the history is.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # ships no type information
import orjson
from sqlalchemy.engine import URL

from meterway.errors import MeterwayError
from meterway.ledger.reported import UNIT_CALL_TYPES
from meterway.store.url import parse, redact, where

SourceRow = Mapping[str, Any]

# The columns read from each table (LiteLLM's names); absent ones read as NULL.
COLUMNS: Mapping[str, tuple[str, ...]] = {
    "LiteLLM_BudgetTable": (
        "budget_id",
        "max_budget",
        "soft_budget",
        "max_parallel_requests",
        "tpm_limit",
        "rpm_limit",
        "budget_duration",
        "budget_reset_at",
    ),
    "LiteLLM_OrganizationTable": ("organization_id", "organization_alias", "budget_id", "metadata", "models"),
    "LiteLLM_TeamTable": (
        "team_id",
        "team_alias",
        "organization_id",
        "admins",
        "members",
        "members_with_roles",
        "metadata",
        "max_budget",
        "soft_budget",
        "spend",
        "models",
        "max_parallel_requests",
        "tpm_limit",
        "rpm_limit",
        "budget_duration",
        "budget_reset_at",
        "blocked",
    ),
    "LiteLLM_UserTable": (
        "user_id",
        "user_alias",
        "teams",
        "user_role",
        "max_budget",
        "spend",
        "user_email",
        "models",
        "metadata",
        "max_parallel_requests",
        "tpm_limit",
        "rpm_limit",
        "budget_duration",
        "budget_reset_at",
        "organization_id",
    ),
    "LiteLLM_TeamMembership": ("user_id", "team_id", "budget_id"),
    "LiteLLM_VerificationToken": (
        "token",
        "key_name",
        "key_alias",
        "spend",
        "expires",
        "models",
        "user_id",
        "team_id",
        "max_parallel_requests",
        "metadata",
        "blocked",
        "tpm_limit",
        "rpm_limit",
        "max_budget",
        "budget_duration",
        "budget_reset_at",
        "budget_id",
        "organization_id",
    ),
    "LiteLLM_EndUserTable": (
        "user_id",
        "alias",
        "spend",
        "allowed_model_region",
        "default_model",
        "models",
        "budget_id",
        "blocked",
    ),
    "LiteLLM_ProxyModelTable": ("model_id", "model_name", "litellm_params", "model_info", "blocked"),
    "LiteLLM_SpendLogs": (
        "request_id",
        "call_type",
        "api_key",
        "spend",
        "total_tokens",
        "prompt_tokens",
        "completion_tokens",
        "startTime",
        "endTime",
        "completionStartTime",
        "model",
        "model_id",
        "model_group",
        "custom_llm_provider",
        "user",
        "metadata",
        "cache_hit",
        "request_tags",
        "team_id",
        "end_user",
        "status",
        "response",
        "messages",
    ),
}
# Columns read only for the call types with units and only when small: what a request's units are
# read from (an image answer's `data`, a transcription's `duration`, a speech's input), stored by
# LiteLLM only with `store_prompts_in_spend_logs`; a chat's prompts are never pulled in, and a
# larger one (base64 images) is read as NULL, its units unknown.
_SMALL_ONLY = frozenset({"response", "messages"})
SMALL_BYTES = 65_536
_UNIT_CALLS = ", ".join(f"'{c}'" for c in UNIT_CALL_TYPES)
# Tables without which there is nothing to import; the others may be absent (older releases).
REQUIRED = ("LiteLLM_VerificationToken",)
SPEND_LOGS = "LiteLLM_SpendLogs"


class SourceUnreadable(MeterwayError):
    """The LiteLLM database cannot be reached or is not one (the message says which, without password)."""


def _decoded(value: Any) -> Any:
    """asyncpg hands JSON columns over as text."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


class LiteLLMSource:
    """An open, read-only snapshot of one LiteLLM database."""

    def __init__(self, conn: asyncpg.Connection, present: Mapping[str, frozenset[str]], shown: str) -> None:
        self._conn = conn
        self._present = present
        self.shown = shown  # host:port/database, for messages

    def has(self, table: str) -> bool:
        return table in self._present

    def _select(self, table: str) -> str:
        have = self._present[table]
        parts = [_column(c, have) for c in COLUMNS[table]]
        return f'SELECT {", ".join(parts)} FROM "{table}"'

    async def _fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        try:
            records = await self._conn.fetch(sql, *args)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            raise SourceUnreadable(f"reading the LiteLLM database at {self.shown} failed: {e}") from None
        return [{k: _decoded(v) for k, v in r.items()} for r in records]

    async def rows(self, table: str) -> list[dict[str, Any]]:
        """Every row of a small table (keys, users, teams, ...); none when the table is absent."""
        if table not in self._present:
            return []
        return await self._fetch(self._select(table))

    async def count_spend_logs(self, since: datetime | None) -> int:
        """How many spend logs an import from `since` on reads (for its progress and ETA)."""
        if SPEND_LOGS not in self._present:
            return 0
        if since is None:
            rows = await self._fetch(f'SELECT count(*) AS n FROM "{SPEND_LOGS}"')
        else:
            rows = await self._fetch(f'SELECT count(*) AS n FROM "{SPEND_LOGS}" WHERE "startTime" >= $1', since)
        return int(rows[0]["n"])

    async def spend_logs(
        self, since: datetime | None, page: int = 1000
    ) -> AsyncGenerator[Sequence[dict[str, Any]], None]:
        """Spend logs from `since` (naive UTC, as LiteLLM stores times) on, a page at a time."""
        if SPEND_LOGS not in self._present:
            return
        base = self._select(SPEND_LOGS)
        after: tuple[datetime, str] | None = None
        while True:
            conditions: list[str] = []
            args: list[Any] = []
            if since is not None:
                args.append(since)
                conditions.append(f'"startTime" >= ${len(args)}')
            if after is not None:
                args += list(after)
                conditions.append(f'("startTime", request_id) > (${len(args) - 1}, ${len(args)})')
            sql = base + (" WHERE " + " AND ".join(conditions) if conditions else "")
            sql += f' ORDER BY "startTime", request_id LIMIT {int(page)}'
            records = await self._fetch(sql, *args)
            if not records:
                return
            yield records
            last = records[-1]
            after = (last["startTime"], last["request_id"])


def _column(name: str, have: frozenset[str]) -> str:
    """One column of a SELECT: NULL where the table lacks it; `_SMALL_ONLY` ones bounded."""
    if name not in have or (name in _SMALL_ONLY and "call_type" not in have):
        return f'NULL AS "{name}"'
    if name in _SMALL_ONLY:
        small = f'call_type IN ({_UNIT_CALLS}) AND octet_length("{name}"::text) <= {SMALL_BYTES}'
        return f'CASE WHEN {small} THEN "{name}" END AS "{name}"'
    return f'"{name}"'


def _connect_args(url: URL) -> dict[str, Any]:
    return {
        "host": url.host,
        "port": url.port or 5432,
        "user": url.username,
        "password": url.password,
        "database": url.database,
    }


@asynccontextmanager
async def open_source(url: str, timeout_s: float = 10.0) -> AsyncIterator[LiteLLMSource]:
    """The database at `url` (postgresql://…), opened read-only as one snapshot."""
    parsed = parse(url)
    if not parsed.drivername.startswith("postgresql"):
        raise SourceUnreadable(f"--from must be the LiteLLM proxy's PostgreSQL database, not {redact(url)}")
    shown = f"{where(parsed)}/{parsed.database}"
    try:
        conn = await asyncpg.connect(**_connect_args(parsed), timeout=timeout_s)
    except (OSError, TimeoutError, asyncpg.PostgresError) as e:
        raise SourceUnreadable(f"cannot connect to the LiteLLM database at {shown}: {e}") from None
    try:
        # one snapshot for the whole import; read-only, so nothing can be written by mistake
        snapshot = conn.transaction(isolation="repeatable_read", readonly=True)
        await snapshot.start()
        source = LiteLLMSource(conn, {}, shown)
        present: dict[str, set[str]] = {}
        for r in await source._fetch(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = ANY($1::text[])",
            list(COLUMNS),
        ):
            present.setdefault(r["table_name"], set()).add(r["column_name"])
        missing = [t for t in REQUIRED if t not in present]
        if missing:
            raise SourceUnreadable(
                f"{shown} has no table {', '.join(missing)}: is it the LiteLLM proxy's database "
                "(DATABASE_URL of the proxy), and has the proxy created its schema?"
            )
        yield LiteLLMSource(conn, {t: frozenset(c) for t, c in present.items()}, shown)
    finally:
        await conn.close()  # ends the read-only transaction with it
