"""OpenTelemetry traces: one server span per model request, one client span per upstream call,
with the GenAI semantic conventions and meterway's own attributes.

Spans are exported in batches by the SDK's background thread (bounded queue; a full queue drops
spans, never waits): a collector that is slow or down costs requests nothing. The provider is
shut down (flushed, bounded) when the gateway stops. A client's W3C `traceparent` continues its
trace, and the upstream call carries ours on.

Never on a span: keys or secrets; prompt and completion text only with `capture_content: true`.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from meterway.errors import ConfigError
from meterway.providers.base import Api

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from meterway.config.telemetry import Telemetry
    from meterway.context import RequestContext

log = logging.getLogger("meterway.telemetry")

# gen_ai.operation.name by endpoint
OPERATION = {
    Api.CHAT: "chat",
    Api.MESSAGES: "chat",
    Api.RESPONSES: "chat",
    Api.COMPLETIONS: "text_completion",
    Api.EMBEDDINGS: "embeddings",
    Api.RERANK: "rerank",
    Api.MODERATIONS: "moderation",
    Api.IMAGES: "image_generation",
    Api.IMAGE_EDITS: "image_edit",
    Api.IMAGE_VARIATIONS: "image_variation",
    Api.TRANSCRIPTIONS: "transcription",
    Api.TRANSLATIONS: "translation",
    Api.SPEECH: "speech",
}
# gen_ai.provider.name by provider family (the semantic conventions' well-known values)
PROVIDER = {
    "openai": "openai",
    "azure": "azure.ai.openai",
    "anthropic": "anthropic",
    "cohere": "cohere",
    "gemini": "gcp.gemini",
    "mock": "meterway.mock",
}
CONTENT_MAX = 16_384  # bytes of prompt or completion kept on a span, when content is captured
USD_PER_UNIT = 1e-10


def _exporter(telemetry: Telemetry) -> SpanExporter:
    if telemetry.otlp_protocol == "grpc":
        try:  # an optional extra: gRPC is a large install most deployments skip
            grpc = importlib.import_module("opentelemetry.exporter.otlp.proto.grpc.trace_exporter")
        except ImportError:
            raise ConfigError("OTLP over gRPC needs the gRPC exporter: pip install 'meterway[grpc]'") from None
        exporter: SpanExporter = grpc.OTLPSpanExporter(endpoint=telemetry.otlp_endpoint)
        return exporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    endpoint = telemetry.otlp_endpoint
    if endpoint is not None and not endpoint.rstrip("/").endswith("/v1/traces"):
        endpoint = endpoint.rstrip("/") + "/v1/traces"  # a base URL, as OTEL_EXPORTER_OTLP_ENDPOINT is
    return OTLPSpanExporter(endpoint=endpoint, timeout=5)


class Tracing:
    """Built once per worker when traces are on; the request path calls it only then."""

    def __init__(self, telemetry: Telemetry, version: str, exporter: SpanExporter | None = None) -> None:
        self.capture_content = telemetry.capture_content
        # Resource.create also reads OTEL_RESOURCE_ATTRIBUTES; the sampler comes from OTEL_TRACES_SAMPLER
        resource = Resource.create({SERVICE_NAME: telemetry.service_name, "service.version": version})
        self.provider = TracerProvider(resource=resource)
        self.exporter = exporter or _exporter(telemetry)
        self.provider.add_span_processor(
            BatchSpanProcessor(
                self.exporter, max_queue_size=4096, schedule_delay_millis=500, export_timeout_millis=5000
            )
        )
        self.tracer = self.provider.get_tracer("meterway", version)
        self.propagator = TraceContextTextMapPropagator()
        where = telemetry.otlp_endpoint or "the OTLP default (localhost:4318)"
        log.info("traces go to %s over OTLP %s", where, telemetry.otlp_protocol)

    def start(self, ctx: RequestContext, traceparent: bytes | None, tracestate: bytes | None) -> Span:
        """The request's server span, continuing the client's trace when it sent one."""
        parent = None
        if traceparent is not None:
            carrier = {"traceparent": traceparent.decode("latin-1")}
            if tracestate is not None:
                carrier["tracestate"] = tracestate.decode("latin-1")
            parent = self.propagator.extract(carrier)
        span = self.tracer.start_span(
            f"{OPERATION[ctx.api]}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"gen_ai.operation.name": OPERATION[ctx.api], "meterway.request_id": ctx.request_id},
        )
        return span

    def upstream(self, ctx: RequestContext, server: Span, url: Any) -> tuple[Span, dict[str, str]]:
        """A client span for one upstream call, and the headers that carry it on."""
        dep = ctx.deployment
        operation = OPERATION[ctx.api]
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.request.model": dep.upstream_model if dep is not None else "",
            "server.address": getattr(url, "host", "") or "",
        }
        if dep is not None:
            provider = PROVIDER.get(dep.family, dep.family)
            attributes["gen_ai.provider.name"] = provider
            attributes["gen_ai.system"] = provider  # the older name, still read by many backends
            attributes["meterway.deployment"] = dep.id
        port = getattr(url, "port", None)
        if port:
            attributes["server.port"] = port
        span = self.tracer.start_span(
            f"{operation} {attributes['gen_ai.request.model']}",
            context=trace.set_span_in_context(server),
            kind=SpanKind.CLIENT,
            attributes=attributes,
        )
        carrier: dict[str, str] = {}
        self.propagator.inject(carrier, context=trace.set_span_in_context(span))
        return span, carrier

    def end_upstream(self, span: Span, status: int, error: BaseException | None) -> None:
        if status:
            span.set_attribute("http.response.status_code", status)
        if error is not None or status >= 400:
            span.set_attribute("error.type", type(error).__name__ if error is not None else str(status))
            span.set_status(Status(StatusCode.ERROR))
        span.end()

    def end(self, ctx: RequestContext, span: Span) -> None:
        """Everything known once the response ended (and its ledger row was made)."""
        attrs: dict[str, Any] = {"http.response.status_code": ctx.status_code}
        dep = ctx.deployment
        if ctx.model_group:
            attrs["gen_ai.request.model"] = ctx.model_group
            span.update_name(f"{OPERATION[ctx.api]} {ctx.model_group}")
        if dep is not None:
            provider = PROVIDER.get(dep.family, dep.family)
            attrs["gen_ai.provider.name"] = provider
            attrs["gen_ai.system"] = provider
            attrs["gen_ai.response.model"] = dep.upstream_model
        usage = ctx.counted
        if usage is not None:
            attrs["gen_ai.usage.input_tokens"] = usage.prompt_tokens
            attrs["gen_ai.usage.output_tokens"] = usage.completion_tokens
        if ctx.cost_units is not None and usage is not None:
            attrs["meterway.cost_usd"] = ctx.cost_units * USD_PER_UNIT
        principal = ctx.principal
        if principal is not None:
            for name, value in (
                ("meterway.key_alias", principal.key_alias),
                ("meterway.user_id", principal.user_id),
                ("meterway.team_id", principal.team_id),
            ):
                if value:
                    attrs[name] = value
        if ctx.user:
            attrs["meterway.customer_id"] = ctx.user
        if ctx.ledger_uid:
            attrs["meterway.ledger_uid"] = ctx.ledger_uid
        if ctx.stream:
            attrs["gen_ai.request.stream"] = True  # not a convention; says why the span is long
        if self.capture_content:
            attrs["gen_ai.input.messages"] = ctx.body[:CONTENT_MAX].decode("utf-8", "replace")
            answer = ctx.answer or (ctx.delivered.head(CONTENT_MAX) if ctx.delivered is not None else b"")
            attrs["gen_ai.output.messages"] = answer[:CONTENT_MAX].decode("utf-8", "replace")
        span.set_attributes(attrs)
        if ctx.error is not None:
            span.set_attribute("error.type", ctx.error.error_type)
            span.set_status(Status(StatusCode.ERROR, ctx.error.message[:200]))
        span.end()

    def shutdown(self) -> None:
        """Flushes what is queued (bounded by the exporter's timeout) and stops the thread."""
        self.provider.shutdown()
