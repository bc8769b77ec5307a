"""Users, teams (with members) and customers: one small repository over their tables.

The three share their shape (an id, a few fields, budget and limit columns, JSON lists and
maps), so one class serves them, told which table and id column it works on.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from meterway.config.durations import parse_duration
from meterway.store.tables import customers, team_members, teams, users

Row = dict[str, Any]


def _plain_keys(row: sa.Row[Any]) -> Row:
    # Column names come back as `quoted_name`, a str subclass that JSON encoders refuse.
    return {str(k): v for k, v in row._mapping.items()}


def start_budget_period(values: dict[str, Any]) -> dict[str, Any]:
    """A budget duration set (anew) starts its first period now: `budget_reset_at` is its end."""
    duration = values.get("budget_duration")
    if duration:
        values = {**values, "budget_reset_at": datetime.now(UTC) + parse_duration(duration, "budget_duration")}
    return values


class EntityStore:
    def __init__(self, engine: AsyncEngine, table: sa.Table, id_column: str) -> None:
        self._engine = engine
        self.table = table
        self.id = table.c[id_column]
        self.fields = {c.name for c in table.c} - {id_column, "created_at", "updated_at", "spend", "budget_reset_at"}

    def _check(self, values: dict[str, Any]) -> None:
        unknown = set(values) - self.fields
        if unknown:
            raise TypeError(f"unknown {self.table.name} fields: {sorted(unknown)}")

    async def create(self, entity_id: str, **values: Any) -> Row:
        self._check(values)
        row = {"metadata": {}, **start_budget_period(values), self.id.name: entity_id}
        if "models" in self.fields:
            row.setdefault("models", [])
        async with self._engine.begin() as conn:
            await conn.execute(self.table.insert().values(**row))
        found = await self.get(entity_id)
        assert found is not None
        return found

    async def get(self, entity_id: str) -> Row | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(self.table.select().where(self.id == entity_id))).first()
        return None if row is None else _plain_keys(row)

    async def update(self, entity_id: str, **values: Any) -> Row | None:
        self._check(values)
        values = start_budget_period(values)
        async with self._engine.begin() as conn:
            done = await conn.execute(
                self.table.update().where(self.id == entity_id).values(**values, updated_at=sa.func.now())
            )
        return await self.get(entity_id) if done.rowcount else None

    async def delete(self, entity_id: str) -> bool:
        async with self._engine.begin() as conn:
            done = await conn.execute(self.table.delete().where(self.id == entity_id))
        return bool(done.rowcount)

    async def list(self, *, limit: int = 100, offset: int = 0) -> Sequence[Row]:
        query = self.table.select().order_by(self.table.c.created_at, self.id).limit(limit).offset(offset)
        async with self._engine.connect() as conn:
            return [_plain_keys(r) for r in await conn.execute(query)]


class TeamStore(EntityStore):
    async def bound_to(self, customer_id: str, limit: int = 5) -> Sequence[str]:
        """Ids of (at most `limit`) teams bound to the customer."""
        query = sa.select(teams.c.team_id).where(teams.c.customer_id == customer_id).order_by(teams.c.team_id)
        async with self._engine.connect() as conn:
            return [str(r[0]) for r in await conn.execute(query.limit(limit))]

    async def members(self, team_id: str) -> list[Row]:
        query = team_members.select().where(team_members.c.team_id == team_id).order_by(team_members.c.user_id)
        async with self._engine.connect() as conn:
            return [{"user_id": r.user_id, "role": r.role} for r in await conn.execute(query)]

    async def add_members(self, team_id: str, members: list[tuple[str, str]]) -> None:
        async with self._engine.begin() as conn:
            for user_id, role in members:
                exists = await conn.execute(
                    team_members.select().where(team_members.c.team_id == team_id, team_members.c.user_id == user_id)
                )
                if exists.first() is None:
                    await conn.execute(team_members.insert().values(team_id=team_id, user_id=user_id, role=role))
                else:
                    await conn.execute(
                        team_members.update()
                        .where(team_members.c.team_id == team_id, team_members.c.user_id == user_id)
                        .values(role=role, updated_at=sa.func.now())
                    )

    async def remove_member(self, team_id: str, user_id: str) -> bool:
        async with self._engine.begin() as conn:
            done = await conn.execute(
                team_members.delete().where(team_members.c.team_id == team_id, team_members.c.user_id == user_id)
            )
        return bool(done.rowcount)


def user_store(engine: AsyncEngine) -> EntityStore:
    return EntityStore(engine, users, "user_id")


def team_store(engine: AsyncEngine) -> TeamStore:
    return TeamStore(engine, teams, "team_id")


def customer_store(engine: AsyncEngine) -> EntityStore:
    return EntityStore(engine, customers, "customer_id")
