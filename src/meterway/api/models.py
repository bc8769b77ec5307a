"""`GET /v1/models` and `GET /v1/models/{id}` in OpenAI's list format, built once at startup."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson

from meterway.config.settings import Deployment, Settings

if TYPE_CHECKING:
    from meterway.auth import Principal


class ModelList:
    def __init__(self, settings: Settings) -> None:
        self._created = int(time.time())
        self.rebuild(settings.deployments)

    def rebuild(self, deployments: tuple[Deployment, ...]) -> None:
        """The listing for these deployments (at start, and when models change at runtime)."""
        entries: dict[str, dict[str, Any]] = {}
        for d in deployments:
            entries.setdefault(
                d.model_name, {"id": d.model_name, "object": "model", "created": self._created, "owned_by": d.family}
            )
        self._entries = entries
        self.body = orjson.dumps({"object": "list", "data": list(entries.values())})

    def listing(self, principal: Principal) -> bytes:
        """All models, or those a restricted key may use (built per call: rare, and not on the hot path)."""
        if not principal.models and not principal.team_models:
            return self.body
        visible = set(principal.visible(list(self._entries)))
        return orjson.dumps({"object": "list", "data": [e for n, e in self._entries.items() if n in visible]})

    def one(self, model_id: str) -> bytes | None:
        entry = self._entries.get(model_id)
        return None if entry is None else orjson.dumps(entry)
