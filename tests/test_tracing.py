"""Optional tracing, switched on: one webhook's spans reach a local OTLP collector as one trace
that crosses the gateway and payments, with W3C context carried over gRPC metadata."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator

import aiohttp
import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from paylayer.catalogue import load_catalogue
from paylayer.ops.factories import stripe_event
from tests.conftest import fresh_database, make_settings, running_stack
from tests.fakes.bot_api import FakeBotApi
from tests.payments.helpers import post_stripe
from tests.stack import Stack


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OpenTelemetry collector reduced to what the test reads: the spans, by service."""

    def __init__(self) -> None:
        self.spans: list[
            tuple[str, str, bytes, bytes, bytes]
        ] = []  # service, name, trace, span, parent

    async def Export(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.aio.ServicerContext,
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            service = next(
                (
                    a.value.string_value
                    for a in resource_spans.resource.attributes
                    if a.key == "service.name"
                ),
                "",
            )
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    self.spans.append(
                        (service, span.name, span.trace_id, span.span_id, span.parent_span_id)
                    )
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture(scope="module")
async def collector() -> AsyncIterator[tuple[Collector, int]]:
    server = grpc.aio.server()
    collected = Collector()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collected, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield collected, port
    await server.stop(0)


@pytest.fixture(scope="module")
def traced_stack(
    collector: tuple[Collector, int],
    admin_database_url: str,
    bot_api: FakeBotApi,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector[1]}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    with (
        fresh_database(admin_database_url) as url,
        running_stack(
            make_settings(url, bot_api), tmp_path_factory.mktemp("traced"), extra_env=env
        ) as stack,
    ):
        yield stack


async def test_one_webhook_is_one_trace_from_the_gateway_into_payments(
    traced_stack: Stack, collector: tuple[Collector, int]
) -> None:
    collected = collector[0]
    catalogue = load_catalogue(traced_stack.settings.catalogue_path)
    event = stripe_event(
        "checkout.session.completed",
        catalogue,
        sku="premium_30d",
        telegram_user_id=secrets.randbelow(10**9) + 1,
    )
    async with aiohttp.ClientSession() as http:
        assert (await post_stripe(http, traced_stack, event))[0] == 200

    def received(service: str, name_part: str) -> list[tuple[str, str, bytes, bytes, bytes]]:
        return [s for s in collected.spans if s[0] == service and name_part in s[1]]

    for _ in range(100):
        if received("paylayer-payments", "HandleStripeEvent") and received(
            "paylayer-entitlements", "GrantEntitlement"
        ):
            break
        await asyncio.sleep(0.1)
    handled = received("paylayer-payments", "HandleStripeEvent")
    assert handled, f"no payments span among {sorted({(s[0], s[1]) for s in collected.spans})}"
    trace_id = handled[0][2]
    gateway_spans = [s for s in collected.spans if s[0] == "paylayer-gateway" and s[2] == trace_id]
    assert gateway_spans, "the gateway's span is not in the same trace as payments' span"
    # payments' server span is the child of the gateway's client span: context crossed the hop.
    assert handled[0][4] in {s[3] for s in gateway_spans}
    grant = received("paylayer-entitlements", "GrantEntitlement")
    assert grant, "entitlements reported no span"
