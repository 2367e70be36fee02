"""Typed keys for what the gateway keeps on its aiohttp application."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2_grpc

from paylayer.settings import Settings

if TYPE_CHECKING:
    from gateway.bot_forward import BotForwarder
    from protos.payments.v1.payments_pb2_grpc import PaymentsServiceAsyncStub

SETTINGS = web.AppKey("settings", Settings)
PAYMENTS_CHANNEL = web.AppKey("payments_channel", grpc.aio.Channel)
PAYMENTS: web.AppKey[PaymentsServiceAsyncStub] = web.AppKey("payments")
PAYMENTS_HEALTH = web.AppKey("payments_health", health_pb2_grpc.HealthStub)
# None when BOT_UPDATES_URL is unset: other updates are then answered 200 and dropped.
BOT_FORWARDER: web.AppKey[BotForwarder | None] = web.AppKey("bot_forwarder")
