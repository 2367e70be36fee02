"""What an operator does with the inbox: page through it, and replay only what may replay."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import aiohttp
import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from paylayer.catalogue import Catalogue
from paylayer.grpc_client import open_channel
from paylayer.ops.factories import stripe_event
from protos.payments.v1 import payments_pb2, payments_pb2_grpc
from tests.payments.helpers import (
    event_statuses,
    new_buyer,
    post_stripe,
    user_of_telegram,
    wait_settled,
)
from tests.stack import Stack


@pytest.fixture
async def payments_stub(stack: Stack) -> AsyncIterator[payments_pb2_grpc.PaymentsServiceStub]:
    async with open_channel(stack.addrs["payments"], stack.settings.internal_token) as channel:
        yield payments_pb2_grpc.PaymentsServiceStub(channel)


async def test_list_events_pages_newest_first_without_repeats_or_gaps(
    stack: Stack,
    http: aiohttp.ClientSession,
    catalogue: Catalogue,
    engine: AsyncEngine,
    payments_stub: payments_pb2_grpc.PaymentsServiceStub,
) -> None:
    # A type of its own, so only this test's events match the filter.
    event_type = f"test.paging_{secrets.token_hex(4)}"
    events = []
    for _ in range(5):
        event = stripe_event(event_type, catalogue)
        assert (await post_stripe(http, stack, event))[0] == 200
        events.append(event)
    await wait_settled(engine, "stripe", [e["id"] for e in events])
    seen: list[str] = []
    token, pages = "", 0
    while True:
        reply = await payments_stub.ListEvents(
            payments_pb2.ListEventsRequest(event_type=event_type, page_size=2, page_token=token)
        )
        seen += [event.event_id for event in reply.events]
        pages += 1
        token = reply.next_page_token
        if not token:
            break
    assert seen == [e["id"] for e in reversed(events)] and pages == 3


async def test_only_failed_or_ignored_events_replay(
    stack: Stack,
    http: aiohttp.ClientSession,
    catalogue: Catalogue,
    engine: AsyncEngine,
    payments_stub: payments_pb2_grpc.PaymentsServiceStub,
) -> None:
    processed = stripe_event(
        "charge.succeeded", catalogue, sku="premium_30d", telegram_user_id=new_buyer()
    )
    ignored = stripe_event(f"test.ignored_{secrets.token_hex(4)}", catalogue)
    for event in (processed, ignored):
        assert (await post_stripe(http, stack, event))[0] == 200
    statuses = await wait_settled(engine, "stripe", [processed["id"], ignored["id"]])
    assert statuses == {processed["id"]: "processed", ignored["id"]: "ignored"}

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await payments_stub.ReplayEvent(
            payments_pb2.ReplayEventRequest(provider="stripe", event_id=processed["id"])
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "processed" in (refused.value.details() or "")

    replayed = await payments_stub.ReplayEvent(
        payments_pb2.ReplayEventRequest(provider="stripe", event_id=ignored["id"])
    )
    # Applied again at once, and ignored again: replaying never invents an effect.
    assert replayed.event.status == payments_pb2.EVENT_STATUS_IGNORED
    assert replayed.event.attempts == 1

    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await payments_stub.ReplayEvent(
            payments_pb2.ReplayEventRequest(provider="stripe", event_id="evt_never_seen")
        )
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


async def test_replaying_a_pending_event_is_refused_and_it_still_applies_once(
    stack: Stack,
    http: aiohttp.ClientSession,
    catalogue: Catalogue,
    engine: AsyncEngine,
    payments_stub: payments_pb2_grpc.PaymentsServiceStub,
) -> None:
    buyer = new_buyer()
    event = stripe_event("charge.succeeded", catalogue, sku="premium_30d", telegram_user_id=buyer)
    # An uncommitted user row of this test for the buyer: accounts waits on it, so the event
    # cannot leave pending until it is let go, however fast the worker is.
    async with engine.connect() as blocker:
        await blocker.execute(
            text("INSERT INTO accounts.users (user_id, telegram_user_id) VALUES (:user, :t)"),
            {"user": f"held-{secrets.token_hex(6)}", "t": buyer},
        )
        try:
            assert (await post_stripe(http, stack, event))[0] == 200
            assert await event_statuses(engine, "stripe", [event["id"]]) == {event["id"]: "pending"}
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await payments_stub.ReplayEvent(
                    payments_pb2.ReplayEventRequest(provider="stripe", event_id=event["id"])
                )
        finally:
            await blocker.rollback()
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "pending" in (refused.value.details() or "")

    assert await wait_settled(engine, "stripe", [event["id"]], within=60) == {
        event["id"]: "processed"
    }
    user_id = await user_of_telegram(stack, buyer)
    async with engine.connect() as connection:
        grants, audited = (
            await connection.execute(
                text(
                    "SELECT (SELECT count(*) FROM entitlements.grants WHERE user_id = :user),"
                    " (SELECT count(*) FROM entitlements.audit"
                    "   WHERE user_id = :user AND action = 'grant')"
                ),
                {"user": user_id},
            )
        ).one()
    assert (grants, audited) == (1, 1), "the refused replay must not have applied it twice"
