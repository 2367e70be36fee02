"""Rotating secrets. The Stripe webhook secret: with two configured, events signed by either are
taken, and a third secret is still refused. If the gateway tried only one of them, this fails.
An internal token: with two configured for one caller, a running server takes both as that
caller, and any third token is UNAUTHENTICATED."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import aiohttp
import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from entitlements_service.server import build
from entitlements_service.wire import to_proto_time
from paylayer.callers import token_digest_hex
from paylayer.catalogue import load_catalogue
from paylayer.db import create_engine
from paylayer.ops.factories import stripe_event
from paylayer.settings import Settings
from protos.entitlements.v1 import entitlements_pb2, entitlements_pb2_grpc
from tests.conftest import KNOWN_SECRETS, fresh_database, make_settings, running_stack
from tests.fakes.bot_api import FakeBotApi
from tests.grpc_helpers import channel_to, serving
from tests.payments.helpers import (
    check,
    event_statuses,
    new_buyer,
    post_stripe,
    user_of_telegram,
    wait_settled,
)
from tests.stack import Stack

OLD_SECRET = "whsec_old_" + secrets.token_hex(16)
NEW_SECRET = "whsec_new_" + secrets.token_hex(16)


@pytest.fixture(scope="module")
def rotation_database(admin_database_url: str) -> Iterator[str]:
    with fresh_database(admin_database_url) as url:
        yield url


@pytest.fixture(scope="module")
def rotating(
    rotation_database: str, bot_api: FakeBotApi, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    settings = dataclasses.replace(
        make_settings(rotation_database, bot_api),
        stripe_webhook_secrets=(OLD_SECRET, NEW_SECRET),
    )
    KNOWN_SECRETS.extend([OLD_SECRET, NEW_SECRET])
    with running_stack(settings, tmp_path_factory.mktemp("rotation-logs")) as stack:
        yield stack


@pytest.fixture(scope="module")
async def rotation_engine(rotation_database: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(rotation_database, application_name="rotation-tests", pool_size=2)
    yield engine
    await engine.dispose()


async def test_events_signed_with_either_configured_secret_are_taken_and_applied(
    rotating: Stack, rotation_engine: AsyncEngine
) -> None:
    assert rotating.settings.stripe_webhook_secrets == (OLD_SECRET, NEW_SECRET)
    catalogue = load_catalogue(rotating.settings.catalogue_path)
    buyers = {OLD_SECRET: new_buyer(), NEW_SECRET: new_buyer()}
    events = {
        secret: stripe_event(
            "checkout.session.completed", catalogue, sku="premium_30d", telegram_user_id=buyer
        )
        for secret, buyer in buyers.items()
    }
    async with aiohttp.ClientSession() as http:
        for secret, event in events.items():
            assert (await post_stripe(http, rotating, event, secret=secret))[0] == 200
    ids = [event["id"] for event in events.values()]
    assert set((await wait_settled(rotation_engine, "stripe", ids)).values()) == {"processed"}
    for buyer in buyers.values():
        assert (await check(rotating, await user_of_telegram(rotating, buyer), "premium")).active


async def test_any_other_secret_is_refused_and_nothing_is_recorded(
    rotating: Stack, rotation_engine: AsyncEngine
) -> None:
    catalogue = load_catalogue(rotating.settings.catalogue_path)
    event = stripe_event(
        "checkout.session.completed", catalogue, sku="premium_30d", telegram_user_id=new_buyer()
    )
    async with aiohttp.ClientSession() as http:
        for secret in ("whsec_retired_" + secrets.token_hex(16), OLD_SECRET + "x", NEW_SECRET[:-1]):
            assert (await post_stripe(http, rotating, event, secret=secret))[0] == 400
    assert await event_statuses(rotation_engine, "stripe", [event["id"]]) == {}


async def test_two_internal_tokens_of_one_caller_both_work_and_a_third_is_unauthenticated(
    settings: Settings, engine: AsyncEngine
) -> None:
    old_token, new_token = "old-" + secrets.token_hex(16), "new-" + secrets.token_hex(16)
    KNOWN_SECRETS.extend([old_token, new_token])
    # The new token as its digest, as a deployment holding no secret would configure it.
    rotating_settings = dataclasses.replace(
        settings,
        caller_tokens=f"operator:{old_token},operator:{token_digest_hex(new_token)}",
    )
    async with serving(build(rotating_settings)) as addr:
        for token in (old_token, new_token):
            async with channel_to(addr, token) as channel:
                request = entitlements_pb2.GrantEntitlementRequest(
                    user_id="user-rotation-" + secrets.token_hex(6),
                    entitlement="premium",
                    source=entitlements_pb2.Source(
                        provider="manual", reference="rotation-" + secrets.token_hex(6)
                    ),
                    event_id="evt_" + secrets.token_hex(8),
                    purchased_at=to_proto_time(datetime.now(UTC)),
                    duration_seconds=86400,
                    reason="token rotation test",
                )
                stub = entitlements_pb2_grpc.EntitlementsServiceStub(channel)
                assert (await stub.GrantEntitlement(request)).created
            async with engine.connect() as connection:
                actor = await connection.scalar(
                    text("SELECT actor FROM entitlements.audit WHERE event_id = :event"),
                    {"event": request.event_id},
                )
            assert actor == "operator", "either token is the same caller"
        for wrong in ("third-" + secrets.token_hex(16), old_token + "x", new_token[:-1]):
            async with channel_to(addr, wrong) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await entitlements_pb2_grpc.EntitlementsServiceStub(channel).CheckEntitlement(
                        entitlements_pb2.CheckEntitlementRequest(
                            user_id="user-x", entitlement="premium"
                        )
                    )
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
