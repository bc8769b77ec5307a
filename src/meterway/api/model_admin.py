"""`/model/new`, `/model/update`, `/model/delete` and `/model/info`, with LiteLLM's paths and
payloads; the work is in `routing.runtime`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meterway.errors import ServiceUnavailable

if TYPE_CHECKING:
    from meterway.admin import Admin
    from meterway.routing.runtime import RuntimeModels


def _models(r: Admin) -> RuntimeModels:
    if r.models is None:
        raise ServiceUnavailable("The model store is still opening.")
    return r.models


async def model_new(r: Admin, body: bytes, query: dict[str, str]) -> Any:
    return await _models(r).add(body)


async def model_update(r: Admin, body: bytes, query: dict[str, str]) -> Any:
    return await _models(r).update(body)


async def model_delete(r: Admin, body: bytes, query: dict[str, str]) -> Any:
    return await _models(r).delete(body)


async def model_info(r: Admin, body: bytes, query: dict[str, str]) -> Any:
    return _models(r).info(query.get("litellm_model_id") or None)


ROUTES = {
    ("POST", "/model/new"): model_new,
    ("POST", "/model/update"): model_update,
    ("POST", "/model/delete"): model_delete,
    ("GET", "/model/info"): model_info,
}
