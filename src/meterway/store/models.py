"""Deployments stored in the database (`/model/new` with STORE_MODEL_IN_DB), their
`litellm_params` (provider, base URL, API key, prices) sealed at rest by `store.sealing`. A
database dump without the salt key reveals model names and ids, never a credential. Changing the
salt key makes stored models unreadable: they are logged and skipped, not served.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from meterway.store.tables import models

if TYPE_CHECKING:
    from meterway.store.sealing import Sealer


@dataclass(frozen=True, slots=True)
class StoredModel:
    model_id: str
    model_name: str
    litellm_params: Mapping[str, Any]
    model_info: Mapping[str, Any] = field(default_factory=dict)
    updated_at: datetime | None = None


class ModelStore:
    def __init__(self, engine: AsyncEngine, sealer: Sealer) -> None:
        self._engine = engine
        self._sealer = sealer

    async def all(self) -> tuple[list[StoredModel], list[str]]:
        """Every stored model, and the ids of those that cannot be unsealed."""
        async with self._engine.connect() as conn:
            rows = (await conn.execute(sa.select(models).order_by(models.c.created_at))).mappings().all()
        from meterway.store.sealing import Unreadable  # loaded already: the sealer came from there

        found: list[StoredModel] = []
        bad: list[str] = []
        for r in rows:
            try:
                params = self._sealer.open(r["litellm_params"])
            except Unreadable:
                bad.append(r["model_id"])
                continue
            found.append(StoredModel(r["model_id"], r["model_name"], params, r["model_info"] or {}, r["updated_at"]))
        return found, bad

    async def version(self) -> tuple[int, datetime | None]:
        """How many models there are and when the newest change was: cheap, for polling."""
        async with self._engine.connect() as conn:
            row = (await conn.execute(sa.select(sa.func.count(), sa.func.max(models.c.updated_at)))).one()
        return int(row[0]), row[1]

    async def insert(self, model: StoredModel) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                models.insert().values(
                    model_id=model.model_id,
                    model_name=model.model_name,
                    litellm_params=self._sealer.seal(model.litellm_params),
                    model_info=dict(model.model_info),
                )
            )

    async def update(self, model: StoredModel) -> bool:
        async with self._engine.begin() as conn:
            result = await conn.execute(
                models.update()
                .where(models.c.model_id == model.model_id)
                .values(
                    model_name=model.model_name,
                    litellm_params=self._sealer.seal(model.litellm_params),
                    model_info=dict(model.model_info),
                    updated_at=datetime.now(UTC),
                )
            )
        return bool(result.rowcount)

    async def delete(self, model_id: str) -> bool:
        async with self._engine.begin() as conn:
            result = await conn.execute(models.delete().where(models.c.model_id == model_id))
        return bool(result.rowcount)
