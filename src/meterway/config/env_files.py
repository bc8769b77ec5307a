"""`.env` files, read as the LiteLLM proxy's users expect: a deployment moved over keeps its
`.env` (database, master key, `LAGO_*`) and changes nothing.

Two files are read, when they exist: `.env` in the working directory, then the one beside the
config file. A variable already in the environment always wins (the operator's shell, Docker's
`environment:`, a Kubernetes Secret), and of the two files the first to name a variable wins.
The config path may itself come from the first file (`CONFIG_FILE_PATH` in `.env`), as LiteLLM
deployments set it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from dotenv import dotenv_values

from meterway.config.load import config_path_from_env
from meterway.errors import ConfigError

FILE_NAME = ".env"


def env_from_files(config: str | None, cwd: Path, env: Mapping[str, str]) -> tuple[dict[str, str], tuple[Path, ...]]:
    """The variables the `.env` files add to `env` (never one `env` already has), and the files read."""
    added: dict[str, str] = {}
    read: list[Path] = []

    def take(path: Path) -> None:
        if path in read or not path.is_file():
            return
        try:
            values = dotenv_values(path)
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read {path}: {e}") from None
        for name, value in values.items():
            # a bare `NAME` line has no value: it sets nothing, as python-dotenv's own loader does
            if value is not None and name not in env and name not in added:
                added[name] = value
        read.append(path)

    take((cwd / FILE_NAME).resolve())
    path = config or config_path_from_env({**added, **env})
    if path:
        take((cwd / path).resolve().parent / FILE_NAME)
    return added, tuple(read)
