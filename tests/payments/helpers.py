"""Talking to the running stack the way Stripe, Telegram and internal callers do."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from paylayer.grpc_client import open_channel
from paylayer.ops.factories import sign_stripe
from payments_service.tables import inbox
from protos.accounts.v1 import accounts_pb2, accounts_pb2_grpc
from protos.entitlements.v1 import entitlements_pb2, entitlements_pb2_grpc
from tests.stack import Stack

T = TypeVar("T")
DAY = 24 * 3600


def new_buyer() -> int:
    """A Telegram user id no test has used: each test's purchases are its own."""
    return secrets.randbelow(10**12) + 10**9


async def post_stripe(
    http: aiohttp.ClientSession,
    stack: Stack,
    event: dict[str, Any] | bytes,
    *,
    secret: str | None = None,
    timestamp: int | None = None,
    signature: str | None = None,
) -> tuple[int, dict[str, Any]]:
    body = event if isinstance(event, bytes) else json.dumps(event).encode()
    headers = {"Content-Type": "application/json"}
    if signature is None:
        signature = sign_stripe(
            body.decode(errors="replace"),
            secret or stack.settings.stripe_webhook_secrets[0],
            timestamp,
        )
    if signature:
        headers["Stripe-Signature"] = signature
    async with http.post(
        f"{stack.gateway_url}/api/v1/stripe/webhook", data=body, headers=headers
    ) as reply:
        return reply.status, await reply.json(content_type=None)


async def post_telegram(
    http: aiohttp.ClientSession,
    stack: Stack,
    update: dict[str, Any] | bytes,
    *,
    token: str | None = None,
) -> tuple[int, dict[str, Any]]:
    body = update if isinstance(update, bytes) else json.dumps(update).encode()
    headers = {"Content-Type": "application/json"}
    secret = stack.settings.telegram_webhook_secret if token is None else token
    if secret:
        headers["X-Telegram-Bot-Api-Secret-Token"] = secret
    async with http.post(
        f"{stack.gateway_url}/api/v1/telegram/webhook", data=body, headers=headers
    ) as reply:
        return reply.status, await reply.json(content_type=None)


async def user_of_telegram(stack: Stack, telegram_user_id: int) -> str:
    async with open_channel(stack.addrs["accounts"], stack.settings.internal_token) as channel:
        reply = await accounts_pb2_grpc.AccountsServiceStub(channel).ResolveUser(
            accounts_pb2.ResolveUserRequest(telegram_user_id=telegram_user_id, create=True)
        )
    return str(reply.user.user_id)


async def check(
    stack: Stack, user_id: str, entitlement: str
) -> entitlements_pb2.CheckEntitlementResponse:
    async with open_channel(stack.addrs["entitlements"], stack.settings.internal_token) as channel:
        return await entitlements_pb2_grpc.EntitlementsServiceStub(channel).CheckEntitlement(
            entitlements_pb2.CheckEntitlementRequest(user_id=user_id, entitlement=entitlement)
        )


async def event_statuses(
    engine: AsyncEngine, provider: str, event_ids: list[str]
) -> dict[str, str]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(inbox.c.event_id, inbox.c.status).where(
                inbox.c.provider == provider, inbox.c.event_id.in_(event_ids)
            )
        )
        return {row.event_id: row.status for row in rows}


async def wait_settled(
    engine: AsyncEngine, provider: str, event_ids: list[str], within: float = 30
) -> dict[str, str]:
    """Wait until none of these events is pending any more; return their statuses."""
    statuses: dict[str, str] = {}
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        statuses = await event_statuses(engine, provider, event_ids)
        if len(statuses) == len(set(event_ids)) and "pending" not in statuses.values():
            return statuses
        await asyncio.sleep(0.1)
    raise TimeoutError(f"events still pending after {within} s: {statuses}")


async def eventually(
    probe: Callable[[], Awaitable[T]], accept: Callable[[T], bool], within: float = 30
) -> T:
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if accept(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.2)


def days_left(reply: entitlements_pb2.CheckEntitlementResponse) -> float:
    return (reply.expires_at.seconds - time.time()) / DAY
