"""Deployments stored in the database (`/model/new` with STORE_MODEL_IN_DB), their parameters
encrypted at rest.

`litellm_params` (the provider, base URL, API key, prices) is sealed as one Fernet token
(AES-128-CBC with an HMAC-SHA256, from `cryptography`) under a key derived with HKDF-SHA256 from
the salt key (METERWAY_SALT_KEY, else LITELLM_SALT_KEY). A database dump without the salt key
reveals model names and ids, never a credential. Changing the salt key makes stored models
unreadable: they are logged and skipped, not served.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy.ext.asyncio import AsyncEngine

from meterway.config.secret import Secret
from meterway.store.tables import models


class Unreadable(Exception):
    """A stored model sealed under another salt key (or damaged)."""


class Sealer:
    def __init__(self, salt_key: Secret) -> None:
        kdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"meterway/models", info=b"litellm_params")
        self._fernet = Fernet(base64.urlsafe_b64encode(kdf.derive(salt_key.reveal().encode())))

    def seal(self, params: Mapping[str, Any]) -> str:
        return self._fernet.encrypt(orjson.dumps(params)).decode()

    def open(self, token: str) -> dict[str, Any]:
        try:
            value = orjson.loads(self._fernet.decrypt(token.encode()))
        except (InvalidToken, orjson.JSONDecodeError):
            raise Unreadable("sealed under another salt key") from None
        if not isinstance(value, dict):
            raise Unreadable("not a mapping")
        return value


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
