"""Runs `meterway serve` as users run it: a real process on a free loopback port, stopped after."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.gateway import free_socket


def port() -> int:
    sock = free_socket()
    port: int = sock.getsockname()[1]
    sock.close()
    return port


class Served:
    def __init__(self, proc: subprocess.Popen[str], url: str) -> None:
        self.proc, self.url = proc, url


def serve(args: list[str], env: dict[str, str]) -> Iterator[Served]:
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
    url = f"http://127.0.0.1:{port_}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(url + "/health/live", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"meterway serve did not come up: {proc.communicate()[1][-2000:]}")
            time.sleep(0.05)
        yield Served(proc, url)
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


def ready(url: str, within_s: float = 20.0) -> dict[str, object]:
    """Readiness waits for the store (opened and migrated beside serving): poll it, bounded."""
    deadline = time.monotonic() + within_s
    while True:
        r = httpx.get(url + "/health/ready")
        if r.status_code == 200:
            return r.json()  # type: ignore[no-any-return]
        assert r.status_code == 503 and r.json()["status"] == "starting", r.text
        assert time.monotonic() < deadline, "not ready in time"
        time.sleep(0.05)


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
        one = stack.enter_context(contextlib.contextmanager(serve)([], environment))
        two = stack.enter_context(contextlib.contextmanager(serve)([], environment))
        ready(one.url), ready(two.url)
        yield one, two
