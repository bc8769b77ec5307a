"""What meterway makes of a LiteLLM proxy config, setting by setting: `check-config --litellm`.

A team about to switch wants to know, before it does, which of its settings keep working and which
meterway would ignore, and why. `review` walks the config and gives every setting a verdict; it
reads no environment (a referenced `os.environ/NAME` is reviewed as a reference), and then tries
the real loader (`parse_config`) with placeholders for unset variables, so the last line says
whether `meterway serve` would start with the file as it is.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from meterway.config import litellm_notes as notes
from meterway.config import load
from meterway.config.routing import ROUTER_KEYS
from meterway.errors import ConfigError
from meterway.providers import registry

Verdict = Literal["honoured", "ignored", "refused"]


@dataclass(frozen=True, slots=True)
class Finding:
    path: str  # e.g. general_settings.alerting, model_list[2] (gpt-4o).litellm_params.rpm
    verdict: Verdict  # honoured: acted on; ignored: accepted, no effect; refused: meterway will not start with it
    why: str


@dataclass(frozen=True, slots=True)
class Review:
    findings: tuple[Finding, ...]
    starts: bool  # whether `meterway serve` would start with this config
    problem: str | None  # why not, when it would not

    def count(self, verdict: Verdict) -> int:
        return sum(1 for f in self.findings if f.verdict == verdict)


_PARAM_WHY = {
    "model": "the provider and upstream model",
    "api_base": "the upstream URL",
    "base_url": "the upstream URL",
    "api_key": "the upstream key (printed masked)",
    "api_version": "Azure's api-version",
    "timeout": "the whole call's timeout",
    "stream_timeout": "the wait between stream chunks",
    "rpm": "routing weights, and the limit usage-based routing keeps the deployment under",
    "tpm": "routing weights, and the limit usage-based routing keeps the deployment under",
    "weight": "the deployment's share of picks",
    "extra_headers": "sent upstream",
    "headers": "sent upstream",
    "organization": "sent as OpenAI-Organization",
    "input_cost_per_token": "the price rows are charged at",
    "output_cost_per_token": "the price rows are charged at",
    "cache_read_input_token_cost": "the price rows are charged at",
    "cache_creation_input_token_cost": "the price rows are charged at",
    "input_cost_per_query": "the price of a rerank search unit",
    "output_cost_per_image": "the price of a generated image",
    "input_cost_per_pixel": "an image's price per pixel (where no output_cost_per_image)",
    "output_cost_per_pixel": "an image's price per pixel (where no output_cost_per_image)",
    "input_cost_per_second": "the price of a second of audio",
    "output_cost_per_second": "the price of a second of audio (where no input price is given)",
    "input_cost_per_character": "the price of a speech input character",
    "vertex_credentials": "vertex_ai/: the service account (file or JSON) whose tokens are minted and refreshed",
    "vertex_project": "vertex_ai/: the Google Cloud project in the model's URL",
    "vertex_location": "vertex_ai/: the region in the model's URL and host",
    "vertex_ai_project": "vertex_ai/: the Google Cloud project in the model's URL",
    "vertex_ai_location": "vertex_ai/: the region in the model's URL and host",
}
_QUIET_WHY = {
    "max_retries": "retries are set for the router: router_settings.num_retries",
    "order": "deployments are picked by the routing strategy; no priority order yet",
    "mock_response": "use the built-in mock provider (model: mock/NAME) instead",
    "drop_params": "meterway forwards the body as sent; the upstream decides on unknown parameters",
    "custom_llm_provider": "the provider is read from the model prefix",
}
# AWS Bedrock's settings (providers/bedrock.py), as LiteLLM users write them
_AWS_WHY = {
    "aws_access_key_id": "signs Bedrock requests (SigV4), with aws_secret_access_key",
    "aws_secret_access_key": "signs Bedrock requests (SigV4; printed masked)",
    "aws_session_token": "sent with temporary AWS credentials",
    "aws_region_name": "the Bedrock region: its endpoint and the signature's scope",
    "aws_role_name": "a role assumed through STS (AssumeRole), renewed before it expires",
    "aws_session_name": "the STS session name of the assumed role",
    "aws_profile_name": "a profile of the shared AWS config and credentials files",
    "aws_bedrock_runtime_endpoint": "the Bedrock runtime URL (a VPC endpoint or a proxy)",
    "aws_sts_endpoint": "the STS URL the role is assumed at",
}
_SAMPLING = {"temperature", "max_tokens", "seed", "top_p", "stop", "frequency_penalty", "presence_penalty"}
_GENERAL_WHY = {
    "master_key": "the admin key (LITELLM_MASTER_KEY is read too)",
    "database_url": "meterway's own database (its schema, not LiteLLM's: use `meterway import litellm`)",
    "max_request_size_mb": "bigger bodies get 413",
    "store_model_in_db": "/model/new, /model/update, /model/delete store deployments, credentials encrypted",
    "user_header_name": "the header naming the request's customer (docs/billing.md)",
    "user_header_mappings": "headers of role customer name the request's customer (docs/billing.md)",
    "alerting": "budget alerts to webhook (WEBHOOK_URL) and slack (SLACK_WEBHOOK_URL) (docs/alerts.md)",
    "alerting_args": "budget_alert_thresholds and the alert URLs; LiteLLM's other args are ignored",
}
_LITELLM_WHY = {
    "request_timeout": "the default timeout of every deployment",
    "num_retries": "retries within a model group (router_settings wins)",
    "retry_after": "the first backoff before retrying the same deployment",
    "fallbacks": "other model groups tried in order when one fails",
    "context_window_fallbacks": "model groups tried when the prompt is too long",
    "content_policy_fallbacks": "model groups tried when a content policy refuses",
    "allowed_fails": "failures per minute before a deployment cools down",
    "cooldown_time": "how long a failing deployment is left out",
    "cache": "the response cache (docs/routing.md)",
    "cache_params": "the response cache's type, ttl and namespace",
    "default_tags": "added to every request's tags: on every ledger row and Lago event",
}
_CALLBACK_WHY = {
    "prometheus": "/metrics is always on",
    "otel": "traces go to the OTLP endpoint of the telemetry section",
    "lago": "billing export (the billing section or LAGO_* variables)",
}


def _param_findings(where: str, params: Mapping[str, Any]) -> Iterator[Finding]:
    for key in params:
        path = f"{where}.litellm_params.{key}"
        if key in _PARAM_WHY:
            yield Finding(path, "honoured", _PARAM_WHY[key])
        elif key in _QUIET_WHY:
            yield Finding(path, "ignored", _QUIET_WHY[key])
        elif key in _SAMPLING:
            yield Finding(path, "ignored", "defaults for request parameters are not applied; clients send their own")
        elif key in _AWS_WHY:
            yield Finding(path, "honoured", _AWS_WHY[key])
        elif key.startswith(("aws_", "vertex_")) or key in ("azure_ad_token", "tenant_id", "client_id"):
            yield Finding(path, "ignored", "credentials of a kind meterway does not use; give api_key instead")
        else:
            yield Finding(path, "ignored", "not a parameter meterway acts on")


def _model_findings(index: int, entry: Any) -> Iterator[Finding]:
    if not isinstance(entry, Mapping):
        yield Finding(
            f"model_list[{index}]", "refused", "an entry must be a mapping with model_name and litellm_params"
        )
        return
    name = entry.get("model_name")
    where = f"model_list[{index}] ({name})"
    params = entry.get("litellm_params")
    if not isinstance(params, Mapping) or not isinstance(params.get("model"), str):
        yield Finding(where, "refused", "litellm_params.model is required")
        return
    model = str(params["model"])
    if "*" in model or name == "*":
        yield Finding(where, "refused", "wildcard models are not served: list each model by name")
        return
    try:
        family, upstream = registry.split_model(model)
        api_base = params.get("api_base") or params.get("base_url")
        if isinstance(api_base, str) and not api_base.startswith(("http://", "https://", load.ENV_PREFIX)):
            raise ConfigError(f"api_base must be an http(s) URL, got {api_base!r}")
        if api_base is None and registry.ALIASES[family].api_base is None and family not in ("mock", "bedrock"):
            raise ConfigError(f"provider '{family}' needs api_base (no public default)")
    except ConfigError as e:
        yield Finding(where, "refused", e.message)  # its other settings are moot
        return
    yield Finding(where, "honoured", f"served as {family}/{upstream}")
    yield from _param_findings(where, params)
    info = entry.get("model_info")
    for key in info if isinstance(info, Mapping) else ():
        path = f"{where}.model_info.{key}"
        if key == "id":
            yield Finding(path, "honoured", "names the deployment")
        elif key in _PARAM_WHY and key.endswith(("_per_token", "_token_cost")):
            yield Finding(path, "honoured", "the price rows are charged at")
        else:
            yield Finding(path, "ignored", "descriptive only; returned by /model/info")
    for key in entry:
        if key not in ("model_name", "litellm_params", "model_info"):
            yield Finding(f"{where}.{key}", "ignored", "not read at this level (rpm and tpm belong in litellm_params)")


def review(data: Mapping[str, Any]) -> Review:
    findings: list[Finding] = []
    for key in data:
        if key not in load.TOP_LEVEL:
            findings.append(Finding(str(key), "ignored", "not a section meterway reads"))
    models = data.get("model_list") or []
    for i, entry in enumerate(models if isinstance(models, list) else []):
        findings += _model_findings(i, entry)
    general = data.get("general_settings") or {}
    for key in general if isinstance(general, Mapping) else ():
        path = f"general_settings.{key}"
        if key in load.GENERAL:
            findings.append(Finding(path, "honoured", _GENERAL_WHY.get(key, "meterway's own setting")))
        else:
            findings.append(Finding(path, "ignored", notes.note(path)))
    litellm = data.get("litellm_settings") or {}
    for key in litellm if isinstance(litellm, Mapping) else ():
        path = f"litellm_settings.{key}"
        if key in ("callbacks", "success_callback", "failure_callback"):
            given = litellm[key]
            callbacks = given if isinstance(given, list) else [given] if isinstance(given, str) else []
            for c in callbacks:
                if str(c) in _CALLBACK_WHY:
                    findings.append(Finding(f"{path}: {c}", "honoured", _CALLBACK_WHY[str(c)]))
                else:
                    findings.append(Finding(f"{path}: {c}", "ignored", notes.callback_note(str(c))))
        elif key in _LITELLM_WHY:
            findings.append(Finding(path, "honoured", _LITELLM_WHY[key]))
        else:
            findings.append(Finding(path, "ignored", notes.note(path)))
    router = data.get("router_settings") or {}
    for key in router if isinstance(router, Mapping) else ():
        path = f"router_settings.{key}"
        if str(key).startswith("redis_"):
            findings.append(Finding(path, "ignored", notes.note(path)))
        elif key in ROUTER_KEYS:
            findings.append(Finding(path, "honoured", "routing, retries, fallbacks or cooldowns (docs/routing.md)"))
        else:
            findings.append(Finding(path, "ignored", "not a routing setting meterway acts on"))
    env_vars = data.get("environment_variables") or {}
    for key in env_vars if isinstance(env_vars, Mapping) else ():
        findings.append(Finding(f"environment_variables.{key}", "honoured", "set for the process at start"))
    starts, problem = _loads(data)
    return Review(tuple(findings), starts, problem)


def _references(value: Any) -> Iterator[str]:
    if isinstance(value, str) and value.startswith(load.ENV_PREFIX):
        yield value[len(load.ENV_PREFIX) :]
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _references(v)
    elif isinstance(value, list):
        for v in value:
            yield from _references(v)


# what an unset variable named by vertex_credentials stands for: a service account's shape (its key
# is never used: nothing is fetched while a config is checked)
_PLACEHOLDER_CREDENTIALS = (
    '{"type": "service_account", "project_id": "placeholder", "client_email": "placeholder@placeholder.invalid",'
    ' "private_key": "placeholder", "token_uri": "https://placeholder.invalid/token"}'
)


def _credential_references(data: Mapping[str, Any]) -> Iterator[str]:
    models = data.get("model_list")
    for entry in models if isinstance(models, list) else ():
        params = entry.get("litellm_params") if isinstance(entry, Mapping) else None
        value = params.get("vertex_credentials") if isinstance(params, Mapping) else None
        if isinstance(value, str) and value.startswith(load.ENV_PREFIX):
            yield value[len(load.ENV_PREFIX) :]


def _loads(data: Mapping[str, Any]) -> tuple[bool, str | None]:
    """Whether the real loader takes the file, with a placeholder URL for each unset variable it
    names (so a config from the docs is judged on its shape, not on this machine's environment)."""
    import os

    env = {name: "https://placeholder.invalid" for name in _references(data)}
    env.update(dict.fromkeys(_credential_references(data), _PLACEHOLDER_CREDENTIALS))
    env.update(os.environ)
    env_vars = data.get("environment_variables") or {}
    if isinstance(env_vars, Mapping):
        env.update({str(k): str(v) for k, v in env_vars.items()})
    quiet = {k: v for k, v in data.items() if k != "environment_variables"}  # never set them in this process
    try:
        load.parse_config(quiet, source=None, env=env)
    except ConfigError as e:
        return False, e.message
    return True, None


def render(review_: Review, path: str) -> str:
    lines = [f"LiteLLM config: {path}"]
    width = max((len(f.verdict) for f in review_.findings), default=8)
    lines += [f"{f.verdict:<{width}}  {f.path}: {f.why}" for f in review_.findings]
    lines.append(
        f"{review_.count('honoured')} honoured, {review_.count('ignored')} ignored, {review_.count('refused')} refused"
    )
    lines.append(
        "meterway would start with this config"
        if review_.starts
        else f"meterway would not start with this config: {review_.problem}"
    )
    return "\n".join(lines)
