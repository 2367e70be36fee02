"""Prometheus metrics of the gateway, in a registry of its own (tests start many apps)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry()

HTTP_REQUESTS = Counter(
    "paylayer_gateway_http_requests_total",
    "HTTP requests by route and status code.",
    ["route", "code"],
    registry=REGISTRY,
)
HTTP_LATENCY = Histogram(
    "paylayer_gateway_http_request_duration_seconds",
    "HTTP request latency by route.",
    ["route"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)
WEBHOOK_REJECTIONS = Counter(
    "paylayer_gateway_webhook_rejections_total",
    "Webhooks refused before reaching payments, by provider and reason.",
    ["provider", "reason"],
    registry=REGISTRY,
)
BOT_FORWARDS = Counter(
    "paylayer_gateway_bot_forwards_total",
    "Updates sent on to the bot: relayed (Telegram waits) or copied (payments), by outcome.",
    ["mode", "outcome"],
    registry=REGISTRY,
)


@web.middleware
async def middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    route = (
        request.match_info.route.resource.canonical
        if request.match_info.route.resource
        else "unmatched"
    )
    started = time.perf_counter()
    code = 500
    try:
        response = await handler(request)
        code = response.status
        return response
    except web.HTTPException as error:
        code = error.status
        raise
    finally:
        HTTP_REQUESTS.labels(route, str(code)).inc()
        HTTP_LATENCY.labels(route).observe(time.perf_counter() - started)
