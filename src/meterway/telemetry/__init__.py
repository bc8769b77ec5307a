"""What the gateway shows of itself: Prometheus metrics, OpenTelemetry traces, structured logs."""
