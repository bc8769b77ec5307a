"""The README's quick start, run as a reader runs it: the SDK snippets read the printed key from
the environment (a literal `sk-...` answers 401) and the install line installs what they import."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support.gateway import run_gateway

README = Path(__file__).resolve().parents[2] / "README.md"
_DEMO = {"model_list": [{"model_name": "demo", "litellm_params": {"model": "mock/demo"}}]}


def _quick_start() -> str:
    text = README.read_text()
    return text[text.index("## Quick start") : text.index("\n## ", text.index("## Quick start") + 1)]


def _blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


def _imported(source: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_install_line_installs_every_sdk_the_snippets_import() -> None:
    section = _quick_start()
    snippets = _blocks(section, "python")
    assert len(snippets) >= 2, "the quick start shows the openai and anthropic SDKs"
    installs = [line for block in _blocks(section, "sh") for line in block.splitlines() if "pip install" in line]
    installed = {word for line in installs for word in line.split()[line.split().index("install") + 1 :]}
    third_party = {name for s in snippets for name in _imported(s)} - set(sys.stdlib_module_names)
    assert third_party and third_party <= installed, (third_party, installs)
    assert "sk-..." not in "".join(snippets), "a literal key in a snippet answers 401"
    assert "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/meterway serve" in section


def test_the_quick_start_snippets_run_with_the_key_from_the_environment(tmp_path: Path) -> None:
    snippets = _blocks(_quick_start(), "python")
    with run_gateway(_DEMO) as gw:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_"))}
        exported = [line for block in _blocks(_quick_start(), "sh") for line in block.splitlines() if "export" in line]
        variable = exported[0].split()[1].split("=")[0]
        env[variable] = gw.key
        for n, snippet in enumerate(snippets):
            script = tmp_path / f"snippet{n}.py"
            script.write_text(snippet.replace("http://localhost:4000", gw.url))
            done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, f"snippet {n}:\n{snippet}\n{done.stderr}"
            assert done.stdout.strip(), f"snippet {n} printed nothing"
