"""Reads LiteLLM's config format into frozen Settings, so users copy their config over.

Everything is resolved here, once: `os.environ/NAME` references, provider prefixes and their
default base URLs and keys, timeouts, prices as Decimals, the provider object of each deployment.
The request path then reads attributes, never the YAML. A bad config fails here, before serving,
with a message that names the entry and the field; a known setting we do not act on yet gives one
warning and is ignored, so a real LiteLLM config still starts.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import yaml

from meterway import bounds
from meterway.cache import CacheSettings
from meterway.config.alerting import parse_alerting
from meterway.config.billing import export_status, parse_billing
from meterway.config.litellm_notes import callback_ignored, ignored
from meterway.config.routing import ROUTER_KEYS, parse_routing
from meterway.config.secret import Secret
from meterway.config.settings import (
    DEFAULT_DATABASE_URL,
    DEFAULT_MAX_AUDIO_BYTES,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_IMAGE_UPLOAD_BYTES,
    DEFAULT_MAX_UPSTREAM_BODY_BYTES,
    DEFAULT_MAX_UPSTREAM_EVENT_BYTES,
    DEFAULT_TIMEOUT_S,
    Deployment,
    Prices,
    Settings,
)
from meterway.config.telemetry import parse_telemetry
from meterway.errors import ConfigError
from meterway.ledger import prices
from meterway.providers import bedrock, google_auth, registry, vertex
from meterway.providers.base import Provider

ENV_PREFIX = "os.environ/"

TOP_LEVEL = {
    "billing",
    "telemetry",
    "model_list",
    "general_settings",
    "litellm_settings",
    "router_settings",
    "environment_variables",
    "include",
}

# Keys of litellm_params acted on. Others are reported once as ignored.
PARAMS = {
    "model",
    "api_base",
    "base_url",
    "api_key",
    "api_version",
    "timeout",
    "stream_timeout",
    "rpm",
    "tpm",
    "weight",
    "extra_headers",
    "headers",
    "organization",
    "input_cost_per_token",
    "output_cost_per_token",
    "cache_read_input_token_cost",
    "cache_creation_input_token_cost",
    # vertex_ai/ (LiteLLM's names; vertex_ai_* are its older spellings)
    "vertex_credentials",
    "vertex_project",
    "vertex_location",
    "vertex_ai_project",
    "vertex_ai_location",
    *bedrock.PARAMS,
}
# Keys of litellm_params that only matter to later features (routing, retries): no warning needed.
PARAMS_QUIET = {"max_retries", "order", "mock_response", "drop_params", "custom_llm_provider"}
GENERAL = {
    "master_key",
    "max_request_size_mb",
    "database_url",
    "redis_url",
    "redis_prefix",
    "budget_clamp_max_tokens",
    "budget_default_output_tokens",
    "lease_ttl_seconds",
    "ledger_queue_size",
    "webhook_secret",
    "store_model_in_db",
    "require_customer_binding",
    "max_upstream_event_bytes",
    "max_upstream_body_bytes",
    "max_audio_bytes",
    "max_image_upload_bytes",
    "responses_ttl_days",
    "responses_background_max",
    "user_header_name",
    "user_header_mappings",
    "alerting",
    "alerting_args",
}
# LiteLLM reads these headers for the end user whatever the config says (its STANDARD_CUSTOMER_ID_HEADERS)
STANDARD_CUSTOMER_HEADERS = ("x-litellm-customer-id", "x-litellm-end-user-id")
# Routing keys LiteLLM also reads from litellm_settings (its docs show both); router_settings wins.
LITELLM_ROUTING = {
    "num_retries",
    "retry_after",
    "fallbacks",
    "context_window_fallbacks",
    "content_policy_fallbacks",
    "allowed_fails",
    "cooldown_time",
}
LITELLM = {
    "request_timeout",
    "callbacks",
    "success_callback",
    "failure_callback",
    "cache",
    "cache_params",
    "default_tags",
    *LITELLM_ROUTING,
}
CACHE_PARAMS = {"type", "ttl", "namespace", "host", "port", "password", "hit_cost_ratio"}
# LiteLLM callbacks meterway covers itself: otel (traces), prometheus (/metrics is always on),
# lago (the billing section, or the LAGO_* variables)
CALLBACKS = {"otel", "prometheus", "lago"}


def config_path_from_env(env: Mapping[str, str] = os.environ) -> str | None:
    """`METERWAY_CONFIG`, else `CONFIG_FILE_PATH` as LiteLLM deployments set it."""
    return env.get("METERWAY_CONFIG") or env.get("CONFIG_FILE_PATH") or None


def master_key_from_env(env: Mapping[str, str] = os.environ) -> Secret | None:
    value = env.get("METERWAY_MASTER_KEY") or env.get("LITELLM_MASTER_KEY")
    return Secret(value) if value else None


def generate_master_key() -> str:
    return "sk-" + secrets.token_urlsafe(32)


def demo_settings(master_key: Secret | None = None) -> Settings:
    """No config at all: one model `demo` on the built-in mock provider, so a fresh install answers."""
    data = {"model_list": [{"model_name": "demo", "litellm_params": {"model": "mock/demo"}}]}
    key = master_key or master_key_from_env() or Secret(generate_master_key())
    return parse_config(data, source=None, master_key=key, demo=True)


def load_settings(path: str | os.PathLike[str]) -> Settings:
    data = read_yaml(Path(path))
    return parse_config(data, source=str(path))


def read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping (model_list, general_settings, ...)")
    for include in _as_list(data.pop("include", None) or [], "include"):
        if not isinstance(include, str):
            raise ConfigError(f"{path}: include entries must be file names")
        child = (path.parent / include).resolve()
        if child in seen:
            raise ConfigError(f"{path}: include loop through {child}")
        extra = read_yaml(child, (*seen, path.resolve()))
        for key, value in extra.items():
            if key == "model_list":
                data["model_list"] = _as_list(data.get("model_list") or [], "model_list") + _as_list(value, key)
            else:
                data.setdefault(key, value)
    return data


def _as_list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(f"{where} must be a list")
    return value


def resolve_env(value: Any, where: str, env: Mapping[str, str]) -> Any:
    """Replaces every `os.environ/NAME` string; a missing variable is an error naming it."""
    if isinstance(value, str) and value.startswith(ENV_PREFIX):
        name = value[len(ENV_PREFIX) :]
        if name not in env:
            raise ConfigError(f"{where}: environment variable {name} is not set")
        return env[name]
    if isinstance(value, dict):
        return {k: resolve_env(v, f"{where}.{k}", env) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_env(v, f"{where}[{i}]", env) for i, v in enumerate(value)]
    return value


def parse_config(
    data: Mapping[str, Any],
    *,
    source: str | None,
    master_key: Secret | None = None,
    demo: bool = False,
    env: Mapping[str, str] | None = None,
) -> Settings:
    env = os.environ if env is None else env
    warnings: list[str] = []
    for key in data:
        if key not in TOP_LEVEL:
            warnings.append(f"{key}: not a setting meterway knows; ignored")

    env_vars = data.get("environment_variables") or {}
    if not isinstance(env_vars, dict):
        raise ConfigError("environment_variables must be a mapping of NAME: value")
    if env_vars:
        # LiteLLM sets these for the process; so do we, before anything reads the environment.
        env = {**env, **{str(k): str(v) for k, v in env_vars.items()}}
        for k, v in env_vars.items():
            os.environ[str(k)] = str(v)

    general = _section(data, "general_settings", env)
    litellm_settings = _section(data, "litellm_settings", env)
    router = _section(data, "router_settings", env)
    warnings += [ignored(f"general_settings.{k}") for k in general if k not in GENERAL]
    warnings += [ignored(f"litellm_settings.{k}") for k in litellm_settings if k not in LITELLM]
    warnings += [ignored(f"router_settings.{k}") for k in router if k not in ROUTER_KEYS]

    default_timeout = DEFAULT_TIMEOUT_S
    if "request_timeout" in litellm_settings:
        default_timeout = _positive(litellm_settings["request_timeout"], "litellm_settings.request_timeout")
    elif "timeout" in router:
        default_timeout = _positive(router["timeout"], "router_settings.timeout")
    default_stream_timeout = (
        _positive(router["stream_timeout"], "router_settings.stream_timeout") if "stream_timeout" in router else None
    )

    raw_list = data.get("model_list")
    if raw_list is None:
        raw_list = []
    if not isinstance(raw_list, list):
        raise ConfigError("model_list must be a list of {model_name, litellm_params} entries")
    deployments: list[Deployment] = []
    ids: set[str] = set()
    per_group: dict[str, int] = {}
    table = prices.load()
    unpriced: list[str] = []
    for i, entry in enumerate(raw_list):
        dep = _deployment(entry, i, env, default_timeout, default_stream_timeout, per_group, warnings)
        if dep.id in ids:
            raise ConfigError(f"model_list[{i}]: model_info.id '{dep.id}' is used by another entry")
        dep = _priced(dep, table)
        if not prices.is_priced(dep.prices):
            unpriced.append(dep.id)
            warnings.append(
                f"model_list[{i}] ({dep.id}, {dep.upstream_model}): no known price; its requests are recorded "
                "with cost NULL until model_info sets input_cost_per_token and output_cost_per_token"
            )
        ids.add(dep.id)
        deployments.append(dep)

    master = master_key
    if master is None and general.get("master_key") is not None:
        mk = general["master_key"]
        if not isinstance(mk, str) or not mk:
            raise ConfigError("general_settings.master_key must be a non-empty string")
        master = Secret(mk)
    if master is None:
        master = master_key_from_env(env)

    max_body = DEFAULT_MAX_BODY_BYTES
    if "max_request_size_mb" in general:
        max_body = int(_positive(general["max_request_size_mb"], "general_settings.max_request_size_mb") * 1024 * 1024)

    database_url = (
        general.get("database_url") or env.get("DATABASE_URL") or _database_from_parts(env) or DEFAULT_DATABASE_URL
    )
    if not isinstance(database_url, str):
        raise ConfigError("general_settings.database_url must be a string")

    redis_url = general.get("redis_url") or env.get("REDIS_URL") or _redis_from_parts(env)
    if redis_url is not None and not isinstance(redis_url, str):
        raise ConfigError("general_settings.redis_url must be a string")

    cache, cache_redis = _cache(litellm_settings, warnings)
    redis_url = redis_url or cache_redis
    if cache is not None and cache.type == "redis" and not redis_url:
        raise ConfigError(
            "litellm_settings.cache_params.type is redis, but no Redis is configured "
            "(general_settings.redis_url, REDIS_URL, or cache_params.host)"
        )

    redis_prefix = general.get("redis_prefix", "meterway:")
    if not isinstance(redis_prefix, str):
        raise ConfigError("general_settings.redis_prefix must be a string")
    clamp = general.get("budget_clamp_max_tokens", False)
    if not isinstance(clamp, bool):
        raise ConfigError("general_settings.budget_clamp_max_tokens must be true or false")
    output_tokens = general.get("budget_default_output_tokens", 4096)
    if not isinstance(output_tokens, int) or isinstance(output_tokens, bool) or output_tokens < 0:
        raise ConfigError("general_settings.budget_default_output_tokens must be a whole number of tokens, 0 or more")
    require_binding = general.get("require_customer_binding", False)
    if not isinstance(require_binding, bool):
        raise ConfigError("general_settings.require_customer_binding must be true or false")
    lease_ttl = float(_positive(general.get("lease_ttl_seconds", 660), "general_settings.lease_ttl_seconds"))
    queue = general.get("ledger_queue_size", 10_000)
    if not isinstance(queue, int) or isinstance(queue, bool) or queue < 1:
        raise ConfigError("general_settings.ledger_queue_size must be a whole number, 1 or more")

    event_bytes = _byte_bound(
        general, env, "max_upstream_event_bytes", "METERWAY_MAX_UPSTREAM_EVENT_BYTES", DEFAULT_MAX_UPSTREAM_EVENT_BYTES
    )
    body_bytes = _byte_bound(
        general, env, "max_upstream_body_bytes", "METERWAY_MAX_UPSTREAM_BODY_BYTES", DEFAULT_MAX_UPSTREAM_BODY_BYTES
    )
    audio_bytes = _byte_bound(general, env, "max_audio_bytes", "METERWAY_MAX_AUDIO_BYTES", DEFAULT_MAX_AUDIO_BYTES)
    image_upload_bytes = _byte_bound(
        general, env, "max_image_upload_bytes", "METERWAY_MAX_IMAGE_UPLOAD_BYTES", DEFAULT_MAX_IMAGE_UPLOAD_BYTES
    )

    ttl_days = general.get("responses_ttl_days")
    responses_ttl_days = (
        _positive(ttl_days, "general_settings.responses_ttl_days")
        if ttl_days is not None
        else _env_number(env, "METERWAY_RESPONSES_TTL_DAYS", 30.0)
    )
    background_max = general.get("responses_background_max", 64)
    if not isinstance(background_max, int) or isinstance(background_max, bool) or background_max < 0:
        raise ConfigError("general_settings.responses_background_max must be a whole number, 0 or more")

    webhook_secret = general.get("webhook_secret") or env.get("METERWAY_WEBHOOK_SECRET") or None
    if webhook_secret is not None and (not isinstance(webhook_secret, str) or len(webhook_secret) < 16):
        raise ConfigError("general_settings.webhook_secret must be a string of at least 16 characters")

    alerting = parse_alerting(general, env, warnings)
    billing = parse_billing(_section(data, "billing", env), env)
    billing_export = export_status(billing, env)
    if billing is None and billing_export.startswith("off: LAGO_"):
        warnings.append(f"billing export is {billing_export}")
    callbacks: list[Any] = []
    for name in ("callbacks", "success_callback", "failure_callback"):
        value = litellm_settings.get(name) or []
        if isinstance(value, str):
            value = [value]  # LiteLLM takes one name as well as a list
        if not isinstance(value, list):
            raise ConfigError(f"litellm_settings.{name} must be a list of callback names")
        if name != "failure_callback":
            callbacks += value
        warnings += [callback_ignored(f"litellm_settings.{name}", str(c)) for c in value if str(c) not in CALLBACKS]
    telemetry = parse_telemetry(_section(data, "telemetry", env), callbacks, env)
    store_models = general.get("store_model_in_db", env.get("STORE_MODEL_IN_DB", False))
    if isinstance(store_models, str):
        store_models = store_models.strip().lower() in ("1", "true", "yes", "on")
    if not isinstance(store_models, bool):
        raise ConfigError("general_settings.store_model_in_db must be true or false")
    customer_headers = _customer_headers(general, warnings)
    default_tags = _default_tags(litellm_settings.get("default_tags"))
    routing_keys = {k: v for k, v in litellm_settings.items() if k in LITELLM_ROUTING} | router
    routing = parse_routing(routing_keys, {d.model_name for d in deployments})

    return Settings(
        deployments=tuple(deployments),
        routing=routing,
        cache=cache,
        store_models=store_models,
        default_timeout_s=default_timeout,
        billing=billing,
        billing_export=billing_export,
        alerting=alerting,
        telemetry=telemetry,
        webhook_secret=Secret(webhook_secret) if webhook_secret else None,
        ui_username=env.get("UI_USERNAME") or None,
        ui_password=Secret(ui_password) if (ui_password := env.get("UI_PASSWORD")) else None,
        ui_session_s=_ui_session_s(env),
        ui_login_failures=int(_env_number(env, "UI_LOGIN_MAX_FAILURES", 5, whole=True)),
        ui_login_failures_total=int(_env_number(env, "UI_LOGIN_MAX_FAILURES_TOTAL", 100, whole=True)),
        ui_login_window_s=_env_number(env, "UI_LOGIN_WINDOW_SECONDS", 60.0),
        redis_prefix=redis_prefix,
        budget_clamp_max_tokens=clamp,
        require_customer_binding=require_binding,
        customer_headers=customer_headers,
        default_tags=default_tags,
        budget_default_output_tokens=output_tokens,
        lease_ttl_s=lease_ttl,
        ledger_queue_size=queue,
        responses_ttl_s=responses_ttl_days * 86400.0,
        responses_background_max=background_max,
        unpriced_models=tuple(unpriced),
        redis_url=Secret(redis_url) if redis_url else None,
        salt_key=Secret(salt) if (salt := env.get("METERWAY_SALT_KEY") or env.get("LITELLM_SALT_KEY")) else None,
        database_url=Secret(database_url),
        master_key=master,
        max_body_bytes=max_body,
        max_upstream_event_bytes=event_bytes,
        max_upstream_body_bytes=body_bytes,
        max_audio_bytes=audio_bytes,
        max_image_upload_bytes=image_upload_bytes,
        demo=demo,
        source=source,
        warnings=tuple(warnings),
    )


def _customer_headers(general: Mapping[str, Any], warnings: list[str]) -> tuple[str, ...]:
    """The headers that name a request's customer, in LiteLLM's order: its two standard headers,
    then `user_header_mappings` entries of role `customer` (a mapping or a list of them), else the
    older `user_header_name`. A mapping of role `internal_user` (a header that names the key's
    user) is warned about: a key's user is the one the key was issued to."""
    found = list(STANDARD_CUSTOMER_HEADERS)
    mappings = general.get("user_header_mappings")
    mapped: list[str] = []
    if mappings is not None:
        items = mappings if isinstance(mappings, list) else [mappings]
        for i, item in enumerate(items):
            where = f"general_settings.user_header_mappings[{i}]"
            if not isinstance(item, Mapping) or set(item) != {"header_name", "litellm_user_role"}:
                raise ConfigError(f"{where} must be a mapping with header_name and litellm_user_role")
            name, role = item["header_name"], str(item["litellm_user_role"]).lower()
            if not isinstance(name, str) or not _HEADER.fullmatch(name):
                raise ConfigError(f"{where}.header_name must be an HTTP header name, got {name!r}")
            if role == "customer":
                mapped.append(name.lower())
            elif role == "internal_user":
                warnings.append(
                    f"{where}.litellm_user_role: internal_user is not supported; ignored: a key's user is the one "
                    "it was issued to (/key/generate user_id); map the header to role customer to charge by it"
                )
            else:
                raise ConfigError(f"{where}.litellm_user_role must be customer or internal_user, got {role!r}")
    name = general.get("user_header_name")
    if name is not None and name != "":
        if not isinstance(name, str) or not _HEADER.fullmatch(name):
            raise ConfigError(f"general_settings.user_header_name must be an HTTP header name, got {name!r}")
        if not mapped:  # as LiteLLM: the mappings' customer headers win over the older setting
            mapped.append(name.lower())
    return tuple(dict.fromkeys([*found, *mapped]))


_HEADER = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")  # an RFC 9110 token


def _default_tags(value: Any) -> tuple[str, ...]:
    """`litellm_settings.default_tags`: tags added to every request's own (and so on every ledger
    row), bounded as a request's tags are."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(t, str) and t for t in value):
        raise ConfigError("litellm_settings.default_tags must be a list of non-empty strings")
    if len(value) > bounds.TAGS_MAX or any(len(t) > bounds.TAG_MAX or "\x00" in t for t in value):
        raise ConfigError(
            f"litellm_settings.default_tags: at most {bounds.TAGS_MAX} tags of at most {bounds.TAG_MAX} characters"
        )
    return tuple(dict.fromkeys(value))


def _byte_bound(general: Mapping[str, Any], env: Mapping[str, str], key: str, var: str, default: int) -> int:
    """A size bound in bytes: general_settings.<key>, else the environment variable, else the default."""
    value: Any = general.get(key)
    where = f"general_settings.{key}"
    if value is None and env.get(var):
        value, where = env[var], var
        try:
            value = int(value)
        except ValueError:
            raise ConfigError(f"{var} must be a whole number of bytes, got {env[var]!r}") from None
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 1024:
        raise ConfigError(f"{where} must be a whole number of bytes, 1024 or more")
    return value


def runtime_deployment(entry: Mapping[str, Any], settings: Settings, where: str) -> Deployment:
    """A deployment added at runtime (`/model/new`), resolved and checked as a config entry is;
    its warnings (an ignored parameter, no known price) are returned to the caller, not logged."""
    params = entry.get("litellm_params")
    credentials = params.get("vertex_credentials") if isinstance(params, Mapping) else None
    if isinstance(credentials, str) and credentials.strip() and not credentials.strip().startswith("{"):
        # a file path would have the gateway read its own host's files for whoever may add models
        raise ConfigError(
            f"{where}: litellm_params.vertex_credentials must be the credentials' JSON; "
            "a model added at runtime cannot name a file",
            param="litellm_params.vertex_credentials",
        )
    warnings: list[str] = []
    stream = settings.routing.stream_timeout_s
    dep = _deployment(dict(entry), 0, os.environ, settings.default_timeout_s, stream, {}, warnings)
    return _priced(dep, prices.load())


def _cache(litellm_settings: Mapping[str, Any], warnings: list[str]) -> tuple[CacheSettings | None, str | None]:
    """`litellm_settings.cache` and `cache_params`; also a Redis URL when only cache_params names one."""
    enabled = litellm_settings.get("cache", False)
    if not isinstance(enabled, bool):
        raise ConfigError("litellm_settings.cache must be true or false")
    params = litellm_settings.get("cache_params") or {}
    if not isinstance(params, dict):
        raise ConfigError("litellm_settings.cache_params must be a mapping")
    if not enabled:
        return None, None
    warnings += [
        f"litellm_settings.cache_params.{k}: not supported yet; ignored" for k in params if k not in CACHE_PARAMS
    ]
    kind = params.get("type", "redis" if params.get("host") else "local")
    if kind not in ("redis", "local"):
        raise ConfigError(f"litellm_settings.cache_params.type: '{kind}' is not supported (redis or local)")
    namespace = params.get("namespace")
    if namespace is not None and not isinstance(namespace, str):
        raise ConfigError("litellm_settings.cache_params.namespace must be a string")
    ratio = _decimal(params.get("hit_cost_ratio", 0), "litellm_settings.cache_params.hit_cost_ratio")
    if ratio > 1:
        raise ConfigError("litellm_settings.cache_params.hit_cost_ratio must be between 0 and 1")
    ttl = _positive(params["ttl"], "litellm_settings.cache_params.ttl") if "ttl" in params else 600.0
    url = None
    if params.get("host"):
        password = params.get("password")
        auth = f":{quote(str(password), safe='')}@" if password else ""
        url = f"redis://{auth}{params['host']}:{params.get('port', 6379)}"
    return CacheSettings(type=kind, ttl_s=ttl, namespace=namespace, hit_cost_ratio=ratio), url


def _ui_session_s(env: Mapping[str, str]) -> int:
    raw = env.get("UI_SESSION_HOURS")
    if not raw:
        return 12 * 3600
    try:
        hours = float(raw)
    except ValueError:
        raise ConfigError(f"UI_SESSION_HOURS must be a number of hours; got {raw!r}") from None
    if not 0 < hours <= 24 * 30:
        raise ConfigError(f"UI_SESSION_HOURS must be between 0 and 720; got {raw!r}")
    return int(hours * 3600)


def _env_number(env: Mapping[str, str], name: str, default: float, *, whole: bool = False) -> float:
    """A positive number from the environment (a whole one if `whole`), else `default`."""
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = int(raw) if whole else float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a {'whole ' if whole else ''}number; got {raw!r}") from None
    if not 0 < value <= 10**9:
        raise ConfigError(f"{name} must be more than 0 (and at most 1e9); got {raw!r}")
    return value


def _database_from_parts(env: Mapping[str, str]) -> str | None:
    """DATABASE_HOST, DATABASE_PORT, DATABASE_USERNAME (or DATABASE_USER), DATABASE_PASSWORD and
    DATABASE_NAME, as a Kubernetes Secret hands a PostgreSQL password over. The parts are URL-quoted
    here, so a password with `@`, `/` or `%` works as written. The port is added only when
    DATABASE_PORT is set; a host that carries one as well is refused by name, not tried as
    `host:5432:5432`."""
    host = env.get("DATABASE_HOST")
    if not host:
        return None
    user = env.get("DATABASE_USERNAME") or env.get("DATABASE_USER") or ""
    password = env.get("DATABASE_PASSWORD")
    auth = quote(user, safe="") + (f":{quote(password, safe='')}" if password else "")
    port = env.get("DATABASE_PORT")
    if port and ":" in host.rsplit("]", 1)[-1]:
        raise ConfigError(
            f"DATABASE_HOST '{host}' carries a port and DATABASE_PORT is set too; "
            "give the host alone in DATABASE_HOST and the port in DATABASE_PORT"
        )
    where = host + (f":{port}" if port else "")
    return f"postgresql://{auth + '@' if auth else ''}{where}/{quote(env.get('DATABASE_NAME') or 'meterway', safe='')}"


def _redis_from_parts(env: Mapping[str, str]) -> str | None:
    """REDIS_HOST / REDIS_PORT / REDIS_PASSWORD, as LiteLLM deployments set them."""
    host = env.get("REDIS_HOST")
    if not host:
        return None
    password = env.get("REDIS_PASSWORD")
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"redis://{auth}{host}:{env.get('REDIS_PORT') or 6379}/0"


def _section(data: Mapping[str, Any], name: str, env: Mapping[str, str]) -> dict[str, Any]:
    value = data.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a mapping")
    resolved: dict[str, Any] = resolve_env(value, name, env)
    return resolved


def _deployment(
    entry: Any,
    index: int,
    env: Mapping[str, str],
    default_timeout: float,
    default_stream_timeout: float | None,
    per_group: dict[str, int],
    warnings: list[str],
) -> Deployment:
    where = f"model_list[{index}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: each entry must be a mapping with model_name and litellm_params")
    name = entry.get("model_name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: model_name is required and must be a string")
    where = f"{where} (model_name: {name})"
    params = entry.get("litellm_params")
    if not isinstance(params, dict):
        raise ConfigError(f"{where}: litellm_params is required and must be a mapping")
    params = resolve_env(params, f"{where}: litellm_params", env)
    info = entry.get("model_info") or {}
    if not isinstance(info, dict):
        raise ConfigError(f"{where}: model_info must be a mapping")
    info = resolve_env(info, f"{where}: model_info", env)

    model = params.get("model")
    if not isinstance(model, str) or not model:
        raise ConfigError(f"{where}: litellm_params.model is required (e.g. openai/gpt-4o)")
    for key in params:
        if key not in PARAMS and key not in PARAMS_QUIET:
            warnings.append(f"{where}: litellm_params.{key} not supported yet; ignored")

    api_base = params.get("api_base") or params.get("base_url")
    if api_base is not None and (not isinstance(api_base, str) or not api_base.startswith(("http://", "https://"))):
        raise ConfigError(f"{where}: litellm_params.api_base must be an http(s) URL, got {api_base!r}")
    api_key = params.get("api_key")
    if api_key is not None and not isinstance(api_key, str):
        raise ConfigError(f"{where}: litellm_params.api_key must be a string")
    api_version = params.get("api_version")
    if api_version is not None and not isinstance(api_version, str):
        raise ConfigError(f"{where}: litellm_params.api_version must be a string")

    headers: dict[str, str] = {}
    for hkey in ("headers", "extra_headers"):
        value = params.get(hkey)
        if value is None:
            continue
        if not isinstance(value, dict) or not all(isinstance(v, str | int | float) for v in value.values()):
            raise ConfigError(f"{where}: litellm_params.{hkey} must be a mapping of header names to strings")
        headers.update({str(k): str(v) for k, v in value.items()})
    if isinstance(params.get("organization"), str):
        headers["OpenAI-Organization"] = params["organization"]

    try:
        resolved = registry.resolve(model, api_base, Secret(api_key) if api_key else None, env=env)
    except ConfigError as e:
        raise ConfigError(
            f"{where}: litellm_params.model: {e.message}"
            if e.param is None
            else f"{where}: litellm_params.{e.param}: {e.message}"
        ) from None

    n = per_group.get(name, 0)
    per_group[name] = n + 1
    dep_id = str(info.get("id") or (name if n == 0 else f"{name}#{n}"))
    mode = info.get("mode")
    if resolved.family == registry.VERTEX:
        on_vertex = _vertex(params, resolved, env, dep_id, headers, where)
        resolved = replace(resolved, api_base=on_vertex.root)  # what the UI and /model/info show: the model's address
        native: Provider = on_vertex
    else:
        try:
            native = registry.build(
                resolved,
                label=dep_id,
                api_version=api_version,
                extra_headers=headers,
                mode=mode if isinstance(mode, str) else None,
                params=params,
                env=env,
            )
        except ConfigError as e:  # a family's own settings (Bedrock's aws_*)
            raise ConfigError(
                f"{where}: litellm_params.{e.param}: {e.message}" if e.param else f"{where}: {e.message}"
            ) from None
    provider = registry.for_chat(native)

    timeout = (
        _positive(params["timeout"], f"{where}: litellm_params.timeout") if "timeout" in params else default_timeout
    )
    stream_timeout = (
        _positive(params["stream_timeout"], f"{where}: litellm_params.stream_timeout")
        if "stream_timeout" in params
        else default_stream_timeout or timeout
    )
    connect = min(timeout, 10.0)

    def price(key: str) -> Decimal | None:
        value = info.get(key, params.get(key))
        return None if value is None else _decimal(value, f"{where}: model_info.{key}")

    return Deployment(
        id=dep_id,
        model_name=name,
        family=resolved.family,
        upstream_model=resolved.upstream_model,
        api_base=resolved.api_base,
        api_key=resolved.api_key,
        provider=provider,
        messages_provider=registry.for_messages(provider),
        responses_provider=registry.for_responses(native),
        completions_provider=registry.for_completions(provider),
        timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=connect),
        stream_timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=stream_timeout),
        prices=Prices(
            input_per_token=price("input_cost_per_token"),
            output_per_token=price("output_cost_per_token"),
            cache_read_per_token=price("cache_read_input_token_cost"),
            cache_write_per_token=price("cache_creation_input_token_cost"),
            **dict[str, Any]({field: price(name) for name, field in prices.UNIT_PRICES.items()}),
        ),
        rpm=_count(params.get("rpm"), f"{where}: litellm_params.rpm"),
        tpm=_count(params.get("tpm"), f"{where}: litellm_params.tpm"),
        weight=_positive(params["weight"], f"{where}: litellm_params.weight") if "weight" in params else 1.0,
        model_info=info,
    )


def _vertex(
    params: Mapping[str, Any],
    resolved: registry.Resolved,
    env: Mapping[str, str],
    label: str,
    headers: Mapping[str, str],
    where: str,
) -> vertex.VertexGeminiProvider | vertex.VertexClaudeProvider:
    """A `vertex_ai/` deployment: its credentials (read now, their token minted by the worker), its
    project (configured, from the environment, else the service account's) and its location."""

    def text(*keys: str, env_names: tuple[str, ...] = ()) -> str | None:
        for key in keys:
            value = params.get(key)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{where}: litellm_params.{key} must be a string")
            if value:
                return value
        return next((env[n] for n in env_names if env.get(n)), None)

    try:
        source = google_auth.credential_source(params.get("vertex_credentials"), env)
    except ConfigError as e:
        raise ConfigError(f"{where}: litellm_params.{e.message}") from None
    project = (
        text("vertex_project", "vertex_ai_project", env_names=("VERTEXAI_PROJECT", "VERTEX_PROJECT")) or source.project
    )
    if project is None:
        raise ConfigError(
            f"{where}: litellm_params.vertex_project is required (or VERTEXAI_PROJECT, or a service account's "
            "vertex_credentials, whose project_id is taken)"
        )
    location = (
        text("vertex_location", "vertex_ai_location", env_names=("VERTEXAI_LOCATION", "VERTEX_LOCATION"))
        or vertex.DEFAULT_LOCATION
    )
    if not vertex.PROJECT.fullmatch(project):
        raise ConfigError(f"{where}: litellm_params.vertex_project {project!r} is not a Google Cloud project id")
    if not vertex.LOCATION.fullmatch(location):
        raise ConfigError(f"{where}: litellm_params.vertex_location {location!r} is not a Google Cloud location")
    api_base = params.get("api_base") or params.get("base_url")  # only when configured: Vertex's host is per location
    return vertex.build(
        label=label,
        upstream_model=resolved.upstream_model,
        api_base=api_base,
        project=project,
        location=location,
        credentials=google_auth.GoogleToken(source, label),
        extra_headers=headers,
    )


def _priced(dep: Deployment, table: prices.PriceTable) -> Deployment:
    """The deployment's own prices, each missing one taken from the bundled table; the built-in
    demo provider costs nothing."""
    if dep.family == "mock":
        known: Prices | None = Prices(Decimal(0), Decimal(0))
    else:
        # `vertex_ai/claude-…` first: where the family's own price differs from the model's maker's
        known = table.find(f"{dep.family}/{dep.upstream_model}", dep.upstream_model, dep.model_name)
    merged = prices.merged(dep.prices, known)
    return dep if merged == dep.prices else replace(dep, prices=merged)


def _positive(value: Any, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not number > 0:
        raise ConfigError(f"{where} must be a positive number, got {value!r}")
    return number


def _count(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where} must be a non-negative integer, got {value!r}")
    return value


def _decimal(value: Any, where: str) -> Decimal:
    if isinstance(value, bool):
        raise ConfigError(f"{where} must be a number, got {value!r}")
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise ConfigError(f"{where} must be a number, got {value!r}") from None
    if d < 0 or not d.is_finite():
        raise ConfigError(f"{where} must be a non-negative number, got {value!r}")
    return d
