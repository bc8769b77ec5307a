"""Runs `meterway serve` as users run it: a real process on a free loopback port, stopped after."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.gateway import free_socket
from tests.support.wait import NeverHappened, eventually


def port() -> int:
    sock = free_socket()
    port: int = sock.getsockname()[1]
    sock.close()
    return port


class Served:
    def __init__(self, proc: subprocess.Popen[str], url: str) -> None:
        self.proc, self.url = proc, url


@contextlib.contextmanager
def _spawned(args: list[str], env: dict[str, str]) -> Iterator[Served]:
    """The process, started and not yet waited for; terminated (killed if it lingers) after."""
    port_ = port()
    scratch = tempfile.mkdtemp(prefix="meterway-serve-")
    env = {"DATABASE_URL": f"sqlite:///{scratch}/meterway.db", **env}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "meterway",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port_),
            *([] if {"METERWAY_LOG_LEVEL", "LITELLM_LOG"} & set(env) else ["--log-level", "warning"]),
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    try:
        yield Served(proc, f"http://127.0.0.1:{port_}")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
        shutil.rmtree(scratch, ignore_errors=True)


def _live(served: Served) -> None:
    proc, url = served.proc, served.url

    def live() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"meterway serve exited: {proc.communicate()[1][-2000:]}")
        return httpx.get(url + "/health/live", timeout=1).status_code == 200

    try:
        eventually(live, 20, "meterway serve answering /health/live", retry_on=(httpx.TransportError,))
    except NeverHappened as e:
        proc.kill()
        raise AssertionError(f"{e}: {proc.communicate()[1][-2000:]}") from None


def serve(args: list[str], env: dict[str, str]) -> Iterator[Served]:
    with _spawned(args, env) as served:
        _live(served)
        yield served


@contextlib.contextmanager
def serving(count: int, args: list[str], env: dict[str, str]) -> Iterator[list[Served]]:
    """`count` processes started together, then each waited for: their start-ups (imports, the
    store opening) overlap instead of adding up."""
    with contextlib.ExitStack() as stack:
        running = [stack.enter_context(_spawned(args, env)) for _ in range(count)]
        for served in running:
            _live(served)
        yield running


def ready(url: str, within_s: float = 20.0) -> dict[str, object]:
    """Readiness waits for the store (opened and migrated beside serving): poll it, bounded."""

    def answer() -> dict[str, object] | None:
        r = httpx.get(url + "/health/ready")
        if r.status_code == 200:
            return r.json()  # type: ignore[no-any-return]
        assert r.status_code == 503 and r.json()["status"] == "starting", r.text
        return None

    return eventually(answer, within_s, f"{url} ready")


@contextlib.contextmanager
def replicas(
    tmp_path: Path, config: Mapping[str, Any], env: Mapping[str, str] | None = None
) -> Iterator[tuple[Served, Served]]:
    """Two `meterway serve` processes on one config file (written to `tmp_path`), both ready: the
    replicas of the tests that need state shared across processes (Redis, PostgreSQL)."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(dict(config)))
    environment = {"METERWAY_CONFIG": str(path), "METERWAY_MASTER_KEY": "", "LITELLM_MASTER_KEY": "", **(env or {})}
    with contextlib.ExitStack() as stack:
        one, two = stack.enter_context(serving(2, [], environment))
        ready(one.url), ready(two.url)
        yield one, two
