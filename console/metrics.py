"""The console's own metrics: pages served, by route and status, on METRICS_ADDR."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

REGISTRY = CollectorRegistry()
PAGES = Counter(
    "paylayer_console_requests",
    "Console requests, by route and HTTP status",
    ["route", "status"],
    registry=REGISTRY,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    # The route's pattern, never the path: user ids and event ids would explode the labels.
    route = request.match_info.route.resource
    name = route.canonical if route is not None else "unmatched"
    try:
        response = await handler(request)
    except web.HTTPException as error:
        PAGES.labels(name, str(error.status)).inc()
        raise
    PAGES.labels(name, str(response.status)).inc()
    return response
