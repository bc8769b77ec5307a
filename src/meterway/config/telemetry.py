"""The `telemetry` section, the standard `OTEL_*` variables, and LiteLLM's `callbacks: [otel]`.

    telemetry:
      traces: true                      # default: on when an OTLP endpoint is set or callbacks name otel
      otlp_endpoint: http://collector:4318   # or OTEL_EXPORTER_OTLP_ENDPOINT (LiteLLM: OTEL_ENDPOINT)
      otlp_protocol: http/protobuf      # or OTEL_EXPORTER_OTLP_PROTOCOL; grpc needs meterway[grpc]
      service_name: meterway            # or OTEL_SERVICE_NAME
      capture_content: false            # prompt and completion text on spans: only when asked
      metrics_max_label_values: 100     # distinct team / customer label values per worker

Sampling (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`), resource attributes
(`OTEL_RESOURCE_ATTRIBUTES`) and exporter headers (`OTEL_EXPORTER_OTLP_HEADERS`) are read by the
OpenTelemetry SDK itself, as in any instrumented service. `OTEL_SDK_DISABLED=true` or
`OTEL_TRACES_EXPORTER=none` turns traces off whatever else says.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meterway.errors import ConfigError

FIELDS = {"traces", "otlp_endpoint", "otlp_protocol", "service_name", "capture_content", "metrics_max_label_values"}
PROTOCOLS = {"http/protobuf", "grpc"}
# LiteLLM's OTEL_EXPORTER values, as its users set them
_LITELLM_EXPORTERS = {"otlp_http": "http/protobuf", "otlp_grpc": "grpc", "grpc": "grpc", "http": "http/protobuf"}


@dataclass(frozen=True, slots=True)
class Telemetry:
    traces: bool = False
    otlp_endpoint: str | None = None  # None: the SDK's default (localhost:4318)
    otlp_protocol: str = "http/protobuf"
    service_name: str = "meterway"
    capture_content: bool = False
    metrics_max_label_values: int = 100


def parse_telemetry(section: Mapping[str, Any], callbacks: Sequence[Any], env: Mapping[str, str]) -> Telemetry:
    unknown = sorted(set(section) - FIELDS)
    if unknown:
        raise ConfigError(
            f"telemetry.{unknown[0]}: not a telemetry setting; expected one of {', '.join(sorted(FIELDS))}"
        )
    endpoint = (
        section.get("otlp_endpoint")
        or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or env.get("OTEL_ENDPOINT")
    )
    if endpoint is not None and (not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://"))):
        raise ConfigError(f"telemetry.otlp_endpoint must be an http(s) URL, got {endpoint!r}")
    protocol = (
        section.get("otlp_protocol")
        or env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or _LITELLM_EXPORTERS.get(env.get("OTEL_EXPORTER", ""))
        or "http/protobuf"
    )
    if protocol not in PROTOCOLS:
        raise ConfigError(f"telemetry.otlp_protocol must be http/protobuf or grpc, got {protocol!r}")
    for name in ("traces", "capture_content"):
        if name in section and not isinstance(section[name], bool):
            raise ConfigError(f"telemetry.{name} must be true or false")
    bound = section.get("metrics_max_label_values", 100)
    if not isinstance(bound, int) or isinstance(bound, bool) or bound < 1:
        raise ConfigError("telemetry.metrics_max_label_values must be a whole number, 1 or more")
    service = section.get("service_name") or env.get("OTEL_SERVICE_NAME") or "meterway"
    if not isinstance(service, str):
        raise ConfigError("telemetry.service_name must be a string")
    asked = "otel" in [str(c).lower() for c in callbacks]
    traces = section.get("traces", asked or endpoint is not None)
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true" or env.get("OTEL_TRACES_EXPORTER", "").lower() == "none":
        traces = False
    return Telemetry(
        traces=bool(traces),
        otlp_endpoint=endpoint,
        otlp_protocol=protocol,
        service_name=service,
        capture_content=bool(section.get("capture_content", False)),
        metrics_max_label_values=bound,
    )
