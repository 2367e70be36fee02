"""What keeps the layer as fast in a year as on day one: old events leave the inbox, and the
ledger pages by key, not by OFFSET."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import timedelta

import aiohttp
import pytest
from sqlalchemy import delete, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from paylayer.catalogue import Catalogue
from paylayer.grpc_client import open_channel
from paylayer.ops.factories import stripe_event
from payments_service.store import Store
from payments_service.tables import inbox
from protos.payments.v1 import payments_pb2, payments_pb2_grpc
from tests.payments.helpers import new_buyer, post_stripe, user_of_telegram, wait_settled
from tests.stack import Stack


@pytest.fixture
async def payments_stub(stack: Stack) -> AsyncIterator[payments_pb2_grpc.PaymentsServiceStub]:
    async with open_channel(stack.addrs["payments"], stack.settings.internal_token) as channel:
        yield payments_pb2_grpc.PaymentsServiceStub(channel)


async def test_old_done_events_leave_the_inbox_and_failed_or_pending_ones_stay(
    engine: AsyncEngine,
) -> None:
    tag = f"retention-{secrets.token_hex(4)}"
    rows = {
        "processed-old": ("processed", 100),
        "ignored-old": ("ignored", 100),
        "failed-old": ("failed", 100),
        "processed-recent": ("processed", 10),
    }
    async with engine.begin() as connection:
        for name, (status, days) in rows.items():
            await connection.execute(
                text(
                    "INSERT INTO payments.inbox (provider, event_id, event_type, payload, status,"
                    " received_at, processed_at) VALUES ('stripe', :id, 'charge.succeeded',"
                    " '{}', :status, now() - make_interval(days => :days),"
                    " now() - make_interval(days => :days))"
                ),
                {"id": f"{tag}-{name}", "status": status, "days": days},
            )
        await connection.execute(
            text(
                "INSERT INTO payments.inbox (provider, event_id, event_type, payload, status,"
                " received_at, next_attempt_at) VALUES ('stripe', :id, 'charge.succeeded', '{}',"
                " 'pending', now() - interval '100 days', now() + interval '1 hour')"
            ),
            {"id": f"{tag}-pending-old"},
        )
    await Store(engine).forget_done_events(timedelta(days=90), batch=1)
    async with engine.connect() as connection:
        left = set(
            await connection.scalars(
                select(inbox.c.event_id).where(inbox.c.event_id.like(f"{tag}-%"))
            )
        )
    assert left == {f"{tag}-failed-old", f"{tag}-processed-recent", f"{tag}-pending-old"}
    # The stack shares this inbox: its parked row would come due in an hour as a bogus event.
    async with engine.begin() as connection:
        await connection.execute(delete(inbox).where(inbox.c.event_id.like(f"{tag}-%")))


async def test_the_ledger_pages_newest_first_without_repeats_or_gaps(
    stack: Stack,
    http: aiohttp.ClientSession,
    catalogue: Catalogue,
    engine: AsyncEngine,
    payments_stub: payments_pb2_grpc.PaymentsServiceStub,
) -> None:
    buyer = new_buyer()
    events = [
        stripe_event("charge.succeeded", catalogue, sku="premium_30d", telegram_user_id=buyer)
        for _ in range(5)
    ]
    for event in events:  # one at a time, so the ledger's order is the sending order
        assert (await post_stripe(http, stack, event))[0] == 200
        await wait_settled(engine, "stripe", [event["id"]])
    user_id = await user_of_telegram(stack, buyer)
    seen: list[str] = []
    token, pages = "", 0
    while True:
        reply = await payments_stub.ListPayments(
            payments_pb2.ListPaymentsRequest(user_id=user_id, page_size=2, page_token=token)
        )
        seen += [payment.payment_key for payment in reply.payments]
        pages += 1
        token = reply.next_page_token
        if not token:
            break
    expected = [event["data"]["object"]["payment_intent"] for event in reversed(events)]
    assert seen == expected and pages == 3
