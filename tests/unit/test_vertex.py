"""Vertex AI's addressing and body rewriting, offline: the URL each model name and location gives,
LiteLLM's forms of `vertex_credentials` and `api_base`, the Claude body Vertex wants, and
`check-config --litellm` on a Vertex entry."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from meterway.config.litellm_check import review
from meterway.errors import ConfigError, UpstreamUnavailable
from meterway.providers.base import Api, Call, RequestHead
from meterway.providers.google_auth import CredentialSource, GoogleToken, credential_source
from meterway.providers.vertex import VertexClaudeProvider, VertexGeminiProvider, build

SA = {
    "type": "service_account",
    "project_id": "from-key",
    "private_key": "-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n",
    "client_email": "x@from-key.iam.gserviceaccount.com",
    "token_uri": "https://oauth2.googleapis.com/token",
}


def _provider(model: str, location: str = "us-central1", api_base: str | None = None) -> object:
    token = GoogleToken(CredentialSource(SA, "test"), "dep")
    return build(
        label="dep", upstream_model=model, api_base=api_base, project="p1", location=location, credentials=token
    )


def test_regional_and_global_hosts_and_publishers_follow_the_model_name() -> None:
    gemini = _provider("gemini-2.5-pro")
    assert isinstance(gemini, VertexGeminiProvider)
    assert str(gemini.urls[Api.CHAT]) == (
        "https://us-central1-aiplatform.googleapis.com/v1/projects/p1/locations/us-central1"
        "/publishers/google/models/gemini-2.5-pro:generateContent"
    )
    assert str(gemini.urls["stream"]).endswith(":streamGenerateContent?alt=sse")
    assert not gemini.supports(Api.EMBEDDINGS)
    claude = _provider("claude-sonnet-4@20250514", location="global")
    assert isinstance(claude, VertexClaudeProvider)
    assert str(claude.urls[Api.MESSAGES]) == (
        "https://aiplatform.googleapis.com/v1/projects/p1/locations/global"
        "/publishers/anthropic/models/claude-sonnet-4@20250514:rawPredict"
    )
    embed = _provider("text-embedding-005")
    assert embed.supports(Api.EMBEDDINGS) and not embed.supports(Api.CHAT)  # type: ignore[attr-defined]


def test_api_base_replaces_the_host_or_is_the_whole_model_address_as_litellm_takes_it() -> None:
    host = _provider("gemini-2.5-pro", api_base="https://proxy.example/")
    assert str(host.urls[Api.CHAT]).startswith("https://proxy.example/v1/projects/p1/")  # type: ignore[attr-defined]
    whole = "https://gw.example/v1/projects/p1/locations/us/publishers/google/models/gemini-2.5-pro"
    full = _provider("gemini-2.5-pro", api_base=whole)
    assert str(full.urls[Api.CHAT]) == whole + ":generateContent"  # type: ignore[attr-defined]


def test_claude_body_has_vertex_anthropic_version_and_no_model() -> None:
    claude = _provider("claude-sonnet-4@20250514")
    assert isinstance(claude, VertexClaudeProvider)
    body = orjson.dumps({"model": "claude", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})
    route, sent = claude.encode(Call(Api.MESSAGES, body, RequestHead("claude"), "r1"))
    assert route is Api.MESSAGES
    assert json.loads(sent) == {
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}],
        "anthropic_version": "vertex-2023-10-16",
    }
    chat = orjson.dumps({"model": "claude", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    route, sent = claude.encode(Call(Api.CHAT, chat, RequestHead("claude", stream=True), "r2"))
    assert route == "stream" and "model" not in json.loads(sent)


def test_without_a_token_a_request_gets_a_named_error_not_a_hang() -> None:
    gemini = _provider("gemini-2.5-pro")
    body = orjson.dumps({"model": "g", "messages": [{"role": "user", "content": "hi"}]})
    with pytest.raises(UpstreamUnavailable, match="no valid Google access token") as caught:
        gemini.build_request(Call(Api.CHAT, body, RequestHead("g"), "r"))  # type: ignore[attr-defined]
    assert caught.value.code == "upstream_credentials"


def test_credentials_as_litellm_users_write_them(tmp_path: Path) -> None:
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(SA))
    assert credential_source(str(path), {}).project == "from-key"
    assert credential_source(json.dumps(SA), {}).where == "the vertex_credentials JSON"
    assert credential_source(None, {"GOOGLE_APPLICATION_CREDENTIALS": str(path)}).where == str(path)
    assert credential_source(None, {}).info is None  # Application Default Credentials, found when refreshed
    with pytest.raises(ConfigError, match="lacks private_key"):
        credential_source(json.dumps({**SA, "private_key": ""}), {})
    with pytest.raises(ConfigError, match="is not JSON"):
        credential_source("{not json", {})


def test_check_config_honours_vertex_params() -> None:
    found = review(
        {
            "model_list": [
                {
                    "model_name": "gemini",
                    "litellm_params": {
                        "model": "vertex_ai/gemini-2.5-pro",
                        "vertex_credentials": "os.environ/VERTEX_SA",
                        "vertex_project": "project-1",
                        "vertex_location": "europe-west4",
                    },
                }
            ]
        }
    )
    verdicts = {f.path: f.verdict for f in found.findings}
    assert verdicts["model_list[0] (gemini)"] == "honoured"
    for key in ("vertex_credentials", "vertex_project", "vertex_location"):
        assert verdicts[f"model_list[0] (gemini).litellm_params.{key}"] == "honoured", key
    assert found.starts
