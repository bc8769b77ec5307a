"""What meterway says of the LiteLLM settings it does not act on, and what to use instead.

One table for both places that speak of them: the loader's warnings (logged by `serve`, printed by
`check-config`) and `check-config --litellm`'s review. Each note names the setting by its full
path, so a warning about `success_callback` never reads as one about `callbacks`.
"""

from __future__ import annotations

GENERAL = {
    "alerting": "meterway sends budget and credit alerts to webhook and slack only (docs/alerts.md)",
    "alerting_threshold": "meterway alerts on budgets, not on slow or hanging requests; see /metrics",
    "alert_types": "meterway sends budget and credit alerts only (docs/alerts.md)",
    "alert_to_webhook_url": "set WEBHOOK_URL and SLACK_WEBHOOK_URL (or alerting_args.webhook_url, slack_webhook_url)",
    "proxy_batch_write_at": "every request's row is committed before its response completes; nothing waits for a batch",
    "database_connection_pool_limit": "the pool is sized by meterway",
    "disable_spend_logs": "the ledger is always written: it is what budgets and billing read",
    "custom_auth": "meterway runs no user code for authentication",
    "background_health_checks": "readiness is /health/ready; no upstream polling",
    "health_check_interval": "no upstream polling",
    "enforce_user_param": "not enforced; a request without `user` is billed to its key",
    "use_redis_transaction_buffer": "spend is written in the ledger's own transaction; no buffer",
    "otel": "set telemetry.otlp_endpoint (or OTEL_EXPORTER_OTLP_ENDPOINT) for traces",
    "ui_username": "set UI_USERNAME and UI_PASSWORD in the environment",
    "ui_password": "set UI_USERNAME and UI_PASSWORD in the environment",
    "allow_user_auth": "keys authenticate; UI_USERNAME and UI_PASSWORD log an admin into the UI",
}
LITELLM = {
    "drop_params": "meterway forwards the body as sent; the upstream decides on unknown parameters",
    "set_verbose": "use --log-level debug",
    "json_logs": "use --log-format json",
    "max_budget": "set budgets on keys, users, teams or customers",
    "turn_off_message_logging": "meterway never stores prompts or completions",
    "redact_user_api_key_info": "keys are never logged; log lines are redacted",
    "service_callback": "use /metrics (Prometheus) and the telemetry section",
    "extra_spend_tag_headers": "headers are not copied into tags; send `tags` in the body, or set default_tags",
}
ROUTER = {
    "redis_host": "Redis comes from general_settings.redis_url, REDIS_URL or REDIS_HOST/REDIS_PORT/REDIS_PASSWORD",
}
# callbacks LiteLLM can send logs to that meterway does not, with what to use instead
CALLBACKS = {
    "webhook": "meterway records every request in its own ledger and exports to Lago itself (the billing "
    "section); a LiteLLM proxy kept running can post its usage to POST /webhooks/usage (docs/webhooks.md)",
    "generic_api": "meterway records every request in its own ledger; a LiteLLM proxy kept running can post "
    "its usage to POST /webhooks/usage (docs/webhooks.md)",
    "langfuse": "export traces with the telemetry section (OTLP); Langfuse takes OTLP",
    "datadog": "export traces with the telemetry section (OTLP) and scrape /metrics",
    "s3": "read usage from the ledger (`meterway usage`, GET /spend/logs) instead",
}
SECTION = {"general_settings": GENERAL, "litellm_settings": LITELLM, "router_settings": ROUTER}


def note(path: str) -> str:
    """Why `path` (`section.key`) is ignored, and what to use instead when there is something."""
    section, _, key = path.partition(".")
    if section == "router_settings" and key.startswith("redis_"):
        return ROUTER["redis_host"]
    return SECTION.get(section, {}).get(key, "not supported")


def ignored(path: str) -> str:
    """The loader's warning for a setting it does not act on."""
    why = note(path)
    return f"{path}: ignored" + ("" if why == "not supported" else f": {why}")


def callback_note(name: str) -> str:
    return CALLBACKS.get(name, "meterway does not send logs to this service")


def callback_ignored(path: str, name: str) -> str:
    """The warning for a callback under `path` (`litellm_settings.success_callback`, ...)."""
    return f"{path}: '{name}' is not supported; ignored: {callback_note(name)}"
