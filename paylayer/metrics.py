"""Prometheus metrics every gRPC process shares, and the port they are scraped on."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server

RPCS_HANDLED = Counter(
    "paylayer_grpc_server_handled_total",
    "RPCs completed, by service, method and status code.",
    ["service", "method", "code"],
)
RPC_DURATION = Histogram(
    "paylayer_grpc_server_handling_seconds",
    "Time to complete an RPC, by service and method.",
    ["service", "method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


def serve_metrics(addr: str, registry: CollectorRegistry = REGISTRY) -> int:
    """Serve /metrics on `addr` (host:port) from a thread; returns the port."""
    host, port = addr.rsplit(":", 1)
    server, _thread = start_http_server(int(port), addr=host, registry=registry)
    return int(server.server_port)
