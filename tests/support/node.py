"""npm clients (the Vercel AI SDK) driven from pytest: `npm ci` in tests/node once per session, then one
node process per scenario script, which prints one JSON line of what the SDK saw.

The install follows the admin UI's assets (setup.py, METERWAY_REQUIRE_UI_ASSETS): where node or the npm
registry is missing, a laptop skips with the reason, and CI (`CI=true`) fails instead, so a broken
install can never pass as green."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

NODE_DIR = Path(__file__).resolve().parent.parent / "node"
INSTALL_TIMEOUT_S = 300
SCENARIO_TIMEOUT_S = 60


def _unavailable(reason: str) -> None:
    stop = pytest.fail if os.environ.get("CI") == "true" else pytest.skip
    stop(reason)


@dataclass(frozen=True)
class NodeClients:
    """The installed tests/node package; `run` starts one scenario script."""

    node: str

    def run(self, script: str, **arguments: Any) -> dict[str, Any]:
        """Runs `tests/node/<script>` with `arguments` as its JSON argument and returns what it printed.
        A script that failed prints `{"error": ...}` and exits 1: returned as it is, so a test can
        assert on the SDK's error, and shows it when it did not expect one."""
        done = subprocess.run(
            [self.node, str(NODE_DIR / script), json.dumps(arguments)],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=SCENARIO_TIMEOUT_S,
            check=False,
        )
        lines = done.stdout.strip().splitlines()
        assert lines, f"{script} printed nothing (exit {done.returncode}): {done.stderr[-2000:]}"
        out: dict[str, Any] = json.loads(lines[-1])
        assert (done.returncode == 0) == ("error" not in out), f"{script} exit {done.returncode}: {out}"
        return out


def install_node_clients() -> NodeClients:
    """`npm ci` from the lockfile (integrity-checked); `--prefer-offline` takes what npm's cache
    already holds instead of asking the registry again (6 s instead of 8 here)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _unavailable("node and npm are not installed (Node 20 or later)")
        raise AssertionError("unreachable")
    try:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--prefer-offline", "--loglevel=error"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        _unavailable(f"npm ci in {NODE_DIR} did not finish in {INSTALL_TIMEOUT_S} s")
        raise AssertionError("unreachable") from None
    if done.returncode != 0:
        _unavailable(f"npm ci in {NODE_DIR} failed: {done.stderr[-2000:]}")
    return NodeClients(node)


@pytest.fixture(scope="session")
def node_clients() -> NodeClients:
    """tests/node installed from its lockfile, once per session."""
    return install_node_clients()
