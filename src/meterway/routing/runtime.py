"""Models managed at runtime (STORE_MODEL_IN_DB): `/model/new`, `/model/update`, `/model/delete`
and `/model/info`, with LiteLLM's paths and payloads.

Stored deployments are resolved exactly as config entries are (`config.load.runtime_deployment`)
and served beside the config file's, which stay read-only. A change is written to the database,
applied here at once, and announced on a Redis channel; every replica also compares the table's
count and newest change every `poll_s` seconds, so a replica that missed the announcement (or runs
without Redis) catches up within a few seconds. A change rebuilds the router's maps whole: a
request in flight keeps the deployment it picked.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

from meterway import bounds
from meterway.bounds import Name
from meterway.config.load import runtime_deployment
from meterway.config.settings import Deployment, Settings
from meterway.errors import BadRequest, ConfigError, ModelNotFound, PermissionDenied
from meterway.providers.google_auth import first_tokens
from meterway.store.models import ModelStore, StoredModel

if TYPE_CHECKING:
    from meterway.api.models import ModelList
    from meterway.ledger.recorder import Ledger
    from meterway.providers.bedrock import AwsCredentials
    from meterway.providers.google_auth import GoogleToken, Refreshers
    from meterway.routing import Router

log = logging.getLogger("meterway.models")

POLL_S = 2.0
_SECRET_WORDS = ("key", "secret", "password", "token", "credential")


class ModelNew(msgspec.Struct):
    model_name: Name
    litellm_params: dict[str, Any]  # this and model_info: checked by bounds.metadata
    model_info: dict[str, Any] | None = None


class ModelUpdate(msgspec.Struct):
    model_info: dict[str, Any]
    model_name: Name | None = None
    litellm_params: dict[str, Any] | None = None


class ModelDelete(msgspec.Struct):
    id: Name


def masked(params: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters as `/model/info` shows them: credentials left out."""
    return {k: v for k, v in params.items() if not any(w in k.lower() for w in _SECRET_WORDS)}


class RuntimeModels:
    def __init__(
        self,
        settings: Settings,
        store: ModelStore | None,
        router: Router,
        listing: ModelList,
        ledger: Ledger,
        redis: Any | None = None,
        channel: str = "meterway:models",
        writable: bool = True,
        refreshers: Refreshers | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.router = router
        self.listing = listing
        self.ledger = ledger
        self._redis = redis
        self._channel = channel
        self._config_ids = {d.id for d in settings.deployments}
        self._stored: dict[str, StoredModel] = {}
        self._version: tuple[int, datetime | None] | None = None
        self.writable = writable and store is not None  # STORE_MODEL_IN_DB: without it, /model/info only
        self.refreshers = refreshers  # keeps the served deployments' expiring credentials fresh (vertex_ai/)

    def _resolve(self, model: StoredModel) -> Deployment:
        entry = {
            "model_name": model.model_name,
            "litellm_params": dict(model.litellm_params),
            "model_info": {**model.model_info, "id": model.model_id},
        }
        return runtime_deployment(entry, self.settings, f"model '{model.model_id}'")

    async def reload(self) -> None:
        """Reads every stored model and serves them with the config file's."""
        version = await self._db.version()
        found, unreadable = await self._db.all()
        for ident in unreadable:
            log.error("stored model %s cannot be decrypted with this salt key; not served", ident)
        deployments: list[Deployment] = []
        stored: dict[str, StoredModel] = {}
        for model in found:
            if model.model_id in self._config_ids:
                continue  # the config file's entry wins
            try:
                deployments.append(self._resolve(model))
            except ConfigError as e:
                log.error("stored model %s is not usable: %s", model.model_id, e.message)
                continue
            stored[model.model_id] = model
        started = self._apply(stored, tuple(deployments))
        self._version = version
        if started:  # a vertex_ai/ model just added: its first token, so its first request finds one
            await first_tokens(started)

    def _apply(
        self, stored: dict[str, StoredModel], deployments: tuple[Deployment, ...]
    ) -> list[GoogleToken | AwsCredentials]:
        """Serves `deployments` beside the config file's; returns the credentials now kept fresh
        that were not before."""
        every = self.settings.deployments + deployments
        started = self.refreshers.serve(d.provider for d in every) if self.refreshers is not None else []
        self.router.replace(every)
        self.listing.rebuild(every)
        self.ledger.forget_prices()
        self._stored = stored
        return started

    async def _changed(self) -> None:
        await self.reload()
        if self._redis is None:
            return
        try:
            await self._redis.publish(self._channel, "changed")
        except Exception as e:  # the others see it at their next poll
            log.warning("could not announce a model change: %s", e.__class__.__name__)

    # ---- the API ---------------------------------------------------------------------------------

    @property
    def _db(self) -> ModelStore:
        if self.store is None:
            raise BadRequest("Models can be stored only with STORE_MODEL_IN_DB=True and a salt key.")
        return self.store

    def _writable(self) -> None:
        if not self.writable:
            raise BadRequest("Models can be added, changed or deleted at runtime only with STORE_MODEL_IN_DB=True.")

    async def add(self, body: bytes) -> dict[str, Any]:
        self._writable()
        request = _decode(body, ModelNew)
        info = dict(request.model_info or {})
        ident = str(info.pop("id", None) or uuid.uuid4())
        if ident in self._config_ids or ident in self._stored:
            raise BadRequest(f"A model with id '{ident}' exists already.", param="model_info.id")
        model = StoredModel(ident, request.model_name, request.litellm_params, info)
        self._check(model)
        await self._db.insert(model)
        await self._changed()
        return self._shown(model)

    async def update(self, body: bytes) -> dict[str, Any]:
        self._writable()
        request = _decode(body, ModelUpdate)
        ident = str(request.model_info.get("id") or "")
        current = self._owned(ident)
        params = {
            **current.litellm_params,
            **{k: v for k, v in (request.litellm_params or {}).items() if v is not None},
        }
        info = {**current.model_info, **{k: v for k, v in request.model_info.items() if k != "id"}}
        model = StoredModel(ident, request.model_name or current.model_name, params, info)
        self._check(model)
        await self._db.update(model)
        await self._changed()
        return self._shown(model)

    async def delete(self, body: bytes) -> dict[str, Any]:
        self._writable()
        ident = _decode(body, ModelDelete).id
        self._owned(ident)
        await self._db.delete(ident)
        await self._changed()
        return {"message": f"Model {ident} deleted.", "id": ident}

    def info(self, model_id: str | None = None) -> dict[str, Any]:
        data = []
        for d in self.router.deployments:
            if model_id is not None and d.id != model_id:
                continue
            stored = self._stored.get(d.id)
            if stored is not None:
                data.append(self._shown(stored))
                continue
            params: dict[str, Any] = {"model": f"{d.family}/{d.upstream_model}"}
            if d.api_base:
                params["api_base"] = d.api_base
            data.append(
                {
                    "model_name": d.model_name,
                    "litellm_params": params,
                    "model_info": {**masked(d.model_info), "id": d.id, "db_model": False},
                }
            )
        return {"data": data}

    def _check(self, model: StoredModel) -> None:
        try:
            self._resolve(model)
        except ConfigError as e:
            raise BadRequest(e.message, param="litellm_params") from None

    def _owned(self, ident: str) -> StoredModel:
        if ident in self._config_ids:
            raise PermissionDenied(f"Model '{ident}' is defined in the config file, which is read-only here.")
        found = self._stored.get(ident)
        if found is None:
            raise ModelNotFound(ident, list(self._stored))
        return found

    @staticmethod
    def _shown(model: StoredModel) -> dict[str, Any]:
        return {
            "model_id": model.model_id,
            "model_name": model.model_name,
            "litellm_params": masked(model.litellm_params),
            "model_info": {**masked(model.model_info), "id": model.model_id, "db_model": True},
        }

    # ---- other replicas' changes -------------------------------------------------------------------

    async def watch(self, poll_s: float = POLL_S) -> None:
        """Runs until cancelled: reloads on another replica's announcement, or when polling sees
        the table change."""
        pubsub = None
        while True:
            try:
                if self._redis is not None and pubsub is None:
                    pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                    await pubsub.subscribe(self._channel)
                if pubsub is not None:
                    message = await pubsub.get_message(timeout=poll_s)
                    if message is not None and message.get("type") == "message":
                        await self.reload()
                        continue
                else:
                    await asyncio.sleep(poll_s)
                if await self._db.version() != self._version:
                    await self.reload()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("could not check for model changes (%s); retrying", e.__class__.__name__)
                if pubsub is not None:
                    await _close(pubsub)
                    pubsub = None
                await asyncio.sleep(poll_s)


async def _close(pubsub: Any) -> None:
    try:
        await pubsub.aclose()
    except Exception:
        log.debug("pubsub close failed", exc_info=True)


def _decode(body: bytes, kind: type[Any]) -> Any:
    """A body checked as every management body is: types, bounds, storable JSON objects."""
    try:
        value = msgspec.json.decode(body or b"{}", type=kind)
    except msgspec.DecodeError as e:
        raise BadRequest(f"Invalid request body: {e}") from None
    except RecursionError:
        raise BadRequest("Request body is nested too deeply.", code="nested_too_deep") from None
    for name in ("litellm_params", "model_info"):
        found = getattr(value, name, None)
        if found is not None:
            bounds.metadata(found, name)
    ident = (getattr(value, "model_info", None) or {}).get("id")
    if ident is not None:
        bounds.text(str(ident), "model_info.id")
    return value
