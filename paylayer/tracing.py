"""Optional OpenTelemetry tracing: off unless OTEL_EXPORTER_OTLP_ENDPOINT is set.

When on, every gRPC call and webhook becomes a span, and the W3C `traceparent` travels in gRPC
metadata from the gateway through payments to accounts and entitlements. The packages come
with the `otel` extra (`pip install -e '.[otel]'`); without them tracing stays off.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def setup_tracing(service: str, endpoint: str) -> bool:
    """Install the tracer and the gRPC (and aiohttp) instrumentation; True when tracing is on.

    Call it before any server or channel is made: the instrumentation wraps their factories.
    """
    if not endpoint:
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.grpc import (
            GrpcAioInstrumentorClient,
            GrpcAioInstrumentorServer,
        )
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but the otel extra is not installed")
        return False

    provider = TracerProvider(resource=Resource.create({"service.name": f"paylayer-{service}"}))
    # The exporter reads its endpoint, headers and TLS choice from the standard OTEL_ variables.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    GrpcAioInstrumentorServer().instrument()
    GrpcAioInstrumentorClient().instrument()
    if service == "gateway":
        from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor

        AioHttpServerInstrumentor().instrument()
    log.info("tracing to %s", endpoint)
    return True
