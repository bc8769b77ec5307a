"""`.env` files as a LiteLLM deployment keeps them, and whether billing export is on, through the
real `meterway` command run in a real working directory."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from tests.support.cli import run_meterway
from tests.support.serve import serve

CONFIG = "model_list:\n  - model_name: m\n    litellm_params: {model: openai/m, api_key: os.environ/ENVFILE_TEST_KEY}\n"
# what the environment of the test run might set and the commands below must not see
UNSET = ("METERWAY_CONFIG", "CONFIG_FILE_PATH", "LAGO_API_BASE", "LAGO_API_KEY", "ENVFILE_TEST_KEY")


def _env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k not in UNSET}, **extra}


def _project(tmp_path: Path, dotenv: str) -> tuple[Path, Path]:
    """A config with a `.env` beside it, and an empty directory to run from."""
    conf = tmp_path / "deploy"
    conf.mkdir()
    (conf / "config.yaml").write_text(CONFIG)
    (conf / ".env").write_text(dotenv)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    return conf / "config.yaml", elsewhere


def test_the_env_file_beside_the_config_is_read(tmp_path: Path) -> None:
    config, elsewhere = _project(
        tmp_path,
        "ENVFILE_TEST_KEY=beside-config-0001\n"
        "LAGO_API_BASE=http://lago.example:3000/api/v1\n"
        "LAGO_API_KEY='lago-secret-9999'\n",
    )
    done = run_meterway(["check-config", "--config", str(config)], env=_env(), cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    assert "key bes...0001" in done.stdout, done.stdout
    assert f"env files: {config.parent / '.env'}" in done.stdout
    assert "billing export: on, to http://lago.example:3000 (" in done.stdout
    assert "lago-secret-9999" not in done.stdout + done.stderr


def test_the_env_file_in_the_working_directory_is_read_and_may_name_the_config(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "c.yaml").write_text(CONFIG)
    (tmp_path / ".env").write_text("# as LiteLLM deployments keep it\nCONFIG_FILE_PATH=conf/c.yaml\n")
    (tmp_path / "conf" / ".env").write_text("ENVFILE_TEST_KEY=from-conf-dir-0002\n")
    done = run_meterway(["check-config"], env=_env(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "config: conf/c.yaml" in done.stdout and "key fro...0002" in done.stdout, done.stdout
    assert f"env files: {tmp_path / '.env'}, {tmp_path / 'conf' / '.env'}" in done.stdout


def test_the_working_directory_file_wins_over_the_one_beside_the_config(tmp_path: Path) -> None:
    config, elsewhere = _project(tmp_path, "ENVFILE_TEST_KEY=beside-config-0001\n")
    (elsewhere / ".env").write_text("ENVFILE_TEST_KEY=in-cwd-0003\n")
    done = run_meterway(["check-config", "--config", str(config)], env=_env(), cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    assert "key in-...0003" in done.stdout, done.stdout


def test_a_variable_set_in_the_environment_wins_over_env_files(tmp_path: Path) -> None:
    config, elsewhere = _project(tmp_path, "ENVFILE_TEST_KEY=beside-config-0001\n")
    (elsewhere / ".env").write_text("ENVFILE_TEST_KEY=in-cwd-0003\n")
    done = run_meterway(
        ["check-config", "--config", str(config)], env=_env(ENVFILE_TEST_KEY="from-environment-0004"), cwd=elsewhere
    )
    assert done.returncode == 0, done.stderr
    assert "key fro...0004" in done.stdout, done.stdout


def test_an_unreadable_env_file_is_a_readable_error(tmp_path: Path) -> None:
    config, elsewhere = _project(tmp_path, "")
    (config.parent / ".env").write_bytes(b"ENVFILE_TEST_KEY=\xff\xfe not UTF-8\n")
    done = run_meterway(["check-config", "--config", str(config)], env=_env(), cwd=elsewhere)
    assert done.returncode == 1
    assert f"config error: cannot read {config.parent / '.env'}" in done.stderr and "Traceback" not in done.stderr


def test_without_env_files_nothing_is_read(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG)
    done = run_meterway(["check-config", "--config", str(config)], env=_env(ENVFILE_TEST_KEY="k" * 12), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "env files: (none)" in done.stdout
    assert "billing export: off: no billing section and no LAGO_API_BASE and LAGO_API_KEY" in done.stdout


@pytest.mark.parametrize(
    ("dotenv", "said"),
    [
        ("LAGO_API_KEY=lago-secret-9999\n", "billing export: off: LAGO_API_KEY is set but LAGO_API_BASE is not"),
        (
            "LAGO_API_BASE=http://lago.example:3000\n",
            "billing export: off: LAGO_API_BASE is set but LAGO_API_KEY is not",
        ),
    ],
)
def test_check_config_names_the_missing_lago_variable(tmp_path: Path, dotenv: str, said: str) -> None:
    config, elsewhere = _project(tmp_path, "ENVFILE_TEST_KEY=beside-config-0001\n" + dotenv)
    done = run_meterway(["check-config", "--config", str(config)], env=_env(), cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    assert said in done.stdout, done.stdout
    assert f"warning: billing export is {said.removeprefix('billing export: ')}" in done.stdout
    assert "lago-secret-9999" not in done.stdout + done.stderr


def test_serve_takes_its_master_key_from_the_env_file_and_logs_the_export_status(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "model_list:\n  - model_name: m\n    litellm_params: {model: mock/x}\n"
        "general_settings: {master_key: os.environ/ENVFILE_SERVE_KEY}\n"
    )
    (tmp_path / ".env").write_text("ENVFILE_SERVE_KEY=sk-from-env-file-0005\nLAGO_API_KEY=lago-secret-9999\n")
    for served in serve(["--config", str(config)], {"METERWAY_LOG_LEVEL": "info", "LAGO_API_BASE": ""}):
        r = httpx.get(served.url + "/v1/models", headers={"Authorization": "Bearer sk-from-env-file-0005"})
        assert r.status_code == 200, r.text
        served.proc.terminate()
        _, err = served.proc.communicate(timeout=10)
        assert f"read variables not already set from {tmp_path / '.env'}" in err, err[-2000:]
        assert "billing export: off: LAGO_API_KEY is set but LAGO_API_BASE is not" in err
        assert "lago-secret-9999" not in err
