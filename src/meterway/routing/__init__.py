"""Model name -> the deployments serving it -> one pick. Weighted random for now; strategies later."""

from __future__ import annotations

import random

from meterway.config.settings import Deployment
from meterway.errors import ModelNotFound


class Router:
    def __init__(self, deployments: tuple[Deployment, ...], rng: random.Random | None = None) -> None:
        groups: dict[str, list[Deployment]] = {}
        for d in deployments:
            groups.setdefault(d.model_name, []).append(d)
        self._groups = {name: tuple(ds) for name, ds in groups.items()}
        self._weights = {name: [d.weight for d in ds] for name, ds in self._groups.items()}
        self._rng = rng or random.Random()

    @property
    def model_names(self) -> list[str]:
        return list(self._groups)

    def pick(self, model: str) -> Deployment:
        group = self._groups.get(model)
        if group is None:
            raise ModelNotFound(model, self.model_names)
        if len(group) == 1:
            return group[0]
        return self._rng.choices(group, weights=self._weights[model])[0]
