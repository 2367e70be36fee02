"""The aiohttp application: routes, and the payments channel opened and closed with the app."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway import metrics
from gateway.bot_forward import bot_forwarder
from gateway.keys import PAYMENTS, PAYMENTS_CHANNEL, PAYMENTS_HEALTH, SETTINGS
from gateway.stripe_webhook import stripe_webhook
from gateway.telegram_webhook import telegram_webhook
from paylayer.grpc_client import open_channel
from paylayer.settings import Settings
from paylayer.tls import GrpcTls
from protos.payments.v1 import payments_pb2_grpc

# Providers never send more; a bigger body is refused before it is read.
MAX_BODY_BYTES = 1024 * 1024


class _MalformedRequestsAreNotOurErrors(logging.Filter):
    """aiohttp answers a malformed request 400 and then logs it as an ERROR with a traceback:
    any client on the internet could fill the error log. Kept as one warning line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, BadHttpMessage):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg = f"{record.getMessage()}: malformed HTTP ({error.message})"
            record.args, record.exc_info, record.exc_text = (), None, None
        return True


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when payments answers its health check: without it no webhook can be recorded."""
    try:
        reply = await request.app[PAYMENTS_HEALTH].Check(
            health_pb2.HealthCheckRequest(service=""), timeout=1.0
        )
        serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.aio.AioRpcError:
        serving = False
    if serving:
        return web.json_response({"status": "ready"})
    return web.json_response({"status": "payments unreachable"}, status=503)


async def _payments_channel(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    channel = open_channel(
        settings.payments_addr, settings.internal_token, tls=GrpcTls.from_settings(settings)
    )
    app[PAYMENTS_CHANNEL] = channel
    app[PAYMENTS] = payments_pb2_grpc.PaymentsServiceStub(channel)  # type: ignore[assignment,misc]
    app[PAYMENTS_HEALTH] = health_pb2_grpc.HealthStub(channel)
    yield
    await channel.close()


def init_app(settings: Settings) -> web.Application:
    logging.getLogger("aiohttp.server").addFilter(_MalformedRequestsAreNotOurErrors())
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[metrics.middleware])
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_payments_channel)
    app.cleanup_ctx.append(bot_forwarder)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_post("/api/v1/stripe/webhook", stripe_webhook)
    app.router.add_post("/api/v1/telegram/webhook", telegram_webhook)
    return app
