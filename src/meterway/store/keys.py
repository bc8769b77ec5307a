"""Virtual keys in the database, by digest. The key itself never reaches this module's callers'
storage: `create` takes the key, stores its digest and forgets it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from meterway.auth.keys import digest, display_name, reference
from meterway.store.entities import start_budget_period
from meterway.store.tables import keys, users


@dataclass(frozen=True, slots=True)
class KeyRecord:
    token: str  # the digest
    key_name: str
    key_alias: str | None = None
    models: tuple[str, ...] = ()
    expires: datetime | None = None
    blocked: bool = False
    user_id: str | None = None
    team_id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    max_budget: Decimal | None = None
    soft_budget: Decimal | None = None  # a spend to warn at, never to refuse at (no alerts yet)
    budget_duration: str | None = None
    budget_reset_at: datetime | None = None
    spend: Decimal = Decimal(0)
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    max_parallel_requests: int | None = None
    billing_external_customer_id: str | None = None  # Lago's ids when charging by key; else the digest
    billing_external_subscription_id: str | None = None
    customer_id: str | None = None  # the customer its requests are charged to, whatever their `user` says
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def expired(self, now: datetime | None = None) -> bool:
        if self.expires is None:
            return False
        expires = self.expires if self.expires.tzinfo else self.expires.replace(tzinfo=UTC)
        return expires <= (now or datetime.now(UTC))


FIELDS = (  # what a key's create and update may set
    "key_alias",
    "models",
    "expires",
    "blocked",
    "user_id",
    "team_id",
    "metadata",
    "max_budget",
    "soft_budget",
    "budget_duration",
    "rpm_limit",
    "tpm_limit",
    "max_parallel_requests",
    "billing_external_customer_id",
    "billing_external_subscription_id",
    "customer_id",
)


def _record(row: sa.Row[Any]) -> KeyRecord:
    m = row._mapping
    return KeyRecord(
        token=m["token"],
        key_name=m["key_name"],
        key_alias=m["key_alias"],
        models=tuple(m["models"] or ()),
        expires=m["expires"],
        blocked=bool(m["blocked"]),
        user_id=m["user_id"],
        team_id=m["team_id"],
        metadata=dict(m["metadata"] or {}),
        max_budget=m["max_budget"],
        soft_budget=m["soft_budget"],
        budget_duration=m["budget_duration"],
        budget_reset_at=m["budget_reset_at"],
        spend=m["spend"] if m["spend"] is not None else Decimal(0),
        rpm_limit=m["rpm_limit"],
        tpm_limit=m["tpm_limit"],
        max_parallel_requests=m["max_parallel_requests"],
        billing_external_customer_id=m["billing_external_customer_id"],
        billing_external_subscription_id=m["billing_external_subscription_id"],
        customer_id=m["customer_id"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
    )


async def _make_user(conn: AsyncConnection, user_id: str, role: str) -> bool:
    """The user, of this role and nothing else, unless it exists; whether it was made. A user made
    by a concurrent call in between is left as it is (`ON CONFLICT DO NOTHING`)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    insert = dialect.insert(users).values(user_id=user_id, user_role=role, models=[], metadata={})
    done = await conn.execute(insert.on_conflict_do_nothing(index_elements=[users.c.user_id]))
    return bool(done.rowcount)


class KeyStore:
    fields = FIELDS  # what `create` and `update` take: handlers read it here, not by importing the store

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(self, key: str, **values: Any) -> KeyRecord:
        record, _ = await self.create_with_user(key, None, **values)
        return record

    async def create_with_user(self, key: str, user_role: str | None, **values: Any) -> tuple[KeyRecord, bool]:
        """The key, and (given a role) its `user_id` as a user of that role if none exists, in one
        transaction: a key refused (a duplicate, an unknown team) leaves no user behind. Says
        whether the user was made here."""
        unknown = set(values) - set(FIELDS)
        if unknown:
            raise TypeError(f"unknown key fields: {sorted(unknown)}")
        made = False
        row = {
            "models": [],
            "metadata": {},
            **start_budget_period(values),
            "token": digest(key),
            "key_name": display_name(key),
        }
        if "models" in values:
            row["models"] = list(values["models"])
        user_id = values.get("user_id")
        async with self._engine.begin() as conn:
            if user_role is not None and user_id is not None:
                made = await _make_user(conn, user_id, user_role)
            await conn.execute(keys.insert().values(**row))
        found = await self.get(row["token"])
        assert found is not None
        return found, made

    async def get(self, key_or_digest: str) -> KeyRecord | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(keys.select().where(keys.c.token == reference(key_or_digest)))).first()
        return None if row is None else _record(row)

    async def with_alias(self, alias: str, limit: int = 100) -> Sequence[str]:
        """Digests of (at most `limit`) keys with this alias: aliases are not unique, as in LiteLLM."""
        query = sa.select(keys.c.token).where(keys.c.key_alias == alias).order_by(keys.c.token).limit(limit)
        async with self._engine.connect() as conn:
            return [str(r[0]) for r in await conn.execute(query)]

    async def list(
        self, *, user_id: str | None = None, team_id: str | None = None, limit: int = 100, offset: int = 0
    ) -> Sequence[KeyRecord]:
        query = keys.select().order_by(keys.c.created_at, keys.c.token).limit(limit).offset(offset)
        if user_id is not None:
            query = query.where(keys.c.user_id == user_id)
        if team_id is not None:
            query = query.where(keys.c.team_id == team_id)
        async with self._engine.connect() as conn:
            return [_record(row) for row in await conn.execute(query)]

    async def count(self, *, user_id: str | None = None, team_id: str | None = None) -> int:
        query = sa.select(sa.func.count()).select_from(keys)
        if user_id is not None:
            query = query.where(keys.c.user_id == user_id)
        if team_id is not None:
            query = query.where(keys.c.team_id == team_id)
        async with self._engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def bound_to(self, customer_id: str, limit: int = 5) -> Sequence[str]:
        """Digests of (at most `limit`) keys bound to the customer."""
        query = sa.select(keys.c.token).where(keys.c.customer_id == customer_id).order_by(keys.c.token)
        async with self._engine.connect() as conn:
            return [str(r[0]) for r in await conn.execute(query.limit(limit))]

    async def update(self, key_or_digest: str, **values: Any) -> KeyRecord | None:
        record, _ = await self.update_with_user(key_or_digest, None, **values)
        return record

    async def update_with_user(
        self, key_or_digest: str, user_role: str | None, **values: Any
    ) -> tuple[KeyRecord | None, bool]:
        """As `create_with_user`: a `user_id` set here that names no user becomes one (given a
        role), in the update's transaction, and only if the key exists."""
        unknown = set(values) - set(FIELDS)
        if unknown:
            raise TypeError(f"unknown key fields: {sorted(unknown)}")
        token = reference(key_or_digest)
        if "models" in values:
            values["models"] = list(values["models"])
        values = start_budget_period(values)
        made = False
        user_id = values.get("user_id")
        async with self._engine.begin() as conn:
            done = await conn.execute(
                keys.update().where(keys.c.token == token).values(**values, updated_at=sa.func.now())
            )
            if done.rowcount and user_role is not None and user_id is not None:
                made = await _make_user(conn, user_id, user_role)
        return (await self.get(token) if done.rowcount else None), made

    async def delete(self, key_or_digest: str) -> bool:
        async with self._engine.begin() as conn:
            done = await conn.execute(keys.delete().where(keys.c.token == reference(key_or_digest)))
        return bool(done.rowcount)
